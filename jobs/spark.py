"""The one Spark-session factory.

On Databricks and under ``spark-submit`` a session (or its conf) already exists
and is reused untouched. In local mode a session is built from config with the
settings the tables and tests rely on: Delta Lake (the JARs ``make setup``
fetched into :func:`delta_jars_dir`, the SQL extension and the Delta catalog),
UTC, TIMESTAMP_MICROS Parquet timestamps, few shuffle partitions, UI off, quiet
logs, and Python workers on the running interpreter.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from jobs.config import ConfigError, SparkConfig

log = logging.getLogger(__name__)

LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
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


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the active session, or build one from ``cfg``.

    ``cfg.master`` set (local mode): a fresh local session with
    :data:`LOCAL_DEFAULTS`. ``cfg.master`` unset (spark-submit, clusters):
    ``getOrCreate`` takes master and conf from the launcher; only the
    UTC/timestamp settings that tables depend on are applied on top.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        log.debug("reusing the active Spark session")
        return active
    # Python workers must run this interpreter, or they start a Python without our packages.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    settings = dict(LOCAL_DEFAULTS) if cfg.master else {k: LOCAL_DEFAULTS[k] for k in ("spark.sql.session.timeZone", "spark.sql.parquet.outputTimestampType")}
    settings.update(DELTA_CONF)  # under spark-submit the JARs come from --packages io.delta:delta-spark_2.12:<version>
    if cfg.master:
        builder = builder.master(cfg.master)
        settings["spark.jars"] = ",".join(delta_jars())
        settings["spark.driver.memory"] = cfg.driver_memory
        settings["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions)
    settings.update(cfg.conf)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    log.info("Spark %s session started (master=%s)", spark.version, spark.sparkContext.master)
    return spark
