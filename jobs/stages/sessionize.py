"""`shopseq sessionize`: bronze events -> silver events + sessions (full, deterministic recompute).

Recipe: read ``bronze_events`` (latest version v), sessionize with
:mod:`shopseq.features.sessionize`, overwrite ``silver_events`` (partitioned by
``event_date``; the consecutive repeats removed are counted during that write),
then build ``sessions`` (partitioned by ``session_date``) from that silver
version. Both commits carry ``{"bronze_version": v, "sessionize": <config>}``;
the sessions commit adds ``silver_version``, ``input_events``,
``repeats_removed`` and ``bot_suspect_events``. When both tables'
latest commits already record this bronze version and config, nothing is
written (a re-run changes no table version); ``--force`` recomputes anyway.
Then log session statistics and plot the distributions to the catalog's
``<app.data_root>/reports/sessions.png``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pyspark.sql import DataFrame, Observation

from shopseq.features.sessionize import removal_metrics, session_histograms, session_stats, sessionize, sessions_table, silver_events
from shopseq.jobs.catalog import BRONZE_EVENTS, SESSIONS, SILVER_EVENTS, catalog
from shopseq.jobs.common import Context, run_stage, stage_parser
from shopseq.jobs.config import Config, to_dict
from shopseq.jobs.tables import TableError, TableIO

log = logging.getLogger(__name__)

BRONZE, SILVER = BRONZE_EVENTS, SILVER_EVENTS


def build_parser():
    parser = stage_parser("sessionize", "bronze_events -> silver_events (sessionized) + sessions, a full deterministic recompute.")
    parser.add_argument("--force", action="store_true", help="recompute even when silver already records the current bronze version and config")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="skip the reports/sessions.png plot")
    return parser


def _lineage(bronze_version: int, cfg: Config) -> dict[str, Any]:
    return {"bronze_version": bronze_version, "sessionize": to_dict(cfg.sessionize)}


def _up_to_date(tables: TableIO, lineage: dict[str, Any]) -> bool:
    """Whether silver and sessions were both last written from this bronze version with this config."""
    for name in (SILVER, SESSIONS):
        if not tables.exists(name):
            return False
        meta = tables.history(name)[0].get("metadata") or {}
        if meta.get("bronze_version") != lineage["bronze_version"] or meta.get("sessionize") != lineage["sessionize"]:
            return False
    return tables.history(SESSIONS)[0]["metadata"].get("silver_version") == tables.version(SILVER)


def run_sessionize(tables: TableIO, cfg: Config, force: bool = False, plot: bool = True) -> dict[str, Any]:
    """Sessionize the latest bronze into silver_events, then sessions from that silver; return statistics.

    Returns a dict: bronze_version, skipped, silver_version, sessions_version,
    input_events, repeats_removed, bot_suspect_events, sessions, events, users,
    mean_events_per_session, conversion_rate, median_duration_s,
    bot_suspect_sessions, plot (path or None).
    """
    bronze_version = tables.version(BRONZE)
    if bronze_version is None:
        raise TableError(f"table {BRONZE!r} does not exist; run 'shopseq ingest' first")
    lineage = _lineage(bronze_version, cfg)
    skipped = not force and _up_to_date(tables, lineage)
    if skipped:
        log.info("silver_events and sessions already record bronze version %d with this config; nothing to do", bronze_version)
        counts = {k: tables.history(SESSIONS)[0]["metadata"].get(k) for k in ("input_events", "repeats_removed", "bot_suspect_events")}
    else:
        # One pass: the removed repeats are counted while silver is written (observed metrics), not dropped silently.
        observed = Observation("sessionize")
        flagged = tables.read(BRONZE, version=bronze_version).transform(sessionize, cfg.sessionize).observe(observed, *removal_metrics())
        silver = tables.overwrite(SILVER, flagged.transform(silver_events), partition_by=["event_date"], metadata=lineage)
        counts = {k: int(v) for k, v in observed.get.items()}
        silver_version = silver.version
        if cfg.tables.optimize:  # one file per day, clustered by user: the features stage reads by user
            silver_version = getattr(tables.optimize(SILVER, ["user_id"], cfg.tables.max_file_mb), "version", silver_version)
        sessions = tables.read(SILVER, version=silver_version).transform(sessions_table)
        tables.overwrite(SESSIONS, sessions, partition_by=["session_date"], metadata={**lineage, "silver_version": silver_version, **counts})
        if cfg.tables.optimize:
            tables.optimize(SESSIONS, ["user_id"], cfg.tables.max_file_mb)
    stats: dict[str, Any] = {
        "bronze_version": bronze_version,
        "skipped": skipped,
        "silver_version": tables.version(SILVER),
        "sessions_version": tables.version(SESSIONS),
        **counts,
        **tables.read(SESSIONS).transform(session_stats).head().asDict(),
        "plot": None,
    }
    log.info(
        "sessions: %d sessions of %d users, %d events (%.2f events/session), conversion rate %.4f, median duration %.0f s, "
        "%d bot-suspect sessions; %d consecutive repeats removed of %d bronze events",
        stats["sessions"],
        stats["users"],
        stats["events"],
        stats["mean_events_per_session"] or 0.0,
        stats["conversion_rate"] or 0.0,
        stats["median_duration_s"] or 0.0,
        stats["bot_suspect_sessions"],
        stats["repeats_removed"] or 0,
        stats["input_events"] or 0,
    )
    if plot and not skipped:
        stats["plot"] = write_session_plot(tables.read(SESSIONS), catalog(cfg).sessions_plot)
    return stats


def write_session_plot(sessions: DataFrame, path: str) -> str | None:
    """Histograms of session length (minutes) and events per session, as a PNG (Agg backend)."""
    if "://" in path:
        log.warning("not writing the session plot to %s: only local paths are supported", path)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sessions.transform(session_histograms).collect()  # a few dozen rows: bins, not sessions
    by_metric: dict[str, list[tuple[float, int]]] = {}
    for r in rows:
        by_metric.setdefault(r["metric"], []).append((r["bin"], r["n"]))
    fig, (ax_len, ax_n) = plt.subplots(1, 2, figsize=(11, 4))
    dur = sorted(by_metric.get("duration_min", []))
    ax_len.bar([f"<{2 ** (int(b) + 1) - 1}" for b, _ in dur], [n for _, n in dur], color="tab:blue")
    ax_len.set_title("Session length")
    ax_len.set_xlabel("minutes (log2 bins)")
    ax_len.set_ylabel("sessions")
    ax_len.tick_params(axis="x", labelrotation=45)
    cnt = sorted(by_metric.get("n_events", []))
    ax_n.bar([b for b, _ in cnt], [n for _, n in cnt], color="tab:orange")
    ax_n.set_title("Events per session (last bin: and more)")
    ax_n.set_xlabel("events")
    ax_n.set_yscale("log")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log.info("session plot written to %s", path)
    return path


def _run(ctx: Context) -> int:
    run_sessionize(ctx.tables, ctx.cfg, force=ctx.args.force, plot=ctx.args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
