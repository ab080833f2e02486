"""``shopseq``: one console script, one sub-command per stage.

``shopseq <stage> [args]`` hands ``args`` to the stage module's ``main(argv)`` (``shopseq.jobs.stages.<stage>``, ``shopseq.jobs.bench.cli``, ``shopseq.jobs.config.cli``), the
same function ``spark-submit`` and Databricks wheel tasks call.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shopseq.jobs.config.cli import DefaultsHelpFormatter

# stage -> (module with main(argv), one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "generate": ("shopseq.jobs.stages.generate", "write the synthetic event dataset (the embedded default input)"),
    "ingest": ("shopseq.jobs.stages.ingest", "raw events -> validated bronze table + quarantine (raw -> bronze)"),
    "sessionize": ("shopseq.jobs.stages.sessionize", "bronze -> sessionized silver events and a sessions table"),
    "features": ("shopseq.jobs.stages.build_features", "silver -> point-in-time sequence examples, labels, profiles (gold)"),
    "train": ("shopseq.jobs.stages.train", "train the multi-task sequence model with Horovod"),
    "evaluate": ("shopseq.jobs.stages.evaluate", "evaluate the model against baselines; metrics table and report"),
    "predict": ("shopseq.jobs.stages.predict", "batch predictions back to Delta"),
    "run": ("shopseq.jobs.stages.run", "the whole pipeline, generate -> predict, in one command"),
    "bench": ("shopseq.jobs.bench.cli", "benchmarks reported as ratios against a reference in the same run"),
    "config": ("shopseq.jobs.config.cli", "validate the config layers without Spark and print them (--reference: the key reference)"),
}


def build_parser() -> argparse.ArgumentParser:
    """``shopseq``: the stages as sub-commands (each stage parses its own arguments)."""
    parser = argparse.ArgumentParser(
        prog="shopseq",
        description="E-commerce events -> Delta -> sequence features -> distributed PyTorch -> predictions.",
        epilog="Run 'shopseq <stage> --help' for a stage's options, each with its default. Every stage takes --env, --conf-dir, "
        "--conf-file FILE and --set KEY=VALUE (keys: docs/configuration.md).",
        formatter_class=DefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", title="stages")
    for name, (_, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` to the stage's own ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in STAGES:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"shopseq: error: unknown stage {argv[0]!r}; choose from {', '.join(STAGES)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0 if argv else 2
    module = importlib.import_module(STAGES[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
