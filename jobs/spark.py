"""The one Spark-session factory.

On Databricks, under ``spark-submit`` and in tests a session (or its conf)
may already exist: it is reused, and only the runtime SQL settings the tables
rely on are applied to it (UTC, TIMESTAMP_MICROS Parquet timestamps, the
configured shuffle partitions, the runtime ``spark.sql.*`` entries of
``spark.conf``). Otherwise a session is built with those settings, Delta
Lake's SQL extension and catalog, and in local mode (``spark.master`` set)
the JVM-level settings that only apply when a session starts: the Delta JARs
``make setup`` fetched into :func:`delta_jars_dir`, driver memory, UI off,
quiet logs (no Java stack trace of a failed task: :func:`quiet_task_failures`),
and Python workers on the running interpreter unless ``PYSPARK_PYTHON`` or
``spark.pyspark.python`` names one (:func:`python_env`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import sys
from pathlib import Path
from typing import Mapping

from pyspark.sql import SparkSession

from shopseq.jobs.config import ConfigError, SparkConfig

log = logging.getLogger(__name__)

SQL_DEFAULTS: dict[str, str] = {
    # Runtime SQL settings the tables depend on: applied to every session, built or reused.
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}
LOCAL_DEFAULTS: dict[str, str] = {
    # Local mode only: a session built here with spark.master set.
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
}
DELTA_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
DELTA_SCALA = "2.12"  # pyspark 3.5's Scala
# Spark's loggers of a failed task: each prints the task's Java stack trace to stderr (Executor at ERROR,
# TaskSetManager at WARN and ERROR) before the job fails. Quieted by quiet_task_failures (see there).
TASK_FAILURE_LOGGERS = ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager")
QUIET_LOG_LEVELS = ("WARN", "ERROR", "FATAL", "OFF")


def delta_version() -> str:
    """The installed delta-spark Python package's version: the JARs must be the same."""
    try:
        return importlib.metadata.version("delta-spark")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("the delta-spark package is not installed: run `make setup` (or pip install delta-spark==3.2.1)") from None


def delta_jars_dir() -> Path:
    """Where ``make delta-jars`` puts the Delta JARs: ``$SHOPSEQ_DELTA_JARS``, else ``~/.cache/shopseq/jars/delta-<version>``."""
    env = os.environ.get("SHOPSEQ_DELTA_JARS")
    return Path(env) if env else Path.home() / ".cache" / "shopseq" / "jars" / f"delta-{delta_version()}"


def delta_jars() -> list[str]:
    """The delta-spark and delta-storage JARs for local Spark, or one line saying how to fetch them."""
    folder, version = delta_jars_dir(), delta_version()
    jars = [folder / f"delta-spark_{DELTA_SCALA}-{version}.jar", folder / f"delta-storage-{version}.jar"]
    missing = [j.name for j in jars if not j.is_file()]
    if missing:
        raise ConfigError(f"Delta Lake JARs missing in {folder} ({', '.join(missing)}): run `make delta-jars` (mvn fetches them from Maven Central)")
    return [str(j) for j in jars]


def sql_settings(cfg: SparkConfig) -> dict[str, str]:
    """The runtime SQL settings every session gets, built or reused: UTC, TIMESTAMP_MICROS, shuffle partitions, ``spark.conf``'s ``spark.sql.*`` entries."""
    settings = {**SQL_DEFAULTS, "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions)}
    settings.update({k: v for k, v in cfg.conf.items() if k.startswith("spark.sql.")})
    return settings


def build_settings(cfg: SparkConfig, jars: list[str] | None = None) -> dict[str, str]:
    """Everything a new session is built with: :func:`sql_settings`, Delta's SQL conf, in local mode ``LOCAL_DEFAULTS``, ``jars`` and driver memory; ``spark.conf`` last."""
    settings = {**sql_settings(cfg), **DELTA_CONF}  # under spark-submit the JARs come from --packages io.delta:delta-spark_2.12:<version>
    if cfg.master:
        settings.update(LOCAL_DEFAULTS)
        settings["spark.jars"] = ",".join(jars or [])
        settings["spark.driver.memory"] = cfg.driver_memory
    settings.update(cfg.conf)
    return settings


def apply_sql_settings(spark: SparkSession, cfg: SparkConfig) -> dict[str, str]:
    """Set :func:`sql_settings` on a running session where they differ; returns what changed.

    Only runtime-modifiable confs can change on a running session: a static
    one in ``spark.conf`` (``spark.sql.warehouse.dir``, ``spark.sql.extensions``)
    is left as the session was built, with a debug line.
    """
    changed = {}
    for key, value in sql_settings(cfg).items():
        if not spark.conf.isModifiable(key):
            log.debug("%s is fixed when a session starts: left at %s", key, spark.conf.get(key, None))
            continue
        if spark.conf.get(key, None) != value:
            spark.conf.set(key, value)
            changed[key] = value
    return changed


def python_env(master: str | None, conf: Mapping[str, str], environ: Mapping[str, str], executable: str) -> dict[str, str]:
    """The ``PYSPARK_PYTHON`` / ``PYSPARK_DRIVER_PYTHON`` values to set before a session is built (only those that change).

    PySpark starts its Python workers with ``PYSPARK_PYTHON`` (else ``python3``).
    ``spark.pyspark.python`` in ``spark.conf`` wins, as in Spark, and is copied
    there. Else a set ``PYSPARK_PYTHON`` is kept: spark-submit puts its
    ``--conf spark.pyspark.python`` there, e.g. ``./environment/bin/python`` of
    an environment shipped with ``--archives``. Else only in local mode
    (``master`` ``local...``) do workers run ``executable``, this driver's
    interpreter: on a cluster that path need not exist on the nodes.
    ``PYSPARK_DRIVER_PYTHON`` likewise: kept when set, ``executable`` in local mode.
    """
    local = bool(master) and master.startswith("local")
    out = {}
    if conf.get("spark.pyspark.python"):
        out["PYSPARK_PYTHON"] = conf["spark.pyspark.python"]
    elif local and not environ.get("PYSPARK_PYTHON"):
        out["PYSPARK_PYTHON"] = executable
    if local and not environ.get("PYSPARK_DRIVER_PYTHON"):
        out["PYSPARK_DRIVER_PYTHON"] = executable
    return {k: v for k, v in out.items() if environ.get(k) != v}


def quiets_task_failures(master: str | None, log_level: str) -> bool:
    """Whether a session built with ``master`` and ``spark.log_level`` gets :func:`quiet_task_failures`.

    Only in local mode without task retries (``local``, ``local[n]``,
    ``local[*]``: one attempt per task), where a failed task always fails its
    job, and only when Spark's log level is WARN or quieter.
    """
    return bool(master) and re.fullmatch(r"local(\[(\d+|\*)\])?", master) is not None and log_level.upper() in QUIET_LOG_LEVELS


def quiet_task_failures(spark: SparkSession) -> None:
    """Set Spark's task-failure loggers (:data:`TASK_FAILURE_LOGGERS`) to FATAL, so a failed task prints no Java stack trace.

    What the user would otherwise see twice is left once: in local mode
    without retries a failed task fails its job, and the job's exception (its
    message holds the task's error and Java stack trace) reaches the stage,
    which says it in one line: a known input error (a truncated ``.gz``) as
    that line, exit 2; anything unexpected as one line, exit 1, with the whole
    traceback, Java's included, logged at DEBUG (``app.log_level=DEBUG``).
    Spark's other loggers keep ``spark.log_level``.
    """
    jvm = spark.sparkContext._jvm  # noqa: SLF001 - log4j 2's Configurator, through py4j
    fatal = jvm.org.apache.logging.log4j.Level.FATAL
    for name in TASK_FAILURE_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, fatal)


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the active session with the runtime SQL settings of ``cfg`` applied, or build one from ``cfg``.

    ``cfg.master`` set (local mode): a fresh local session with
    :data:`LOCAL_DEFAULTS`, the Delta JARs and driver memory. ``cfg.master``
    unset (spark-submit, clusters): ``getOrCreate`` takes master and JVM
    conf from the launcher. Either way the SQL settings (:func:`sql_settings`)
    are set after ``getOrCreate`` too, since an existing context ignores
    builder options it was not started with.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        changed = apply_sql_settings(active, cfg)
        log.debug("reusing the active Spark session (set %s)", changed or "nothing")
        return active
    python = python_env(cfg.master, cfg.conf, os.environ, sys.executable)
    os.environ.update(python)
    log.debug("Python workers: %s (set here: %s)", os.environ.get("PYSPARK_PYTHON", "python3, the launcher's default"), python or "nothing")
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    for key, value in build_settings(cfg, delta_jars() if cfg.master else None).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    apply_sql_settings(spark, cfg)
    spark.sparkContext.setLogLevel(cfg.log_level)
    if quiets_task_failures(cfg.master, cfg.log_level):
        quiet_task_failures(spark)
    log.info("Spark %s session started (master=%s)", spark.version, spark.sparkContext.master)
    return spark
