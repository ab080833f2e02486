"""Issue 24: when Spark itself fails, a stage prints one line naming Spark's reason and a log file with the whole trace.

The reasons are Spark's own: literal messages in Spark 3.5's formats for what a
local run cannot provoke (an executor lost to a heartbeat timeout), real
failures of the shared session for a Python worker and a Delta write, and
stages run through the CLI in their own process: the driver JVM killed mid-stage,
and a job Spark aborts itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

HEARTBEAT = (
    "Job aborted due to stage failure: Task 3 in stage 12.0 failed 1 times, most recent failure: Lost task 3.0 in stage 12.0 (TID 57) "
    "(192.0.2.2 executor driver): ExecutorLostFailure (executor driver exited caused by one of the running tasks) Reason: "
    "Executor heartbeat timed out after 143061 ms\nDriver stacktrace:"
)
PYTHON_TASK = (
    "Job aborted due to stage failure: Task 1 in stage 0.0 failed 1 times, most recent failure: Lost task 1.0 in stage 0.0 (TID 1) "
    "(192.0.2.2 executor driver): org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
    '  File "/x/features/f.py", line 9, in boom\n    raise ZeroDivisionError("division by zero")\n'
    "ZeroDivisionError: division by zero\n\n\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:572)\n"
    "\nDriver stacktrace:"
)
DELTA_TASK = (
    "Job aborted due to stage failure: Task 0 in stage 4.0 failed 1 times, most recent failure: Lost task 0.0 in stage 4.0 (TID 4) "
    "(192.0.2.2 executor driver): org.apache.spark.sql.delta.schema.DeltaInvariantViolationException: "
    "[DELTA_NOT_NULL_CONSTRAINT_VIOLATED] NOT NULL constraint violated for column: name.\n\tat org.apache.spark.sql.delta...\nDriver stacktrace:"
)


@pytest.mark.parametrize(
    "java_class, message, reason, runtime",
    [
        ("org.apache.spark.SparkException", HEARTBEAT, "SparkException: Job aborted due to stage failure: Task 3 in stage 12.0 failed 1 times "
         "(ExecutorLostFailure (executor driver exited caused by one of the running tasks) Reason: Executor heartbeat timed out after 143061 ms)", True),
        ("org.apache.spark.SparkException", PYTHON_TASK,
         "SparkException: Job aborted due to stage failure: Task 1 in stage 0.0 failed 1 times (PythonException: ZeroDivisionError: division by zero)", True),
        ("org.apache.spark.SparkException", DELTA_TASK, "SparkException: Job aborted due to stage failure: Task 0 in stage 4.0 failed 1 times "
         "(DeltaInvariantViolationException: [DELTA_NOT_NULL_CONSTRAINT_VIOLATED] NOT NULL constraint violated for column: name.)", False),
        ("org.apache.spark.SparkException", "Job aborted due to stage failure: Total size of serialized results of 3 tasks (1.2 KiB) is bigger than "
         "spark.driver.maxResultSize (1024.0 B)\nDriver stacktrace:",
         "SparkException: Job aborted due to stage failure: Total size of serialized results of 3 tasks (1.2 KiB) is bigger than spark.driver.maxResultSize (1024.0 B)", True),
        ("java.lang.OutOfMemoryError", "Java heap space", "OutOfMemoryError: Java heap space", True),
        ("AnalysisException", "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column `nope` cannot be resolved.\n...",
         "AnalysisException: [UNRESOLVED_COLUMN.WITH_SUGGESTION] A column `nope` cannot be resolved.", False),
    ],
    ids=["executor-lost", "python-task", "delta-task", "max-result-size", "oom", "analysis"],
)  # fmt: skip
def test_spark_reasons_are_one_line_with_the_task_failure(java_class, message, reason, runtime):
    from shopseq.jobs.spark import SparkFailure, describe_java_error

    assert describe_java_error(java_class, message) == SparkFailure(reason, runtime)


def test_a_dead_jvm_is_said_with_how_it_died():
    from shopseq.jobs.spark import jvm_died_reason

    assert jvm_died_reason(-9) == "the Spark driver JVM died (killed by SIGKILL: out of memory, or killed by hand)"
    assert jvm_died_reason(-15) == "the Spark driver JVM died (killed by SIGTERM)"
    assert jvm_died_reason(1) == "the Spark driver JVM died (exit status 1)"
    assert jvm_died_reason(None) == "the Spark driver JVM died (the connection to it was lost)"


def _boom(batches):
    for batch in batches:
        raise ZeroDivisionError("division by zero in a worker")
        yield batch


def test_a_python_worker_failure_is_spark_failing_even_under_a_table_write(spark, cfg_factory, tmp_path):
    """A real Python worker error in a Delta write (a TableError) ends as ``Spark failed`` and a log; a Delta refusal stays the table's line."""
    from pyspark.sql import types as T

    from shopseq.jobs.common import EXIT_FAILED, EXIT_USAGE, failure_line
    from shopseq.jobs.tables import TableError, TableIO

    cfg = cfg_factory()
    tables = TableIO(spark, cfg)
    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField("name", T.StringType())])
    tables.create("kept", schema, not_null=["name"])
    failing = spark.range(0, 2, 1, 1).mapInArrow(_boom, "id long").selectExpr("id", "'x' AS name")  # one partition: one worker
    with pytest.raises(TableError) as write:
        tables.append("kept", failing)
    line, code = failure_line("shopseq features", write.value, cfg, ["--set", "x=1"])
    logs = Path(cfg.app.data_root) / "logs"
    [log] = logs.glob("features-*.log")
    assert code == EXIT_FAILED and re.fullmatch(
        r"shopseq features: error: Spark failed: (SparkException: Job aborted due to stage failure: Task 0 in stage \d+\.0 failed 1 times \()?"
        rf"PythonException: ZeroDivisionError: division by zero in a worker\)?; full trace in {re.escape(str(log))}", line), line
    text = log.read_text()
    assert text.startswith("shopseq features --set x=1\nfailed at ") and "Traceback (most recent call last)" in text and "in _boom" in text  # Python's
    assert "org.apache.spark.SparkException: Job aborted due to stage failure" in text and "\tat org.apache.spark." in text  # Java's

    a_file = tmp_path / "not_a_folder"  # a data root where no log can be written: a temporary file instead
    a_file.write_text("x")
    line, _ = failure_line("shopseq features", write.value, cfg_factory(f"app.data_root={a_file}"), [])
    temporary = Path(line.rsplit("; full trace in ", 1)[1])
    assert temporary.parent == Path(tempfile.gettempdir()) and temporary.name.startswith("shopseq-features-") and "ZeroDivisionError" in temporary.read_text()
    temporary.unlink()

    with pytest.raises(TableError) as refused:
        tables.append("kept", spark.createDataFrame([(1, None)], schema))
    assert "NOT NULL" in str(refused.value)
    assert failure_line("shopseq features", refused.value, cfg, []) == (f"shopseq features: error: {refused.value}", EXIT_USAGE)
    assert list(logs.glob("*.log")) == [log]


# --------------------------------------------------------------------------- a stage's own process


STARTUP = re.compile(  # what Spark and the stage print before any failure, on every run
    r"^(\d\d/\d\d/\d\d \d\d:\d\d:\d\d WARN (Utils|NativeCodeLoader): .*|Setting default log level to \"WARN\"\.|"
    r"To adjust logging level use sc\.setLogLevel\(newLevel\)\. For SparkR, use setLogLevel\(newLevel\)\.|\d\d:\d\d:\d\d INFO shopseq\.jobs\.spark: .*)$"
)


def _generate(root: Path, *extra: str) -> list[str]:
    """``shopseq generate`` of a small dataset into ``root``, in a process of its own."""
    return [sys.executable, "-m", "shopseq.jobs.cli", "generate", "--users", "20", "--days", "7", "--set", f"app.data_root={root}", *extra]


def _failure(stderr: str, stage: str) -> tuple[str, Path]:
    """The one line the stage printed (everything else on stderr is Spark's start-up) and the log it names."""
    own = [line for line in stderr.splitlines() if not STARTUP.match(line)]
    assert len(own) == 1 and own[0].startswith(f"shopseq {stage}: error: Spark failed: "), stderr
    return own[0], Path(own[0].rsplit("; full trace in ", 1)[1])


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the driver JVM through Linux /proc")
def test_a_driver_jvm_killed_mid_stage_is_one_line_and_a_log(tmp_path):
    """The JVM dies under ``shopseq generate`` once its session started: one line saying so, not py4j's tracebacks and ConnectionRefusedError."""
    proc = subprocess.Popen(_generate(tmp_path), cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines, killed = [], []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "session started" in line and not killed:
            killed = [k for k in _children(proc.pid) if b"java" in Path(f"/proc/{k}/cmdline").read_bytes()]
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) == 1 and len(killed) == 1
    line, log = _failure("".join(lines), "generate")
    assert line == f"shopseq generate: error: Spark failed: the Spark driver JVM died (killed by SIGKILL: out of memory, or killed by hand); full trace in {log}"
    assert log.parent == tmp_path / "logs" and log.name.startswith("generate-")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "py4j.protocol.Py4J" in text and "jobs/stages/generate.py" in text


def test_a_job_spark_aborts_is_one_line_and_a_log_with_the_java_trace(tmp_path):
    """Spark aborts ``shopseq generate``'s first job itself (its results exceed a 1-byte spark.driver.maxResultSize)."""
    res = subprocess.run(
        _generate(tmp_path, "--set", "app.log_level=WARNING", "--set", 'spark.conf={spark.driver.maxResultSize: "1"}'),
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    line, log = _failure(res.stderr, "generate")
    assert line.startswith("shopseq generate: error: Spark failed: SparkException: Job aborted due to stage failure: ") and line.endswith(f"; full trace in {log}")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "jobs/stages/generate.py" in text  # Python's
    assert "org.apache.spark.SparkException: Job aborted due to stage failure" in text and "\tat org.apache.spark.scheduler.DAGScheduler" in text  # Java's
