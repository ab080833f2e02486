"""How config keys are declared and checked: the machinery every layer's config sections are built with.

It lives in the lowest layer (``features/``) because both the features
layer's sections (:mod:`shopseq.features.params`) and the jobs layer's
(:mod:`shopseq.jobs.config.schema`) are declared with it, and imports point
down only. It knows nothing about YAML, layers or files: the loader
(:mod:`shopseq.jobs.config.loader`) coerces values and names the layer that
set a bad one; the reference renderer (:mod:`shopseq.jobs.config.reference`)
turns the declarations into ``docs/configuration.md``.

Every key is declared with :func:`setting`: its default, its meaning and its
valid values (a :class:`Check`; choices come from a ``Literal`` type). A
section subclasses :class:`Validated`, so a directly built one is checked like
a loaded one. :func:`problem` is the one judge of a value: besides a key's
choices and check, a float key (also a list or mapping of floats) must hold
finite numbers (``.inf`` and ``.nan`` are refused).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import Field, dataclass, field, fields
from datetime import datetime
from typing import Any, Callable, ClassVar, Literal


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the key and the file."""


# --------------------------------------------------------------------------- valid values


@dataclass(frozen=True)
class Check:
    """A key's valid values: ``text`` reads after "must be" (messages) and in the reference's "valid values" column."""

    text: str
    test: Callable[[Any], bool]

    def ok(self, value: Any) -> bool:
        """Whether ``value`` (already of the key's type) is valid; a value the test cannot compare is not."""
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _num(x: float) -> str:
    """``1``, ``0.5``: a bound as the messages and the reference show it."""
    return f"{x:g}"


def at_least(low: float) -> Check:
    """``value >= low``."""
    return Check(f">= {_num(low)}", lambda v: v >= low)


def above(low: float) -> Check:
    """``value > low``."""
    return Check(f"> {_num(low)}", lambda v: v > low)


def within(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
    """``low <= value <= high``; ``open_*`` makes that end strict (shown as a parenthesis)."""
    text = f"in {'(' if open_low else '['}{_num(low)}, {_num(high)}{')' if open_high else ']'}"
    return Check(text, lambda v: (v > low if open_low else v >= low) and (v < high if open_high else v <= high))


PROBABILITY = within(0, 1)


def matching(pattern: str, text: str) -> Check:
    """A string matching the whole of ``pattern``."""
    rx = re.compile(pattern)
    return Check(text, lambda v: rx.fullmatch(v) is not None)


def each(check: Check, *, non_empty: bool = False) -> Check:
    """Every element of a list (or value of a mapping) passes ``check``."""

    def test(v: Any) -> bool:
        items = list(v.values()) if isinstance(v, dict) else list(v)
        return (bool(items) or not non_empty) and all(check.ok(x) for x in items)

    return Check(("a non-empty list, " if non_empty else "") + f"each {check.text}", test)


def _is_iso_time(value: str) -> bool:
    """Whether ``value`` parses as an ISO-8601 date or timestamp (``Z`` allowed); raises ValueError if not."""
    datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return True


NON_EMPTY = Check("non-empty", lambda v: len(v.strip()) > 0)
ISO_TIME = Check("an ISO-8601 date or timestamp (naive = UTC)", _is_iso_time)
ISO_DATE = Check("an ISO-8601 date (YYYY-MM-DD)", lambda v: datetime.strptime(v.strip(), "%Y-%m-%d") is not None)
NAME = matching(r"[A-Za-z0-9_-]+", "letters, digits, '_' and '-'")


# --------------------------------------------------------------------------- declaring keys


def setting(default: Any, doc: str, check: Check | None = None) -> Any:
    """Declare a config key: its default, its meaning (``doc``) and its valid values (``check``; choices come from a ``Literal`` type).

    A list or mapping default is copied for each instance. ``None`` always
    passes ``check`` when the type allows it (``int | None``).
    """
    meta = {"doc": doc, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f: Field[Any]) -> Any:
    """A field's default value (its factory called)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, once per class."""
    return typing.get_type_hints(cls)


def choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` type (also inside ``X | None``), else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(inner) == 1 and typing.get_origin(inner[0]) is Literal:
        return typing.get_args(inner[0])
    return None


def non_null(tp: Any) -> Any:
    """``X`` for ``X | None`` (and ``Optional[X]``), else ``tp`` unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def float_shape(tp: Any) -> Literal["scalar", "elements"] | None:
    """``scalar`` for a float key (``float``, ``float | None``), ``elements`` for a list or mapping of floats, else None."""
    inner = non_null(tp)
    if inner is float:
        return "scalar"
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if (origin in (list, tuple) and args[:1] == (float,)) or (origin is dict and args[1:] == (float,)):
        return "elements"
    return None


def _non_finite(x: Any) -> bool:
    """Whether ``x`` is a float that is infinite or NaN (ints, bools and non-numbers are not)."""
    return isinstance(x, float) and not math.isfinite(x)


def not_finite(tp: Any, value: Any) -> str | None:
    """The phrase refusing an infinite or NaN value of a float key (or an element of a float list or mapping), else None."""
    shape = float_shape(tp)
    if shape == "scalar" and _non_finite(value):
        return f"must be a finite number, got {value!r}"
    if shape == "elements" and isinstance(value, (list, tuple, dict)):
        items = value.values() if isinstance(value, dict) else value
        if any(_non_finite(x) for x in items):
            return f"must hold finite numbers only, got {value!r}"
    return None


def problem(f: Field[Any], tp: Any, value: Any) -> str | None:
    """What is wrong with ``value`` for key ``f`` of type ``tp`` (a phrase such as "must be >= 1, got 0"), or None.

    In order: a ``Literal``'s choices, finiteness of a float key
    (:func:`not_finite`), the declared :class:`Check`.
    """
    if value is None:
        return None  # the type check (loader) decides whether null is allowed
    allowed = choices(tp)
    if allowed is not None and value not in allowed:
        return f"must be one of {', '.join(map(repr, allowed))}, got {value!r}"
    infinite = not_finite(tp, value)
    if infinite:
        return infinite
    check: Check | None = f.metadata.get("check")
    if check is not None and not check.ok(value):
        return f"must be {check.text}, got {value!r}"
    return None


class Validated:
    """Checks each key's declared values on construction, so a directly built config is refused like a loaded one.

    The message names ``<SECTION>.<key>`` (the loader checks first and adds the layer).
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            wrong = problem(f, hints[f.name], getattr(self, f.name))
            if wrong:
                raise ConfigError(f"{self.SECTION}.{f.name}: {wrong}")
