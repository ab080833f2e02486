"""The one config loader: YAML layered base -> environment -> ``--conf-file`` layers -> ``--set`` overrides.

``conf/base.yaml`` is deep-merged with ``conf/<env>.yaml``, then with any extra
YAML files (``--conf-file``, e.g. ``conf/datasets/taobao.yaml``) and then with each
``--set dotted.key=value`` (values parsed as YAML scalars), and the result is
validated into the frozen dataclasses below. Every key is remembered with the
file (or ``--set``) that last set it, so an unknown key, a wrong type or a
value outside the key's declared range or choices fails with one line naming
both::

    conf/local.yaml: unknown key 'spark.shufle_partitions'
    --set: 'sessionize.gap_minutes' expects float, got str 'soon'
    --set: 'train.num_proc' must be >= 1, got 0

Each key is declared with :func:`shopseq.features.params.setting` (default, meaning,
valid values); :func:`reference_markdown` renders them as
``docs/configuration.md`` (``shopseq config --reference``), and ``shopseq
config`` prints the validated config of a layer stack without starting Spark.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import importlib.resources
import inspect
import os
import re
import shutil
import sys
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import yaml

# The features layer's parameter objects and the way keys are declared live with it (imports point down only); re-exported here.
from shopseq.features.params import (  # noqa: F401
    ISO_TIME,
    NAME,
    NON_EMPTY,
    Check,
    ConfigError,
    FeaturesConfig,
    GenerateConfig,
    IngestConfig,
    SessionizeConfig,
    SourceConfig,
    Validated,
    above,
    at_least,
    choices,
    each,
    matching,
    problem,
    setting,
    type_hints,
    within,
)

ENVIRONMENTS = ("local", "cluster", "databricks")


def _artifact_location(value: str) -> bool:
    """A non-empty local path, or a URI whose fsspec filesystem is installed (:func:`shopseq.training.storage.check_location`)."""
    from shopseq.training.storage import check_location

    return bool(value.strip()) and check_location(value) is None


ARTIFACT_LOCATION = Check("a non-empty path, or a URI whose fsspec filesystem is installed (s3:// needs s3fs, gs:// gcsfs, abfs:// adlfs)", _artifact_location)
LOSS_TASKS = ("next_item", "next_action", "purchase", "churn")


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class AppConfig(Validated):
    """Where data lives and how much the jobs log."""

    SECTION: ClassVar[str] = "app"

    data_root: str = setting(
        "shopseq-data", "root for path-addressed tables (`<root>/tables/<name>`), raw landing files (`<root>/raw`), benchmark work folders and, unless `app.artifact_root` is set, the artifacts (schema artifact, checkpoints, reports, MLflow runs)", NON_EMPTY)
    artifact_root: str | None = setting(
        None, "folder or URI (`s3://bucket/prefix`, `gs://`, `abfs://`, `file://`) of the artifacts the driver and the training ranks exchange: the gold schema artifact (`<root>/gold/schema.json`), checkpoints (`<root>/checkpoints`), reports (`<root>/reports`) and the default MLflow file store (`<root>/mlruns`, local roots only); null = `app.data_root`. On a cluster: a URI every node reaches (credentials from the standard environment, e.g. `AWS_*`: docs/operations.md)",
        ARTIFACT_LOCATION)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = setting(
        "INFO", "log level of the `shopseq`, `jobs`, `features` and `training` loggers (rank 0's progress lines too)")


@dataclass(frozen=True)
class SparkConfig(Validated):
    """The Spark session (``jobs/spark.py``): an active session is always reused, else one is built.

    Every session, built or reused, gets the runtime SQL settings: UTC session
    time zone, ``TIMESTAMP_MICROS`` Parquet timestamps,
    ``spark.sql.shuffle.partitions`` from ``shuffle_partitions`` and every
    runtime-modifiable ``spark.sql.*`` entry of ``spark.conf``. A session built
    with ``master`` set (local mode) also gets the local settings, most of
    which only apply when a session starts: the Delta JARs, ``driver_memory``,
    UI off, UTC JVM time zone, Arrow transfers, and ``PYSPARK_PYTHON`` set to
    the running interpreter unless it or ``spark.pyspark.python`` is set. With
    ``master: null`` (spark-submit, clusters, Databricks) the launcher provides
    master, JVM settings and the workers' Python.
    """

    SECTION: ClassVar[str] = "spark"

    master: str | None = setting(
        "local[2]", "local mode master; null = take master and JVM settings from `spark-submit`/the cluster", NON_EMPTY)
    app_name: str = setting("shopseq", "Spark application name of a session built here", NON_EMPTY)
    shuffle_partitions: int = setting(4, "`spark.sql.shuffle.partitions`, set on every session (built or reused)", at_least(1))
    driver_memory: str = setting(
        "4g", "driver memory of a local-mode session (`spark.driver.memory`)",
        matching(r"[0-9]+[kKmMgGtT]?", "a JVM memory size such as 512m or 4g"))
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF", "TRACE"] = setting(
        "WARN", "Spark's own log level (of a session built here)")
    conf: dict[str, str] = setting(
        {}, "any extra Spark conf, applied last: all of it when a session is built, the runtime `spark.sql.*` entries also to a reused one")


@dataclass(frozen=True)
class TablesConfig(Validated):
    """Where each logical table lives (``jobs/tables.py``).

    Every table is Delta through delta-spark (one engine locally, on clusters
    and on Databricks); ``bronze_events`` and ``silver_events`` are created
    with Change Data Feed on, ``bronze_events`` with NOT NULL columns and the
    CHECK constraints of ``features/schema.py`` (``EVENT_CONSTRAINTS``).
    """

    SECTION: ClassVar[str] = "tables"

    root: str | None = setting(None, "folder or URI holding path-addressed tables; null = `<app.data_root>/tables`", NON_EMPTY)
    catalog: str | None = setting(None, "with `schema`: tables are `catalog.schema.<name>` (Unity Catalog)", NAME)
    schema: str | None = setting(None, "with `catalog`: the schema of catalog-named tables", NAME)
    locations: dict[str, str] = setting({}, "per-table override: table name -> a path/URI or a three-part catalog name")
    optimize: bool = setting(
        True, "after sessionize writes them: `OPTIMIZE silver_events` and `sessions` `ZORDER BY (user_id)` (gold is not compacted: its files are the training ranks' shards)")
    max_file_mb: int = setting(128, "OPTIMIZE's target file size", at_least(1))


@dataclass(frozen=True)
class TrainConfig(Validated):
    """The sequence model and its distributed training (``training/loop.py``, ``jobs/stages/train.py``).

    Besides each key's own range: the transformer needs ``heads`` to divide
    ``dim``, and ``repeat: mixture`` needs the full softmax
    (``num_negatives: 0``).
    """

    SECTION: ClassVar[str] = "train"

    encoder: Literal["transformer", "gru"] = setting("transformer", "`transformer` (SASRec-style, causal) or `gru` (GRU4Rec-style)")
    dim: int = setting(64, "embedding and hidden size", at_least(1))
    layers: int = setting(2, "encoder layers", at_least(1))
    heads: int = setting(2, "attention heads (transformer)", at_least(1))
    dropout: float = setting(0.1, "dropout of the encoder", within(0, 1, open_high=True))
    batch_size: int = setting(256, "per rank; the global batch is `batch_size` x `num_proc`", at_least(1))
    epochs: int = setting(8, "training epochs (`--epochs`)", at_least(1))
    lr: float = setting(0.002, "peak learning rate, per rank: scaled by the number of ranks", above(0))
    weight_decay: float = setting(0.0, "AdamW weight decay", at_least(0))
    wide_lr_scale: float = setting(10.0, "learning rate of the wide (linear) purchase/churn parts relative to `lr`", at_least(0))
    lr_schedule: Literal["cosine", "constant"] = setting("cosine", "`cosine`: per step from the peak to 0 at the last epoch's end; `constant`")
    loss_weights: dict[str, float] = setting(
        {"next_item": 1.0, "next_action": 1.0, "purchase": 1.0, "churn": 2.0},
        "weight of each task's loss (a task left out weighs 0); churn: rare positives (under 1% of cutoffs) need the extra weight",
        Check(f"keys among {', '.join(LOSS_TASKS)}, each >= 0", lambda v: set(v) <= set(LOSS_TASKS) and all(w >= 0 for w in v.values())),
    )
    num_negatives: int = setting(0, "0: full softmax over items; > 0: sampled softmax with log-Q correction", at_least(0))
    repeat: Literal["none", "recency", "recency_type", "mixture"] = setting(
        "mixture", "re-consumption of the window's own items: `mixture` (a gate mixes a learned recency x event-type distribution over the window with the catalogue softmax), `recency_type` / `recency` (an additive bias) or `none`")
    repeat_lr_scale: float = setting(10.0, "the repeat part's learning rate relative to `lr`", at_least(0))
    embedding_init_std: float | None = setting(0.02, "embedding tables start N(0, std); null: PyTorch's N(0, 1)", above(0))
    next_item_positions: Literal["all", "last"] = setting("all", "`all`: every window position learns its next item; `last`: only the row's last")
    launcher: Literal["spark", "torch_distributor", "horovodrun", "local"] = setting(
        "spark", "`spark` (`horovod.spark.run`), `torch_distributor` (pyspark's `TorchDistributor`: `torch.distributed` ranks on executors, gloo on CPU, NCCL on GPU; Databricks Runtime 16+ ML), `horovodrun` or `local` (one process, no Horovod) (`--launcher`)")
    num_proc: int = setting(2, "ranks (`--num-proc`); `features.train_ranks: null` (the default) follows it, so gold has files for each rank", at_least(1))
    amp: bool = setting(False, "mixed precision (fp16 + GradScaler on CUDA, bf16 autocast on CPU)")
    patience: int = setting(3, "early stopping: epochs without a validation NDCG@10 gain", at_least(1))
    seed: int = setting(7, "seed of initialisation and shuffling")
    resume: bool = setting(True, "continue from `<checkpoint_dir>/last.pt` when present (`shopseq train --fresh` ignores it)")
    deterministic: bool = setting(False, "bit-reproducible (single-threaded reading and kernels): tests")
    workers: int = setting(2, "Petastorm reader threads per rank", at_least(1))
    max_steps_per_epoch: int | None = setting(None, "quick mode: cap on the steps of an epoch; null = every batch", at_least(1))
    rank_timeout_s: int = setting(
        120, "seconds a rank waits for an unresponsive peer (gloo's timeout) before the job stops; a rank whose process dies is noticed at once", at_least(1))
    nics: list[str] | None = setting(
        None, "`spark` launcher: the network interfaces Horovod's ranks talk over (e.g. `[eth0]`); null: Horovod probes every interface the tasks share", each(NON_EMPTY, non_empty=True))
    start_timeout_s: int = setting(300, "`spark` launcher: seconds Horovod waits for its Spark tasks to start and register before the job fails", at_least(1))
    checkpoint_dir: str | None = setting(None, "folder or URI of the checkpoints; null = `<app.artifact_root>/checkpoints` (default `<app.data_root>/checkpoints`)", NON_EMPTY)
    mlflow_tracking_uri: str | None = setting(
        None, "a tracking server (`http://host:5000`), `databricks` or `file:/path`; null = `file:<app.artifact_root>/mlruns` (`<app.data_root>/mlruns` when the artifact root is object storage; `databricks` on Databricks). Ranks on executors log to it too: on a cluster, use a server", NON_EMPTY)
    experiment: str = setting("shopseq", "MLflow experiment name", NON_EMPTY)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder == "transformer" and self.dim % self.heads:
            raise ConfigError(f"train.heads: must divide train.dim ({self.dim}) for the transformer encoder, got {self.heads}")
        if self.repeat == "mixture" and self.num_negatives > 0:
            raise ConfigError("train.repeat: mixture needs the full softmax (train.num_negatives: 0); use recency_type with a sampled softmax")


@dataclass(frozen=True)
class EvaluateConfig(Validated):
    """``shopseq evaluate`` (``jobs/stages/evaluate.py``): the model against baselines on a gold split."""

    SECTION: ClassVar[str] = "evaluate"

    split: Literal["test", "val"] = setting("test", "the gold split scored (`gold_<split>`; `--split`); baselines are always fitted on `gold_train`")
    ks: list[int] = setting(
        [5, 10, 20], "cut-offs of HR@K (= Recall@K), NDCG@K and MRR@K; the summary compares NDCG@10 (the largest K when 10 is not listed)",
        each(at_least(1), non_empty=True))
    calibration_bins: int = setting(10, "equal-width probability bins of the expected calibration error and the reliability plots", at_least(1))
    checkpoint: str = setting(
        "best", "`best` or `last` (in `train.checkpoint_dir`), or a path to a `.pt` checkpoint: a relative path is looked up in the checkpoint folder first, then the working directory (`--checkpoint`)", NON_EMPTY)
    report_dir: str | None = setting(
        None, "folder or URI of `report.md`, `metrics.json` and the PNG plots; null: `<app.artifact_root>/reports/<evaluation id>` (a set folder is reused by every evaluation)", NON_EMPTY)
    batch_size: int = setting(1024, "rows scored at a time: the forward pass and the full-catalogue ranking (a batch holds `batch_size` x items scores)", at_least(1))
    bootstrap_samples: int = setting(
        1000, "resamples of the users (with replacement, all of a user's rows together) behind the percentile interval of every metric and the paired interval of model minus each baseline; the summary says `beats` only when that interval lies above zero for every baseline. 0: no intervals, the point values decide", at_least(0))
    confidence: float = setting(0.95, "level of the bootstrap intervals (the (1-c)/2 and (1+c)/2 percentiles)", within(0, 1, open_low=True, open_high=True))
    seed: int = setting(0, "seed of the resampling and of the logistic-regression and LightGBM baselines: the same seed gives the same intervals")


@dataclass(frozen=True)
class PredictConfig(Validated):
    """``shopseq predict`` (``jobs/stages/predict.py``): each user's latest window scored into Delta.

    Windows are built with the features config, vocabulary version and price
    statistics recorded in the checkpoint's schema artifact, not with the
    current ``features.*`` (a warning names any key that differs).
    """

    SECTION: ClassVar[str] = "predict"

    as_of: str | None = setting(
        None, "UTC time the windows are cut at: each user's window ends at their last event strictly before it (`--as-of`). null: 1 microsecond after the latest `silver_events` event, i.e. every event counts", ISO_TIME)
    top_k: int = setting(20, "next items listed per user (`top_items`, `top_scores`); fewer only when the vocabulary has fewer known items", at_least(1))
    batch_size: int = setting(1024, "rows per no-grad forward pass inside `mapInPandas` (and in `shopseq bench predict`'s in-process reference)", at_least(1))
    checkpoint: str = setting("best", "`best` or `last` (in `train.checkpoint_dir`), or a path to a `.pt` checkpoint (`--checkpoint`)", NON_EMPTY)
    model_version: str | None = setting(
        None, "the `model_version` column and partition value; null: `<MLflow run id>-e<epoch>` from the checkpoint, else `sha256-<16 hex of the checkpoint file>`",
        matching(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", "letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit)"))


@dataclass(frozen=True)
class Config:
    """The whole validated config: one section per stage or concern, plus the environment it was loaded for."""

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
    env: Literal["local", "cluster", "databricks"] = field(
        default="local", metadata={"doc": "the environment the config was loaded for: set by `--env` (a YAML value is replaced)"})

    def __post_init__(self) -> None:
        if self.features.train_ranks is None:  # null: one set of gold shards per training rank
            object.__setattr__(self, "features", dataclasses.replace(self.features, train_ranks=self.train.num_proc))


# --------------------------------------------------------------------------- loading


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
    if "=" not in item:
        raise ConfigError(f"--set: expected key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError):  # not YAML (or a date YAML cannot construct, 2024-13-01): the text itself
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


# --------------------------------------------------------------------------- the key reference (docs/configuration.md)


@dataclass(frozen=True)
class KeyDoc:
    """One row of the reference: a leaf key and what its declaration says, rendered as Markdown cells."""

    key: str
    type: str
    default: str
    valid: str
    meaning: str


def sections() -> list[tuple[str, type]]:
    """``(name, dataclass)`` of every config section, in :class:`Config` order."""
    hints = type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])]


def key_docs() -> list[KeyDoc]:
    """Every leaf key of :class:`Config` (``section.key``, and the top-level ``env``) with its type, default, valid values and meaning."""
    rows = []
    for name, cls in sections():
        rows += [_key_doc(f"{name}.{f.name}", f, type_hints(cls)[f.name]) for f in dataclasses.fields(cls)]
    rows += [_key_doc(f.name, f, type_hints(Config)[f.name]) for f in dataclasses.fields(Config) if not dataclasses.is_dataclass(type_hints(Config)[f.name])]
    return rows


def default_of(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (its factory called)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


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
(`jobs/config.py`, `features/params.py`) by
`shopseq config --reference > docs/configuration.md`; do not edit by hand
(`tests/test_docs.py` checks that this page equals the rendering). How the
layers merge (base -> environment -> `--conf-file` -> `--set`), the dataset
layers and the protocol presets: [conf/README.md](../conf/README.md).

A value of the wrong type or outside its valid values stops every stage at
start-up with one line naming the key and the layer that set it (exit code 2),
e.g. `--set: 'train.num_proc' must be >= 1, got 0`; `shopseq config` checks a
layer stack without starting Spark.
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


# --------------------------------------------------------------------------- command line


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: ``(default: X)``; ``none`` for None or an empty list, ``off`` for a flag.

    A help text that already says ``default`` is left as written (it explains
    a default that depends on config, e.g. ``(default: train.epochs)``).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.nargs == 0 and isinstance(action.const, bool):
            shown = "off"  # store_true / store_false: the flag is not given
        elif action.default is None or action.default == []:
            shown = "none"
        else:
            shown = str(action.default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose the config layers (every stage and ``shopseq config`` take them)."""
    parser.add_argument("--env", default="local", choices=list(ENVIRONMENTS), help="config environment layered over conf/base.yaml")
    parser.add_argument("--conf-dir", default=None, help="folder with base.yaml and <env>.yaml (default: $SHOPSEQ_CONF_DIR, else ./conf, else the conf/ inside the installed wheel or --py-files zip)")
    parser.add_argument(
        "--conf-file", dest="conf_files", action="append", default=[], metavar="FILE",
        help="extra YAML layer merged after <env>.yaml and before --set, e.g. conf/datasets/taobao.yaml (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set sessionize.gap_minutes=20; keys: docs/configuration.md (repeatable)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """``shopseq config``: validate a layer stack and print it, or print the key reference."""
    parser = argparse.ArgumentParser(
        prog="shopseq config",
        description="Load and validate the config layers without starting Spark; print the effective config as YAML (or the key reference).",
        formatter_class=DefaultsHelpFormatter,
    )
    add_config_flags(parser)
    parser.add_argument("--reference", action="store_true", help="print the key reference rendered from the typed config (docs/configuration.md) instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``shopseq config``: exit 0 with the config (or reference) on stdout, 2 with one line naming a bad key."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.reference:
        sys.stdout.write(reference_markdown())
        return 0
    try:
        cfg = load_config(args.env, args.conf_dir, args.overrides, args.conf_files)
    except ConfigError as exc:
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2
    sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
