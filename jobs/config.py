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
class SourceConfig:
    """Raw input of ``shopseq ingest``: a named preset (jobs/sources.py) or a ``generic`` description.

    Named formats take every key but ``path`` from their preset; ``generic``
    reads them from here. Presets are instances of this class.
    """

    format: str = "generated"  # generated | taobao | rees46 | retailrocket | diginetica | generic (--format)
    path: str | None = None  # input file, folder or glob (--input); generated defaults to <app.data_root>/raw/generated/events
    # Generic sources: how to read them and the mapping to canonical columns.
    reader: Literal["csv", "parquet", "json"] = "csv"  # csv and json (JSON lines) are read line by line as text
    options: dict[str, str] = field(default_factory=dict)  # csv: sep, quote, escape, header ("true" skips header lines)
    columns: list[str] = field(default_factory=list)  # source columns in file order (default: the CSV header / all Parquet columns)
    mapping: dict[str, str] = field(default_factory=dict)  # canonical -> source column; user_id, item_id, event_time, event_type required
    event_types: dict[str, str] = field(default_factory=dict)  # source value -> canonical event type ({} = already canonical)
    time_format: Literal["unix_s", "unix_ms", "timestamp", "string"] = "timestamp"
    time_pattern: str | None = None  # Spark datetime pattern when time_format is string (naive times are UTC)
    time_offset_column: str | None = None  # source column of milliseconds added to event_time (Diginetica timeframe)
    null_values: list[str] = field(default_factory=lambda: [""])  # source values (after trimming) that mean missing
    constants: dict[str, str] = field(default_factory=dict)  # canonical column -> fixed source value, for columns the source lacks
    user_fallback_column: str | None = None  # when user_id is missing, user_fallback_prefix + this source column stands in
    user_fallback_prefix: str = ""


@dataclass(frozen=True)
class GenerateConfig:
    """The synthetic dataset (``shopseq generate``); what each key plants is documented in features/generate.py."""

    users: int = 1000  # user ids u0..u{users-1}; --users sets it, --events scales it
    items: int = 1000  # item i belongs to category i mod categories (must be >= categories)
    categories: int = 20
    days: int = 112  # window length, from start_date 00:00 UTC
    start_date: str = "2024-01-01"
    seed: int = 7  # all randomness is a hash of (seed, ids): same config, same rows
    partitions: int = 4  # Spark partitions of users and of the output (files); never changes the rows
    # activity: sessions start as a Bernoulli trial per user-hour
    sessions_per_user_per_week: float = 5.0  # mean over users, before churn and the session-gap rule
    activity_sigma: float = 0.6  # per-user activity multiplier ~ log-normal, mean 1
    hour_weights: list[float] = field(
        default_factory=lambda: [0.55, 0.35, 0.22, 0.15, 0.12, 0.14, 0.25, 0.45, 0.65, 0.75, 0.8, 0.85,
                                 0.95, 0.9, 0.85, 0.85, 0.9, 1.0, 1.2, 1.45, 1.6, 1.6, 1.35, 0.9]
    )  # relative session-start rate per UTC hour 0..23 (normalized to mean 1)
    weekend_boost: float = 1.3  # Saturday/Sunday rate relative to a weekday
    min_session_gap_minutes: float = 60.0  # a session starting sooner after an earlier one's end is dropped
    # sessions
    views_per_session: float = 10.0  # mean of the geometric number of views per session
    max_views_per_session: int = 60
    view_gap_median_s: float = 40.0  # seconds between views ~ log-normal(median, sigma), clipped to [1, max]
    view_gap_sigma: float = 1.0
    view_gap_max_s: int = 1200
    action_delay_max_s: int = 60  # fav / cart come 1..this many seconds after their view
    checkout_delay_max_s: int = 300  # checkout (purchases) comes 1..this many seconds after the last cart could be
    # interests and catalogue
    interest_categories: int = 3  # categories each user prefers, weights 1, 1/2, 1/3, ...
    interest_strength: float = 0.8  # probability a category draw comes from the user's interests (else uniform)
    session_focus: float = 0.7  # probability a view stays in the session's focus category (else a fresh draw)
    category_zipf_exponent: float = 0.5  # popularity skew of categories when picking interests (0 = uniform)
    zipf_exponent: float = 1.1  # item popularity within a category ~ rank^-s
    price_median_range: list[float] = field(default_factory=lambda: [5.0, 300.0])  # category median prices, log-uniform
    price_sigma: float = 0.5  # item price ~ log-normal around its category median
    brands_per_category: int = 8
    brand_missing_rate: float = 0.1  # share of items with a null brand
    # funnel (per view / per cart)
    fav_rate: float = 0.04  # P(fav | view)
    cart_rate: float = 0.12  # P(cart | view), mean over users
    buyer_sigma: float = 0.5  # per-user multiplier of cart_rate ~ log-normal, mean 1
    purchase_rate: float = 0.35  # P(purchase | cart)
    return_rate: float = 0.6  # P(a cart not bought in its session is bought at the start of the user's next session)
    # churn
    churn_rate: float = 0.4  # share of users who stop all activity at churn_time
    churn_earliest: float = 0.25  # churn_time ~ uniform in [earliest, latest] x window
    churn_latest: float = 0.95
    churn_decline_days: float = 14.0  # churners' session rate falls linearly to 0 over these days (0 = abrupt)
    churn_engagement_fade: float = 0.8  # how much of the rate's fall churners' views per session and carts per view follow (0 = none)


@dataclass(frozen=True)
class IngestConfig:
    """Validation window of ``shopseq ingest`` (rules and reason codes in features/ingest.py)."""

    min_event_time: str = "2000-01-01T00:00:00"  # ISO-8601 (naive = UTC): earlier events are quarantined as before_min_time
    max_future_skew_hours: float = 24.0  # events after now + this are quarantined as future_time
    now: str | None = None  # fixed "now" (ISO-8601, naive = UTC) for reproducible runs; None = wall clock at the start of the run


@dataclass(frozen=True)
class SessionizeConfig:
    gap_minutes: float = 30.0  # new session when the gap to the user's previous event is strictly greater
    use_source_session: bool = False  # split on changes of source_session_id instead (gap rule where it is null)
    drop_consecutive_repeats: bool = False  # drop same item + event type as the previous event of the session (counted)
    max_events_per_user_day: int = 5000  # more events than this on one UTC day flags the user-day is_bot_suspect


@dataclass(frozen=True)
class FeaturesConfig:
    """Sequence features, labels, vocabularies, splits and gold layout (issue 4; see features/*.py)."""

    protocol: str = "cutoff"  # name of the evaluation protocol (conf/protocols/<name>.yaml, --protocol); recorded in the schema artifact
    entity: Literal["user", "session"] = "user"  # whose sequences examples follow: session = each session is its own user (user_id := session_id)
    filter_min_user_events: int = 1  # iterative k-core: drop entities (users or sessions) with fewer events, 1 = no filter
    filter_min_item_events: int = 1  # iterative k-core: drop items with fewer events, 1 = no filter
    max_len: int = 50  # L: events per sequence example (left-padded)
    cutoff: Literal["session_end", "stride", "daily"] = "session_end"  # where examples are cut
    stride: int = 5  # cutoff=stride: a cutoff after every k-th event of a user
    collapse_ties: bool = True  # a cutoff never separates equal timestamps; false = one cutoff per chosen event, ties ordered by position
    purchase_horizon_days: float = 7.0  # H_p: purchase label looks (cutoff, cutoff + H_p]
    churn_horizon_days: float = 14.0  # H_c: churn = no event in (cutoff, cutoff + H_c]
    min_item_count: int = 2  # items seen fewer times in the train range map to OOV
    min_category_count: int = 1  # same for categories
    min_event_type_count: int = 1  # same for event types
    time_buckets: int = 28  # dt bucket ids: 0 pad, 1 first event, 2 + floor(log2(1 + gap_s)), capped at time_buckets - 1
    drop_bot_suspects: bool = True  # leave out events of user-days flagged is_bot_suspect
    split: Literal["temporal", "leave_last_out", "last_days"] = "temporal"
    train_fraction: float = 0.6  # temporal: train boundary at this fraction of the data's time range
    val_fraction: float = 0.2  # temporal: validation boundary at train_fraction + val_fraction
    train_end: str | None = None  # temporal: explicit UTC boundary (date or timestamp), overrides train_fraction
    val_end: str | None = None  # temporal: explicit UTC boundary, overrides val_fraction
    gap_days: float | None = None  # temporal gap before each boundary; None = max(horizons); smaller is refused
    test_days: float = 1.0  # last_days: entities whose first event is in the last test_days of the data are test
    val_days: float = 1.0  # last_days: those starting in the val_days before that are validation
    train_ranks: int = 2  # training processes that shard each gold table
    row_groups_per_rank: int = 4  # each split is written as at least train_ranks * this many files
    rows_per_file: int = 200000  # more files when a split has more rows than files * this

    def __post_init__(self) -> None:
        minimum = {"max_len": 1, "stride": 1, "min_item_count": 1, "min_category_count": 1, "min_event_type_count": 1,
                   "time_buckets": 3, "train_ranks": 1, "row_groups_per_rank": 1, "rows_per_file": 1,
                   "filter_min_user_events": 1, "filter_min_item_events": 1}  # fmt: skip
        for key, low in minimum.items():
            if getattr(self, key) < low:
                raise ConfigError(f"features.{key}: must be >= {low}, got {getattr(self, key)!r}")
        if not self.protocol or not all(c.isalnum() or c in "_-" for c in self.protocol):
            raise ConfigError(f"features.protocol: letters, digits, '_' and '-' only, got {self.protocol!r}")
        for key in ("purchase_horizon_days", "churn_horizon_days", "test_days", "val_days"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"features.{key}: must be > 0, got {getattr(self, key)!r}")


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
