"""`shopseq features`: not built yet (issue #4)."""

from __future__ import annotations

import sys

from jobs.common import not_built, stage_parser


def build_parser():
    return stage_parser("features", "Not built yet (issue #4).")


def main(argv: list[str] | None = None) -> int:
    return not_built(build_parser(), argv, issue=4)


if __name__ == "__main__":
    sys.exit(main())
