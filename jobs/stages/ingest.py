"""`shopseq ingest`: raw events -> validated ``bronze_events`` + ``quarantine``, with run metrics.

Recipe: resolve the source (``--format``/``source.format``; presets in
:mod:`shopseq.jobs.sources`), read it (``--input``/``source.path``; ``--limit N`` keeps
the first N lines), classify every line with :mod:`shopseq.features.ingest`, drop what
is already stored, append the new events to ``bronze_events`` (partitioned by
``event_date``) and the new rejects to ``quarantine`` (unpartitioned: it stays
small and is read by reason or batch), then append one row to ``run_metrics``.

Every input line ends up in exactly one bucket, checked before anything is
committed: ``input_rows (records - header lines) == accepted + quarantined +
duplicates``, where records = lines (for an ``explode`` source such as OTTO:
one per array element, one for a line without elements; counted on the raw
lines, apart from the classification). Duplicates are lines whose key (``event_id`` for valid lines,
``quarantine_id`` for rejects) is already in bronze / quarantine or appeared
earlier in the same batch. The bronze look-up is restricted to the event dates
of the batch and both tables are read at a pinned version. Ingesting the same
input again therefore finds only duplicates and commits nothing to bronze or
quarantine (only its ``run_metrics`` row). The commits are insert-only Delta
MERGEs on those keys (bronze's read limited to the batch's dates), so two
concurrent ingests of the same input write each event once: the later commit
conflicts, is retried by :meth:`shopseq.jobs.tables.TableIO.merge_insert`, finds the
other run's rows and counts them as duplicates. Bronze is created with NOT NULL
columns and the CHECK constraints of :data:`shopseq.features.schema.EVENT_CONSTRAINTS`.

Before reading, the table locations must be folders this user can write
(:func:`check_table_root`) and the data root may hold no other dataset's
events (:func:`check_single_source`); an ingest that accepts no event ends
with one line naming the top quarantine reasons (:func:`nothing_accepted`).
Each is an :class:`~shopseq.jobs.common.InputError`: one line and exit 2.

``ingest_batch`` = ``ingest-<UTC start, yyyymmddThhmmss.mmmZ>-<8 hex of the input listing>-<4 random hex>``
(the random part keeps two runs started in the same millisecond on the same input apart).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseq.features.ingest import (
    QUARANTINE_SCHEMA,
    REASONS,
    TimeBounds,
    bronze_rows,
    classify_raw,
    input_counts,
    mark_outcomes,
    outcome_counts,
    quarantine_rows,
    time_bounds,
)
from shopseq.features.schema import EVENT_CONSTRAINTS, EVENT_SCHEMA
from shopseq.jobs.common import MAX_ROW_LIMIT, Context, InputError, row_limit, run_stage, stage_parser
from shopseq.jobs.config import Config, ConfigError, SourceConfig
from shopseq.jobs.sources import FORMATS, dataset_of, default_path, read_source, resolve_source
from shopseq.jobs.tables import TableError, TableIO

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


class IngestError(RuntimeError):
    """An unexpected failure of an ingest, as one line naming the stage and the input (the cause is chained)."""


def build_parser():
    parser = stage_parser("ingest", "Raw events -> validated bronze_events + quarantine, with a run_metrics row.")
    parser.add_argument("--input", default=None, metavar="PATH", help="input file, folder or glob (default: source.path; generated: <app.data_root>/raw/generated/events)")
    parser.add_argument("--format", default=None, metavar="NAME", help=f"source format: {', '.join(FORMATS)} (default: source.format)")
    parser.add_argument("--limit", type=row_limit, default=None, metavar="N", help=f"quick mode: ingest only the first N input lines/rows (1 to {MAX_ROW_LIMIT})")
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
    """``ingest-<UTC start to the millisecond>-<listing hash>-<4 random hex>``: unique per run, even for concurrent runs on one input."""
    return f"ingest-{started.astimezone(timezone.utc):%Y%m%dT%H%M%S}.{started.microsecond // 1000:03d}Z-{listing_hash}-{secrets.token_hex(2)}"


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
    """Outcome counts (rows of :func:`shopseq.features.ingest.outcome_counts`) as metrics."""
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
    input_lines, input_records (= lines, but for a source with ``explode``),
    header_lines, input_rows, accepted, quarantined, duplicates,
    duplicate_events, duplicate_quarantined, by_reason {reason: newly quarantined rows},
    bronze_version, quarantine_version (latest, None when the table does not
    exist), min_event_time, max_event_time (the accepted window),
    started_at, finished_at.

    Refused with :class:`~shopseq.jobs.common.InputError` (one line, exit 2 from the
    CLI): a table location under a file or not writable
    (:func:`check_table_root`), a data root holding another dataset
    (:func:`check_single_source`), unreadable input, and an input of which no
    event is accepted (:func:`nothing_accepted`; its rejects and run_metrics
    row are committed first). Any other failure is an :class:`IngestError`
    naming the input.
    """
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    started = datetime.now(timezone.utc)
    spark = tables.spark
    source = resolve_source(cfg.source, fmt, input_path)
    location = default_path(source, cfg.app.data_root)  # no input at all is said first
    check_table_root(tables)
    check_single_source(tables, source.format)
    record_interrupted_batches(tables)  # audit rows a killed run could not write (docs/reliability.md)
    bounds = time_bounds(cfg.ingest, started)
    try:
        with corrected_time_parser(spark):
            raw = read_source(spark, source, cfg.app.data_root, limit)
            location = raw.location
            batch = batch_id(started, raw.listing_hash)
            log.info("ingest %s: %s (%d files) as %s, event time window [%s, %s]", batch, raw.location, len(raw.files), source.format, bounds.min_time, bounds.max_time)
            metrics = _ingest(tables, raw.frame, raw.source, bounds, batch, started)
    except (InputError, ConfigError, TableError, IngestIntegrityError):
        raise
    except Exception as exc:  # noqa: BLE001 - one line naming the stage and the input; the cause stays chained
        raise _failure(exc, location, source.format) from exc
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
    if metrics["accepted"] == 0 and metrics["duplicate_events"] == 0:
        raise InputError(nothing_accepted(metrics))
    return metrics


def nothing_accepted(m: dict[str, Any]) -> str:
    """The one line of an ingest that found no event: its rows and the top quarantine reasons with their counts."""
    n = lambda count, noun: f"{count:,} {noun}{'' if count == 1 else 's'}"  # noqa: E731
    parts = [n(m["input_lines"], "line")]
    if m["input_records"] != m["input_lines"]:
        parts.append(n(m["input_records"], "record"))
    by_reason = sorted(m["by_reason"].items(), key=lambda kv: (-kv[1], REASONS.index(kv[0])))
    if by_reason:
        top = ", ".join(f"{reason} {count:,}" for reason, count in by_reason[:3]) + (f", {n(len(by_reason) - 3, 'more reason')}" if len(by_reason) > 3 else "")
        parts.append(f"{m['quarantined']:,} quarantined ({top})")
    if m["duplicate_quarantined"]:
        parts.append(f"{n(m['duplicate_quarantined'], 'reject')} already in the quarantine table")
    if m["header_lines"]:
        parts.append(n(m["header_lines"], "header line"))
    return (
        f"no event of {m['input']} was accepted as {m['source_format']}: {', '.join(parts)}; "
        f"the rejects are in the quarantine table (ingest_batch {m['ingest_batch']})"
    )


def _failure(exc: BaseException, location: str, fmt: str) -> Exception:
    """An unexpected exception as one line naming the stage and the input: InputError when the JVM failed reading a file, else IngestError."""
    java = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)  # py4j / pyspark's captured exceptions
    names, messages = [], []
    while java is not None and len(names) < 20:
        try:
            names.append(str(java.getClass().getName()))
            messages.append(str(java.getMessage() or "").strip())
            java = java.getCause()
        except Exception:  # noqa: BLE001 - not a JVM object after all
            break
    for name, message in zip(reversed(names), reversed(messages)):  # the root cause first
        if name.startswith(("java.io.", "java.util.zip.", "java.nio.charset.")):
            detail = (message.splitlines() or [""])[0]
            return InputError(f"cannot read {location} as {fmt}: {name.rsplit('.', 1)[-1]}{': ' + detail if detail else ''}")
    text = next((m.splitlines()[0] for m in [*reversed(messages), str(exc).strip()] if m and m.strip()), "")
    return IngestError(f"ingest of {location} as {fmt} failed: {type(exc).__name__}: {text[:500]}")


def check_table_root(tables: TableIO) -> None:
    """Refuse, with one line, local table locations under a file or in a folder this process cannot write.

    Checked for bronze_events, quarantine and run_metrics before anything is
    read or written: the nearest existing folder on the way to each table must
    be a folder and writable. The line names the config key that placed it.
    """
    cfg = tables.cfg
    for name in (BRONZE, QUARANTINE, RUN_METRICS):
        ref = tables.ref(name)
        if ref.is_catalog or "://" in ref.location:
            continue
        key, value = (
            (f"tables.locations.{name}", cfg.tables.locations[name]) if name in cfg.tables.locations
            else ("tables.root", cfg.tables.root) if cfg.tables.root
            else ("app.data_root", cfg.app.data_root)
        )  # fmt: skip
        path = ref.location
        while not os.path.exists(path) and os.path.dirname(path) != path:
            if os.path.islink(path):
                raise InputError(f"{key} {value}: {path} is a broken symbolic link")
            path = os.path.dirname(path)
        if not os.path.isdir(path):
            raise InputError(f"{key} {value}: {path} is a file, not a folder; point {key} at a folder (--set {key}=DIR)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{key} {value}: the folder {path} is not writable by this user; point {key} at a writable folder (--set {key}=DIR)")


def check_single_source(tables: TableIO, fmt: str) -> None:
    """Refuse to mix datasets in one table set: bronze may only hold events of the dataset being ingested.

    The stored formats are those of run_metrics' rows; formats of one dataset
    (:data:`shopseq.jobs.sources.DATASETS`, e.g. YooChoose clicks and buys) may share a root.
    """
    if not tables.exists(RUN_METRICS):
        return
    stored = {
        r[0]
        for r in tables.read(RUN_METRICS).select(F.get_json_object("details", "$.source_format")).distinct().collect()
        if r[0] is not None
    }
    other = sorted(f for f in stored if dataset_of(f) != dataset_of(fmt))
    if other:
        raise InputError(
            f"the tables under {tables.cfg.app.data_root} already hold {', '.join(other)} events; "
            f"run {fmt!r} data into its own root with --set app.data_root=DIR"
        )


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
        counted = raw.transform(input_counts, source).head()  # on the raw read, independently of the classification
        input_lines, input_records = int(counted["lines"]), int(counted["records"])
        tally.update(input_lines=input_lines, input_records=input_records, input_rows=input_records - tally["header_lines"], event_dates=len(dates), **read_versions)
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
            if not tables.create(QUARANTINE, QUARANTINE_SCHEMA):
                _add_missing_columns(tables, QUARANTINE, QUARANTINE_SCHEMA)
            commit = tables.merge_insert(QUARANTINE, quarantine_rows(marked, started).coalesce(1), ["quarantine_id"], metadata=meta)
            _reconcile(tally, commit.num_rows, "quarantined", "duplicate_quarantined", QUARANTINE)
            quarantine_version = commit.version
    finally:
        marked.unpersist()
    tally.update(bronze_version=bronze_version, quarantine_version=quarantine_version)
    return tally


def _add_missing_columns(tables: TableIO, name: str, schema: T.StructType) -> None:
    """Add the nullable columns of ``schema`` an older table lacks (quarantine before ``raw_base64``): one ALTER TABLE commit."""
    have = set(tables.read(name).columns)
    missing = [f for f in schema.fields if f.name not in have]
    if not missing:
        return
    ref = tables.ref(name)
    table = ".".join(f"`{p}`" for p in ref.location.split(".")) if ref.is_catalog else "delta.`" + ref.location.replace("`", "``") + "`"
    columns = ", ".join(f"`{f.name}` {f.dataType.simpleString().upper()}" for f in missing)
    tables.spark.sql(f"ALTER TABLE {table} ADD COLUMNS ({columns})")
    log.info("%s: added columns %s", name, [f.name for f in missing])


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
    """Record the run's row in run_metrics, keyed by ``ingest_batch`` (sets ``finished_at``)."""
    m["finished_at"] = datetime.now(timezone.utc)
    detail_keys = (
        "source_format", "input", "input_files", "input_lines", "input_records", "header_lines", "duplicate_events", "duplicate_quarantined",
        "event_dates", "bronze_read_version", "quarantine_read_version", "bronze_version", "quarantine_version", "min_event_time", "max_event_time",
    )
    details = {k: m[k] for k in detail_keys}
    row = (
        STAGE, m["ingest_batch"], m["input_rows"], m["accepted"], m["quarantined"], m["duplicates"],
        json.dumps(m["by_reason"], sort_keys=True), json.dumps(details, sort_keys=True, default=str), m["started_at"], m["finished_at"],
    )
    # Keyed by batch: this run's own row replaces a recovered one another run wrote for it meanwhile.
    row_df = tables.spark.createDataFrame([row], RUN_METRICS_SCHEMA).coalesce(1)
    commit = tables.upsert(RUN_METRICS, row_df, keys=["ingest_batch"], metadata={"stage": STAGE, "ingest_batch": m["ingest_batch"]})
    m["run_metrics_version"] = commit.version


def record_interrupted_batches(tables: TableIO) -> list[str]:
    """Write the run_metrics rows of batches that stored rows but were killed before their own row; their ids.

    A batch commits bronze, then quarantine, then its run_metrics row (three
    tables, three commits): a run killed in between leaves rows no audit row
    accounts for, and a re-run counts them as duplicates. Such a batch (named
    in a bronze or quarantine commit, absent from run_metrics) gets a row
    counted from what it stored: accepted = its bronze rows, quarantined =
    its quarantine rows (by reason), input_rows = their sum, duplicates 0
    (not known), ``details.recovered`` true. Insert-only: a row the batch
    itself writes later (it was still running) replaces it.
    """
    batches: dict[str, dict[str, Any]] = {}
    for name in (BRONZE, QUARANTINE):
        if tables.exists(name):
            for h in tables.history(name):
                b = h["metadata"].get("ingest_batch") if h["metadata"].get("stage") == STAGE else None
                if b:
                    first = batches.setdefault(b, {"source_format": h["metadata"].get("source_format"), "at": h["timestamp"]})
                    first["at"] = min(first["at"], h["timestamp"])
    if tables.exists(RUN_METRICS):
        for r in tables.read(RUN_METRICS).select("ingest_batch").distinct().collect():
            batches.pop(r["ingest_batch"], None)
    if not batches:
        return []
    counts: dict[tuple[str, str | None], int] = {}
    for name, reason in ((BRONZE, F.lit(None).cast("string")), (QUARANTINE, F.col("reason"))):
        if tables.exists(name):
            stored = tables.read(name).where(F.col("ingest_batch").isin(list(batches))).groupBy("ingest_batch", reason.alias("reason")).count()
            counts.update({(r["ingest_batch"], r["reason"]): int(r["count"]) for r in stored.collect()})
    now, rows = datetime.now(timezone.utc), []
    for b, info in sorted(batches.items()):
        accepted = counts.get((b, None), 0)
        by_reason = {k: counts[(b, k)] for k in REASONS if (b, k) in counts}
        quarantined = sum(by_reason.values())
        details = {"source_format": info["source_format"], "recovered": True, "recovered_at": now.isoformat()}
        rows.append((STAGE, b, accepted + quarantined, accepted, quarantined, 0, json.dumps(by_reason, sort_keys=True), json.dumps(details, sort_keys=True), info["at"], now))
        log.warning("ingest %s stored %d events and %d rejects but was stopped before its run_metrics row: recorded now", b, accepted, quarantined)
    df = tables.spark.createDataFrame(rows, RUN_METRICS_SCHEMA).coalesce(1)
    tables.upsert(RUN_METRICS, df, keys=["ingest_batch"], metadata={"stage": STAGE, "recovered": sorted(batches)}, update_when="false")
    return sorted(batches)


def _run(ctx: Context) -> int:
    run_ingest(ctx.tables, ctx.cfg, input_path=ctx.args.input, fmt=ctx.args.format, limit=ctx.args.limit)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
