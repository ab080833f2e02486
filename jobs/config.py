"""The one config loader: YAML layered base -> environment -> ``--set`` overrides.

``conf/base.yaml`` is deep-merged with ``conf/<env>.yaml`` and then with each
``--set dotted.key=value`` (values parsed as YAML scalars), and the result is
validated into the frozen dataclasses below. Every key is remembered with the
file (or ``--set``) that last set it, so an unknown key or a wrong type fails
with one line naming both::

    conf/local.yaml: unknown key 'spark.shufle_partitions'
    --set: 'sessionize.gap_minutes' expects int, got str 'soon'
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

ENVIRONMENTS = ("local", "cluster", "databricks")


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the key and the file."""


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class AppConfig:
    name: str = "shopseq"
    data_root: str = "shopseq-data"  # where path-addressed tables and run outputs live
    log_level: str = "INFO"


@dataclass(frozen=True)
class SparkConfig:
    master: str | None = "local[2]"  # None: take it from spark-submit / the cluster
    app_name: str = "shopseq"
    shuffle_partitions: int = 4
    driver_memory: str = "4g"
    log_level: str = "WARN"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TablesConfig:
    backend: Literal["auto", "delta-spark", "delta-rs"] = "auto"
    root: str | None = None  # default: <app.data_root>/tables
    catalog: str | None = None  # with schema: tables are catalog.schema.<name>
    schema: str | None = None
    locations: dict[str, str] = field(default_factory=dict)  # per-table override


@dataclass(frozen=True)
class SourceConfig:
    format: str = "generated"
    path: str | None = None
    # Generic sources: reader options and the mapping to canonical columns.
    reader: Literal["csv", "parquet", "json"] = "csv"
    options: dict[str, str] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)  # names for header-less CSV
    mapping: dict[str, str] = field(default_factory=dict)  # canonical -> source column
    event_types: dict[str, str] = field(default_factory=dict)  # source value -> canonical
    time_format: Literal["unix_s", "unix_ms", "timestamp", "string"] = "timestamp"
    time_pattern: str | None = None


@dataclass(frozen=True)
class GenerateConfig:
    users: int = 2000
    items: int = 1000
    categories: int = 20
    days: int = 28
    start_date: str = "2024-01-01"
    seed: int = 7
    sessions_per_user_per_week: float = 3.0
    events_per_session: float = 8.0
    churn_rate: float = 0.2
    zipf_exponent: float = 1.1
    interest_categories: int = 3
    interest_strength: float = 0.8
    cart_rate: float = 0.12
    purchase_rate: float = 0.35
    fav_rate: float = 0.04
    partitions: int = 4


@dataclass(frozen=True)
class IngestConfig:
    min_event_time: str = "2000-01-01T00:00:00"
    max_future_skew_hours: float = 24.0
    now: str | None = None  # fixed "now" for reproducible runs; None = wall clock


@dataclass(frozen=True)
class SessionizeConfig:
    gap_minutes: float = 30.0
    use_source_session: bool = False
    drop_consecutive_repeats: bool = False
    max_events_per_user_day: int = 5000


@dataclass(frozen=True)
class Config:
    app: AppConfig = field(default_factory=AppConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sessionize: SessionizeConfig = field(default_factory=SessionizeConfig)
    env: str = "local"


# --------------------------------------------------------------------------- loading


def default_conf_dir() -> Path:
    """``$SHOPSEQ_CONF_DIR``, else ``./conf``, else the ``conf/`` beside the package."""
    if os.environ.get("SHOPSEQ_CONF_DIR"):
        return Path(os.environ["SHOPSEQ_CONF_DIR"])
    if Path("conf/base.yaml").is_file():
        return Path("conf")
    return Path(__file__).resolve().parent.parent / "conf"


def load_config(
    env: str = "local",
    conf_dir: str | os.PathLike[str] | None = None,
    overrides: typing.Sequence[str] = (),
) -> Config:
    """Merge base -> ``env`` -> ``--set`` overrides and validate into :class:`Config`."""
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
    for item in overrides:
        key, value = _parse_override(item)
        _deep_merge(merged, _nest(key, value), origin, "--set")
    merged["env"] = env
    origin["env"] = "--env"
    return _build(Config, merged, "", origin)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set: expected key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _deep_merge(dst: dict[str, Any], src: Mapping[str, Any], origin: dict[str, str], source: str, prefix: str = "") -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = dict(value) if isinstance(value, Mapping) else value
            _mark(origin, dotted, value, source)


def _mark(origin: dict[str, str], dotted: str, value: Any, source: str) -> None:
    origin[dotted] = source
    if isinstance(value, Mapping):
        for k, v in value.items():
            _mark(origin, f"{dotted}.{k}", v, source)


def _where(origin: Mapping[str, str], dotted: str) -> str:
    while dotted:
        if dotted in origin:
            return origin[dotted]
        dotted = dotted.rpartition(".")[0]
    return "config"


def _build(cls: type, data: Any, prefix: str, origin: Mapping[str, str]) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(origin, prefix.rstrip('.'))}: '{prefix.rstrip('.')}' expects a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{_where(origin, dotted)}: unknown key '{dotted}'")
        kwargs[key] = _coerce(hints[key], value, dotted, origin)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, dotted: str, origin: Mapping[str, str]) -> Any:
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
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads 2024-01-01 style dates and numbers eagerly
    if tp is str and hasattr(value, "isoformat"):
        return value.isoformat()
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        _type_error(tp, value, dotted, origin)
    return value


def _type_error(tp: Any, value: Any, dotted: str, origin: Mapping[str, str]) -> typing.NoReturn:
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{_where(origin, dotted)}: '{dotted}' expects {name}, got {type(value).__name__} {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for logging, checkpoints and run metadata)."""
    return dataclasses.asdict(cfg)
