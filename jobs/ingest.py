"""`shopseq ingest`: not built yet (issue #3)."""

from __future__ import annotations

import sys

from jobs.common import not_built, stage_parser


def build_parser():
    return stage_parser("ingest", "Not built yet (issue #3).")


def main(argv: list[str] | None = None) -> int:
    return not_built(build_parser(), argv, issue=3)


if __name__ == "__main__":
    sys.exit(main())
