"""`shopseq bench scale`: per-stage lines fitted over the sizes, and the projection's arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO


def test_fit_line_is_least_squares_and_one_point_goes_through_the_origin():
    from shopseq.jobs.bench.scale import fit_line

    assert fit_line([1.0, 2.0, 3.0], [12.0, 14.0, 16.0]) == pytest.approx((10.0, 2.0))
    xs, ys = [1e5, 3e5, 1e6], [30.0, 41.0, 90.0]
    slope, fixed = np.polyfit(xs, ys, 1)
    assert fit_line(xs, ys) == pytest.approx((fixed, slope))
    assert fit_line([4.0], [8.0]) == (0.0, 2.0)


def test_projection_arithmetic():
    from shopseq.jobs.bench.scale import project

    # 2 cores; ingest: 10 s fixed + 1 us a row; features sees half the events at 4 us a row.
    stages = {"ingest": {"fixed_s": 10.0, "projected_per_row_s": 1e-6, "rows_per_event": 1.0}, "features": {"fixed_s": 20.0, "projected_per_row_s": 4e-6, "rows_per_event": 0.5}}
    p = project(stages, cores=2, target_events=1e9, window_hours=1.0)
    # core-seconds: ingest 1e-6 * 2 * 1e9 = 2000; features 4e-6 * 2 * 5e8 = 4000.
    assert p["stages"]["ingest"]["core_seconds"] == pytest.approx(2000.0)
    assert p["stages"]["features"]["core_seconds"] == pytest.approx(4000.0)
    assert p["core_seconds"] == pytest.approx(6000.0) and p["core_hours"] == pytest.approx(6000 / 3600)
    assert p["fixed_s"] == 30.0
    assert p["cores_for_window"] == math.ceil(6000 / (3600 - 30)) == 2
    assert p["wall_hours_on_cores"]["8"] == pytest.approx((30 + 6000 / 8) / 3600)


def test_a_falling_line_projects_with_the_largest_size_s_rate():
    from shopseq.jobs.bench.scale import summarize

    # Two sizes where the larger took less time (warm-up, noise): no per-row cost above the fixed one shows.
    results = [{"events": n, "stages": {s: {"rows": n, "seconds": t, "rows_per_s_per_core": n / t / 2} for s in ("ingest", "sessionize", "features")}} for n, t in ((1000, 20.0), (4000, 16.0))]
    s = summarize(results, cores=2)["sessionize"]
    assert s["per_row_s"] < 0 and s["marginal_rows_per_s_per_core"] is None
    assert s["projected_per_row_s"] == 16.0 / 4000  # an upper bound: the fixed cost spread over the rows
    assert s["scaling_ratio"] == (4000 / 16.0 / 2) / (1000 / 20.0 / 2) == 5.0


def test_a_cluster_run_has_its_own_report_and_says_its_rss_is_the_driver_python_s():
    from shopseq.jobs.bench.cli import RENDERERS
    from shopseq.jobs.bench.scale import render_markdown, report_name

    assert [report_name(m) for m in ("local[2]", "local[*]", "spark://127.0.0.1:7077", "yarn", "k8s://https://api:6443")] == [
        "scale", "scale", "scale_cluster", "scale_cluster", "scale_cluster",
    ]  # fmt: skip
    assert RENDERERS["scale"] == RENDERERS["scale_cluster"] == "shopseq.jobs.bench.scale"
    stage = {"rows": 10, "seconds": 1.0, "rows_per_s_per_core": 5.0, "peak_rss_bytes": 2**30}
    fit = {"fixed_s": 0.0, "marginal_rows_per_s_per_core": 5.0, "rows_per_event": 1.0, "scaling_ratio": 1.0}
    projection = {"target_events": 1e9, "window_hours": 2.0, "core_hours": 1.0, "cores_for_window": 1, "fixed_s": 0.0, "wall_hours_on_cores": {"8": 0.1}}
    report = {"benchmark": "scale", "cores": 2, "results": [{"events": 10, "stages": dict.fromkeys(("ingest", "sessionize", "features"), stage)}],
              "stages": dict.fromkeys(("ingest", "sessionize", "features"), fit), "projection": projection, "assumptions": []}  # fmt: skip
    for master, header in (("local[2]", "| peak RSS GiB |"), ("spark://127.0.0.1:7077", "| peak RSS GiB of the driver Python |")):
        report["spark"] = {"master": master, "shuffle_partitions": 64, "driver_memory": "4g"}
        page = render_markdown(report)
        table_header = next(line for line in page.splitlines() if line.startswith("| events |"))
        assert table_header.endswith(header) and table_header.count("RSS") == 1
        assert f"Generated from `bench_{report_name(master)}.json` by `shopseq bench scale ... --docs DIR`" in page


@pytest.mark.e2e
def test_bench_scale_times_each_stage_on_what_the_tables_hold(spark, tmp_path):
    from shopseq.jobs.bench.cli import main
    from shopseq.jobs.bench.features import bench_config
    from shopseq.jobs.bench.scale import STAGES, fit_line, render_markdown
    from shopseq.jobs.catalog import catalog
    from shopseq.jobs.config import load_config
    from shopseq.jobs.tables import TableIO

    sets = [f"app.data_root={tmp_path}", "generate.users=60", "generate.days=14"]
    assert main(["scale", "--events", "1500,3000", "--warmup", "0", "--window-hours", "1", "--conf-dir", str(REPO / "conf"), *[a for s in sets for a in ("--set", s)]]) == 0
    report = json.loads((tmp_path / "reports" / "bench_scale.json").read_text())
    assert (tmp_path / "reports" / "bench_scale.md").read_text() == render_markdown(report)
    assert report["cores"] == 2 and [(r["size"], len(r["stages"])) for r in report["results"]] == [(1500, 3), (3000, 3)]
    cfg = load_config("local", REPO / "conf", sets)
    for r in report["results"]:
        bench = catalog(cfg).bench("scale", str(r["size"]))
        raw = json.loads(Path(catalog(cfg).bench("sessionize", str(r["size"]), "input.json")).read_text())["raw"]
        tables = TableIO(spark, bench_config(cfg, bench, raw))
        # Rows in: every generated event into ingest, bronze into sessionize, silver into features.
        assert r["stages"]["ingest"]["rows"] == r["events"] == tables.read("bronze_events").count()
        assert r["stages"]["sessionize"]["rows"] == r["events"]
        assert r["stages"]["features"]["rows"] == tables.read("silver_events").count()
        assert r["examples"] == sum(tables.read(f"gold_{s}").count() for s in ("train", "val", "test")) > 0
        for name in STAGES:
            s = r["stages"][name]
            assert s["rows_per_s_per_core"] == s["rows"] / s["seconds"] / 2
    for name in STAGES:
        fixed, slope = fit_line([r["stages"][name]["rows"] for r in report["results"]], [r["stages"][name]["seconds"] for r in report["results"]])
        assert (report["stages"][name]["fixed_s"], report["stages"][name]["per_row_s"]) == (fixed, slope)
        small, large = (r["stages"][name]["rows_per_s_per_core"] for r in report["results"])
        assert report["stages"][name]["scaling_ratio"] == large / small
    assert report["projection"]["window_hours"] == 1.0 and report["projection"]["target_events"] == 1e9
