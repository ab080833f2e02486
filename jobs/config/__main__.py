"""``python -m shopseq.jobs.config``: the same command as ``shopseq config``."""

import sys

from shopseq.jobs.config.cli import main

sys.exit(main())
