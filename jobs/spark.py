"""The one Spark-session factory.

On Databricks, under ``spark-submit`` and in tests a session (or its conf)
may already exist: it is reused, and only the runtime SQL settings the tables
rely on are applied to it (UTC, TIMESTAMP_MICROS Parquet timestamps, the
configured shuffle partitions, the runtime ``spark.sql.*`` entries of
``spark.conf``). Otherwise a session is built with those settings, Delta
Lake's SQL extension and catalog, and in local mode (``spark.master`` set)
the JVM-level settings that only apply when a session starts: the Delta JARs
``make setup`` fetched into :func:`delta_jars_dir`, driver memory, UI off,
quiet logs (no Java stack trace of a failed task or aborted write job:
:func:`quiet_task_failures`), and Python workers on the running interpreter
unless ``PYSPARK_PYTHON`` or ``spark.pyspark.python`` names one
(:func:`python_env`).

When Spark fails, :func:`spark_failure` says why in one line (the Java
exception and, for a job aborted by a failed task, the task's reason; or that
the driver JVM died) and :func:`java_traces` gives the Java stack traces for
the log file :func:`shopseq.jobs.common.run_stage` points at.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from py4j.protocol import Py4JError, Py4JJavaError, Py4JNetworkError
from pyspark import SparkContext
from pyspark.errors import PySparkException
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
    # Delta rebuilds a table's snapshot from its log with this many shuffle partitions (default 50, sized for
    # clusters and long logs): on a local machine's small logs 50 tasks per read or commit are pure overhead. A loop of
    # 8 appends + reads + history on local[2] took 33.3 s at 50, 9.4 s at 2 and 7.5 s at 1 (2026-12-07, warm JVM).
    "spark.databricks.delta.snapshotPartitions": "1",
}
DELTA_CONF: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
DELTA_SCALA = "2.12"  # pyspark 3.5's Scala
# Spark's loggers of a failed task: each prints the task's Java stack trace to stderr (Executor at ERROR,
# TaskSetManager at WARN and ERROR) before the job fails. Quieted by quiet_task_failures (see there).
TASK_FAILURE_LOGGERS = ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager")
# The writers of Parquet/Delta files: on an aborted write job each logs "Aborting job" at ERROR with the job's
# whole Java stack trace (about 140 lines), the same exception the stage then reports. They log nothing else
# above INFO. Quieted with the task-failure loggers.
JOB_ABORT_LOGGERS = (
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    "org.apache.spark.sql.delta.files.DeltaFileFormatWriter",
    "org.apache.spark.internal.io.SparkHadoopWriter",
)
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
    """Set Spark's task-failure and write-abort loggers (:data:`TASK_FAILURE_LOGGERS`, :data:`JOB_ABORT_LOGGERS`) to FATAL, so a failed task prints no Java stack trace.

    What the user would otherwise see twice is left once: in local mode
    without retries a failed task fails its job, and the job's exception (its
    message holds the task's error and Java stack trace) reaches the stage,
    which says it in one line: a known input error (a truncated ``.gz``) as
    that line, exit 2; a Spark failure as one line, exit 1, pointing at a log
    file with the whole traceback, Java's included
    (:func:`shopseq.jobs.common.run_stage`). Spark's other loggers keep
    ``spark.log_level``.
    """
    jvm = spark.sparkContext._jvm  # noqa: SLF001 - log4j 2's Configurator, through py4j
    fatal = jvm.org.apache.logging.log4j.Level.FATAL
    for name in (*TASK_FAILURE_LOGGERS, *JOB_ABORT_LOGGERS):
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


# --------------------------------------------------------------------------- when Spark fails

# What py4j says when the JVM at the other end of the gateway is gone (a network error, or Py4JError's text).
JVM_GONE_TEXTS = ("Answer from Java side is empty", "Error while sending or receiving", "An error occurred while trying to connect to the Java server")
JOB_ABORTED = "Job aborted due to stage failure: "
JVM_EXIT_WAIT_S = 3.0  # how long a py4j error without an answer waits for the launched JVM to be seen dead
# A task's failure reason after "most recent failure: Lost task 1.0 in stage 0.0 (TID 1) (host executor driver): ".
_LOST_TASK = re.compile(r"^Lost task \S+ in stage \S+ \(TID \d+\) \([^)]*\): ")
# Spark's task failure reasons that are not an exception thrown by the task's code (TaskFailedReason.toErrorString).
_SPARK_TASK_REASONS = re.compile(r"^(ExecutorLostFailure|TaskKilled|FetchFailed|TaskResultLost|TaskCommitDenied|Resubmitted|UnknownReason)\b")
_PYTHON_TRACEBACK = "Traceback (most recent call last):"


@dataclass(frozen=True)
class SparkFailure:
    """Why Spark failed, as one line (``reason``).

    ``runtime``: the runtime failed, not a verdict on the data or a table:
    the driver JVM died, a Java ``Error`` (``OutOfMemoryError``), a Python
    worker's code raised, or a job was aborted for a reason of Spark's own
    (a lost executor, a killed task, a lost result). Such a failure outranks
    a stage's own reading of the error (a ``TableError``, an
    ``InputError``); a Java exception of a task (Delta refusing a row, a
    truncated ``.gz``) does not.
    """

    reason: str
    runtime: bool


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it or was being handled when it was raised (``__cause__``, else ``__context__``, even a suppressed one)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def jvm_exit_status(wait_s: float = 0.0) -> int | None:
    """The exit status of the driver JVM this process launched (negative: killed by that signal), waiting up to ``wait_s`` for it to exit.

    None while it runs, or when the launcher started it (spark-submit, Databricks).
    A JVM that has just died has closed its sockets a moment before it can
    be waited for: hence the wait.
    """
    proc = getattr(SparkContext._gateway, "proc", None)  # noqa: SLF001 - pyspark's gateway keeps the JVM's Popen
    if proc is None:
        return None
    try:
        return proc.wait(timeout=wait_s) if wait_s > 0 else proc.poll()
    except subprocess.TimeoutExpired:
        return None


def _raised_in_py4j(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside py4j (its traceback passes through the py4j package)."""
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}py4j{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _jvm_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the JVM end of the py4j gateway is gone: a network error inside py4j, or py4j saying so."""
    if isinstance(exc, Py4JNetworkError) or (isinstance(exc, ConnectionError) and _raised_in_py4j(exc)):
        return True
    return isinstance(exc, Py4JError) and not isinstance(exc, Py4JJavaError) and any(t in str(exc) for t in JVM_GONE_TEXTS)


def jvm_died_reason(status: int | None) -> str:
    """``the Spark driver JVM died (...)``: how, when its exit status is known."""
    if status is None:
        how = "the connection to it was lost"
    elif status < 0:
        name = signal.Signals(-status).name if -status in signal.valid_signals() else f"signal {-status}"
        how = f"killed by {name}" + (": out of memory, or killed by hand" if -status == signal.SIGKILL else "")
    else:
        how = f"exit status {status}"
    return f"the Spark driver JVM died ({how})"


def _java_error(exc: BaseException) -> tuple[str, str] | None:
    """``(class name, message)`` of a Spark error raised through py4j or pyspark; None for any other exception.

    Raises a py4j network error when the JVM is needed to read it and is gone.
    """
    if isinstance(exc, Py4JJavaError):
        java = exc.java_exception
        return str(java.getClass().getName()), str(java.getMessage() or "")
    if isinstance(exc, PySparkException):
        desc = getattr(exc, "desc", None)  # captured from the JVM (PythonException, AnalysisException, ...)
        text = str(desc if desc is not None else exc).strip()
        named = re.match(r"^([\w$]+(?:\.[\w$]+)+): (.*)$", text, re.S)  # UnknownException's desc: "<java class>: <message>"
        return (named[1], named[2]) if named else (type(exc).__name__, text)
    return None


def python_error(traceback_text: str) -> str | None:
    """The exception line (``ZeroDivisionError: division by zero``) of a Python traceback in a Spark message, else None."""
    if _PYTHON_TRACEBACK not in traceback_text:
        return None
    lines = traceback_text.split(_PYTHON_TRACEBACK, 1)[1].splitlines()
    body = [line for line in lines if line.strip() and not line.startswith((" ", "\t"))]  # frames are indented; Java's "\tat"
    return body[0].strip() if body else None


def _short(java_class: str) -> str:
    """``org.apache.spark.SparkException`` as ``SparkException``."""
    return java_class.rsplit(".", 1)[-1]


def _first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _task_reason(text: str) -> tuple[str, bool]:
    """A failed task's reason as one phrase, and whether the runtime failed it (Spark, or a Python worker) rather than a Java exception of the task."""
    text = _LOST_TASK.sub("", text.strip(), count=1)
    if _SPARK_TASK_REASONS.match(text):
        return _first_line(text), True
    head = _first_line(text)
    java_class, _, message = head.partition(": ")
    python = python_error(text)
    if python is not None:  # a Python worker's error, maybe wrapped (TASK_WRITE_FAILED): its own exception line
        return f"PythonException: {python}", True
    return (f"{_short(java_class)}: {message}" if message else _short(head)), _is_python_worker(java_class)


def _is_python_worker(java_class: str) -> bool:
    """Whether a Java exception class is Spark's report of a failed Python worker."""
    return java_class == "org.apache.spark.api.python.PythonException" or java_class == "PythonException"


def describe_java_error(java_class: str, message: str) -> SparkFailure:
    """One line for a Spark error: ``SparkException: Job aborted due to stage failure: Task 1 in stage 0.0 failed 1 times (PythonException: ZeroDivisionError: ...)``.

    The short Java class and the first line of its message; for a job aborted
    by a failed task, the task's own reason in parentheses; for a Python
    error, its exception line instead of "Traceback (most recent call last):".
    """
    name = _short(java_class)
    if message.lstrip().startswith(JOB_ABORTED):
        head, found, task = message.strip().partition(", most recent failure: ")
        if not found:  # no task failed: a limit or the context stopping aborted it
            return SparkFailure(f"{name}: {_first_line(head)}", runtime=True)
        reason, runtime = _task_reason(task)
        return SparkFailure(f"{name}: {_first_line(head)} ({reason})", runtime=runtime)
    python = python_error(message)
    if python is not None:
        return SparkFailure(f"{name}: {python}", runtime=True)
    runtime = java_class.startswith("java.lang.") and name.endswith("Error")  # a JVM Error (OutOfMemoryError), not an Exception
    runtime = runtime or _is_python_worker(java_class) or "SparkContext was shut down" in message
    first = _first_line(message)
    return SparkFailure(f"{name}: {first}" if first else name, runtime=runtime)


def spark_failure(exc: BaseException) -> SparkFailure | None:
    """Why Spark failed, when ``exc`` (or an exception in its chain) is a Spark failure; None otherwise.

    The driver JVM being gone (py4j cannot reach it: ``ConnectionRefusedError``,
    ``Py4JNetworkError``, "Answer from Java side is empty", or a py4j call
    without an answer while the launched JVM has exited) outranks any other
    error of the chain, which is then often only its echo. Else the first
    Spark error of the chain (``Py4JJavaError``, a ``pyspark.errors``
    exception) is described by :func:`describe_java_error`.
    """
    chain = list(exception_chain(exc))
    if any(_jvm_gone(e) for e in chain):
        return _jvm_died()
    for e in chain:
        try:
            found = _java_error(e)
        except (Py4JError, ConnectionError):  # the JVM died after raising it
            return _jvm_died()
        if found is not None:
            return describe_java_error(*found)
        if _unanswered(e) and jvm_exit_status(JVM_EXIT_WAIT_S) is not None:
            return _jvm_died()
    return None


def _unanswered(exc: BaseException) -> bool:
    """Whether ``exc`` is py4j's "An error occurred while calling o49.range" for a call the JVM never answered (not a Java-side py4j error, which has a ``Trace:``)."""
    return isinstance(exc, Py4JError) and not isinstance(exc, Py4JJavaError) and "\nTrace:" not in str(exc)


def _jvm_died() -> SparkFailure:
    """The failure of a dead driver JVM, with its exit status when this process launched it."""
    return SparkFailure(jvm_died_reason(jvm_exit_status(JVM_EXIT_WAIT_S)), runtime=True)


def java_traces(exc: BaseException) -> list[str]:
    """The Java stack traces of the Spark errors in ``exc``'s chain (none when the JVM is gone and pyspark kept no copy)."""
    traces: list[str] = []
    for e in exception_chain(exc):
        trace = getattr(e, "stackTrace", None) if isinstance(e, PySparkException) else None  # pyspark copies it at capture
        if trace is None and isinstance(e, Py4JJavaError):
            try:
                trace = str(e)  # py4j asks the JVM for the trace: "An error occurred while calling o42.save.\n: <trace>"
            except (Py4JError, ConnectionError) as gone:
                trace = f"(the Java stack trace of {e.errmsg.strip()} is lost with the JVM: {type(gone).__name__})"
        if trace and trace not in traces:
            traces.append(str(trace))
    return traces
