"""The catalog: the one place that names every table and artifact of a data root.

Everything shopseq writes lives under ``app.data_root`` unless config moves it.
The artifacts the driver and the training ranks exchange live under the
*artifact root*: ``app.artifact_root`` when set (a folder, or a URI such as
``s3://bucket/prefix`` that every process can reach), else the data root.
They are read and written through :mod:`shopseq.training.storage` (local folders and
object storage alike):

=========================  ==============================================  ==============================
what                       where (default)                                 moved by
=========================  ==============================================  ==============================
tables (:data:`TABLES`)    ``<data_root>/tables/<name>``                   ``tables.root``,
                                                                           ``tables.catalog`` +
                                                                           ``tables.schema`` (Unity
                                                                           Catalog), ``tables.locations``
gold schema artifact       ``<artifacts>/gold/schema.json``                ``app.artifact_root``
checkpoints                ``<artifacts>/checkpoints`` (absolute)          ``train.checkpoint_dir``,
                                                                           ``app.artifact_root``
earlier training runs      ``<checkpoints>/runs/<run id>``
MLflow store               ``file:<artifacts>/mlruns`` (absolute;          ``train.mlflow_tracking_uri``
                           ``databricks`` on Databricks; under the data
                           root when the artifact root is object storage)
evaluation reports         ``<artifacts>/reports/<evaluation id>``         ``evaluate.report_dir``,
                           (absolute)                                      ``app.artifact_root``
session plot               ``<artifacts>/reports/sessions.png``            ``app.artifact_root``
benchmark reports          ``<artifacts>/reports/bench_<name>.{json,md}``  ``app.artifact_root``
generated landing folder   ``<data_root>/raw/generated`` (``events/``,     ``shopseq generate --output``,
                           ``users/``, ``_shopseq_generate.json``)         ``source.path`` (ingest)
benchmark work folders     ``<data_root>/bench/<name>/...``
failure logs               ``<data_root>/logs/<stage>-<UTC time>.log``     (a temporary file when the
                           (a stage that Spark failed: the full trace)     data root is not a writable
                                                                           local folder)
=========================  ==============================================  ==============================

``<artifacts>`` is :attr:`Catalog.artifacts`. A local artifact path keeps the
form it was given (relative stays relative) except where the table says absolute.
Tables are resolved by :func:`shopseq.jobs.tables.table_ref` (a path, or a
``catalog.schema.name`` in Unity Catalog); the catalog delegates to it.
Jobs ask a :class:`Catalog` (``catalog(cfg)``) for a location instead of
joining paths onto the data root themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

from shopseq.jobs.config import Config, TablesConfig
from shopseq.jobs.tables import TableRef, table_ref
from shopseq.training import storage

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
    from a :class:`~shopseq.jobs.config.Config` (``app.artifact_root``, ``tables.*``,
    ``train.checkpoint_dir``, ``train.mlflow_tracking_uri``, ``evaluate.report_dir``).
    """

    data_root: str
    tables: TablesConfig = field(default_factory=TablesConfig)
    artifact_root: str | None = None  # app.artifact_root
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

    # ------------------------------------------------------------------ the artifact root
    @property
    def artifacts(self) -> str:
        """``app.artifact_root``, else the data root: where the schema artifact, checkpoints and reports live."""
        return self.artifact_root or self.data_root

    def _artifact(self, *parts: str) -> str:
        return storage.join(self.artifacts, *parts)

    # ------------------------------------------------------------------ tables
    def table(self, name: str) -> TableRef:
        """Where table ``name`` lives (:func:`shopseq.jobs.tables.table_ref`: a path or a Unity Catalog name)."""
        return table_ref(self.tables, name, self.data_root)

    # ------------------------------------------------------------------ features
    @property
    def schema_artifact(self) -> str:
        """The gold schema artifact written by ``shopseq features``: ``<artifacts>/gold/schema.json``."""
        return storage.join(self.gold_dir, "schema.json")

    @property
    def gold_dir(self) -> str:
        """The folder of the schema artifact: ``<artifacts>/gold``."""
        return self._artifact("gold")

    # ------------------------------------------------------------------ training
    @property
    def checkpoints(self) -> str:
        """``train.checkpoint_dir``, else ``<artifacts>/checkpoints``; absolute when local."""
        return storage.absolute(self.checkpoint_dir or self._artifact("checkpoints"))

    def checkpoint(self, name: str) -> str:
        """``<checkpoints>/<name>.pt`` for ``best``, ``last`` or ``epoch-NNNN``."""
        return storage.join(self.checkpoints, f"{name}.pt")

    def earlier_run(self, run_key: str) -> str:
        """Where an earlier training run's checkpoints are kept: ``<checkpoints>/runs/<run key>``."""
        return storage.join(self.checkpoints, "runs", run_key)

    @property
    def mlruns(self) -> str:
        """The MLflow file store used without a tracking server: ``<artifacts>/mlruns``, absolute.

        MLflow's file store needs a file system: when the artifact root is
        object storage it is ``<data_root>/mlruns`` instead (set
        ``train.mlflow_tracking_uri`` to a tracking server to share runs).
        """
        root = self.artifacts if storage.is_local(self.artifacts) else self.data_root
        return storage.absolute(storage.join(root, "mlruns"))

    @property
    def mlflow_uri(self) -> str:
        """``train.mlflow_tracking_uri``, else ``databricks`` on Databricks, else ``file:<mlruns>``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if "DATABRICKS_RUNTIME_VERSION" in os.environ:
            return "databricks"
        return self.mlruns if storage.is_uri(self.mlruns) else "file:" + self.mlruns

    # ------------------------------------------------------------------ reports
    @property
    def reports(self) -> str:
        """``<artifacts>/reports``: evaluation and benchmark reports and the session plot."""
        return self._artifact("reports")

    def report(self, evaluation_id: str) -> str:
        """An evaluation's report folder: ``evaluate.report_dir``, else ``<reports>/<evaluation id>``; absolute when local."""
        return storage.absolute(self.report_dir or storage.join(self.reports, evaluation_id))

    @property
    def sessions_plot(self) -> str:
        """``<reports>/sessions.png`` (``shopseq sessionize``)."""
        return storage.join(self.reports, "sessions.png")

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

    # ------------------------------------------------------------------ failure logs
    @property
    def logs(self) -> str:
        """``<data_root>/logs``: the full traces of stages that Spark failed (``shopseq <stage>`` prints one line pointing here)."""
        return self._under("logs")

    def failure_log(self, stage: str, at: datetime) -> str:
        """``<logs>/<stage>-<UTC time>.log`` (``sessionize-20240101T120000.000000Z.log``): one failed run's full trace."""
        stamp = at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        return os.path.join(self.logs, f"{stage}-{stamp}.log")


def catalog(cfg: Config) -> Catalog:
    """The :class:`Catalog` of a config: its data and artifact roots and the keys that move tables, checkpoints, MLflow and reports."""
    return Catalog(
        data_root=cfg.app.data_root,
        tables=cfg.tables,
        artifact_root=cfg.app.artifact_root,
        checkpoint_dir=cfg.train.checkpoint_dir,
        mlflow_tracking_uri=cfg.train.mlflow_tracking_uri,
        report_dir=cfg.evaluate.report_dir,
    )
