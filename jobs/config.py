"""The one config loader: YAML layered base -> environment -> ``--conf-file`` layers -> ``--set`` overrides.

``conf/base.yaml`` is deep-merged with ``conf/<env>.yaml``, then with any extra
YAML files (``--conf-file``, e.g. ``conf/datasets/taobao.yaml``) and then with each
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

# The features layer's parameter objects live with it (imports point down only); re-exported here.
from features.params import ConfigError, FeaturesConfig, GenerateConfig, IngestConfig, SessionizeConfig, SourceConfig  # noqa: F401

ENVIRONMENTS = ("local", "cluster", "databricks")


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
    root: str | None = None  # default: <app.data_root>/tables
    catalog: str | None = None  # with schema: tables are catalog.schema.<name>
    schema: str | None = None
    locations: dict[str, str] = field(default_factory=dict)  # per-table override
    optimize: bool = True  # OPTIMIZE ... ZORDER BY (user_id) silver_events and sessions after sessionize writes them
    max_file_mb: int = 128  # OPTIMIZE's target file size

    def __post_init__(self) -> None:
        if self.max_file_mb < 1:
            raise ConfigError(f"tables.max_file_mb: must be >= 1, got {self.max_file_mb!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The sequence model and its distributed training (issue 5)."""

    encoder: Literal["transformer", "gru"] = "transformer"
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    batch_size: int = 256
    epochs: int = 8
    lr: float = 0.002
    weight_decay: float = 0.0
    wide_lr_scale: float = 10.0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    loss_weights: dict[str, float] = field(default_factory=lambda: {"next_item": 1.0, "next_action": 1.0, "purchase": 1.0, "churn": 2.0})
    num_negatives: int = 0
    repeat: Literal["none", "recency", "recency_type", "mixture"] = "mixture"
    repeat_lr_scale: float = 10.0
    embedding_init_std: float | None = 0.02
    next_item_positions: Literal["all", "last"] = "all"
    launcher: Literal["spark", "horovodrun", "local"] = "spark"
    num_proc: int = 2
    amp: bool = False
    patience: int = 3
    seed: int = 7
    resume: bool = True
    deterministic: bool = False
    workers: int = 2
    max_steps_per_epoch: int | None = None
    checkpoint_dir: str | None = None
    mlflow_tracking_uri: str | None = None
    experiment: str = "shopseq"

    def __post_init__(self) -> None:
        if self.repeat == "mixture" and self.num_negatives > 0:
            raise ConfigError("train.repeat: mixture needs the full softmax (train.num_negatives: 0); use recency_type with a sampled softmax")


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation against baselines on a gold split (issue 6)."""

    split: Literal["test", "val"] = "test"
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    calibration_bins: int = 10
    checkpoint: str = "best"   # best | last | a path to a .pt file
    report_dir: str | None = None  # default <app.data_root>/reports/<evaluation id>
    batch_size: int = 1024     # rows scored per forward pass / full-catalogue ranking batch
    bootstrap_samples: int = 1000  # resamples of users for the intervals; 0 = no intervals
    confidence: float = 0.95   # level of the percentile bootstrap intervals
    seed: int = 0              # seed of the resampling (and of the LightGBM / logistic-regression baselines)

    def __post_init__(self) -> None:
        if self.bootstrap_samples < 0:
            raise ConfigError(f"evaluate.bootstrap_samples: must be >= 0 (0 disables intervals), got {self.bootstrap_samples!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"evaluate.confidence: must be strictly between 0 and 1, got {self.confidence!r}")


@dataclass(frozen=True)
class PredictConfig:
    """Batch predictions back to Delta (issue 6)."""

    as_of: str | None = None   # UTC time the windows are cut at; null = the latest silver event
    top_k: int = 20
    batch_size: int = 1024     # rows per no-grad forward pass inside mapInPandas
    checkpoint: str = "best"   # best | last | a path to a .pt file
    model_version: str | None = None  # default: derived from the checkpoint (its MLflow run id and epoch)


@dataclass(frozen=True)
class Config:
    app: AppConfig = field(default_factory=AppConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sessionize: SessionizeConfig = field(default_factory=SessionizeConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
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
