"""`shopseq evaluate`: not built yet (issue #6)."""

from __future__ import annotations

import sys

from jobs.common import not_built, stage_parser


def build_parser():
    return stage_parser("evaluate", "Not built yet (issue #6).")


def main(argv: list[str] | None = None) -> int:
    return not_built(build_parser(), argv, issue=6)


if __name__ == "__main__":
    sys.exit(main())
