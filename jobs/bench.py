"""`shopseq bench <name>`: benchmarks reported as ratios against a reference engine in the same run.

Dispatch by name: ``sessionize`` is below; ``train`` runs
``jobs.bench_train.bench_train`` (the training stage's benchmark);
``features`` runs ``jobs.bench_features.bench_features`` (the
features stage: examples/s per core, bytes per example, peak memory);
``predict`` runs ``jobs.bench_predict.bench_predict`` (scoring through Spark
vs the same model's in-process inference).

``shopseq bench sessionize --events 1000000,10000000``: for each size, generate
about that many events (``jobs.generate.write_generated``) and turn them into
bronze-shaped Parquet once, untimed (``features.ingest.to_bronze``, or a
minimal mapping when the ingest code is absent). That Parquet is the input of
both engines, on the same number of cores:

* **Spark** (``local[n]``): read -> :func:`features.sessionize.sessionize` ->
  silver events as Parquet (repeats removed and counted on the way) ->
  sessions from that silver as Parquet: the job's transforms, minus Delta.
  With ``features.ingest.to_bronze`` available, also "spark + ingest": the
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
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import DataFrame, Observation, SparkSession

from features.schema import EVENT_COLUMNS
from features.sessionize import FUNNEL_ORDER, removal_metrics, sessionize, sessions_table, silver_events
from jobs.common import Context, InputError, run_stage, stage_parser
from jobs.config import Config, SessionizeConfig

log = logging.getLogger(__name__)

def build_parser():
    parser = stage_parser("bench", "Benchmarks reported as ratios against a reference engine in the same run.")
    parser.add_argument(
        "name",
        choices=["sessionize", "train", "features", "predict", "quality"],
        help="which benchmark ('sessionize'; 'train' runs jobs.bench_train; 'features' runs jobs.bench_features; 'predict' runs jobs.bench_predict; "
        "'quality' runs jobs.bench_quality: model vs baselines on the real samples, per protocol)",
    )
    parser.add_argument(
        "--events",
        default=None,
        help="sessionize: comma-separated event counts, e.g. 1000000,10000000 (default 1000000); train: build gold from this many generated events; "
        "features: comma-separated event counts (default 1000000,10000000)",
    )
    parser.add_argument("--regenerate", action="store_true", help="regenerate the input even when a previous run left it (sessionize, features, predict)")
    parser.add_argument("--rows", type=int, default=None, help="predict: windows to score (every user's latest window, replicated; default 100000)")
    parser.add_argument("--no-ingest", dest="ingest", action="store_false", help="skip the Spark ingest + sessionize timing")
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine (features: per timed step) and size, alternating; the fastest is reported (default 1)")
    parser.add_argument("--data-dir", default=None, help="quality: folder with the real samples (default ../shared/data beside the repo)")
    parser.add_argument("--samples", default=None, help="quality: comma-separated samples (default taobao,rees46,diginetica)")
    parser.add_argument("--protocols", default=None, help="quality: comma-separated protocol presets from conf/protocols (default recbole_loo,session,cutoff)")
    parser.add_argument("--peer", default=None, choices=["recbole"], help="quality: also run RecBole's SASRec and GRU4Rec on the recbole_loo split (needs `make peer-recbole`)")
    parser.add_argument("--docs", default=None, metavar="DIR", help="quality: also write the Markdown page and plot into DIR (e.g. docs/benchmarks)")
    return parser


# --------------------------------------------------------------------------- measuring


class PeakRss:
    """Peak resident memory and CPU time of this process (with ``children``: plus its JVM and Python workers), sampled in a thread."""

    def __init__(self, children: bool, interval_s: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self._children = children
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self.peak = 0
        self.peak_jvm = 0
        self.peak_self = 0
        self.others: dict[str, int] = {}  # peak RSS of other descendants, by process name
        self.cpu_s = 0.0  # CPU seconds (user + system) used between enter and exit
        self._cpu: dict[int, float] = {}

    def sample(self) -> int:
        import psutil

        total = own = self._proc.memory_info().rss
        jvm = 0
        if self._children:
            for child in self._proc.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    name = child.name() or ""
                except psutil.Error:
                    continue
                if "java" in name:
                    jvm += rss
                elif not name.startswith("python"):
                    # Short-lived helpers the JVM forks (jspawnhelper, chmod) briefly report the JVM's pages: not counted.
                    self.others[name] = max(self.others.get(name, 0), rss)
                    continue
                total += rss
        self.peak = max(self.peak, total)
        self.peak_jvm = max(self.peak_jvm, jvm)
        self.peak_self = max(self.peak_self, own)
        return total

    def _cpu_now(self) -> dict[int, float]:
        """CPU seconds so far of this process (and live descendants), by pid."""
        import psutil

        procs = [self._proc] + (self._proc.children(recursive=True) if self._children else [])
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            out[p.pid] = t.user + t.system
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakRss":
        self.sample()
        self._cpu = self._cpu_now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        end = self._cpu_now()
        # Processes started during the run (Python workers) count from zero; ended ones are missed (none expected).
        self.cpu_s = sum(v - self._cpu.get(pid, 0.0) for pid, v in end.items())


@dataclass
class Timing:
    engine: str
    events: int
    cores: int
    seconds: float
    cpu_s: float
    peak_rss_bytes: int
    peak_jvm_rss_bytes: int | None = None
    outputs: dict[str, int] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events_per_s_per_core(self) -> float:
        return self.events / self.seconds / self.cores

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / self.cpu_s if self.cpu_s else float("nan")


def _timed(engine: str, events: int, cores: int, children: bool, fn: Callable[[], None]) -> Timing:
    with PeakRss(children=children) as rss:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return Timing(engine, events, cores, seconds, rss.cpu_s, rss.peak, rss.peak_jvm if children else None)


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
    """The ingest transform for generated events, when features.ingest provides one."""
    try:
        from features import ingest  # written in parallel (issue #3); optional here
    except ImportError:
        return None
    return getattr(ingest, "to_bronze", None)


def _stage_profile(spark: SparkSession, group: str) -> list[dict[str, Any]]:
    """Per-stage timings of a job group from Spark's status store (no UI or event log needed)."""
    sc = spark.sparkContext
    store = sc._jsc.sc().statusStore()  # noqa: SLF001 - the status store has the per-stage metrics
    out = []
    for job_id in sorted(sc.statusTracker().getJobIdsForGroup(group)):
        info = sc.statusTracker().getJobInfo(job_id)
        for stage_id in sorted(info.stageIds if info else []):
            try:
                sd = store.lastStageAttempt(stage_id)
            except Exception:  # noqa: BLE001 - stage evicted from the store
                continue
            status = sd.status().toString()
            if status == "SKIPPED":
                continue
            sub, done = sd.submissionTime(), sd.completionTime()
            wall = (done.get().getTime() - sub.get().getTime()) / 1000 if sub.isDefined() and done.isDefined() else None
            out.append(
                {
                    "job": job_id,
                    "stage": stage_id,
                    "name": sd.name(),
                    "status": status,
                    "tasks": sd.numTasks(),
                    "wall_s": wall,
                    "executor_run_s": sd.executorRunTime() / 1000,
                    "executor_cpu_s": sd.executorCpuTime() / 1e9,
                    "gc_s": sd.jvmGcTime() / 1000,
                    "input_mb": sd.inputBytes() / 2**20,
                    "shuffle_read_mb": sd.shuffleReadBytes() / 2**20,
                    "shuffle_write_mb": sd.shuffleWriteBytes() / 2**20,
                    "spill_disk_mb": sd.diskBytesSpilled() / 2**20,
                }
            )
    return out


def _run_spark(spark: SparkSession, cfg: Config, events_path: str, out_dir: str, n: int, cores: int, ingest: Callable | None) -> Timing:
    group = f"bench-sessionize-{'ingest-' if ingest else ''}{n}-{time.time_ns()}"
    spark.sparkContext.setJobGroup(group, group)

    def body() -> None:
        raw = spark.read.parquet(events_path)
        bronze = ingest(raw, cfg) if ingest else raw.select(*EVENT_COLUMNS)
        spark_sessionize_to_parquet(bronze, cfg.sessionize, out_dir)

    timing = _timed("spark + ingest" if ingest else "spark", n, cores, True, body)
    spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    timing.stages = _stage_profile(spark, group)
    return timing


# --------------------------------------------------------------------------- DuckDB

_RANK_SQL = "CASE event_type " + " ".join(f"WHEN '{t}' THEN {i}" for i, t in enumerate(FUNNEL_ORDER)) + f" ELSE {len(FUNNEL_ORDER)} END"
_ORDER = "_day, event_time, _rank, item_id, event_id"

# The rules of features.sessionize in DuckDB SQL: the same ids, indexes and flags. {gap_us}, {cap} and
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
        return _timed("duckdb", n, threads, False, lambda: duckdb_sessionize_to_parquet(con, events_glob, cfg, out_dir))
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


def _input(spark: SparkSession, cfg: Config, work: Path, n: int, regenerate: bool) -> dict[str, Any]:
    """Generated events for size ``n``, made once and reused: {raw, bronze, rows, ...}.

    ``bronze`` is the shared input of both engines: the generator's output
    through the ingest transform (:func:`features.ingest.to_bronze`) when it is
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
        from jobs.generate import write_generated  # the generator stage (issue #3)
    except ImportError as exc:
        raise InputError(f"the event generator (jobs.generate.write_generated) is not available: {exc}") from None
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    gen = write_generated(spark, cfg, str(work / "input"), target_events=n)
    bronze = str(work / "bronze")
    ingest = _ingest_transform()
    raw = spark.read.parquet(gen["events"])
    (ingest(raw, cfg) if ingest else bronze_from_generated(raw)).write.mode("overwrite").parquet(bronze)
    rows = spark.read.parquet(bronze).count()
    info = {"raw": str(gen["events"]), "bronze": bronze, "rows": rows, "generated_rows": int(gen["rows"]), "bronze_by": "features.ingest.to_bronze" if ingest else "bench.bronze_from_generated"}
    info["generate"] = generate
    log.info("generated %d events in %.1f s at %s", info["rows"], time.perf_counter() - start, bronze)
    manifest.write_text(json.dumps(info))
    return info


def _parquet_glob(path: str) -> str:
    return path if path.endswith(".parquet") else os.path.join(path, "**", "*.parquet")


def _as_dict(t: Timing) -> dict[str, Any]:
    return asdict(t) | {"events_per_s_per_core": t.events_per_s_per_core, "events_per_cpu_s": t.events_per_cpu_s}


def render_markdown(results: list[dict[str, Any]], cores: int, load: str) -> str:
    """The results as a Markdown table (one row per size and engine)."""
    lines = [
        f"# bench sessionize ({cores} cores each: Spark local[{cores}], DuckDB threads={cores})",
        "",
        "Throughput by wall time (events/s/core) and by CPU time used (events per CPU-second: less sensitive to",
        f"other load on a shared machine; load average at the end: {load}). Ratios are Spark / DuckDB.",
        "",
        "| events | engine | wall s | events/s/core | ratio (wall) | CPU s | events/CPU-s | ratio (CPU) | peak RSS GiB | outputs match |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in results:
        ref = res["duckdb"]
        for t in res["timings"]:
            jvm = f" (JVM {t['peak_jvm_rss_bytes'] / 2**30:.2f})" if t.get("peak_jvm_rss_bytes") else ""
            lines.append(
                f"| {t['events']:,} | {t['engine']} | {t['seconds']:.1f} | {t['events_per_s_per_core']:,.0f} | "
                f"{t['events_per_s_per_core'] / ref['events_per_s_per_core']:.2f}x | {t['cpu_s']:.1f} | {t['events_per_cpu_s']:,.0f} | "
                f"{t['events_per_cpu_s'] / ref['events_per_cpu_s']:.2f}x | {t['peak_rss_bytes'] / 2**30:.2f}{jvm} | {res['outputs_match']} |"
            )
    return "\n".join(lines) + "\n"


def bench_sessionize(spark: SparkSession, cfg: Config, sizes: list[int], regenerate: bool = False, with_ingest: bool = True, repeat: int = 1) -> list[dict[str, Any]]:
    """Run the Spark-vs-DuckDB sessionize benchmark for each size; write and return the results.

    Each engine runs ``repeat`` times, alternating; the fastest run of each is reported.
    """
    cores = spark.sparkContext.defaultParallelism
    root = Path(cfg.app.data_root)
    ingest = _ingest_transform() if with_ingest else None
    if with_ingest and ingest is None:
        log.warning("features.ingest.to_bronze not available: timing sessionize only")
    results = []
    for n in sizes:
        work = root / "bench" / "sessionize" / str(n)
        inp = _input(spark, cfg, work, n, regenerate)
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
            "timings": [_as_dict(t) for t in timings],
            "duckdb": _as_dict(duck),
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
    reports = root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    md = render_markdown(results, cores, " ".join(f"{x:.1f}" for x in os.getloadavg()))
    (reports / "bench_sessionize.md").write_text(md)
    (reports / "bench_sessionize.json").write_text(json.dumps(results, indent=2, default=str))
    log.info("bench sessionize results (%s):\n%s", reports / "bench_sessionize.md", md)
    return results


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--events: expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise InputError(f"--events: expected positive event counts, got {text!r}")
    return sizes


def _run_train(ctx: Context) -> int:
    from jobs.bench_train import bench_train  # the training stage's benchmark
    sizes = _parse_sizes(ctx.args.events) if ctx.args.events else [None]
    if len(sizes) != 1:
        raise InputError("--events: bench train takes one event count")
    bench_train(ctx, sizes[0])
    return 0


def _run(ctx: Context) -> int:
    if ctx.args.name == "train":
        return _run_train(ctx)
    if ctx.args.name == "quality":
        from jobs.bench_quality import _run as run_quality  # model quality on the real samples (issue #14)

        return run_quality(ctx)
    if ctx.args.repeat < 1:
        raise InputError(f"--repeat: expected a positive count, got {ctx.args.repeat}")
    if ctx.args.name == "predict":
        from jobs.bench_predict import bench_predict  # the predict stage's benchmark (issue #6)

        sizes = _parse_sizes(ctx.args.events) if ctx.args.events else [None]
        if len(sizes) != 1 or (ctx.args.rows is not None and ctx.args.rows < 1):
            raise InputError("bench predict takes one --events count and a positive --rows")
        bench_predict(ctx, sizes[0], rows=ctx.args.rows, repeat=ctx.args.repeat)
        return 0
    if ctx.args.name == "features":
        from jobs.bench_features import bench_features  # the features stage's benchmark (issue #4)

        bench_features(ctx.spark, ctx.cfg, _parse_sizes(ctx.args.events or "1000000,10000000"), regenerate=ctx.args.regenerate, repeat=ctx.args.repeat)
        return 0
    bench_sessionize(ctx.spark, ctx.cfg, _parse_sizes(ctx.args.events or "1000000"), regenerate=ctx.args.regenerate, with_ingest=ctx.args.ingest, repeat=ctx.args.repeat)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
