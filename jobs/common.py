"""What every stage's ``main(argv)`` shares: common flags, logging, config, session, errors.

A stage is written as::

    def main(argv: list[str] | None = None) -> int:
        return run_stage(build_parser(), argv, _run)

so the same function serves the ``shopseq`` console script, ``spark-submit
jobs/stages/<stage>.py`` and a Databricks ``python_wheel_task``, and tests call it with
an argument list.

Whatever stops a stage ends as one line on stderr (:func:`failure_line`): a
known error (bad config, input or table; a failed training) as its own
sentence, exit 2; a Spark failure as ``Spark failed: <Spark's reason>; full
trace in <log>``, exit 1, with the Python and Java traces in that log
(:meth:`shopseq.jobs.catalog.Catalog.failure_log`); anything else as its
exception's first line, exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import traceback
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from pyspark.sql import SparkSession

from shopseq.jobs.catalog import catalog
from shopseq.jobs.config import Config, ConfigError, default_conf_dir, load_config
from shopseq.jobs.config.cli import DefaultsHelpFormatter, add_config_flags
from shopseq.jobs.spark import SparkFailure, get_spark, java_traces, spark_failure
from shopseq.jobs.tables import TableError, TableIO
from shopseq.training import storage
from shopseq.training.launch import TrainingFailed

log = logging.getLogger("shopseq")

EXIT_OK = 0
EXIT_USAGE = 2  # bad config, bad arguments, bad input: one line on stderr
EXIT_FAILED = 1  # an unexpected failure or a Spark failure: one line on stderr (see failure_line)
MAX_ROW_LIMIT = 2**31 - 1  # Spark's Dataset.limit takes a Java int


class InputError(ValueError):
    """Input the job cannot process (missing file, unknown format), as one sentence."""


@dataclass
class Context:
    """What a stage body receives: parsed args, typed config, the session and table I/O."""

    args: argparse.Namespace
    cfg: Config
    spark: SparkSession
    tables: TableIO


def stage_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every stage takes; every option's help shows its default."""
    parser = argparse.ArgumentParser(prog=f"shopseq {name}", description=description, formatter_class=DefaultsHelpFormatter)
    add_config_flags(parser)
    return parser


def row_limit(text: str) -> int:
    """The argparse type of ``--limit N``: a whole number from 1 to :data:`MAX_ROW_LIMIT`, refused while parsing, before Spark starts."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_ROW_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_ROW_LIMIT}, got {text!r}")
    return value


def add_protocol_flag(parser: argparse.ArgumentParser) -> None:
    """``--protocol NAME``: the evaluation protocol preset ``conf/protocols/NAME.yaml`` (see :func:`protocol_layer`)."""
    parser.add_argument(
        "--protocol", default=None, metavar="NAME",
        help="evaluation protocol preset conf/protocols/NAME.yaml (cutoff, recbole_loo, session), applied after the dataset layer and before --conf-file/--set (default: none: features.protocol as configured)",
    )  # fmt: skip


def protocol_layer(conf_dir: str | None, name: str | None) -> Path | None:
    """``<conf dir>/protocols/<name>.yaml`` for ``--protocol name`` (None without one); an unknown name is a one-line ConfigError."""
    if not name:
        return None
    folder = (Path(conf_dir) if conf_dir else default_conf_dir()) / "protocols"
    layer = folder / f"{name}.yaml"
    if not layer.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(f"--protocol: unknown protocol {name!r}; expected one of {', '.join(known) or '(none)'} (the files in {folder})")
    return layer


def run_with_layers(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    body: Callable[[Context], int | None],
    layers: Callable[[argparse.Namespace], Sequence[Path | None]],
) -> int:
    """:func:`run_stage` with preset layers (dataset, protocol) placed before any ``--conf-file`` and ``--set``.

    ``layers`` maps the known arguments to the preset files, in order (None: none).
    """
    known, _ = parser.parse_known_args(argv)
    try:
        presets = [str(p) for p in layers(known) if p is not None]
    except ConfigError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if presets:
        # The presets go first: explicit --conf-file layers and --set still override them.
        parser.set_defaults(conf_files=presets)
    return run_stage(parser, argv, body)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _from_py4j(record: logging.LogRecord) -> bool:
    """Whether py4j logged ``record``: it logs a lost JVM connection, with a traceback and on the root logger, for every call after the JVM died."""
    return f"{os.sep}py4j{os.sep}" in record.pathname


class Py4JLog(logging.Handler):
    """Keeps py4j's last records, formatted with their tracebacks, for the failure log (:func:`failure_report`) instead of the terminal."""

    def __init__(self, keep: int = 20) -> None:
        super().__init__()
        self.records: deque[str] = deque(maxlen=keep)
        self.addFilter(_from_py4j)
        self.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record`` as text."""
        self.records.append(self.format(record))


PY4J_LOG = Py4JLog()


def configure_logging(level: str = "INFO") -> None:
    """Configure logging once, for entry points only (library code only gets loggers).

    py4j's records go to :data:`PY4J_LOG`, not to stderr: they are the echo of
    a Spark failure that the stage reports as one line.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr)
        for handler in root.handlers:
            handler.addFilter(lambda record: not _from_py4j(record))
        root.addHandler(PY4J_LOG)
    logging.getLogger("shopseq").setLevel(level)  # every module logs under shopseq.* (its __name__)
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def stage_config(args: argparse.Namespace) -> Config:
    """Load config from the common flags and configure logging at its ``app.log_level``."""
    cfg = load_config(args.env, args.conf_dir, args.overrides, getattr(args, "conf_files", ()))
    configure_logging(cfg.app.log_level)
    return cfg


def make_context(args: argparse.Namespace, cfg: Config | None = None) -> Context:
    """Load config from the common flags (unless given: :func:`stage_config`), start (or reuse) Spark, open table I/O."""
    cfg = cfg if cfg is not None else stage_config(args)
    spark = get_spark(cfg.spark)
    return Context(args, cfg, spark, TableIO(spark, cfg))


def run_stage(parser: argparse.ArgumentParser, argv: list[str] | None, body: Callable[[Context], int | None]) -> int:
    """Parse ``argv``, load config, build the context, run ``body``; whatever stops it becomes one line (:func:`failure_line`)."""
    args = parser.parse_args(argv)
    cfg: Config | None = None
    try:
        cfg = stage_config(args)
        return int(body(make_context(args, cfg)) or EXIT_OK)
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line on stderr and an exit code
        line, code = failure_line(parser.prog, exc, cfg, sys.argv[1:] if argv is None else argv)
        print(line, file=sys.stderr)
        return code


KNOWN_ERRORS = (ConfigError, TableError, InputError, TrainingFailed)
# A failed training's own line already reads Spark's failure (which rank, how) and says where a re-run resumes.
ALWAYS_OWN_LINE = (TrainingFailed,)


def failure_line(prog: str, exc: Exception, cfg: Config | None, argv: Sequence[str]) -> tuple[str, int]:
    """The one stderr line and exit code of a stage that ``exc`` stopped.

    A known error (:data:`KNOWN_ERRORS`) is its own sentence, exit 2, unless
    Spark's runtime failed under it (:attr:`~shopseq.jobs.spark.SparkFailure.runtime`;
    never for :data:`ALWAYS_OWN_LINE`). A Spark failure
    (:func:`~shopseq.jobs.spark.spark_failure`) is ``Spark failed: <reason>;
    full trace in <log>``, exit 1 (:func:`write_failure_log`). Anything
    else: its type and first line, exit 1, the traceback logged at DEBUG.
    """
    try:
        failure = None if isinstance(exc, ALWAYS_OWN_LINE) else spark_failure(exc)
    except Exception:  # noqa: BLE001 - reading Spark's reason must never hide the failure itself
        log.debug("could not read Spark's reason of %s", type(exc).__name__, exc_info=True)
        failure = None
    if isinstance(exc, KNOWN_ERRORS) and not (failure and failure.runtime):
        return f"{prog}: error: {exc}", EXIT_USAGE
    if failure is not None:
        path = write_failure_log(prog, exc, failure, cfg, argv)
        return f"{prog}: error: Spark failed: {failure.reason.rstrip('.')}; full trace in {path}", EXIT_FAILED
    log.debug("%s failed", prog, exc_info=exc)
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{prog}: error: {type(exc).__name__}: {first} (app.log_level=DEBUG logs the traceback)", EXIT_FAILED


def failure_report(prog: str, exc: BaseException, failure: SparkFailure, argv: Sequence[str], at: datetime) -> str:
    """The failure log's text: what ran and when, Spark's reason, the Python traceback and the Java stack traces."""
    python = "".join(traceback.format_exception(exc))
    java = "\n\n".join(java_traces(exc)) or "(none: the JVM was gone before it could be asked)"
    py4j = "\n".join(PY4J_LOG.records) or "(nothing)"
    return (
        f"{prog} {shlex.join(argv)}\nfailed at {at.isoformat()} (pid {os.getpid()})\nSpark failed: {failure.reason}\n\n"
        f"--- Python traceback\n{python}\n--- Java stack traces\n{java}\n\n--- py4j's log (kept off the terminal)\n{py4j}\n"
    )


def write_failure_log(prog: str, exc: BaseException, failure: SparkFailure, cfg: Config | None, argv: Sequence[str]) -> str:
    """Write :func:`failure_report` to the catalog's failure log of this stage (a temporary file when it cannot be written there); return its path."""
    at = datetime.now(timezone.utc)
    text = failure_report(prog, exc, failure, argv, at)
    stage = prog.split()[-1]
    if cfg is not None and not storage.is_uri(cfg.app.data_root):
        path = os.path.abspath(catalog(cfg).failure_log(stage, at))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "x", encoding="utf-8") as out:
                out.write(text)
            return path
        except OSError as err:
            log.debug("cannot write the failure log %s (%s): writing a temporary file instead", path, err)
    fd, path = tempfile.mkstemp(prefix=f"shopseq-{stage}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path
