"""Benchmarks run end to end on tiny inputs: the report's numbers are checked against the tables they describe."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Quick: 6 weeks (a smaller generator pilot, fewer daily partitions), horizons short enough that every split has examples.
SMALL = ["generate.days=42", "features.purchase_horizon_days=3", "features.churn_horizon_days=7", "features.train_ranks=1", "features.row_groups_per_rank=2"]


@pytest.mark.e2e  # generate -> ingest -> sessionize -> features on 6,000 events: mostly fixed costs (85 s at 20,000 on 2026-12-07)
def test_bench_features_end_to_end_reports_what_the_gold_tables_hold(spark, tmp_path):
    from shopseq.features.splits import SPLITS
    from shopseq.jobs.bench.cli import main
    from shopseq.jobs.bench.features import bench_config
    from shopseq.jobs.config import load_config
    from shopseq.jobs.tables import TableIO

    argv = ["features", "--events", "6000", "--conf-dir", str(REPO / "conf"), "--set", f"app.data_root={tmp_path}"]
    assert main([*argv, *[a for o in SMALL for a in ("--set", o)]]) == 0

    report = json.loads((tmp_path / "reports" / "bench_features.json").read_text())
    results = report["results"]
    assert len(results) == 1
    r = results[0]
    cfg = load_config("local", REPO / "conf", [f"app.data_root={tmp_path}"])
    tables = TableIO(spark, bench_config(cfg, r["bench_root"], r["input"]["raw"]))
    assert Path(r["bench_root"]) == tmp_path / "bench" / "features" / "6000"

    # Examples: the gold tables' row counts, per split and in total.
    counts = {split: tables.read(f"gold_{split}").count() for split in SPLITS}
    assert r["splits"] == counts
    assert r["examples"] == sum(counts.values()) > 0
    # Bytes per example: the gold snapshots' Parquet file sizes over the examples, exactly.
    files = [f for split in SPLITS for f in tables.files(f"gold_{split}")]
    size = sum(os.path.getsize(f.removeprefix("file://")) for f in files)
    assert r["gold_bytes"] == size and r["gold_file_count"] == len(files)
    assert r["bytes_per_example"] == size / r["examples"]
    # The generated events all pass ingest, and no repeat is dropped by default: every stage sees the same events.
    assert r["bronze_events"] == r["silver_events"] == r["events"] == tables.read("silver_events").count()
    # Each timed step saw what it should, on local[2]; the ratio formulas are checked on hand values (test_bench_rates_...).
    f, s, c = r["features"], r["sessionize"], r["gold_copy"]
    assert r["cores"] == f["cores"] == s["cores"] == c["cores"] == 2
    assert f["events"] == r["silver_events"] and s["events"] == r["bronze_events"] and c["events"] == r["examples"]
    assert r["seconds"] == f["seconds"] > 0 and s["seconds"] > 0 and c["seconds"] > 0
    assert f["outputs"] == counts
    # Peak memory of the driver Python with its JVM, sampled while the features job ran.
    assert r["peak_rss_bytes"] == f["peak_rss_bytes"] > r["peak_jvm_rss_bytes"] > 0
    assert f["cpu_s"] > 0
    md = (tmp_path / "reports" / "bench_features.md").read_text()
    assert f"| {r['events']:,} | {r['examples']:,} (" in md
    # The gold copy (the I/O-floor reference) is cleaned up; the bench never wrote to the configured tables.
    assert not (tmp_path / "bench" / "features" / "6000" / "gold_copy").exists()
    assert not (tmp_path / "tables").exists()


def test_bench_features_rejects_bad_sizes(spark, capsys, tmp_path):
    from shopseq.jobs.bench.cli import main

    assert main(["features", "--events", "1000,-5", "--conf-dir", str(REPO / "conf"), "--set", f"app.data_root={tmp_path}"]) == 2
    assert "--events: expected positive event counts" in capsys.readouterr().err


def test_every_benchmark_page_in_the_docs_is_rendered_from_its_json():
    """docs/benchmarks/bench_<name>.md is exactly what `shopseq bench render` makes of bench_<name>.json: no hand-edited figure."""
    from shopseq.jobs.bench.cli import RENDERERS, render_docs

    docs = REPO / "docs" / "benchmarks"
    reports = sorted(p.stem.removeprefix("bench_") for p in docs.glob("bench_*.json"))
    assert reports == sorted(RENDERERS), "every benchmark publishes its report in docs/benchmarks"
    for name in reports:
        page = (docs / f"bench_{name}.md").read_text()
        report = json.loads((docs / f"bench_{name}.json").read_text())
        assert page == __import__(RENDERERS[name], fromlist=["render_markdown"]).render_markdown(report), name
        assert f"commit {report['commit']}" in page, name  # the version the figures were measured on


def test_bench_render_rewrites_a_page_from_its_json(tmp_path):
    from shopseq.jobs.bench.cli import render_docs
    from shopseq.jobs.bench.sessionize import render_markdown

    report = {
        "version": "0.1.0", "commit": "abc1234", "created": "2026-12-03 06:00 UTC", "machine": "2 cores, 24 GiB, x86_64", "load_average": [1.0, 0.5, 0.25],
        "spark": {"master": "local[2]", "shuffle_partitions": 64, "driver_memory": "4g"}, "benchmark": "sessionize", "cores": 2, "repeat": 1,
        "results": [{"events": 1000, "outputs_match": True, "duckdb": {"events_per_s_per_core": 500.0, "events_per_cpu_s": 1000.0}, "timings": [
            {"engine": "duckdb", "events": 1000, "seconds": 1.0, "events_per_s_per_core": 500.0, "cpu_s": 1.0, "events_per_cpu_s": 1000.0, "peak_rss_bytes": 2**30},
            {"engine": "spark", "events": 1000, "seconds": 2.0, "events_per_s_per_core": 250.0, "cpu_s": 4.0, "events_per_cpu_s": 250.0, "peak_rss_bytes": 2**31, "peak_jvm_rss_bytes": 2**30},
        ]}],
    }  # fmt: skip
    (tmp_path / "bench_sessionize.json").write_text(json.dumps(report))
    (tmp_path / "bench_sessionize.md").write_text("hand-edited\n")
    assert render_docs(tmp_path) == [tmp_path / "bench_sessionize.md"]
    page = (tmp_path / "bench_sessionize.md").read_text()
    assert page == render_markdown(report)
    assert "Measured on shopseq 0.1.0 (commit abc1234), 2026-12-03 06:00 UTC, 2 cores, 24 GiB, x86_64; load average at the end 1.0 0.5 0.2." in page
    assert "Spark local[2], 64 shuffle partitions, driver memory 4g." in page
    assert "| 1,000 | duckdb | 1.0 | 500 | 1.00x | 1.0 | 1,000 | 1.00x | 1.00 | True |" in page
    assert "| 1,000 | spark | 2.0 | 250 | 0.50x | 4.0 | 250 | 0.25x | 2.00 (JVM 1.00) | True |" in page


def _timing(events: int, seconds: float, cpu_s: float, rss: int):
    from shopseq.jobs.bench.kit import Timing

    return Timing("spark", events, 2, seconds, cpu_s, rss, rss // 2)


def test_bench_features_rates_and_ratios_on_hand_values():
    from shopseq.jobs.bench.features import rates

    # features: 1,200 silver events in 3 s on 2 cores -> 200 events/s/core; 600 examples -> 100 examples/s/core, 150/CPU-s.
    # sessionize: 1,000 bronze events in 1 s on 2 cores -> 500 events/s/core: features/sessionize = 200 / 500 = 0.4.
    # gold copy: the 600 examples in 0.75 s -> 400 examples/s/core: features/copy = 100 / 400 = 0.75 / 3 = 0.25.
    r = rates(_timing(1200, 3.0, 4.0, 2**30), _timing(1000, 1.0, 1.5, 2**29), _timing(600, 0.75, 1.0, 2**28), examples=600)
    assert (r["seconds"], r["examples_per_s_per_core"], r["events_per_s_per_core"]) == (3.0, 100.0, 200.0)
    assert (r["features_over_sessionize"], r["features_over_gold_copy"]) == (0.4, 0.25)
    assert (r["features"]["examples_per_s_per_core"], r["features"]["examples_per_cpu_s"], r["gold_copy"]["examples_per_s_per_core"]) == (100.0, 150.0, 400.0)
    assert (r["sessionize"]["events_per_s_per_core"], r["sessionize"]["events_per_cpu_s"]) == (500.0, 1000 / 1.5)
    assert (r["peak_rss_bytes"], r["peak_jvm_rss_bytes"]) == (2**30, 2**29)


def test_bench_bot_ratios_on_hand_values():
    from shopseq.jobs.bench.bot import STAGES, _ratios

    def run(seconds: list[float], lines: int, rss: int, heap: int) -> dict:
        stages = {s: {"seconds": sec, "events_per_s_per_core": lines / sec / 2, "peak_rss_bytes": rss, "peak_heap_bytes": heap} for s, sec in zip(STAGES, seconds)}
        return {"stages": stages, "outcome": {"input_lines": lines}}

    # reference: 1,000 lines, 2 s per stage; bot: 10,000 lines, 4 s per stage, twice the memory and three times the heap.
    ref, bot = run([2.0] * len(STAGES), 1000, 100, 10), run([4.0] * len(STAGES), 10_000, 200, 30)
    out = _ratios(ref, bot)
    for stage in STAGES:  # per stage: 2x the time, (10,000/4) / (1,000/2) = 5x the throughput
        assert out[stage] == {"seconds": 2.0, "events_per_s": 5.0, "peak_rss": 2.0, "peak_heap": 3.0}, stage
    # the pipeline: 2x the summed time, (10,000 lines / 12 s) / (1,000 / 6 s) = 5x the throughput, the peaks' ratios
    assert out["pipeline"] == pytest.approx({"seconds": 2.0, "events_per_s": 5.0, "peak_rss": 2.0, "peak_heap": 3.0}, rel=1e-12)


@pytest.mark.e2e  # a warm-up ingest and two small pipelines (ingest, sessionize, features): 132 s on 2 cores (load 9 falling to 1)
def test_bench_bot_flags_the_bot_leaves_it_out_of_gold_and_keeps_everyone_else_s_rows(spark, tmp_path):
    """`shopseq bench bot` at a small size: 5,000 events of one user in a day over a cap of 1,000 and 30 ordinary users.
    The outcome is exact (every bot event flagged, none in gold, every other gold row as in the run without the bot);
    the figures are only checked to be there, never timed."""
    from pyspark.sql import functions as F

    from shopseq.jobs.bench.cli import main
    from shopseq.jobs.bench.bot import BOT_USER, STAGES, background_lines
    from shopseq.jobs.config import load_config
    from shopseq.jobs.tables import TableIO

    argv = ["bot", "--events", "5000", "--users", "30", "--conf-dir", str(REPO / "conf"), "--set", f"app.data_root={tmp_path}",
            "--set", "sessionize.max_events_per_user_day=1000", "--set", "tables.optimize=false", "--set", "spark.shuffle_partitions=2",
            "--set", "features.train_ranks=1", "--set", "features.row_groups_per_rank=2"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "reports" / "bench_bot.json").read_text())
    [r] = report["results"]
    background = len(background_lines(30))
    ref, bot = r["reference"]["outcome"], r["bot"]["outcome"]
    assert (r["bot_events"], r["max_events_per_user_day"], r["inputs"]["background_lines"]) == (5000, 1000, background)
    assert (ref["input_lines"], ref["accepted"], ref["quarantined"], ref["duplicates"]) == (background, background, 0, 0)
    assert (bot["input_lines"], bot["accepted"], bot["quarantined"], bot["duplicates"]) == (background + 5000, background + 5000, 0, 0)
    assert (ref["bot_suspect_events"], ref["bot_suspect_sessions"], ref["bot_user_silver_events"]) == (0, 0, 0)
    assert (bot["bot_suspect_events"], bot["bot_user_silver_events"], bot["bot_user_flagged_events"], bot["bot_user_gold_rows"]) == (5000, 5000, 5000, 0)
    assert bot["bot_suspect_sessions"] == 1 and bot["gold_examples"] == ref["gold_examples"] and sum(ref["gold_examples"].values()) > 0
    assert r["gold_differences"] == {"train": [0, 0], "val": [0, 0], "test": [0, 0]}

    # Checked here too, from the tables: only the bot's events are flagged; gold holds no row of it and every other row as without it.
    cfg = load_config("local", REPO / "conf", [f"app.data_root={tmp_path}"])
    runs = {name: TableIO(spark, dataclasses.replace(cfg, app=dataclasses.replace(cfg.app, data_root=r[name]["root"]))) for name in ("reference", "bot")}
    flagged = runs["bot"].read("silver_events").where("is_bot_suspect").groupBy("user_id").count().collect()
    assert [tuple(x) for x in flagged] == [(BOT_USER, 5000)]
    for split in ("train", "val", "test"):
        rows = {name: sorted(tuple(x) for x in t.read(f"gold_{split}").collect()) for name, t in runs.items()}
        assert rows["bot"] == rows["reference"], split
    assert runs["bot"].read("gold_train").where(F.col("user_key") == F.xxhash64(F.lit(BOT_USER))).count() == 0

    for name in ("reference", "bot"):  # every stage measured: time, memory of the process tree and the JVM heap
        for stage in STAGES:
            t = r[name]["stages"][stage]
            assert t["seconds"] > 0 and t["peak_rss_bytes"] > t["peak_jvm_rss_bytes"] > 0 and 0 < t["peak_heap_bytes"] <= t["max_heap_bytes"], (name, stage)
    assert set(r["ratios"]) == {*STAGES, "pipeline"}
    md = (tmp_path / "reports" / "bench_bot.md").read_text()
    assert "- features: the bot user's gold rows: 0;" in md and f"| ingest | bot | {background + 5000:,} |" in md
