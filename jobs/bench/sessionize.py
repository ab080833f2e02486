"""`shopseq bench sessionize`: Spark against DuckDB on the same input and cores.

``shopseq bench sessionize --events 1000000,10000000``: for each size, generate
about that many events (``shopseq.jobs.stages.generate.write_generated``) and turn them into
bronze-shaped Parquet once, untimed (``shopseq.features.ingest.to_bronze``, or a
minimal mapping when the ingest code is absent). That Parquet is the input of
both engines, on the same number of cores:

* **Spark** (``local[n]``): read -> :func:`shopseq.features.sessionize.sessionize` ->
  silver events as Parquet (repeats removed and counted on the way) ->
  sessions from that silver as Parquet: the job's transforms, minus Delta.
  With ``shopseq.features.ingest.to_bronze`` available, also "spark + ingest": the
  same from the generator's raw Parquet through the ingest transform.
* **DuckDB** (``SET threads = n``, in a fresh process): the equivalent SQL
  (lag + running sums over one window per user, the same ids, indexes and
  flags) writing the same two Parquet outputs: the single-machine reference.

Reported per engine: wall seconds and events/s per core; CPU seconds used
(user + system, of the Python driver and its child processes, the JVM among
them, for Spark; of the DuckDB process for DuckDB) and events per CPU-second,
which other load on a shared machine distorts less; the Spark/DuckDB ratios of
both; peak resident memory, sampled every 50 ms in a background thread (JVM
shown apart). The two engines' outputs are cross-checked (row and session
counts, index and duration sums). Spark's per-stage task time, task CPU, GC,
shuffle and spill (from the status store) are kept in the JSON as the profile.
With ``--repeat k`` the engines alternate k times and the fastest run of each
is kept. Results: ``<app.data_root>/reports/bench_sessionize.md`` and ``.json``.
"""


from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import DataFrame, Observation, SparkSession

from shopseq.features.schema import EVENT_COLUMNS
from shopseq.features.sessionize import FUNNEL_ORDER, removal_metrics, sessionize, sessions_table, silver_events
from shopseq.jobs.bench.kit import Timing, as_dict, provenance, provenance_line, stage_profile, timed, write_report
from shopseq.jobs.catalog import catalog
from shopseq.jobs.common import InputError
from shopseq.jobs.config import Config, SessionizeConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- Spark


def spark_sessionize_to_parquet(bronze: DataFrame, cfg: SessionizeConfig, out_dir: str) -> dict[str, int]:
    """What the job computes, as plain Parquet: silver (repeats counted on the way), then sessions from that silver."""
    observed = Observation("bench-sessionize")
    flagged = bronze.transform(sessionize, cfg).observe(observed, *removal_metrics())
    silver_dir, sessions_dir = os.path.join(out_dir, "silver_events"), os.path.join(out_dir, "sessions")
    flagged.transform(silver_events).write.mode("overwrite").parquet(silver_dir)
    spark = bronze.sparkSession
    spark.read.parquet(silver_dir).transform(sessions_table).write.mode("overwrite").parquet(sessions_dir)
    return {k: int(v) for k, v in observed.get.items()}


def _ingest_transform() -> Callable[[DataFrame, Config], DataFrame] | None:
    """The ingest transform for generated events: :func:`shopseq.features.ingest.to_bronze` with the ``generated`` preset."""
    from shopseq.features.ingest import to_bronze
    from shopseq.jobs.sources import resolve_source

    return lambda raw, cfg: to_bronze(raw, cfg.ingest, resolve_source(cfg.source, "generated"))


def _run_spark(spark: SparkSession, cfg: Config, events_path: str, out_dir: str, n: int, cores: int, ingest: Callable | None) -> Timing:
    group = f"bench-sessionize-{'ingest-' if ingest else ''}{n}-{time.time_ns()}"
    spark.sparkContext.setJobGroup(group, group)

    def body() -> None:
        raw = spark.read.parquet(events_path)
        bronze = ingest(raw, cfg) if ingest else raw.select(*EVENT_COLUMNS)
        spark_sessionize_to_parquet(bronze, cfg.sessionize, out_dir)

    timing = timed("spark + ingest" if ingest else "spark", n, cores, True, body)
    spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    timing.stages = stage_profile(spark, group)
    return timing


# --------------------------------------------------------------------------- DuckDB

_RANK_SQL = "CASE event_type " + " ".join(f"WHEN '{t}' THEN {i}" for i, t in enumerate(FUNNEL_ORDER)) + f" ELSE {len(FUNNEL_ORDER)} END"
_ORDER = "_day, event_time, _rank, item_id, event_id"

# The rules of shopseq.features.sessionize in DuckDB SQL: the same ids, indexes and flags. {gap_us}, {cap} and
# {drop} are numbers/booleans formatted by duckdb_sessionize_to_parquet (never user text); the input
# files are a bound parameter. Running frames use DuckDB's default frame (RANGE ... CURRENT ROW):
# with event_id in the order key there are no peers, so it equals Spark's ROWS frame, and it is
# DuckDB's faster path.
_FLAGGED_SQL = """
CREATE OR REPLACE TEMP TABLE flagged AS
WITH base AS (
    SELECT {columns}, CAST(event_time AS DATE) AS _day, {rank} AS _rank FROM read_parquet($files)
), lagged AS (
    SELECT *, row_number() OVER w AS _rn, lag(event_time) OVER w AS _pt, lag(item_id) OVER w AS _pi, lag(event_type) OVER w AS _pe,
        count(*) OVER (PARTITION BY user_id, _day) > {cap} AS is_bot_suspect
    FROM base WINDOW w AS (PARTITION BY user_id ORDER BY {order})
), marked AS (
    SELECT * EXCLUDE (_pt, _pi, _pe, _new0), _new0 AS _new,
        {drop} AND NOT _new0 AND item_id = _pi AND event_type = _pe AS is_removed_repeat
    FROM (SELECT *, _pt IS NULL OR epoch_us(event_time) - epoch_us(_pt) > {gap_us} AS _new0 FROM lagged)
), numbered AS (
    SELECT *,
        CAST(sum(CAST(_new AS INTEGER)) OVER w - 1 AS INTEGER) AS session_index,
        last_value(CASE WHEN _new THEN sha256(user_id || chr(31) || event_id) END IGNORE NULLS) OVER w AS session_id,
        max(CASE WHEN _new THEN _rn END) OVER w AS _start_rn,
        sum(CAST(is_removed_repeat AS INTEGER)) OVER w AS _removed
    FROM marked WINDOW w AS (PARTITION BY user_id ORDER BY {order})
)
SELECT * EXCLUDE (_rn, _start_rn, _removed, _new, _day, _rank),
    CASE WHEN NOT is_removed_repeat THEN CAST(_rn - _start_rn - {removed_in_session} AS INTEGER) END AS event_index
FROM numbered {final_window}
"""
# Repeats removed since the session start: a third window pass, only when repeats can be removed (as in Spark).
_REMOVED_IN_SESSION = "(_removed - max(CASE WHEN _new THEN _removed END) OVER w)"
_FINAL_WINDOW = "WINDOW w AS (PARTITION BY user_id ORDER BY {order})"

_SESSIONS_SQL = """
SELECT user_id, session_id, session_index, min(event_time) AS session_start, max(event_time) AS session_end,
    (epoch_us(max(event_time)) - epoch_us(min(event_time))) / 1e6 AS duration_s,
    count(*) AS n_events,
    {funnel},
    count(*) FILTER (WHERE event_type = 'purchase') > 0 AS converted,
    bool_or(is_bot_suspect) AS is_bot_suspect,
    CAST(min(event_time) AS DATE) AS session_date
FROM flagged WHERE NOT is_removed_repeat GROUP BY user_id, session_id, session_index
"""


def _sql_path(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def duckdb_sessionize_to_parquet(con: Any, events_glob: str, cfg: SessionizeConfig, out_dir: str) -> None:
    """DuckDB's version of :func:`spark_sessionize_to_parquet`: the same two outputs as Parquet."""
    drop = cfg.drop_consecutive_repeats
    flagged = _FLAGGED_SQL.format(
        columns=", ".join(EVENT_COLUMNS),
        rank=_RANK_SQL,
        order=_ORDER,
        gap_us=int(round(cfg.gap_minutes * 60 * 1_000_000)),
        cap=int(cfg.max_events_per_user_day),
        drop="TRUE" if drop else "FALSE",
        removed_in_session=_REMOVED_IN_SESSION if drop else "0",
        final_window=_FINAL_WINDOW.format(order=_ORDER) if drop else "",
    )
    con.execute(flagged, {"files": events_glob})
    silver_cols = ", ".join(EVENT_COLUMNS + ["session_id", "session_index", "event_index", "is_bot_suspect"])
    os.makedirs(out_dir, exist_ok=True)
    con.execute(f"COPY (SELECT {silver_cols} FROM flagged WHERE NOT is_removed_repeat) TO {_sql_path(os.path.join(out_dir, 'silver_events.parquet'))} (FORMAT parquet)")
    funnel = ", ".join(f"count(*) FILTER (WHERE event_type = '{t}') AS n_{t}" for t in FUNNEL_ORDER)
    con.execute(f"COPY ({_SESSIONS_SQL.format(funnel=funnel)}) TO {_sql_path(os.path.join(out_dir, 'sessions.parquet'))} (FORMAT parquet)")
    con.execute("DROP TABLE flagged")


def _duckdb_worker(events_glob: str, cfg: SessionizeConfig, out_dir: str, n: int, threads: int, tmp_dir: str) -> Timing:
    """Runs in a fresh process, so DuckDB's memory is measured apart from Spark's driver."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")  # row order is not part of the output (nor is it in Spark): lets COPY write in parallel
    con.execute(f"SET temp_directory = {_sql_path(tmp_dir)}")
    try:
        return timed("duckdb", n, threads, False, lambda: duckdb_sessionize_to_parquet(con, events_glob, cfg, out_dir))
    finally:
        con.close()


def _run_duckdb(events_glob: str, cfg: SessionizeConfig, out_dir: str, n: int, threads: int, tmp_dir: str) -> Timing:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_duckdb_worker, events_glob, cfg, out_dir, n, threads, tmp_dir).result()


# --------------------------------------------------------------------------- checks and report


def _summarize_outputs(silver_glob: str, sessions_glob: str) -> dict[str, int]:
    """Counts and index sums of one engine's outputs (read with DuckDB, untimed)."""
    import duckdb

    con = duckdb.connect()
    try:
        s = con.execute(
            "SELECT count(*), sum(session_index), sum(event_index), count(*) FILTER (WHERE is_bot_suspect), count(DISTINCT session_id) FROM read_parquet(?)",
            [silver_glob],
        ).fetchone()
        t = con.execute("SELECT count(*), sum(n_events), count(*) FILTER (WHERE converted), sum(duration_s) FROM read_parquet(?)", [sessions_glob]).fetchone()
    finally:
        con.close()
    keys = ["silver_rows", "sum_session_index", "sum_event_index", "bot_rows", "distinct_session_ids", "sessions", "sum_n_events", "converted", "sum_duration_s"]
    return {k: int(round(v or 0)) for k, v in zip(keys, [*s, *t])}


def bronze_from_generated(raw: DataFrame) -> DataFrame:
    """A minimal raw -> bronze mapping for generated events, for the benchmark's shared input.

    Needs: the generator's columns (user_id, item_id, category_id, event_type,
    event_time, price, brand, session_hint). Adds: event_id (sha2 of the row's
    identity), source_session_id (= session_hint), event_date, ingest_batch.
    Not the ingest stage (no validation or quarantine): it only gives both
    engines the same bronze-shaped Parquet to sessionize.
    """
    from pyspark.sql import functions as F

    identity = F.concat_ws("\u001f", "user_id", "item_id", "event_type", F.unix_micros("event_time").cast("string"))
    return raw.select(
        F.sha2(identity, 256).alias("event_id"),
        "user_id",
        "event_time",
        "event_type",
        "item_id",
        "category_id",
        F.col("price").cast("double").alias("price"),
        "brand",
        F.col("session_hint").cast("string").alias("source_session_id"),
        F.to_date("event_time").alias("event_date"),
        F.lit("bench").alias("ingest_batch"),
    )


def bench_input(spark: SparkSession, cfg: Config, work: Path, n: int, regenerate: bool) -> dict[str, Any]:
    """Generated events for size ``n``, made once and reused: {raw, bronze, rows, ...}.

    ``bronze`` is the shared input of both engines: the generator's output
    through the ingest transform (:func:`shopseq.features.ingest.to_bronze`) when it is
    available, else through :func:`bronze_from_generated`.
    """
    manifest = work / "input.json"
    generate = json.loads(json.dumps(dataclasses.asdict(cfg.generate), default=str))  # as stored; an input made with another generator config is stale
    if manifest.is_file() and not regenerate:
        info = json.loads(manifest.read_text())
        if info.get("generate") == generate:
            log.info("reusing %d generated events at %s", info["rows"], info["bronze"])
            return info
        log.info("the generated events at %s were made with another generate config: regenerating", work)
    try:
        from shopseq.jobs.stages.generate import write_generated  # the generator stage (issue #3)
    except ImportError as exc:
        raise InputError(f"the event generator (shopseq.jobs.stages.generate.write_generated) is not available: {exc}") from None
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    gen = write_generated(spark, cfg, str(work / "input"), target_events=n)
    bronze = str(work / "bronze")
    ingest = _ingest_transform()
    raw = spark.read.parquet(gen["events"])
    (ingest(raw, cfg) if ingest else bronze_from_generated(raw)).write.mode("overwrite").parquet(bronze)
    rows = spark.read.parquet(bronze).count()
    info = {"raw": str(gen["events"]), "bronze": bronze, "rows": rows, "generated_rows": int(gen["rows"]), "bronze_by": "shopseq.features.ingest.to_bronze" if ingest else "bench.bronze_from_generated"}
    info["generate"] = generate
    log.info("generated %d events in %.1f s at %s", info["rows"], time.perf_counter() - start, bronze)
    manifest.write_text(json.dumps(info))
    return info


def _parquet_glob(path: str) -> str:
    return path if path.endswith(".parquet") else os.path.join(path, "**", "*.parquet")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per size and engine, under the line saying where the numbers come from."""
    cores = report["cores"]
    lines = [
        f"# bench sessionize ({cores} cores each: Spark local[{cores}], DuckDB threads={cores})",
        "",
        provenance_line(report, "sessionize"),
        "",
        "Throughput by wall time (events/s/core) and by CPU time used (events per CPU-second: less sensitive to",
        "other load on a shared machine). Ratios are Spark / DuckDB; the fastest of `repeat` alternating runs is kept.",
        "",
        "| events | engine | wall s | events/s/core | ratio (wall) | CPU s | events/CPU-s | ratio (CPU) | peak RSS GiB | outputs match |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in report["results"]:
        ref = res["duckdb"]
        for t in res["timings"]:
            jvm = f" (JVM {t['peak_jvm_rss_bytes'] / 2**30:.2f})" if t.get("peak_jvm_rss_bytes") else ""
            lines.append(
                f"| {t['events']:,} | {t['engine']} | {t['seconds']:.1f} | {t['events_per_s_per_core']:,.0f} | "
                f"{t['events_per_s_per_core'] / ref['events_per_s_per_core']:.2f}x | {t['cpu_s']:.1f} | {t['events_per_cpu_s']:,.0f} | "
                f"{t['events_per_cpu_s'] / ref['events_per_cpu_s']:.2f}x | {t['peak_rss_bytes'] / 2**30:.2f}{jvm} | {res['outputs_match']} |"
            )
    return "\n".join(lines) + "\n"


def bench_sessionize(
    spark: SparkSession, cfg: Config, sizes: list[int], regenerate: bool = False, with_ingest: bool = True, repeat: int = 1, docs: Path | None = None
) -> dict[str, Any]:
    """Run the Spark-vs-DuckDB sessionize benchmark for each size; write the report (also into ``docs``) and return it.

    Each engine runs ``repeat`` times, alternating; the fastest run of each is reported.
    """
    cores = spark.sparkContext.defaultParallelism
    cat = catalog(cfg)
    ingest = _ingest_transform() if with_ingest else None
    if with_ingest and ingest is None:
        log.warning("shopseq.features.ingest.to_bronze not available: timing sessionize only")
    results = []
    for n in sizes:
        work = Path(cat.bench("sessionize", str(n)))
        inp = bench_input(spark, cfg, work, n, regenerate)
        rows, events_path = inp["rows"], inp["bronze"]
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        # Warm-up on a slice (JIT, class loading), untimed, so the first size is not penalised.
        spark_sessionize_to_parquet(spark.read.parquet(events_path).limit(20_000), cfg.sessionize, str(out / "warmup"))
        duck = sp = sp_ingest = None
        for attempt in range(repeat):  # engines alternate, so background load hits both alike; best of `repeat` kept
            d = _run_duckdb(_parquet_glob(events_path), cfg.sessionize, str(out / "duckdb"), rows, cores, str(work / "duckdb_tmp"))
            log.info("duckdb: %d events in %.1f s (%.1f CPU s), run %d", rows, d.seconds, d.cpu_s, attempt + 1)
            r = _run_spark(spark, cfg, events_path, str(out / "spark"), rows, cores, None)
            log.info("spark: %d events in %.1f s (%.1f CPU s), run %d", rows, r.seconds, r.cpu_s, attempt + 1)
            duck = d if duck is None or d.seconds < duck.seconds else duck
            sp = r if sp is None or r.seconds < sp.seconds else sp
            if ingest is not None:  # from the raw generated Parquet, through the ingest transform
                i = _run_spark(spark, cfg, inp["raw"], str(out / "spark_ingest"), rows, cores, ingest)
                sp_ingest = i if sp_ingest is None or i.seconds < sp_ingest.seconds else sp_ingest
        assert duck is not None and sp is not None
        timings = [duck, sp] + ([sp_ingest] if sp_ingest is not None else [])
        duck.outputs = _summarize_outputs(str(out / "duckdb" / "silver_events.parquet"), str(out / "duckdb" / "sessions.parquet"))
        sp.outputs = _summarize_outputs(_parquet_glob(str(out / "spark" / "silver_events")), _parquet_glob(str(out / "spark" / "sessions")))
        match = duck.outputs == sp.outputs
        if not match:
            log.error("Spark and DuckDB outputs differ: %s vs %s", sp.outputs, duck.outputs)
        res = {
            "events": rows,
            "cores": cores,
            "input": inp,
            "repeat": repeat,
            "outputs_match": match,
            "timings": [as_dict(t) for t in timings],
            "duckdb": as_dict(duck),
            "spark_over_duckdb": sp.events_per_s_per_core / duck.events_per_s_per_core,
            "spark_over_duckdb_cpu": sp.events_per_cpu_s / duck.events_per_cpu_s,
        }
        results.append(res)
        log.info(
            "%d events: Spark %.0f events/s/core, DuckDB %.0f events/s/core: ratio %.2f (by CPU time %.2f)",
            rows, sp.events_per_s_per_core, duck.events_per_s_per_core, res["spark_over_duckdb"], res["spark_over_duckdb_cpu"],
        )  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / "duckdb_tmp", ignore_errors=True)
    report = {**provenance(cfg.spark), "benchmark": "sessionize", "cores": cores, "repeat": repeat, "results": results}
    md = write_report("sessionize", report, render_markdown, [cat.reports] + ([docs] if docs else []))
    log.info("bench sessionize results (%s):\n%s", Path(cat.reports) / "bench_sessionize.md", md)
    return report
