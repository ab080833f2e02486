"""What every stage's ``main(argv)`` shares: common flags, logging, config, session, errors.

A stage is written as::

    def main(argv: list[str] | None = None) -> int:
        return run_stage(build_parser(), argv, _run)

so the same function serves the ``shopseq`` console script, ``spark-submit
jobs/stages/<stage>.py`` and a Databricks ``python_wheel_task``, and tests call it with
an argument list.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pyspark.sql import SparkSession

from shopseq.jobs.config import Config, ConfigError, DefaultsHelpFormatter, add_config_flags, default_conf_dir, load_config
from shopseq.jobs.spark import get_spark
from shopseq.jobs.tables import TableError, TableIO
from shopseq.training.launch import TrainingFailed

log = logging.getLogger("shopseq")

EXIT_OK = 0
EXIT_USAGE = 2  # bad config, bad arguments, bad input: one line on stderr
EXIT_FAILED = 1  # an unexpected failure: one line on stderr, the traceback in the log at DEBUG level


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


def configure_logging(level: str = "INFO") -> None:
    """Configure logging once, for entry points only (library code only gets loggers)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("shopseq").setLevel(level)
    for name in ("jobs", "features", "training"):
        logging.getLogger(name).setLevel(level)
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def make_context(args: argparse.Namespace) -> Context:
    """Load config from the common flags, start (or reuse) Spark, open table I/O."""
    cfg = load_config(args.env, args.conf_dir, args.overrides, getattr(args, "conf_files", ()))
    configure_logging(cfg.app.log_level)
    spark = get_spark(cfg.spark)
    return Context(args, cfg, spark, TableIO(spark, cfg))


def run_stage(parser: argparse.ArgumentParser, argv: list[str] | None, body: Callable[[Context], int | None]) -> int:
    """Parse ``argv``, build the context, run ``body``; known errors become one line and exit 2."""
    args = parser.parse_args(argv)
    try:
        return int(body(make_context(args)) or EXIT_OK)
    except (ConfigError, TableError, InputError, TrainingFailed) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - unexpected: one line and exit 1; the traceback goes to the log at DEBUG level
        log.debug("%s failed", parser.prog, exc_info=True)
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        print(f"{parser.prog}: error: {type(exc).__name__}: {first} (app.log_level=DEBUG logs the traceback)", file=sys.stderr)
        return EXIT_FAILED
