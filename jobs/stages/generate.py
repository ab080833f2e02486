"""`shopseq generate`: write the seeded synthetic dataset as raw Parquet (the embedded default input).

Recipe: load config (``generate.*``; ``--users``/``--days`` override it,
``--events N`` scales the user count so about N events come out), build users
and events with :mod:`shopseq.features.generate` from ``spark.range(users)``, and
overwrite two Parquet folders in the raw landing zone (not Delta tables):

* ``<landing>/events/``: one row per event (``shopseq.features.generate.EVENT_COLUMNS``);
* ``<landing>/users/``: the per-user truth (``user_id``, ``churned``,
  ``churn_time``, ``top_category``),

where ``<landing>`` is ``--output`` or ``<app.data_root>/raw/generated``. The
output depends only on the config, so a re-run rewrites the same rows.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from shopseq.features.generate import synth_events, synth_users, user_truth, validate
from shopseq.jobs.catalog import catalog
from shopseq.jobs.common import Context, InputError, run_stage, stage_parser
from shopseq.jobs.config import Config, GenerateConfig

log = logging.getLogger(__name__)

PILOT_USERS = 1000  # users generated (and counted) to size --events: the first users of any run are the same


def build_parser():
    parser = stage_parser(
        "generate",
        "Write the seeded synthetic e-commerce dataset as raw Parquet: <landing>/events and <landing>/users (truth).",
    )
    parser.add_argument("--users", type=int, default=None, metavar="N", help="number of users (default: generate.users)")
    parser.add_argument("--days", type=int, default=None, metavar="N", help="window length in days (default: generate.days)")
    parser.add_argument("--events", type=int, default=None, metavar="N", help="about N events: scales the number of users (overrides --users)")
    parser.add_argument("--output", default=None, metavar="PATH", help="landing folder (default: <app.data_root>/raw/generated)")
    return parser


def landing_dir(cfg: Config) -> str:
    """The default landing folder of generated data: the catalog's ``<app.data_root>/raw/generated``."""
    return catalog(cfg).landing


def build_generated(spark: SparkSession, cfg: GenerateConfig) -> tuple[DataFrame, DataFrame]:
    """``(events, truth)`` for ``cfg`` (lazy; nothing runs until they are written or counted)."""
    users = synth_users(spark.range(0, cfg.users, 1, cfg.partitions), cfg)
    return synth_events(users, cfg), user_truth(users)


def users_for_events(spark: SparkSession, cfg: GenerateConfig, target_events: int) -> int:
    """Users needed for about ``target_events`` events, from the event count of the first PILOT_USERS users."""
    if target_events < 1:
        raise InputError(f"--events must be >= 1, got {target_events}")
    pilot_cfg = replace(cfg, users=PILOT_USERS)
    pilot_events, _ = build_generated(spark, pilot_cfg)
    per_user = pilot_events.count() / PILOT_USERS
    if per_user <= 0:
        raise InputError("the generate config produces no events, so --events cannot be reached")
    users = max(1, round(target_events / per_user))
    log.info("about %d events: %.1f events per user in a %d-user pilot -> %d users", target_events, per_user, PILOT_USERS, users)
    return users


def write_generated(spark: SparkSession, cfg: GenerateConfig | Config, out_dir: str, target_events: int | None = None) -> dict[str, Any]:
    """Generate and overwrite ``<out_dir>/events`` and ``<out_dir>/users`` (Parquet).

    ``cfg`` is the ``generate`` section (a whole :class:`Config` is accepted).
    ``target_events`` replaces ``cfg.users`` by the count that gives about that
    many events. Returns ``{"events": path, "users": path, "rows": events
    written, "n_users": users generated}``.
    """
    gen = cfg.generate if isinstance(cfg, Config) else cfg
    validate(gen)
    if target_events is not None:
        gen = replace(gen, users=users_for_events(spark, gen, target_events))
    events, truth = build_generated(spark, gen)
    events_path, users_path = os.path.join(out_dir, "events"), os.path.join(out_dir, "users")
    events.write.mode("overwrite").parquet(events_path)
    truth.write.mode("overwrite").parquet(users_path)
    rows = spark.read.parquet(events_path).count()
    log.info(
        "wrote %d generated events of %d users (%d days from %s, seed %d) to %s; user truth to %s",
        rows, gen.users, gen.days, gen.start_date, gen.seed, events_path, users_path,
    )
    return {"events": events_path, "users": users_path, "rows": rows, "n_users": gen.users}


def _run(ctx: Context) -> int:
    gen = ctx.cfg.generate
    if ctx.args.users is not None:
        gen = replace(gen, users=ctx.args.users)
    if ctx.args.days is not None:
        gen = replace(gen, days=ctx.args.days)
    write_generated(ctx.spark, gen, ctx.args.output or landing_dir(ctx.cfg), target_events=ctx.args.events)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
