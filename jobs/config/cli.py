"""The config's command line: the flags every stage takes, the help formatter, and ``shopseq config``.

``shopseq config`` loads and validates a layer stack without starting Spark
and prints the effective config as YAML, or (``--reference``) the key
reference, ``docs/configuration.md``.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from shopseq.features.settings import ConfigError
from shopseq.jobs.config.loader import load_config, to_dict
from shopseq.jobs.config.reference import reference_markdown
from shopseq.jobs.config.schema import ENVIRONMENTS


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: ``(default: X)``; ``none`` for None or an empty list, ``off`` for a flag.

    A help text that already says ``default`` is left as written (it explains
    a default that depends on config, e.g. ``(default: train.epochs)``).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.nargs == 0 and isinstance(action.const, bool):
            shown = "off"  # store_true / store_false: the flag is not given
        elif action.default is None or action.default == []:
            shown = "none"
        else:
            shown = str(action.default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose the config layers (every stage and ``shopseq config`` take them)."""
    parser.add_argument("--env", default="local", choices=list(ENVIRONMENTS), help="config environment layered over conf/base.yaml")
    parser.add_argument("--conf-dir", default=None, help="folder with base.yaml and <env>.yaml (default: $SHOPSEQ_CONF_DIR, else ./conf, else the conf/ inside the installed wheel or --py-files zip)")
    parser.add_argument(
        "--conf-file", dest="conf_files", action="append", default=[], metavar="FILE",
        help="extra YAML layer merged after <env>.yaml and before --set, e.g. conf/datasets/taobao.yaml (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set sessionize.gap_minutes=20; keys: docs/configuration.md (repeatable)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """``shopseq config``: validate a layer stack and print it, or print the key reference."""
    parser = argparse.ArgumentParser(
        prog="shopseq config",
        description="Load and validate the config layers without starting Spark; print the effective config as YAML (or the key reference).",
        formatter_class=DefaultsHelpFormatter,
    )
    add_config_flags(parser)
    parser.add_argument("--reference", action="store_true", help="print the key reference rendered from the typed config (docs/configuration.md) instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``shopseq config``: exit 0 with the config (or reference) on stdout, 2 with one line naming a bad key."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.reference:
        sys.stdout.write(reference_markdown())
        return 0
    try:
        cfg = load_config(args.env, args.conf_dir, args.overrides, args.conf_files)
    except ConfigError as exc:
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2
    sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False, width=120))
    return 0
