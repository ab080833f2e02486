"""`shopseq bench bot`: a bot with a million events in one day, against the same pipeline without it.

``shopseq bench bot --events 1000000``: generate, in Taobao's CSV format and
inside Taobao's 9-day window (the ``conf/datasets/taobao.yaml`` layer's
ingest window, horizons and split boundaries),

* **background**: ``--users`` ordinary users (default 1,000), a few sessions
  each spread over the 9 days, about 18 events per user;
* **the bot**: one user with N events (``--events``) in one UTC day
  (2017-11-29), a few per second, every line distinct.

Then run the real stages in this process (``run_ingest``, ``run_sessionize``,
``run_features``, each into its own bench data root under
``<app.data_root>/bench/bot/<N>``, so no configured table is touched) twice:

1. **reference**: the background alone;
2. **bot**: the background plus the bot.

The reference goes first, after an untimed warm-up ingest of the background
(class loading, JIT), so the bot run's memory is not measured on a JVM the
reference has already grown, nor the reference's time on a cold one.

Per stage: wall seconds, CPU seconds and peak resident memory of the whole
process tree (this Python, its JVM and Python workers, sampled every 0.2 s by
:class:`HeapAndRss`), the JVM's peak heap in use (sampled with it, through
``Runtime.totalMemory - freeMemory``) against its maximum heap (set by
``spark.driver_memory``), and the app-lifetime peak ``JVMHeapMemory`` that
Spark's status store (what the REST API's ``/executors`` serves) recorded from
its heartbeats. Ratios bot / reference of wall time, throughput (input events
per second) and peak memory.

The outcome: events flagged ``is_bot_suspect`` (the sessionize stage's count
and the bot user's silver rows), the bot user's gold rows (expected 0), and
every other user's gold rows against the reference's, row for row
(``exceptAll`` both ways; expected 0 and 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from shopseq.jobs.bench.features import bench_config, spark_cores
from shopseq.jobs.bench.kit import PeakRss, provenance, provenance_line, write_report
from shopseq.jobs.catalog import GOLD, SILVER_EVENTS, catalog
from shopseq.jobs.config import Config, SourceConfig, default_conf_dir, load_config
from shopseq.jobs.tables import TableIO

log = logging.getLogger(__name__)

DEFAULT_BOT_EVENTS = 1_000_000
DEFAULT_USERS = 1_000
BOT_USER = "9999999"
BOT_DAY = datetime(2017, 11, 29, tzinfo=timezone.utc)  # one UTC day inside Taobao's window and its train range
WINDOW = (datetime(2017, 11, 24, 16, tzinfo=timezone.utc), datetime(2017, 12, 3, 16, tzinfo=timezone.utc))  # 2017-11-25 .. 12-03 in UTC+8
ITEMS, CATEGORIES = 4_999, 50
STAGES = ("ingest", "sessionize", "features")
SAMPLE_S = 0.2


class HeapAndRss(PeakRss):
    """:class:`shopseq.jobs.bench.kit.PeakRss` of the process tree, plus the JVM's heap in use, sampled together every ``interval_s``."""

    def __init__(self, spark: SparkSession, interval_s: float = SAMPLE_S) -> None:
        super().__init__(children=True, interval_s=interval_s)
        self._runtime = spark.sparkContext._jvm.java.lang.Runtime.getRuntime()  # noqa: SLF001 - the driver JVM's heap, through py4j
        self.max_heap = int(self._runtime.maxMemory())
        self.peak_heap = 0

    def sample(self) -> int:
        """One sample of the process tree's RSS (see PeakRss) and of the heap in use."""
        total = super().sample()
        try:
            self.peak_heap = max(self.peak_heap, int(self._runtime.totalMemory()) - int(self._runtime.freeMemory()))
        except Exception:  # noqa: BLE001 - the gateway closing at the very end: RSS still counts
            pass
        return total


# --------------------------------------------------------------------------- input


def _unix(t: datetime) -> int:
    return int(t.timestamp())


def background_lines(users: int, seed: int = 17) -> list[str]:
    """Taobao lines of ``users`` ordinary users: 2 to 5 sessions each over the 9-day window, 3 to 8 events per session.

    Items are skewed (a few popular ones), behaviours mostly ``pv`` with some
    ``fav``, ``cart`` and ``buy``; a user's times strictly increase, so every
    line is distinct. Never more than 40 events a user in all.
    """
    rng = random.Random(seed)
    lo, hi = _unix(WINDOW[0]), _unix(WINDOW[1]) - 4 * 3600
    lines = []
    for u in range(users):
        user = str(1_000_000 + u)
        starts = sorted(rng.randrange(lo, hi) for _ in range(rng.randint(2, 5)))
        t = lo
        for start in starts:
            t = max(t + 3600, start)
            for _ in range(rng.randint(3, 8)):
                item = min(int(rng.paretovariate(1.2)), ITEMS)
                behavior = rng.choices(("pv", "fav", "cart", "buy"), weights=(85, 3, 8, 4))[0]
                lines.append(f"{user},{item},{item % CATEGORIES},{behavior},{t}\n")
                t += rng.randint(10, 300)
    return lines


def bot_lines(n: int) -> list[str]:
    """``n`` Taobao lines of one user (:data:`BOT_USER`) in one UTC day (:data:`BOT_DAY`), evenly spread, every line distinct.

    Items cycle through the catalogue (``ITEMS`` of them, more than the events
    of any one second), every hundredth event a ``cart``.
    """
    day = _unix(BOT_DAY)
    out = []
    for k in range(n):
        item = k % ITEMS + 1
        out.append(f"{BOT_USER},{item},{item % CATEGORIES},{'cart' if k % 100 == 99 else 'pv'},{day + k * 86_400 // n}\n")
    return out


def write_inputs(work: Path, bot_events: int, users: int) -> dict[str, Any]:
    """The two input folders under ``work/input``: ``background`` (its CSV) and ``with_bot`` (the same CSV, plus the bot's)."""
    shutil.rmtree(work / "input", ignore_errors=True)
    background, with_bot = work / "input" / "background", work / "input" / "with_bot"
    background.mkdir(parents=True)
    with_bot.mkdir(parents=True)
    bg = background_lines(users)
    (background / "background.csv").write_text("".join(bg))
    shutil.copyfile(background / "background.csv", with_bot / "background.csv")
    (with_bot / "bot.csv").write_text("".join(bot_lines(bot_events)))
    return {"background": str(background), "with_bot": str(with_bot), "background_lines": len(bg), "bot_lines": bot_events, "users": users}


# --------------------------------------------------------------------------- one run


def taobao_config(cfg: Config, args: argparse.Namespace | None) -> Config:
    """``cfg`` with the ingest window, horizons and split boundaries of the Taobao dataset layer (``--set`` still wins)."""
    args = args or argparse.Namespace()
    conf_dir = getattr(args, "conf_dir", None)
    layer = (Path(conf_dir) if conf_dir else default_conf_dir()) / "datasets" / "taobao.yaml"
    layered = load_config(getattr(args, "env", "local"), conf_dir, getattr(args, "overrides", None) or (), [str(layer), *(getattr(args, "conf_files", None) or ())])
    return dataclasses.replace(cfg, ingest=layered.ingest, features=layered.features)


def run_config(cfg: Config, root: str, input_dir: str) -> Config:
    """The bench config of one run: its own data root and tables under ``root``, the Taobao input folder."""
    return dataclasses.replace(bench_config(cfg, root, input_dir), source=SourceConfig(format="taobao", path=input_dir))


def _measure(spark: SparkSession, events: int, cores: int, fn: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """Run ``fn`` under :class:`HeapAndRss`: its wall and CPU seconds, peak RSS (tree and JVM), peak heap; and fn's result."""
    with HeapAndRss(spark) as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    timing = {
        "events": events,
        "seconds": seconds,
        "cpu_s": mem.cpu_s,
        "events_per_s_per_core": events / seconds / cores,
        "peak_rss_bytes": mem.peak,
        "peak_jvm_rss_bytes": mem.peak_jvm,
        "peak_heap_bytes": mem.peak_heap,
        "max_heap_bytes": mem.max_heap,
    }
    return timing, out


def count_lines(folder: Path) -> int:
    """Lines in every file of ``folder`` (what ingest reads)."""
    total = 0
    for path in folder.iterdir():
        with path.open("rb") as f:
            total += sum(1 for _ in f)
    return total


def run_pipeline(spark: SparkSession, cfg: Config, root: str, input_dir: str) -> dict[str, Any]:
    """Ingest, sessionize and features of ``input_dir`` into a fresh data root ``root``, each stage measured; the run's figures and outcome."""
    from shopseq.jobs.stages.build_features import run_features
    from shopseq.jobs.stages.ingest import run_ingest
    from shopseq.jobs.stages.sessionize import run_sessionize

    shutil.rmtree(root, ignore_errors=True)
    rcfg = run_config(cfg, root, input_dir)
    tables = TableIO(spark, rcfg)
    cores = spark_cores(spark)
    lines = count_lines(Path(input_dir))
    ingest_t, ingest = _measure(spark, lines, cores, lambda: run_ingest(tables, rcfg, input_path=input_dir, fmt="taobao"))
    log.info("bench bot %s: ingest %d lines in %.1f s", Path(root).name, lines, ingest_t["seconds"])
    sess_t, sess = _measure(spark, int(ingest["accepted"]), cores, lambda: run_sessionize(tables, rcfg, force=True, plot=False))
    log.info("bench bot %s: sessionize %d events in %.1f s (%d bot-suspect events)", Path(root).name, sess["input_events"], sess_t["seconds"], sess["bot_suspect_events"])
    feat_t, artifact = _measure(spark, int(sess["events"]), cores, lambda: run_features(tables, rcfg, force=True))
    log.info("bench bot %s: features %d events in %.1f s", Path(root).name, sess["events"], feat_t["seconds"])
    bot = tables.read(SILVER_EVENTS).where(F.col("user_id") == BOT_USER).agg(
        F.count(F.lit(1)).alias("rows"), F.coalesce(F.sum(F.col("is_bot_suspect").cast("long")), F.lit(0)).alias("flagged")
    ).head()  # fmt: skip
    bot_key = F.xxhash64(F.lit(BOT_USER))  # gold's user_key is xxhash64(user_id)
    outcome = {
        "input_lines": int(ingest["input_lines"]),
        "accepted": int(ingest["accepted"]),
        "quarantined": int(ingest["quarantined"]),
        "duplicates": int(ingest["duplicates"]),
        "bot_suspect_events": int(sess["bot_suspect_events"]),
        "bot_suspect_sessions": int(sess["bot_suspect_sessions"]),
        "silver_events": int(sess["events"]),
        "bot_user_silver_events": int(bot["rows"]),
        "bot_user_flagged_events": int(bot["flagged"]),
        "gold_examples": {split: int(artifact["tables"][split]["rows"]) for split in GOLD},
        "bot_user_gold_rows": sum(tables.read(name).where(F.col("user_key") == bot_key).count() for name in GOLD.values()),
    }
    return {"root": root, "stages": {"ingest": ingest_t, "sessionize": sess_t, "features": feat_t}, "outcome": outcome}


def gold_differences(spark: SparkSession, cfg: Config, a_root: str, b_root: str) -> dict[str, list[int]]:
    """Per split, [rows only in run a, rows only in run b] of the gold tables of two bench roots (exceptAll both ways)."""
    a, b = TableIO(spark, run_config(cfg, a_root, a_root)), TableIO(spark, run_config(cfg, b_root, b_root))
    out = {}
    for split, name in GOLD.items():
        ga, gb = a.read(name), b.read(name)
        out[split] = [ga.exceptAll(gb).count(), gb.exceptAll(ga).count()]
    return out


def status_store_peak_heap(spark: SparkSession) -> int | None:
    """The app-lifetime peak ``JVMHeapMemory`` of the driver's executor in Spark's status store (what the REST API's /executors serves), or None."""
    try:
        store = spark.sparkContext._jsc.sc().statusStore()  # noqa: SLF001 - the REST API's data, with the UI off
        executors = store.executorList(True)
        peaks = []
        for i in range(executors.size()):
            metrics = executors.apply(i).peakMemoryMetrics()
            if metrics.isDefined():
                peaks.append(int(metrics.get().getMetricValue("JVMHeapMemory")))
        return max(peaks) if peaks else None
    except Exception:  # noqa: BLE001 - an internal API: the sampled heap is the figure, this only a cross-check
        log.debug("no executor peak metrics in the status store", exc_info=True)
        return None


# --------------------------------------------------------------------------- the benchmark


def _ratios(ref: dict[str, Any], bot: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per stage and in all, bot / reference: wall time, throughput (input events/s), peak RSS of the tree, peak heap."""
    out = {}
    for stage in STAGES:
        r, b = ref["stages"][stage], bot["stages"][stage]
        out[stage] = {
            "seconds": b["seconds"] / r["seconds"],
            "events_per_s": b["events_per_s_per_core"] / r["events_per_s_per_core"],
            "peak_rss": b["peak_rss_bytes"] / r["peak_rss_bytes"],
            "peak_heap": b["peak_heap_bytes"] / r["peak_heap_bytes"] if r["peak_heap_bytes"] else float("nan"),
        }
    total = lambda run, key: sum(run["stages"][s][key] for s in STAGES)  # noqa: E731
    peak = lambda run, key: max(run["stages"][s][key] for s in STAGES)  # noqa: E731
    out["pipeline"] = {
        "seconds": total(bot, "seconds") / total(ref, "seconds"),
        "events_per_s": (bot["outcome"]["input_lines"] / total(bot, "seconds")) / (ref["outcome"]["input_lines"] / total(ref, "seconds")),
        "peak_rss": peak(bot, "peak_rss_bytes") / peak(ref, "peak_rss_bytes"),
        "peak_heap": peak(bot, "peak_heap_bytes") / peak(ref, "peak_heap_bytes") if peak(ref, "peak_heap_bytes") else float("nan"),
    }
    return out


def bench_bot(
    spark: SparkSession, cfg: Config, bot_events: int = DEFAULT_BOT_EVENTS, users: int = DEFAULT_USERS, args: argparse.Namespace | None = None, docs: Path | None = None
) -> dict[str, Any]:
    """Run the bot benchmark (see the module docstring); write ``reports/bench_bot.{json,md}`` (also into ``docs``) and return the report."""
    from shopseq.jobs.stages.ingest import run_ingest

    cat = catalog(cfg)
    tcfg = taobao_config(cfg, args)
    work = Path(cat.bench("bot", str(bot_events)))
    inputs = write_inputs(work, bot_events, users)
    log.info("bench bot: %d background lines of %d users, %d bot events, cap %d events per user-day", inputs["background_lines"], users, bot_events,
             tcfg.sessionize.max_events_per_user_day)  # fmt: skip
    warm = run_config(tcfg, str(work / "warmup"), inputs["background"])
    run_ingest(TableIO(spark, warm), warm, input_path=inputs["background"], fmt="taobao")  # untimed: class loading and JIT
    shutil.rmtree(work / "warmup", ignore_errors=True)
    reference = run_pipeline(spark, tcfg, str(work / "reference"), inputs["background"])
    bot = run_pipeline(spark, tcfg, str(work / "bot"), inputs["with_bot"])
    result = {
        "bot_events": bot_events,
        "bot_user": BOT_USER,
        "bot_day": BOT_DAY.date().isoformat(),
        "max_events_per_user_day": tcfg.sessionize.max_events_per_user_day,
        "drop_bot_suspects": tcfg.features.drop_bot_suspects,
        "cores": spark_cores(spark),
        "sample_interval_s": SAMPLE_S,
        "inputs": inputs,
        "reference": reference,
        "bot": bot,
        "ratios": _ratios(reference, bot),
        "gold_differences": gold_differences(spark, tcfg, reference["root"], bot["root"]),
        "status_store_peak_jvm_heap_bytes": status_store_peak_heap(spark),
    }
    report = {**provenance(cfg.spark), "benchmark": "bot", "results": [result]}
    md = write_report("bot", report, render_markdown, [Path(cat.reports)] + ([docs] if docs else []))
    log.info("bench bot results (%s):\n%s", Path(cat.reports) / "bench_bot.md", md)
    return report


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.2f}" if n else "n/a"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: per stage the two runs side by side with their ratios, then the outcome."""
    lines = ["# bench bot: one user with a million events in a day, against the same pipeline without it", "", provenance_line(report, "bot"), ""]
    for r in report["results"]:
        ref, bot, ratios = r["reference"], r["bot"], r["ratios"]
        o, ro = bot["outcome"], ref["outcome"]
        lines += [
            f"Input (Taobao CSV): {r['inputs']['background_lines']:,} lines of {r['inputs']['users']:,} ordinary users over 9 days (the reference), "
            f"plus {r['bot_events']:,} events of user {r['bot_user']} on {r['bot_day']} (UTC) in the bot run; "
            f"`sessionize.max_events_per_user_day` {r['max_events_per_user_day']:,}, `features.drop_bot_suspects` {str(r['drop_bot_suspects']).lower()}. "
            f"Spark local[{r['cores']}], both runs in one process (reference first, after an untimed warm-up ingest); "
            f"memory sampled every {r['sample_interval_s']} s. Peak RSS is the whole process tree's (driver Python, JVM, Python workers); "
            "a JVM seldom returns memory, so a stage's RSS includes what earlier stages (for the bot run, the reference too) grew it to, "
            "while the heap in use (`Runtime.totalMemory - freeMemory`: garbage counts until it is collected) is the stage's own.",
            "",
            "| stage | run | input events | wall s | CPU s | events/s/core | peak RSS GiB (JVM) | peak heap GiB / max heap |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for stage in STAGES:
            for name, run in (("reference", ref), ("bot", bot)):
                t = run["stages"][stage]
                lines.append(
                    f"| {stage} | {name} | {t['events']:,} | {t['seconds']:.1f} | {t['cpu_s']:.1f} | {t['events_per_s_per_core']:,.0f} | "
                    f"{_gib(t['peak_rss_bytes'])} ({_gib(t['peak_jvm_rss_bytes'])}) | {_gib(t['peak_heap_bytes'])} / {_gib(t['max_heap_bytes'])} |"
                )
        lines += [
            "",
            "Ratios bot / reference (throughput: input events per second):",
            "",
            "| stage | wall time | throughput | peak RSS | peak heap |",
            "|---|---:|---:|---:|---:|",
        ]
        for stage in (*STAGES, "pipeline"):
            x = ratios[stage]
            lines.append(f"| {stage} | {x['seconds']:.2f}x | {x['events_per_s']:.2f}x | {x['peak_rss']:.2f}x | {x['peak_heap']:.2f}x |")
        diffs = r["gold_differences"]
        examples = lambda run: " / ".join(f"{run['gold_examples'][s]:,}" for s in GOLD)  # noqa: E731
        lines += [
            "",
            "Outcome:",
            "",
            f"- ingest: {o['input_lines']:,} lines, {o['accepted']:,} accepted, {o['quarantined']:,} quarantined, {o['duplicates']:,} duplicates "
            f"(reference: {ro['input_lines']:,} lines, {ro['accepted']:,} accepted).",
            f"- sessionize: {o['bot_suspect_events']:,} events flagged `is_bot_suspect` in {o['bot_suspect_sessions']:,} session(s) "
            f"(reference: {ro['bot_suspect_events']:,}); the bot user's silver events: {o['bot_user_silver_events']:,}, flagged {o['bot_user_flagged_events']:,}.",
            f"- features: the bot user's gold rows: {o['bot_user_gold_rows']:,}; gold examples (train / val / test) "
            f"{examples(o)} against the reference's {examples(ro)}; "
            f"rows in only one of the two runs' gold tables: {', '.join(f'{s} {a} + {b}' for s, (a, b) in diffs.items())}.",
            f"- the JVM's peak heap in use, app lifetime, from Spark's status store (heartbeats, every 10 s): {_gib(r['status_store_peak_jvm_heap_bytes'])} GiB.",
        ]
    return "\n".join(lines) + "\n"
