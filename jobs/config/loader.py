"""The one config loader: YAML layered base -> environment -> ``--conf-file`` layers -> ``--set`` overrides.

``conf/base.yaml`` is deep-merged with ``conf/<env>.yaml``, then with any extra
YAML files (``--conf-file``, e.g. ``conf/datasets/taobao.yaml``) and then with each
``--set dotted.key=value`` (values parsed as YAML scalars), and the result is
validated into the frozen dataclasses of :mod:`shopseq.jobs.config.schema`.
Every key is remembered with the file (or ``--set``) that last set it, so an
unknown key, a wrong type or a value outside the key's declared range or
choices (:func:`shopseq.features.settings.problem`) fails with one line naming
both::

    conf/local.yaml: unknown key 'spark.shufle_partitions'
    --set: 'sessionize.gap_minutes' expects float, got str 'soon'
    --set: 'train.num_proc' must be >= 1, got 0
    --set: 'train.lr' must be a finite number, got inf
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib.resources
import os
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from shopseq.features.settings import ConfigError, problem, type_hints
from shopseq.jobs.config.schema import ENVIRONMENTS, Config


def default_conf_dir() -> Path:
    """``$SHOPSEQ_CONF_DIR``, else ``./conf``, else the ``conf/`` inside the package (:func:`packaged_conf_dir`), else the ``conf/`` beside it (a checkout)."""
    if os.environ.get("SHOPSEQ_CONF_DIR"):
        return Path(os.environ["SHOPSEQ_CONF_DIR"])
    if Path("conf/base.yaml").is_file():
        return Path("conf")
    return packaged_conf_dir() or Path(__file__).resolve().parents[2] / "conf"


@functools.cache
def packaged_conf_dir() -> Path | None:
    """The ``conf/`` that the wheel and the ``--py-files`` zip of ``make dist`` carry as ``shopseq.conf`` (in an editable install, the checkout's ``conf/``); None when it has no ``base.yaml``.

    From a zip it is copied once into a temporary folder (removed at exit), so layers are plain files either way.
    """
    shipped = importlib.resources.files("shopseq.conf")
    if not (shipped / "base.yaml").is_file():
        return None
    if isinstance(shipped, Path):
        return shipped
    copy = Path(tempfile.mkdtemp(prefix="shopseq-conf-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    todo = [(shipped, copy)]
    while todo:
        src, dst = todo.pop()
        for item in src.iterdir():
            if item.is_dir():
                (dst / item.name).mkdir()
                todo.append((item, dst / item.name))
            else:
                (dst / item.name).write_bytes(item.read_bytes())
    return copy


def load_config(
    env: str = "local",
    conf_dir: str | os.PathLike[str] | None = None,
    overrides: typing.Sequence[str] = (),
    layers: typing.Sequence[str | os.PathLike[str]] = (),
) -> Config:
    """Merge base -> ``env`` -> ``layers`` (extra YAML files, ``--conf-file``) -> ``--set`` overrides and validate into :class:`Config`."""
    if env not in ENVIRONMENTS:
        raise ConfigError(f"--env: unknown environment {env!r}; expected one of {', '.join(ENVIRONMENTS)}")
    conf_path = Path(conf_dir) if conf_dir is not None else default_conf_dir()
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in ("base.yaml", f"{env}.yaml"):
        path = conf_path / name
        if not path.is_file():
            if name == "base.yaml":
                raise ConfigError(f"{path}: config file not found (use --conf-dir)")
            continue
        _deep_merge(merged, _read_yaml(path), origin, str(path))
    for layer in layers:
        path = Path(layer)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found (--conf-file)")
        _deep_merge(merged, _read_yaml(path), origin, str(path))
    for item in overrides:
        key, value = _parse_override(item)
        _deep_merge(merged, _nest(key, value), origin, "--set")
    merged["env"] = env
    origin["env"] = "--env"
    return _build(Config, merged, "", origin)


def _read_yaml(path: Path) -> dict[str, Any]:
    """One YAML layer as a mapping; invalid YAML or a non-mapping top level is a one-line ConfigError naming the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except ValueError as exc:  # a scalar YAML cannot construct, e.g. the date 2024-13-01
        raise ConfigError(f"{path}: invalid YAML value ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    """``--set key=value`` as ``(key, value)``, the value parsed as a YAML scalar (else kept as text)."""
    if "=" not in item:
        raise ConfigError(f"--set: expected key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError):  # not YAML (or a date YAML cannot construct, 2024-13-01): the text itself
        value = raw
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    """``a.b.c`` and ``v`` as ``{"a": {"b": {"c": v}}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _deep_merge(dst: dict[str, Any], src: Mapping[str, Any], origin: dict[str, str], source: str, prefix: str = "") -> None:
    """Merge ``src`` into ``dst`` key by key (mappings merge, anything else replaces), marking each key set with ``source``."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = dict(value) if isinstance(value, Mapping) else value
            _mark(origin, dotted, value, source)


def _mark(origin: dict[str, str], dotted: str, value: Any, source: str) -> None:
    """Record ``source`` as the layer of ``dotted`` and of every key inside a mapping value."""
    origin[dotted] = source
    if isinstance(value, Mapping):
        for k, v in value.items():
            _mark(origin, f"{dotted}.{k}", v, source)


def _where(origin: Mapping[str, str], dotted: str) -> str:
    """The layer that set ``dotted`` (or its nearest parent); ``config`` for a default."""
    while dotted:
        if dotted in origin:
            return origin[dotted]
        dotted = dotted.rpartition(".")[0]
    return "config"


def _build(cls: type, data: Any, prefix: str, origin: Mapping[str, str]) -> Any:
    """A section (or :class:`Config`) of ``data``: unknown keys, wrong types and values outside the declarations are one-line ConfigErrors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(origin, prefix.rstrip('.'))}: '{prefix.rstrip('.')}' expects a mapping, got {type(data).__name__}")
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{_where(origin, dotted)}: unknown key '{dotted}'")
        kwargs[key] = _coerce(hints[key], value, dotted, origin)
        wrong = problem(fields[key], hints[key], kwargs[key])  # the declared range or choices
        if wrong:
            raise ConfigError(f"{_blame(origin, dotted, fields[key], hints[key], kwargs[key])}: '{dotted}' {wrong}")
    return cls(**kwargs)


def _blame(origin: Mapping[str, str], dotted: str, f: dataclasses.Field[Any], tp: Any, value: Any) -> str:
    """The layer that set the bad value: for a mapping, the layer of its first entry that fails the check alone."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if problem(f, tp, {k: v}):
                return _where(origin, f"{dotted}.{k}")
    return _where(origin, dotted)


def _coerce(tp: Any, value: Any, dotted: str, origin: Mapping[str, str]) -> Any:
    """``value`` as type ``tp`` (ints widen to float, YAML dates and numbers read as text where ``str`` is declared), or a ConfigError."""
    o = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, dotted + ".", origin)
    if o in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, dotted, origin)
    if o is Literal:
        if value not in args:
            raise ConfigError(f"{_where(origin, dotted)}: '{dotted}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if o in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _type_error(tp, value, dotted, origin)
        return [_coerce(args[0], v, f"{dotted}[{i}]", origin) for i, v in enumerate(value)]
    if o is dict:
        if not isinstance(value, Mapping):
            _type_error(tp, value, dotted, origin)
        return {str(k): _coerce(args[1], v, f"{dotted}.{k}", origin) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int past float's range (about 1.8e308) would be inf
            raise ConfigError(f"{_where(origin, dotted)}: '{dotted}' must be a finite number, got {value!r}") from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads 2024-01-01 style dates and numbers eagerly
    if tp is str and hasattr(value, "isoformat"):
        return value.isoformat()
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        _type_error(tp, value, dotted, origin)
    return value


def _type_error(tp: Any, value: Any, dotted: str, origin: Mapping[str, str]) -> typing.NoReturn:
    """Refuse ``value`` as not of type ``tp``, naming the key and its layer."""
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{_where(origin, dotted)}: '{dotted}' expects {name}, got {type(value).__name__} {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for logging, checkpoints and run metadata)."""
    return dataclasses.asdict(cfg)
