"""`shopseq bench scale`: per-core throughput of the Spark stages at several sizes, and a projection to 1B events a day.

``shopseq bench scale --events 1000000,3000000,10000000``: for each size, on the
session's Spark (``local[n]``, or a cluster when started by spark-submit):

1. **input** (cached): about N generated events (shared with ``bench
   sessionize``, :func:`shopseq.jobs.bench.sessionize.bench_input`);
2. **ingest**, **sessionize**, **features** (each timed, from scratch into a
   bench-local data root ``<app.data_root>/bench/scale/<N>``): the real jobs
   with their Delta commits.

Per stage and size: wall seconds, input rows, rows/s per core (cores: the
``n`` of ``local[n]``, else Spark's default parallelism = the executors'
cores). Per stage over the sizes: a least-squares line ``seconds = fixed +
per_row x rows`` (the fixed part: job start, Delta log, small-file overhead;
the slope: what each further row costs; when the sizes are too small to show
a slope above zero, the largest size's seconds per row stand in, an upper
bound), and the **scaling ratio** measured
in the same run: rows/s per core at the largest size over the smallest
(1.0 = linear; below 1 = a stage that slows as data grows).

The projection (``--target-events``, default 1e9 a day; ``--window-hours``,
default 2) is arithmetic on those lines, with its assumptions in the report:
core-seconds a day = slope x cores x events (the fixed part is paid once a
run), and cores to finish inside the window = that / window seconds. It
assumes per-core throughput holds as cores are added (measured here on the
cores this run had, not on a large cluster), events shaped like the
generator's (bots capped by ``sessionize.max_events_per_user_day``), and
storage whose bandwidth grows with the cluster (object storage). Training
and prediction scale with examples and users rather than raw events and have
their own benches (``bench train``, ``bench predict``).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from shopseq.jobs.bench.features import bench_config, spark_cores
from shopseq.jobs.bench.sessionize import bench_input
from shopseq.jobs.bench.kit import provenance, provenance_line, timed, write_report
from shopseq.jobs.catalog import catalog
from shopseq.jobs.config import Config
from shopseq.jobs.tables import TableIO

log = logging.getLogger(__name__)

DEFAULT_SIZES = (1_000_000, 3_000_000, 10_000_000)
WARMUP_EVENTS = 20_000  # at most: an untimed first pass (JIT, class loading) on half the smallest size, so it is not penalised
STAGES = ("ingest", "sessionize", "features")
ASSUMPTIONS = (
    "per-core throughput holds as cores are added (the slope measured on this run's cores, not on a large cluster)",
    "events shaped like the generator's: users' event counts, sessions and items; bots capped by sessionize.max_events_per_user_day",
    "storage bandwidth grows with the cluster (object storage), and shuffle partitions are set for the data size",
    "the fixed part of each stage (job start, Delta log, small files) is paid once a run, not per core",
    "training and prediction are sized separately (bench train, bench predict): they scale with examples and users, not raw events",
)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = fixed + slope x``; with one point, the line through the origin."""
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


def project(stages: dict[str, dict[str, Any]], cores: int, target_events: float, window_hours: float) -> dict[str, Any]:
    """Core-seconds a day, cores for the window and wall time per stage from each stage's fitted line (see the module docstring)."""
    out: dict[str, Any] = {"target_events": target_events, "window_hours": window_hours, "stages": {}}
    total_core_s = total_fixed = 0.0
    for name, s in stages.items():
        # Rows into a stage per input event (ingest and sessionize see every event; features sees silver's).
        rows = target_events * s["rows_per_event"]
        core_s = s["projected_per_row_s"] * cores * rows
        out["stages"][name] = {"rows": rows, "core_seconds": core_s, "fixed_s": s["fixed_s"]}
        total_core_s += core_s
        total_fixed += max(s["fixed_s"], 0.0)
    window_s = window_hours * 3600
    out["core_seconds"] = total_core_s
    out["core_hours"] = total_core_s / 3600
    out["fixed_s"] = total_fixed
    out["cores_for_window"] = math.ceil(total_core_s / max(window_s - total_fixed, 1.0))
    out["wall_hours_on_cores"] = {str(c): (total_fixed + total_core_s / c) / 3600 for c in (8, 32, 128, 512)}
    return out


def _bench_size(spark: SparkSession, cfg: Config, n: int, cores: int, regenerate: bool) -> dict[str, Any]:
    """Each stage timed from scratch on about ``n`` generated events; {size: n, events (generated), examples, stages: {name: timing}}."""
    from shopseq.jobs.stages.build_features import run_features
    from shopseq.jobs.stages.ingest import run_ingest
    from shopseq.jobs.stages.sessionize import run_sessionize

    cat = catalog(cfg)
    inp = bench_input(spark, cfg, Path(cat.bench("sessionize", str(n))), n, regenerate)
    bcfg = bench_config(cfg, cat.bench("scale", str(n)), inp["raw"])
    shutil.rmtree(bcfg.app.data_root, ignore_errors=True)
    tables = TableIO(spark, bcfg)
    out: dict[str, Any] = {}
    rows = {"ingest": inp["rows"]}
    log.info("bench scale %d: [1/3] ingest", n)
    t = timed("ingest", rows["ingest"], cores, True, lambda: out.setdefault("ingest", run_ingest(tables, bcfg, input_path=inp["raw"], fmt="generated")))
    timings = {"ingest": t}
    rows["sessionize"] = int(out["ingest"]["accepted"])
    log.info("bench scale %d: [2/3] sessionize (%d events)", n, rows["sessionize"])
    timings["sessionize"] = timed("sessionize", rows["sessionize"], cores, True, lambda: out.setdefault("sessionize", run_sessionize(tables, bcfg, force=True, plot=False)))
    rows["features"] = int(out["sessionize"]["events"])
    log.info("bench scale %d: [3/3] features (%d events)", n, rows["features"])
    timings["features"] = timed("features", rows["features"], cores, True, lambda: out.setdefault("features", run_features(tables, bcfg, force=True)))
    examples = sum(int(t["rows"]) for t in out["features"]["tables"].values())
    stages = {
        name: {"rows": rows[name], "seconds": t.seconds, "cpu_s": t.cpu_s, "rows_per_s_per_core": t.events_per_s_per_core, "peak_rss_bytes": t.peak_rss_bytes}
        for name, t in timings.items()
    }
    for name, s in stages.items():
        log.info("  %-10s %9d rows %7.1f s %9.0f rows/s/core", name, s["rows"], s["seconds"], s["rows_per_s_per_core"])
    return {"size": n, "events": inp["rows"], "examples": examples, "stages": stages}


def summarize(results: list[dict[str, Any]], cores: int) -> dict[str, dict[str, Any]]:
    """Per stage over the sizes: the fitted line, rows per input event and the scaling ratio (largest size over smallest)."""
    out = {}
    for name in STAGES:
        xs = [float(r["stages"][name]["rows"]) for r in results]
        ys = [r["stages"][name]["seconds"] for r in results]
        fixed, slope = fit_line(xs, ys)
        small, large = results[0]["stages"][name], results[-1]["stages"][name]
        out[name] = {
            "fixed_s": fixed,
            "per_row_s": slope,
            # What the projection uses: the slope, or (no slope above zero) the largest size's seconds per row, an upper bound.
            "projected_per_row_s": slope if slope > 0 else large["seconds"] / large["rows"],
            # None when the sizes cannot separate the per-row cost from the fixed cost (a flat or falling line).
            "marginal_rows_per_s_per_core": 1 / (slope * cores) if slope > 0 else None,
            "rows_per_event": sum(r["stages"][name]["rows"] for r in results) / sum(r["events"] for r in results),
            "scaling_ratio": large["rows_per_s_per_core"] / small["rows_per_s_per_core"],
        }
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the measured sizes, the fitted lines, then the projection and its assumptions."""
    results, cores, p = report["results"], report["cores"], report["projection"]
    lines = [
        f"# bench scale (Spark {report['spark']['master']}, {cores} cores)",
        "",
        provenance_line(report, "scale", report_name(report["spark"]["master"])),
        "",
        # Under spark-submit the driver's JVM starts the Python process and executors are their workers' children: the sampled
        # process tree is the driver's Python alone.
        f"| events | stage | rows in | wall s | rows/s/core | {'peak RSS GiB' if report['spark']['master'].startswith('local') else 'peak RSS GiB of the driver Python'} |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for name in STAGES:
            s = r["stages"][name]
            lines.append(f"| {r['events']:,} | {name} | {s['rows']:,} | {s['seconds']:.1f} | {s['rows_per_s_per_core']:,.0f} | {s['peak_rss_bytes'] / 2**30:.2f} |")
    lines += [
        "",
        "Per stage, the least-squares line `seconds = fixed + per_row x rows` over the sizes, and the scaling ratio "
        "(rows/s/core at the largest size over the smallest, measured in this run; 1.0 = linear):",
        "",
        "| stage | fixed s | marginal rows/s/core | rows per input event | scaling ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in report["stages"].items():
        marginal = f"{m:,.0f}" if (m := s["marginal_rows_per_s_per_core"]) else "n/a (no slope above 0: the largest size's rate stands in)"
        lines.append(f"| {name} | {s['fixed_s']:.1f} | {marginal} | {s['rows_per_event']:.3f} | {s['scaling_ratio']:.2f}x |")
    lines += [
        "",
        f"Projection for {p['target_events']:,.0f} events a day: {p['core_hours']:,.1f} core-hours of ingest + sessionize + features; "
        f"{p['cores_for_window']:,} cores to finish inside {p['window_hours']:g} h (fixed parts {p['fixed_s']:.0f} s included). "
        "Wall hours by cluster size: " + ", ".join(f"{c} cores {h:.2f} h" for c, h in p["wall_hours_on_cores"].items()) + ".",
        "",
        "Assumptions:",
        "",
        *[f"- {a}" for a in report["assumptions"]],
    ]
    return "\n".join(lines) + "\n"


def report_name(master: str) -> str:
    """``scale`` for a ``local[n]`` run, ``scale_cluster`` for one on a cluster master: the two reports sit side by side."""
    return "scale" if master.startswith("local") else "scale_cluster"


def bench_scale(
    spark: SparkSession, cfg: Config, sizes: list[int] | tuple[int, ...] = DEFAULT_SIZES, target_events: float = 1e9, window_hours: float = 2.0,
    regenerate: bool = False, docs: Path | None = None, warmup: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run every size, fit each stage, project; write ``reports/bench_<report_name>.{md,json}`` (also into ``docs``) and return the report.

    ``warmup``: events of an untimed first pass (default half the smallest size, at most :data:`WARMUP_EVENTS`; 0: none).
    """
    cores = spark_cores(spark)
    started = time.perf_counter()
    warmup = min(WARMUP_EVENTS, min(sizes) // 2) if warmup is None else warmup
    if warmup:
        log.info("bench scale: untimed warm-up on %d events", warmup)
        _bench_size(spark, cfg, warmup, cores, regenerate)
    results = [_bench_size(spark, cfg, n, cores, regenerate) for n in sorted(sizes)]
    stages = summarize(results, cores)
    report = {
        "benchmark": "scale",
        "cores": cores,
        "results": results,
        "stages": stages,
        "projection": project(stages, cores, target_events, window_hours),
        "assumptions": list(ASSUMPTIONS),
        "seconds": time.perf_counter() - started,
    } | provenance(cfg.spark)
    report["spark"]["master"] = spark.sparkContext.master  # the master this run had (spark-submit may set it)
    out_dirs = [catalog(cfg).reports] + ([docs] if docs else [])
    name = report_name(report["spark"]["master"])
    md = write_report(name, report, render_markdown, out_dirs)
    log.info("bench scale results (%s/bench_%s.md):\n%s", out_dirs[0], name, md)
    return report
