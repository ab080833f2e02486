"""The key reference, ``docs/configuration.md``, rendered from the declarations (``shopseq config --reference``).

One table per section of :class:`~shopseq.jobs.config.schema.Config`: each
leaf key with its type, default, valid values and meaning, as declared with
:func:`shopseq.features.settings.setting`. The loader never imports this
module: rendering the reference is a documentation concern, not part of
loading a config.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from shopseq.features.settings import Check, choices, default_of, type_hints
from shopseq.jobs.config.schema import Config, sections


@dataclass(frozen=True)
class KeyDoc:
    """One row of the reference: a leaf key and what its declaration says, rendered as Markdown cells."""

    key: str
    type: str
    default: str
    valid: str
    meaning: str


def key_docs() -> list[KeyDoc]:
    """Every leaf key of :class:`Config` (``section.key``, and the top-level ``env``) with its type, default, valid values and meaning."""
    rows = []
    for name, cls in sections():
        rows += [_key_doc(f"{name}.{f.name}", f, type_hints(cls)[f.name]) for f in dataclasses.fields(cls)]
    rows += [_key_doc(f.name, f, type_hints(Config)[f.name]) for f in dataclasses.fields(Config) if not dataclasses.is_dataclass(type_hints(Config)[f.name])]
    return rows


def _key_doc(key: str, f: dataclasses.Field[Any], tp: Any) -> KeyDoc:
    """The reference row of one key: choices (a ``Literal``) or the declared check, ", or null" where null is allowed."""
    allowed = choices(tp)
    check: Check | None = f.metadata.get("check")
    optional = type(None) in typing.get_args(tp)
    if allowed is not None:
        valid = "one of " + ", ".join(f"`{a}`" for a in allowed)
    elif check is not None:
        valid = check.text
    else:
        valid = "`true`, `false`" if tp is bool else "any"
    if optional and valid != "any":
        valid += ", or null"
    return KeyDoc(key, type_name(tp), f"`{yaml_value(default_of(f))}`", valid, f.metadata.get("doc", ""))


def type_name(tp: Any) -> str:
    """``int``, ``str or null``, ``list[float]``, ``map str -> str``: the type as the reference shows it."""
    o, args = typing.get_origin(tp), typing.get_args(tp)
    if o in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if o is Literal:
        return type(args[0]).__name__
    if o is list:
        return f"list[{type_name(args[0])}]"
    if o is dict:
        return f"map {type_name(args[0])} -> {type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


def yaml_value(value: Any) -> str:
    """``value`` as one line of YAML flow style (``null``, ``true``, ``[5, 10, 20]``, ``{}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _markdown(text: str) -> str:
    """A docstring as Markdown: dedented, reST roles and double backticks as plain code spans."""
    text = inspect.cleandoc(text)
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


REFERENCE_HEADER = """\
# Configuration reference

Every config key: its type, its default (the value in `conf/base.yaml`), its
valid values and what it does. Generated from the typed config
(`jobs/config/schema.py`, `features/params.py`) by
`shopseq config --reference > docs/configuration.md`; do not edit by hand
(`tests/test_docs.py` checks that this page equals the rendering). How the
layers merge (base -> environment -> `--conf-file` -> `--set`), the dataset
layers and the protocol presets: [conf/README.md](../conf/README.md).

A value of the wrong type or outside its valid values stops every stage at
start-up with one line naming the key and the layer that set it (exit code 2),
e.g. `--set: 'train.num_proc' must be >= 1, got 0`. A float key (and each
number of a float list or map) must also be finite: `.inf` and `.nan` are
refused (`--set: 'train.lr' must be a finite number, got inf`). `shopseq
config` checks a layer stack without starting Spark.
"""


def reference_markdown() -> str:
    """``docs/configuration.md``: one table per section (key, type, default, valid values, meaning), rendered from the dataclasses."""
    rows = key_docs()
    out = [REFERENCE_HEADER]
    groups = [(name, cls.__doc__ or "", [r for r in rows if r.key.startswith(name + ".")]) for name, cls in sections()]
    groups.append(("env", "The top-level key.", [r for r in rows if "." not in r.key]))
    for name, doc, group in groups:
        out += [f"## {name}", "", _markdown(doc), "", "| key | type | default | valid values | meaning |", "|---|---|---|---|---|"]
        out += [f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.valid)} | {_cell(r.meaning)} |" for r in group]
        out.append("")
    return "\n".join(out)
