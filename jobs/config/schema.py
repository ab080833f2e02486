"""The jobs layer's config sections and :class:`Config`, the whole validated config.

Each key is declared with :func:`shopseq.features.settings.setting` (default,
meaning, valid values), like the features layer's sections
(:mod:`shopseq.features.params`) that :class:`Config` also holds. Nothing here
reads a file: :mod:`shopseq.jobs.config.loader` builds a :class:`Config`
from the YAML layers, :mod:`shopseq.jobs.config.reference` renders the
declarations as ``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from shopseq.features.params import FeaturesConfig, GenerateConfig, IngestConfig, SessionizeConfig, SourceConfig
from shopseq.features.settings import (
    ISO_TIME,
    NAME,
    NON_EMPTY,
    Check,
    ConfigError,
    Validated,
    above,
    at_least,
    each,
    matching,
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


def sections() -> list[tuple[str, type]]:
    """``(name, dataclass)`` of every config section, in :class:`Config` order."""
    hints = type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])]
