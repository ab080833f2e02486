"""The catalog: the one place that names every table and artifact of a data root.

Everything shopseq writes lives under ``app.data_root`` unless config moves it:

=========================  ==============================================  ==============================
what                       where (default)                                 moved by
=========================  ==============================================  ==============================
tables (:data:`TABLES`)    ``<data_root>/tables/<name>``                   ``tables.root``,
                                                                           ``tables.catalog`` +
                                                                           ``tables.schema`` (Unity
                                                                           Catalog), ``tables.locations``
gold schema artifact       ``<data_root>/gold/schema.json``
checkpoints                ``<data_root>/checkpoints`` (absolute)          ``train.checkpoint_dir``
earlier training runs      ``<checkpoints>/runs/<run id>``
MLflow store               ``file:<data_root>/mlruns`` (absolute;          ``train.mlflow_tracking_uri``
                           ``databricks`` on Databricks)
evaluation reports         ``<data_root>/reports/<evaluation id>``         ``evaluate.report_dir``
                           (absolute)
session plot               ``<data_root>/reports/sessions.png``
benchmark reports          ``<data_root>/reports/bench_<name>.{json,md}``
generated landing folder   ``<data_root>/raw/generated`` (``events/``,     ``shopseq generate --output``,
                           ``users/``, ``_shopseq_generate.json``)         ``source.path`` (ingest)
benchmark work folders     ``<data_root>/bench/<name>/...``
=========================  ==============================================  ==============================

Tables are resolved by :func:`jobs.tables.table_ref` (a path, or a
``catalog.schema.name`` in Unity Catalog); the catalog delegates to it.
Jobs ask a :class:`Catalog` (``catalog(cfg)``) for a location instead of
joining paths onto the data root themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from jobs.config import Config, TablesConfig
from jobs.tables import TableRef, table_ref

# --------------------------------------------------------------------------- tables, in pipeline order

BRONZE_EVENTS = "bronze_events"  # ingest: accepted raw events (insert-only MERGE)
QUARANTINE = "quarantine"  # ingest: rejected rows with their reason
RUN_METRICS = "run_metrics"  # ingest: one row per ingest run
SILVER_EVENTS = "silver_events"  # sessionize: cleaned, sessionized events
SESSIONS = "sessions"  # sessionize: one row per session
VOCAB = "vocab"  # features: token -> index per kind, with vocab_version
GOLD_TRAIN, GOLD_VAL, GOLD_TEST = "gold_train", "gold_val", "gold_test"  # features: the examples per split
METRICS = "metrics"  # evaluate: model and baselines per task, metric, k
PREDICTIONS = "predictions"  # predict: partitioned by (as_of_key, model_version)
PREDICTIONS_LATEST = "predictions_latest"  # predict: each user's newest prediction

GOLD: dict[str, str] = {"train": GOLD_TRAIN, "val": GOLD_VAL, "test": GOLD_TEST}
TABLES: tuple[str, ...] = (
    BRONZE_EVENTS, QUARANTINE, RUN_METRICS, SILVER_EVENTS, SESSIONS, VOCAB,
    GOLD_TRAIN, GOLD_VAL, GOLD_TEST, METRICS, PREDICTIONS, PREDICTIONS_LATEST,
)  # fmt: skip

GENERATE_MARKER = "_shopseq_generate.json"  # in the landing folder: the generate config it was written with
# A benchmark's own entries directly under its (bench) data root: ingest manifest, scratch copies, peer inputs.
SCRATCH: frozenset[str] = frozenset({"bronze.json", "gold_copy", "input.json", "peer", "warmup", "work"})


@dataclass(frozen=True)
class Catalog:
    """Every location of one data root, with the config keys that move some of them.

    ``Catalog("shopseq-data")`` gives the defaults; :func:`catalog` builds one
    from a :class:`~jobs.config.Config` (``tables.*``, ``train.checkpoint_dir``,
    ``train.mlflow_tracking_uri``, ``evaluate.report_dir``).
    """

    data_root: str
    tables: TablesConfig = field(default_factory=TablesConfig)
    checkpoint_dir: str | None = None  # train.checkpoint_dir
    mlflow_tracking_uri: str | None = None  # train.mlflow_tracking_uri
    report_dir: str | None = None  # evaluate.report_dir

    # ------------------------------------------------------------------ the root
    @property
    def location(self) -> str:
        """The data root as shown to people: absolute when local, unchanged when a URI."""
        return self.data_root if "://" in self.data_root else os.path.abspath(self.data_root)

    def _under(self, *parts: str) -> str:
        return os.path.join(self.data_root, *parts)

    # ------------------------------------------------------------------ tables
    def table(self, name: str) -> TableRef:
        """Where table ``name`` lives (:func:`jobs.tables.table_ref`: a path or a Unity Catalog name)."""
        return table_ref(self.tables, name, self.data_root)

    # ------------------------------------------------------------------ features
    @property
    def schema_artifact(self) -> str:
        """The gold schema artifact written by ``shopseq features``: ``<data_root>/gold/schema.json``."""
        return self._under("gold", "schema.json")

    @property
    def gold_dir(self) -> str:
        """The folder of the schema artifact: ``<data_root>/gold``."""
        return os.path.dirname(self.schema_artifact)

    # ------------------------------------------------------------------ training
    @property
    def checkpoints(self) -> str:
        """``train.checkpoint_dir``, else ``<data_root>/checkpoints``; absolute."""
        return os.path.abspath(self.checkpoint_dir or self._under("checkpoints"))

    def checkpoint(self, name: str) -> str:
        """``<checkpoints>/<name>.pt`` for ``best``, ``last`` or ``epoch-NNNN``."""
        return os.path.join(self.checkpoints, f"{name}.pt")

    def earlier_run(self, run_key: str) -> str:
        """Where an earlier training run's checkpoints are kept: ``<checkpoints>/runs/<run key>``."""
        return os.path.join(self.checkpoints, "runs", run_key)

    @property
    def mlruns(self) -> str:
        """The local MLflow file store: ``<data_root>/mlruns``, absolute."""
        return os.path.abspath(self._under("mlruns"))

    @property
    def mlflow_uri(self) -> str:
        """``train.mlflow_tracking_uri``, else ``databricks`` on Databricks, else ``file:<mlruns>``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if "DATABRICKS_RUNTIME_VERSION" in os.environ:
            return "databricks"
        return "file:" + self.mlruns

    # ------------------------------------------------------------------ reports
    @property
    def reports(self) -> str:
        """``<data_root>/reports``: benchmark reports and the session plot."""
        return self._under("reports")

    def report(self, evaluation_id: str) -> str:
        """An evaluation's report folder: ``evaluate.report_dir``, else ``<reports>/<evaluation id>``; absolute."""
        return os.path.abspath(self.report_dir or os.path.join(self.reports, evaluation_id))

    @property
    def sessions_plot(self) -> str:
        """``<reports>/sessions.png`` (``shopseq sessionize``)."""
        return os.path.join(self.reports, "sessions.png")

    # ------------------------------------------------------------------ landing
    @property
    def landing(self) -> str:
        """The landing folder of generated data: ``<data_root>/raw/generated``."""
        return self._under("raw", "generated")

    @property
    def generated_events(self) -> str:
        """``<landing>/events``: what ``source.format: generated`` ingests by default."""
        return os.path.join(self.landing, "events")

    @property
    def generate_marker(self) -> str:
        """``<landing>/_shopseq_generate.json``: the generate config the landing folder was written with."""
        return os.path.join(self.landing, GENERATE_MARKER)

    # ------------------------------------------------------------------ benchmarks
    def bench(self, *parts: str) -> str:
        """A benchmark's work folder: ``<data_root>/bench/<parts...>`` (e.g. ``bench("features", "1000000")``)."""
        if not parts:
            raise ValueError("bench: name the benchmark's folder")
        return self._under("bench", *parts)

    def scratch(self, name: str) -> str:
        """One of a benchmark's own entries (:data:`SCRATCH`) directly under this (bench) data root."""
        if name not in SCRATCH:
            raise ValueError(f"scratch: unknown entry {name!r}; the catalog names {', '.join(sorted(SCRATCH))}")
        return self._under(name)


def catalog(cfg: Config) -> Catalog:
    """The :class:`Catalog` of a config: its data root and the keys that move tables, checkpoints, MLflow and reports."""
    return Catalog(
        data_root=cfg.app.data_root,
        tables=cfg.tables,
        checkpoint_dir=cfg.train.checkpoint_dir,
        mlflow_tracking_uri=cfg.train.mlflow_tracking_uri,
        report_dir=cfg.evaluate.report_dir,
    )
