"""`shopseq ingest`: raw events -> validated ``bronze_events`` + ``quarantine``, with run metrics.

Recipe: resolve the source (``--format``/``source.format``; presets in
:mod:`jobs.sources`), read it (``--input``/``source.path``; ``--limit N`` keeps
the first N lines), classify every line with :mod:`features.ingest`, drop what
is already stored, append the new events to ``bronze_events`` (partitioned by
``event_date``) and the new rejects to ``quarantine`` (unpartitioned: it stays
small and is read by reason or batch), then append one row to ``run_metrics``.

Every input line ends up in exactly one bucket, checked before anything is
committed: ``input_rows (lines - header lines) == accepted + quarantined +
duplicates``. Duplicates are lines whose key (``event_id`` for valid lines,
``quarantine_id`` for rejects) is already in bronze / quarantine or appeared
earlier in the same batch. The bronze look-up is restricted to the event dates
of the batch and both tables are read at a pinned version. Ingesting the same
input again therefore finds only duplicates and commits nothing to bronze or
quarantine (only its ``run_metrics`` row). The commits are insert-only Delta
MERGEs on those keys (bronze's read limited to the batch's dates), so two
concurrent ingests of the same input write each event once: the later commit
conflicts, is retried by :meth:`jobs.tables.TableIO.merge_insert`, finds the
other run's rows and counts them as duplicates. Bronze is created with NOT NULL
columns and the CHECK constraints of :data:`features.schema.EVENT_CONSTRAINTS`.

``ingest_batch`` = ``ingest-<UTC start, yyyymmddThhmmss.mmmZ>-<8 hex of the input listing>``.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from features.ingest import (
    QUARANTINE_SCHEMA,
    REASONS,
    TimeBounds,
    bronze_rows,
    classify_raw,
    mark_outcomes,
    outcome_counts,
    quarantine_rows,
    time_bounds,
)
from features.schema import EVENT_CONSTRAINTS, EVENT_SCHEMA
from jobs.common import Context, InputError, run_stage, stage_parser
from jobs.config import Config, SourceConfig
from jobs.sources import FORMATS, read_source, resolve_source
from jobs.tables import TableIO

log = logging.getLogger(__name__)

BRONZE, QUARANTINE, RUN_METRICS = "bronze_events", "quarantine", "run_metrics"
STAGE = "ingest"

RUN_METRICS_SCHEMA = T.StructType(
    [
        T.StructField("stage", T.StringType()),
        T.StructField("ingest_batch", T.StringType()),
        T.StructField("input_rows", T.LongType()),  # input lines minus header lines
        T.StructField("accepted", T.LongType()),
        T.StructField("quarantined", T.LongType()),
        T.StructField("duplicates", T.LongType()),
        T.StructField("by_reason", T.StringType()),  # JSON {reason: newly quarantined rows}
        T.StructField("details", T.StringType()),  # JSON: format, input, files, header lines, versions, time window
        T.StructField("started_at", T.TimestampType()),
        T.StructField("finished_at", T.TimestampType()),
    ]
)


class IngestIntegrityError(RuntimeError):
    """The row accounting of an ingest does not add up (a bug, never bad input)."""


def build_parser():
    parser = stage_parser("ingest", "Raw events -> validated bronze_events + quarantine, with a run_metrics row.")
    parser.add_argument("--input", default=None, metavar="PATH", help="input file, folder or glob (default: source.path; generated: <app.data_root>/raw/generated/events)")
    parser.add_argument("--format", default=None, metavar="NAME", help=f"source format: {', '.join(FORMATS)} (default: source.format)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="quick mode: ingest only the first N input lines/rows")
    return parser


@contextmanager
def corrected_time_parser(spark: SparkSession) -> Iterator[None]:
    """Run with ``spark.sql.legacy.timeParserPolicy=CORRECTED``, then restore the previous value.

    Under the default (EXCEPTION), a dirty time that only Spark 2's lenient
    parser would read fails the whole job instead of being quarantined.
    """
    key = "spark.sql.legacy.timeParserPolicy"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, "CORRECTED")
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def batch_id(started: datetime, listing_hash: str) -> str:
    """``ingest-<UTC start to the millisecond>-<listing hash>``."""
    return f"ingest-{started.astimezone(timezone.utc):%Y%m%dT%H%M%S}.{started.microsecond // 1000:03d}Z-{listing_hash}"


def existing_keys(tables: TableIO, source_format: str, dates: list[Any]) -> tuple[DataFrame, dict[str, int | None]]:
    """Keys already stored (``_key``): bronze event ids on ``dates`` and this format's quarantine ids, at pinned versions."""
    frames = []
    versions = {"bronze_read_version": tables.version(BRONZE), "quarantine_read_version": tables.version(QUARANTINE)}
    if versions["bronze_read_version"] is not None and dates:
        bronze = tables.read(BRONZE, version=versions["bronze_read_version"])
        frames.append(bronze.where(F.col("event_date").isin(dates)).select(F.col("event_id").alias("_key")))
    if versions["quarantine_read_version"] is not None:
        quarantine = tables.read(QUARANTINE, version=versions["quarantine_read_version"])
        frames.append(quarantine.where(F.col("source_format") == source_format).select(F.col("quarantine_id").alias("_key")))
    if not frames:
        return tables.spark.createDataFrame([], "_key string"), versions
    keys = frames[0]
    for f in frames[1:]:
        keys = keys.unionByName(f)
    return keys, versions


def _tally(rows: list[Any]) -> dict[str, Any]:
    """Outcome counts (rows of :func:`features.ingest.outcome_counts`) as metrics."""
    t: dict[str, Any] = {"header_lines": 0, "accepted": 0, "quarantined": 0, "duplicate_events": 0, "duplicate_quarantined": 0, "by_reason": {}}
    for r in rows:
        if r["outcome"] == "header":
            t["header_lines"] += r["n"]
        elif r["outcome"] == "accepted":
            t["accepted"] += r["n"]
        elif r["outcome"] == "quarantined":
            t["quarantined"] += r["n"]
            t["by_reason"][r["reason"]] = t["by_reason"].get(r["reason"], 0) + r["n"]
        elif r["reason"] is None:
            t["duplicate_events"] += r["n"]
        else:
            t["duplicate_quarantined"] += r["n"]
    t["by_reason"] = {k: t["by_reason"][k] for k in REASONS if k in t["by_reason"]}
    t["duplicates"] = t["duplicate_events"] + t["duplicate_quarantined"]
    return t


def run_ingest(tables: TableIO, cfg: Config, input_path: str | None = None, fmt: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Ingest one input into bronze_events / quarantine and record a run_metrics row; return the metrics.

    Returns a dict: stage, ingest_batch, source_format, input, input_files,
    input_lines, header_lines, input_rows, accepted, quarantined, duplicates,
    duplicate_events, duplicate_quarantined, by_reason {reason: newly quarantined rows},
    bronze_version, quarantine_version (latest, None when the table does not
    exist), min_event_time, max_event_time (the accepted window),
    started_at, finished_at.
    """
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    started = datetime.now(timezone.utc)
    spark = tables.spark
    source = resolve_source(cfg.source, fmt, input_path)
    bounds = time_bounds(cfg.ingest, started)
    with corrected_time_parser(spark):
        raw = read_source(spark, source, cfg.app.data_root, limit)
        batch = batch_id(started, raw.listing_hash)
        log.info("ingest %s: %s (%d files) as %s, event time window [%s, %s]", batch, raw.location, len(raw.files), source.format, bounds.min_time, bounds.max_time)
        metrics = _ingest(tables, raw.frame, raw.source, bounds, batch, started)
    metrics.update(
        stage=STAGE,
        ingest_batch=batch,
        source_format=source.format,
        input=raw.location,
        input_files=len(raw.files),
        min_event_time=bounds.min_time,
        max_event_time=bounds.max_time,
        started_at=started,
    )
    _record(tables, metrics)
    log.info(
        "ingest %s: %d rows -> %d accepted (bronze v%s), %d quarantined %s (quarantine v%s), %d duplicates (%d of stored events, %d of stored rejects)",
        batch,
        metrics["input_rows"],
        metrics["accepted"],
        metrics["bronze_version"],
        metrics["quarantined"],
        metrics["by_reason"],
        metrics["quarantine_version"],
        metrics["duplicates"],
        metrics["duplicate_events"],
        metrics["duplicate_quarantined"],
    )
    return metrics


def _ingest(tables: TableIO, raw: DataFrame, source: SourceConfig, bounds: TimeBounds, batch: str, started: datetime) -> dict[str, Any]:
    """Classify, de-duplicate, check the accounting, commit; the counts and versions."""
    classified = raw.transform(classify_raw, source, bounds, batch)
    valid = classified.where(F.col("reason").isNull() & ~F.col("is_header"))
    dates = sorted(r[0] for r in valid.select("event_date").distinct().collect())  # a few dates: prunes the bronze look-up
    keys, read_versions = existing_keys(tables, source.format, dates)
    # Persisted: the outcome counts and both writes read the same marked rows (one parse, one join).
    marked = classified.transform(mark_outcomes, keys).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        tally = _tally(marked.transform(outcome_counts).collect())
        input_lines = raw.count()  # counted on the raw read, independently of the classification
        tally.update(input_lines=input_lines, input_rows=input_lines - tally["header_lines"], event_dates=len(dates), **read_versions)
        _check(tally)
        meta = {"stage": STAGE, "ingest_batch": batch, "source_format": source.format}
        bronze_version = tables.version(BRONZE)
        if tally["accepted"]:
            # Range-partitioned by (date, time): about one file per date and task, balanced by volume, time-sorted stats.
            rows = marked.transform(bronze_rows).repartitionByRange("event_date", "event_time")
            tables.create(BRONZE, EVENT_SCHEMA, ["event_date"], constraints=EVENT_CONSTRAINTS, not_null=[f.name for f in EVENT_SCHEMA.fields if not f.nullable])
            # Insert-only MERGE on event_id, its read limited to the batch's dates: safe beside a concurrent ingest.
            commit = tables.merge_insert(BRONZE, rows, ["event_id"], metadata=meta, target_filter=_in_dates(dates))
            _reconcile(tally, commit.num_rows, "accepted", "duplicate_events", BRONZE)
            bronze_version = commit.version
        quarantine_version = tables.version(QUARANTINE)
        if tally["quarantined"]:
            tables.create(QUARANTINE, QUARANTINE_SCHEMA)
            commit = tables.merge_insert(QUARANTINE, quarantine_rows(marked, started).coalesce(1), ["quarantine_id"], metadata=meta)
            _reconcile(tally, commit.num_rows, "quarantined", "duplicate_quarantined", QUARANTINE)
            quarantine_version = commit.version
    finally:
        marked.unpersist()
    tally.update(bronze_version=bronze_version, quarantine_version=quarantine_version)
    return tally


def _check(t: dict[str, Any]) -> None:
    total = t["accepted"] + t["quarantined"] + t["duplicates"]
    if t["input_rows"] != total:
        raise IngestIntegrityError(
            f"row accounting does not add up: {t['input_rows']} input rows != {t['accepted']} accepted + "
            f"{t['quarantined']} quarantined + {t['duplicates']} duplicates; nothing was committed"
        )


def _in_dates(dates: list[Any]) -> str:
    """``t.event_date IN (...)``: the MERGE reads (and conflicts on) only the batch's partitions."""
    return "t.event_date IN (" + ", ".join(f"DATE '{d.isoformat()}'" for d in dates) + ")"


def _reconcile(t: dict[str, Any], inserted: int | None, new: str, duplicate: str, table: str) -> None:
    """Rows the MERGE found already present (a concurrent ingest committed them first) move from ``new`` to ``duplicate``.

    The accounting stays exact: they were written once, by the other run
    (``by_reason`` still counts them as classified: which reasons the other run
    committed is not known here).
    """
    if inserted is None:
        raise IngestIntegrityError(f"{table}: the MERGE reported no inserted-row count")
    if inserted > t[new]:
        raise IngestIntegrityError(f"{table}: committed {inserted} rows, expected at most {t[new]}")
    if inserted < t[new]:
        log.warning("%s: %d of %d new rows were committed by a concurrent ingest first; counted as duplicates", table, t[new] - inserted, t[new])
        t[duplicate] += t[new] - inserted
        t["duplicates"] += t[new] - inserted
        t[new] = inserted


def _record(tables: TableIO, m: dict[str, Any]) -> None:
    """Append the run's row to run_metrics (sets ``finished_at``)."""
    m["finished_at"] = datetime.now(timezone.utc)
    detail_keys = (
        "source_format", "input", "input_files", "input_lines", "header_lines", "duplicate_events", "duplicate_quarantined",
        "event_dates", "bronze_read_version", "quarantine_read_version", "bronze_version", "quarantine_version", "min_event_time", "max_event_time",
    )
    details = {k: m[k] for k in detail_keys}
    row = (
        STAGE, m["ingest_batch"], m["input_rows"], m["accepted"], m["quarantined"], m["duplicates"],
        json.dumps(m["by_reason"], sort_keys=True), json.dumps(details, sort_keys=True, default=str), m["started_at"], m["finished_at"],
    )
    commit = tables.append(RUN_METRICS, tables.spark.createDataFrame([row], RUN_METRICS_SCHEMA).coalesce(1), metadata={"stage": STAGE, "ingest_batch": m["ingest_batch"]})
    m["run_metrics_version"] = commit.version


def _run(ctx: Context) -> int:
    run_ingest(ctx.tables, ctx.cfg, input_path=ctx.args.input, fmt=ctx.args.format, limit=ctx.args.limit)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
