"""What every stage's ``main(argv)`` shares: common flags, logging, config, session, errors.

A stage is written as::

    def main(argv: list[str] | None = None) -> int:
        return run_stage(build_parser(), argv, _run)

so the same function serves the ``shopseq`` console script, ``spark-submit
jobs/<stage>.py`` and a Databricks ``python_wheel_task``, and tests call it with
an argument list.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import SparkSession

from jobs.config import Config, ConfigError, load_config
from jobs.spark import get_spark
from jobs.tables import TableError, TableIO

log = logging.getLogger("shopseq")

EXIT_OK = 0
EXIT_USAGE = 2  # bad config, bad arguments, bad input: one line on stderr


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
    """An argument parser with the flags every stage takes."""
    parser = argparse.ArgumentParser(prog=f"shopseq {name}", description=description)
    parser.add_argument("--env", default="local", choices=["local", "cluster", "databricks"], help="config environment layered over conf/base.yaml (default: local)")
    parser.add_argument("--conf-dir", default=None, help="folder with base.yaml and <env>.yaml (default: $SHOPSEQ_CONF_DIR, ./conf, or the repo's conf/)")
    parser.add_argument("--conf-file", dest="conf_files", action="append", default=[], metavar="FILE", help="extra YAML layer merged after <env>.yaml and before --set, e.g. conf/datasets/taobao.yaml (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set sessionize.gap_minutes=20 (repeatable)")
    return parser


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
    except (ConfigError, TableError, InputError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
