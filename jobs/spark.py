"""The one Spark-session factory.

On Databricks and under ``spark-submit`` a session (or its conf) already exists
and is reused untouched. In local mode a session is built from config with the
settings the tables and tests rely on: UTC, TIMESTAMP_MICROS Parquet timestamps
(so Delta file statistics exist for timestamps), few shuffle partitions, UI
off, quiet logs, and Python workers on the running interpreter.
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from jobs.config import SparkConfig

log = logging.getLogger(__name__)

LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


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
    if cfg.master:
        builder = builder.master(cfg.master)
        settings["spark.driver.memory"] = cfg.driver_memory
        settings["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions)
    settings.update(cfg.conf)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    log.info("Spark %s session started (master=%s)", spark.version, spark.sparkContext.master)
    return spark
