"""`shopseq bench features`: the features stage's examples/s per core, bytes per example and peak memory.

``shopseq bench features --events 1000000,10000000``: for each size,

1. **input** (cached): about N generated events, shared with ``bench
   sessionize`` (``<app.data_root>/bench/sessionize/<N>``, made once by
   :func:`shopseq.jobs.bench.sessionize.bench_input`; ``--regenerate`` remakes it);
2. **bronze** (cached, untimed): ``run_ingest`` of that raw Parquet into a
   bench-local data root, ``<app.data_root>/bench/features/<N>`` (its own
   tables whatever ``tables.*`` says, so the bench never touches real
   tables); redone only when the input changed;
3. **sessionize** (timed: the reference): ``run_sessionize`` bronze -> silver
   + sessions, the real job with its Delta commits;
4. **features** (timed: the measured stage): ``run_features`` silver ->
   vocab + gold_train/val/test + schema, the real job, into emptied tables;
5. **gold copy** (timed: the I/O floor): a plain Spark Parquet read + write
   of the gold files just written (the same rows and bytes, no computation).

Each timed step records wall seconds, CPU seconds of the driver Python and
its children (the JVM, Python workers) and their peak resident memory
(:class:`jobs.bench.PeakRss`), plus Spark's per-stage profile in the JSON.
Reported per size: examples written (total and per split, from the gold
commits), examples/s per core (cores: the ``n`` of ``spark.master``
``local[n]``, else Spark's default parallelism), bytes per example (the
gold snapshot's Parquet file sizes / examples) and peak memory; and two ratios
measured in the same run, on the same cores:

* **features / sessionize** in input events/s per core (silver events into
  features, bronze events into sessionize): how much more each event costs in
  the features job than in the already benchmarked sessionize job (whose own
  reference is DuckDB, see ``bench sessionize``); both are real jobs with
  Delta commits, so the ratio is like for like and load on a shared machine
  hits both alike;
* **features / gold copy** in examples/s per core: how far the job is from
  merely reading and writing its output.

With ``--repeat k`` the three timed steps run k times in turn and the fastest
of each is kept. Results: ``<app.data_root>/reports/bench_features.md`` and
``.json`` (beside the other benches' reports).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from pyspark.sql import SparkSession

from shopseq.features.splits import SPLITS
from shopseq.jobs.bench.sessionize import bench_input, spark_sessionize_to_parquet
from shopseq.jobs.bench.kit import Timing, as_dict, provenance, provenance_line, stage_profile, timed, write_report
from shopseq.jobs.catalog import GOLD, SESSIONS, SILVER_EVENTS, VOCAB, catalog
from shopseq.jobs.config import Config, SourceConfig
from shopseq.jobs.tables import TableError, TableIO

log = logging.getLogger(__name__)

DEFAULT_SIZES = (1_000_000, 10_000_000)
_WRITTEN_BY_RUNS = (SILVER_EVENTS, SESSIONS, VOCAB, *GOLD.values())


def spark_cores(spark: SparkSession) -> int:
    """Cores the benchmark runs on: ``n`` of ``local[n]`` (``*``: this machine's CPUs), else Spark's default parallelism."""
    master = spark.sparkContext.master
    if master == "local":
        return 1
    m = re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]", master)  # local[n] or local[n,maxFailures]
    if m is None:
        return spark.sparkContext.defaultParallelism
    return (os.cpu_count() or 1) if m.group(1) == "*" else int(m.group(1))


def file_bytes(uris: list[str]) -> int:
    """Total size of local files given as paths or ``file://`` URIs (as :meth:`TableIO.files` returns them)."""
    total = 0
    for uri in uris:
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            raise TableError(f"bench features measures local files only, got {uri}")
        total += os.path.getsize(parsed.path if parsed.scheme else uri)
    return total


def bench_config(cfg: Config, root: str, raw_events: str) -> Config:
    """``cfg`` with its data root, tables and source moved to the bench: path tables under ``root``, generated raw input."""
    return dataclasses.replace(
        cfg,
        app=dataclasses.replace(cfg.app, data_root=root),
        tables=dataclasses.replace(cfg.tables, root=None, catalog=None, schema=None, locations={}),
        source=SourceConfig(format="generated", path=raw_events),
    )


def _bronze(tables: TableIO, cfg: Config, inp: dict[str, Any]) -> dict[str, Any]:
    """bronze_events of the bench root from the raw input, ingested once (untimed) and reused while the input is unchanged."""
    from shopseq.jobs.stages.ingest import run_ingest

    root = Path(catalog(cfg).location)
    manifest = Path(catalog(cfg).scratch("bronze.json"))
    key = {"input": inp, "raw_files": sorted(os.listdir(inp["raw"])), "ingest": dataclasses.asdict(cfg.ingest)}
    if manifest.is_file() and tables.exists("bronze_events"):
        info = json.loads(manifest.read_text())
        if info["key"] == key:
            log.info("bronze: reusing %d ingested events at %s", info["accepted"], tables.ref("bronze_events").location)
            return info
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    start = time.perf_counter()
    metrics = run_ingest(tables, cfg, input_path=inp["raw"], fmt="generated")
    info = {"key": key, "accepted": int(metrics["accepted"]), "quarantined": int(metrics["quarantined"]), "ingest_s": time.perf_counter() - start}
    log.info("bronze: ingested %d events (%d quarantined) in %.1f s", info["accepted"], info["quarantined"], info["ingest_s"])
    manifest.write_text(json.dumps(info, default=str))
    return info


def _clear_outputs(tables: TableIO, cfg: Config) -> None:
    """Remove the bench root's silver, sessions, vocab and gold, so every timed run writes them from scratch."""
    for name in _WRITTEN_BY_RUNS:
        shutil.rmtree(tables.ref(name).location, ignore_errors=True)
    shutil.rmtree(catalog(cfg).gold_dir, ignore_errors=True)


def _timed_job(spark: SparkSession, step: str, rows: int, cores: int, fn: Callable[[], Any]) -> tuple[Timing, Any]:
    """Run ``fn`` under :func:`shopseq.jobs.bench.kit.timed` in its own Spark job group; the timing (with Spark's stage profile) and fn's result."""
    group = f"bench-features-{step}-{time.time_ns()}"
    spark.sparkContext.setJobGroup(group, group)
    out: list[Any] = []
    try:
        timing = timed(step, rows, cores, True, lambda: out.append(fn()))
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    timing.stages = stage_profile(spark, group)
    return timing, out[0]


def _gold_summary(tables: TableIO, artifact: dict[str, Any]) -> dict[str, Any]:
    """Examples per split (gold commits), and the gold snapshots' file count and bytes."""
    splits = {split: int(artifact["tables"][split]["rows"]) for split in SPLITS}
    files = [f for split in SPLITS for f in tables.files(artifact["tables"][split]["name"])]
    examples = sum(splits.values())
    size = file_bytes(files)
    return {
        "examples": examples,
        "splits": splits,
        "gold_files": files,
        "gold_bytes": size,
        "bytes_per_example": size / examples if examples else float("nan"),
    }


def _best(current: Timing | None, new: Timing) -> Timing:
    return new if current is None or new.seconds < current.seconds else current


def _rate_dict(t: Timing, examples: int) -> dict[str, Any]:
    return as_dict(t) | {"examples_per_s_per_core": examples / t.seconds / t.cores, "examples_per_cpu_s": examples / t.cpu_s if t.cpu_s else float("nan")}


def rates(feat: Timing, sess: Timing, copy: Timing, examples: int) -> dict[str, Any]:
    """The features job's timed figures and its two ratios against the references timed in the same run.

    ``features_over_sessionize``: input events/s/core of features over sessionize's; ``features_over_gold_copy``:
    the copy's seconds over the features job's (the same rows on the same cores, so the ratio of examples/s/core).
    """
    return {
        "seconds": feat.seconds,
        "examples_per_s_per_core": examples / feat.seconds / feat.cores,
        "events_per_s_per_core": feat.events_per_s_per_core,
        "peak_rss_bytes": feat.peak_rss_bytes,
        "peak_jvm_rss_bytes": feat.peak_jvm_rss_bytes,
        "features": _rate_dict(feat, examples),
        "sessionize": as_dict(sess),
        "gold_copy": _rate_dict(copy, examples),
        "features_over_sessionize": feat.events_per_s_per_core / sess.events_per_s_per_core,
        "features_over_gold_copy": copy.seconds / feat.seconds,
    }


def bench_one_size(spark: SparkSession, cfg: Config, n: int, regenerate: bool = False, repeat: int = 1) -> dict[str, Any]:
    """Benchmark the features job on about ``n`` generated events; the result dict of one size (see the module docstring)."""
    from shopseq.jobs.stages.build_features import run_features
    from shopseq.jobs.stages.sessionize import run_sessionize

    cores = spark_cores(spark)
    cat = catalog(cfg)
    log.info("bench features %d: [1/5] input (generated events, cached under %s)", n, cat.bench("sessionize", str(n)))
    inp = bench_input(spark, cfg, Path(cat.bench("sessionize", str(n))), n, regenerate)
    bcfg = bench_config(cfg, cat.bench("features", str(n)), inp["raw"])
    tables = TableIO(spark, bcfg)
    log.info("bench features %d: [2/5] bronze (ingest, untimed) in %s", n, bcfg.app.data_root)
    bronze = _bronze(tables, bcfg, inp)
    # Warm-up on a slice (JIT, class loading), untimed, so the first size's reference is not penalised.
    warm = Path(catalog(bcfg).scratch("warmup"))
    spark_sessionize_to_parquet(spark.read.parquet(inp["bronze"]).limit(20_000), cfg.sessionize, str(warm))
    shutil.rmtree(warm, ignore_errors=True)
    copy_dir = catalog(bcfg).scratch("gold_copy")
    sess = feat = copy = None
    gold: dict[str, Any] = {}
    silver_events = 0
    for attempt in range(1, repeat + 1):
        _clear_outputs(tables, bcfg)
        log.info("bench features %d: [3/5] sessionize job (reference), run %d of %d", n, attempt, repeat)
        s, stats = _timed_job(spark, "sessionize job", bronze["accepted"], cores, lambda: run_sessionize(tables, bcfg, force=True, plot=False))
        silver_events = int(stats["events"])
        log.info("sessionize: %d bronze -> %d silver events in %.1f s (%.1f CPU s)", bronze["accepted"], silver_events, s.seconds, s.cpu_s)
        log.info("bench features %d: [4/5] features job, run %d of %d", n, attempt, repeat)
        f, artifact = _timed_job(spark, "features job", silver_events, cores, lambda: run_features(tables, bcfg, force=True))
        gold = _gold_summary(tables, artifact)
        f.outputs = dict(gold["splits"])
        log.info("features: %d silver events -> %d examples %s in %.1f s (%.1f CPU s)", silver_events, gold["examples"], gold["splits"], f.seconds, f.cpu_s)
        log.info("bench features %d: [5/5] gold Parquet copy (reference), run %d of %d", n, attempt, repeat)
        c, _ = _timed_job(
            spark, "gold parquet copy", gold["examples"], cores, lambda: spark.read.parquet(*gold["gold_files"]).write.mode("overwrite").parquet(copy_dir)
        )
        log.info("gold copy: %d examples (%d bytes) in %.1f s", gold["examples"], gold["gold_bytes"], c.seconds)
        sess, feat, copy = _best(sess, s), _best(feat, f), _best(copy, c)
    shutil.rmtree(copy_dir, ignore_errors=True)
    assert sess is not None and feat is not None and copy is not None
    examples = gold["examples"]
    result = {
        "events": inp["rows"],
        "cores": cores,
        "repeat": repeat,
        "input": inp,
        "bench_root": bcfg.app.data_root,
        "bronze_events": bronze["accepted"],
        "silver_events": silver_events,
        "examples": examples,
        "splits": gold["splits"],
        "gold_file_count": len(gold["gold_files"]),
        "gold_bytes": gold["gold_bytes"],
        "bytes_per_example": gold["bytes_per_example"],
        **rates(feat, sess, copy, examples),
    }
    log.info(
        "%d events: %d examples, %.0f examples/s/core, %.0f bytes/example, peak RSS %.2f GiB; "
        "features/sessionize %.2fx (events/s/core), features/gold copy %.2fx (examples/s/core)",
        inp["rows"], examples, result["examples_per_s_per_core"], result["bytes_per_example"], feat.peak_rss_bytes / 2**30,
        result["features_over_sessionize"], result["features_over_gold_copy"],
    )  # fmt: skip
    return result


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a summary row per size, then the timed steps with their ratios."""
    results = report["results"]
    cores = results[0]["cores"] if results else 0
    lines = [
        f"# bench features (Spark local[{cores}], Delta through delta-spark, `tables.optimize: {str(report.get('optimize')).lower()}`)",
        "",
        provenance_line(report, "features"),
        "",
        "| events | examples (train / val / test) | wall s | examples/s/core | bytes/example | peak RSS GiB | features / sessionize | features / gold copy |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["splits"]
        jvm = f" (JVM {r['peak_jvm_rss_bytes'] / 2**30:.2f})" if r.get("peak_jvm_rss_bytes") else ""
        lines.append(
            f"| {r['events']:,} | {r['examples']:,} ({s['train']:,} / {s['val']:,} / {s['test']:,}) | {r['seconds']:.1f} | "
            f"{r['examples_per_s_per_core']:,.0f} | {r['bytes_per_example']:,.0f} | {r['peak_rss_bytes'] / 2**30:.2f}{jvm} | "
            f"{r['features_over_sessionize']:.2f}x | {r['features_over_gold_copy']:.2f}x |"
        )
    lines += [
        "",
        "Timed steps (each a fresh write; ratios in the same unit: input events/s/core against sessionize, examples/s/core against the copy):",
        "",
        "| events | step | input rows | wall s | CPU s | rows/s/core | peak RSS GiB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for key in ("sessionize", "features", "gold_copy"):
            t = r[key]
            lines.append(
                f"| {r['events']:,} | {t['engine']} | {t['events']:,} | {t['seconds']:.1f} | {t['cpu_s']:.1f} | "
                f"{t['events_per_s_per_core']:,.0f} | {t['peak_rss_bytes'] / 2**30:.2f} |"
            )
    return "\n".join(lines) + "\n"


def bench_features(
    spark: SparkSession, cfg: Config, sizes: list[int] | tuple[int, ...] = DEFAULT_SIZES, regenerate: bool = False, repeat: int = 1, docs: Path | None = None
) -> dict[str, Any]:
    """Run the features benchmark for each size; write ``reports/bench_features.{md,json}`` (also into ``docs``) and return the report."""
    out_dirs = [catalog(cfg).reports] + ([docs] if docs else [])
    report: dict[str, Any] = {"benchmark": "features", "optimize": cfg.tables.optimize, "repeat": repeat, "results": []}
    md = ""
    for n in sizes:
        report["results"].append(bench_one_size(spark, cfg, n, regenerate=regenerate, repeat=repeat))
        report |= provenance(cfg.spark)
        md = write_report("features", report, render_markdown, out_dirs)  # after each size, so a long run leaves what it finished
    log.info("bench features results (%s/bench_features.md):\n%s", out_dirs[0], md)
    return report
