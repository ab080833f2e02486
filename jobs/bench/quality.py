"""`shopseq bench quality`: the model and every baseline on real samples, per protocol, with intervals.

For each shared sample (``--data-dir``, default ``../shared/data``: Taobao,
REES46, Diginetica) and each protocol preset (``conf/protocols/<name>.yaml``:
``recbole_loo``, ``session``, ``cutoff``), the pipeline runs as a user runs it
(ingest -> sessionize -> features -> train -> evaluate, the stages of
``shopseq run``) into its own data root under ``<app.data_root>/bench/quality``
with the dataset's config layer, then the protocol's, then ``--set``. The
evaluation (:mod:`shopseq.training.evaluation`) scores the test split with the model
and every baseline fitted on the same train split, with bootstrap intervals
over users, and its wall time per method.

``--peer recbole`` also runs RecBole's SASRec and GRU4Rec on the identical
split of the ``recbole_loo`` protocol: the events shopseq's features stage kept
(after its k-core filter), in shopseq's order, go to
``peers/recbole_run.py`` run by the RecBole environment's Python
(``make peer-recbole`` installs it outside the repo; RecBole pins older
packages, so it never shares ``.venv``). RecBole's leave-one-out on those
events is shopseq's leave-last-out. Its per-user target ranks are scored with
the same tie rule and bootstrap as the model, paired with the model's per-user
values for the model-minus-peer interval.

Writes ``<app.data_root>/reports/bench_quality.{json,md,png}``; ``--docs DIR``
also renders the Markdown and plot from that JSON into ``DIR`` (the docs page
is regenerated from what the bench wrote, never edited by hand).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shopseq.jobs.bench.kit import version as benchkit_version
from shopseq.jobs.catalog import SILVER_EVENTS, catalog
from shopseq.jobs.common import Context, InputError, protocol_layer
from shopseq.jobs.config import Config, load_config
from shopseq.jobs.tables import TableIO

log = logging.getLogger(__name__)

# sample name -> (file in the shared data folder, source format)
SAMPLES: dict[str, tuple[str, str]] = {
    "taobao": ("taobao_head.csv", "taobao"),
    "rees46": ("rees46_head.csv", "rees46"),
    "diginetica": ("diginetica_sample.csv", "diginetica"),
}
PROTOCOLS: tuple[str, ...] = ("recbole_loo", "session", "cutoff")
STAGES = "ingest,sessionize,features,train,evaluate"
PEER_MODELS: tuple[str, ...] = ("SASRec", "GRU4Rec")
PEER_PROTOCOL = "recbole_loo"  # RecBole's leave-one-out is this protocol; the others have no RecBole equivalent
RECBOLE_VENV = Path(os.environ.get("SHOPSEQ_RECBOLE_VENV", Path.home() / ".cache" / "shopseq" / "recbole-venv"))


def case_config(ctx: Context, sample: str, protocol: str) -> Config:
    """The config of one (sample, protocol) case, layered as ``shopseq run --format F --protocol P`` layers it, in its own data root."""
    from shopseq.jobs.stages.run import dataset_layer

    layers = [p for p in (dataset_layer(ctx.args.conf_dir, SAMPLES[sample][1]), protocol_layer(ctx.args.conf_dir, protocol)) if p is not None]
    root = catalog(ctx.cfg).bench("quality", f"{sample}-{protocol}")
    return load_config(ctx.cfg.env, ctx.args.conf_dir, [*ctx.args.overrides, f"app.data_root={root}"], [*layers, *ctx.args.conf_files])


def run_case(ctx: Context, sample: str, protocol: str, path: Path) -> dict[str, Any]:
    """Run the pipeline for one case and keep what the bench reports."""
    from shopseq.jobs.stages.run import run_pipeline

    cfg = case_config(ctx, sample, protocol)
    tables = TableIO(ctx.spark, cfg)
    log.info("bench quality: %s / %s -> %s", sample, protocol, cfg.app.data_root)
    t0 = time.perf_counter()
    result = run_pipeline(tables, cfg, input_path=str(path), fmt=SAMPLES[sample][1], stages=STAGES)
    seconds = time.perf_counter() - t0
    evaluation = result.get("evaluation") or {}
    features = result["results"].get("features") or {}
    stage_seconds = {s["stage"]: s["seconds"] for s in result["stages"]}
    return {
        "sample": sample,
        "protocol": protocol,
        "data_root": cfg.app.data_root,
        "seconds": round(seconds, 1),
        "stage_seconds": stage_seconds,
        "filter": features.get("filter"),
        "examples": {split: (features.get("stats") or {}).get(split, {}).get("examples") for split in ("train", "val", "test")},
        "metrics": evaluation.get("metrics", []),
        "comparison": evaluation.get("comparison", []),
        "method_seconds": evaluation.get("method_seconds", {}),
        "report_dir": evaluation.get("report_dir"),
        "_cfg": cfg,
        "_tables": tables,
    }


# --------------------------------------------------------------------------- rendering


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def next_item_rows(case: dict[str, Any], k: int = 10) -> list[dict[str, Any]]:
    """Per method: NDCG@k, HR@k, MRR@k with intervals, the model-minus-method interval and the method's seconds."""
    by_method: dict[str, dict[str, Any]] = {}
    for m in case["metrics"]:
        if m["task"] != "next_item" or m.get("k") != k or m["metric"] not in ("ndcg", "hr", "mrr"):
            continue
        row = by_method.setdefault(m["method"], {"method": m["method"], "n": m.get("n_examples")})
        row[m["metric"]] = (m.get("value"), m.get("ci_low"), m.get("ci_high"))
    diffs = {}
    for c in case["comparison"]:
        if c["task"] == "next_item":
            for b in c["baselines"]:
                diffs[b["name"]] = (b.get("diff"), b.get("diff_low"), b.get("diff_high"))
    for method, peer in ((case.get("peer") or {}).get("models") or {}).items():
        diffs[method] = tuple(peer["model_minus"]) if peer.get("model_minus") else None
    rows = []
    for method, row in by_method.items():
        row["model_minus"] = diffs.get(method)
        row["seconds"] = case.get("method_seconds", {}).get(method)
        rows.append(row)
    rows.sort(key=lambda r: -(r.get("ndcg", (0.0,))[0] or 0.0))
    return rows


def describe_data(case: dict[str, Any]) -> str:
    """One line: the protocol filter's counts before and after, and the examples per split."""
    f = case.get("filter") or {}
    parts = []
    if f:
        b, a = f["before"], f["after"]
        entity = f.get("entity", "user")
        rule = f"{entity}s >= {f['min_user_events']} events, items >= {f['min_item_events']} events, {f['rounds']} rounds; " if f.get("rounds") else ""
        parts.append(f"Data: {rule}{a['users']:,} {entity}s, {a['items']:,} items, {a['events']:,} events kept of {b['users']:,} / {b['items']:,} / {b['events']:,}.")
    ex = case.get("examples") or {}
    if any(ex.values()):
        parts.append("Examples: " + ", ".join(f"{k} {v:,}" for k, v in ex.items() if v is not None) + ".")
    return " ".join(parts)


def _ci(v: tuple | None) -> str:
    if not v or v[0] is None:
        return "n/a"
    value, low, high = v
    return f"{value:.4f} [{_fmt(low)}, {_fmt(high)}]" if low is not None else f"{value:.4f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The docs page: per sample and protocol, the next-item table and the other tasks' comparison."""
    out = [
        "# Model quality on real samples",
        "",
        f"Generated by `shopseq bench quality` from `bench_quality.json` (shopseq {report['version']}, commit {report.get('commit') or 'unknown'}, "
        f"{report['created']}, {report['machine']}). Do not edit by hand: re-run the bench with `--docs docs/benchmarks`.",
        "",
        "Intervals are 95% bootstrap intervals over users; `model - X` is the paired interval of the model's NDCG@10 minus method X's. "
        "Ties count by their expected value under a random tie order; targets outside the vocabulary count as misses.",
        "",
    ]
    for case in report["cases"]:
        out += [f"## {case['sample']} / {case['protocol']}", ""]
        if case.get("error"):
            out += [f"Failed: {case['error']}", ""]
            continue
        out += [describe_data(case), ""]
        out += ["| method | NDCG@10 | HR@10 | MRR@10 | model - method (NDCG@10) | seconds |", "|---|---|---|---|---|---|"]
        for r in next_item_rows(case):
            out.append(f"| {r['method']} | {_ci(r.get('ndcg'))} | {_ci(r.get('hr'))} | {_ci(r.get('mrr'))} | {_ci(r.get('model_minus'))} | {_fmt(r.get('seconds'), 1)} |")
        out += ["", f"Pipeline wall time {case['seconds']:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in case["stage_seconds"].items()) + ")", ""]
        other = [c for c in case["comparison"] if c["task"] != "next_item"]
        if other:
            out += ["| task | metric | model | best baseline | model - best | outcome |", "|---|---|---|---|---|---|"]
            for c in other:
                best = next((b for b in c["baselines"] if b["name"] == c.get("best_baseline")), None)
                model = (c.get("model"), c.get("model_low"), c.get("model_high"))
                diff = (best.get("diff"), best.get("diff_low"), best.get("diff_high")) if best else None
                out.append(f"| {c['task']} | {c['metric']} | {_ci(model)} | {best['name'] + ' ' + _fmt(best['value']) if best else 'n/a'} | {_ci(diff)} | {c.get('outcome', '')} |")
            out.append("")
    out += ["![NDCG@10 per method with 95% intervals](bench_quality.png)", ""]
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> None:
    """NDCG@10 per method with its interval, one panel per (sample, protocol)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in report["cases"] if not c.get("error")]
    if not cases:
        return
    cols = min(3, len(cases))
    rows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        data = [r for r in next_item_rows(case) if r.get("ndcg") and r["ndcg"][0] is not None]
        names = [r["method"] for r in data]
        values = [r["ndcg"][0] for r in data]
        low = [max(0.0, v - (r["ndcg"][1] if r["ndcg"][1] is not None else v)) for v, r in zip(values, data)]
        high = [max(0.0, (r["ndcg"][2] if r["ndcg"][2] is not None else v) - v) for v, r in zip(values, data)]
        colors = ["tab:red" if n == "model" else "tab:purple" if n.startswith("recbole") else "tab:gray" for n in names]
        ax.barh(names[::-1], values[::-1], xerr=[low[::-1], high[::-1]], color=colors[::-1], capsize=3)
        ax.set_title(f"{case['sample']} / {case['protocol']}", fontsize=10)
        ax.set_xlabel("NDCG@10 (test)")
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(cases) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """``bench_quality.json``, ``.md`` and ``.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench_quality.json", "md": out_dir / "bench_quality.md", "png": out_dir / "bench_quality.png"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    paths["md"].write_text(render_markdown(report))
    plot(report, paths["png"])
    return {k: str(v) for k, v in paths.items()}


def bench_quality(ctx: Context, data_dir: Path, samples: list[str], protocols: list[str], peer: str | None = None, docs: Path | None = None) -> dict[str, Any]:
    """Run every (sample, protocol) case, optionally the RecBole peer, and write the results."""
    from datetime import datetime, timezone

    missing = [s for s in samples if not (data_dir / SAMPLES[s][0]).is_file()]
    if missing:
        raise InputError(f"--data-dir {data_dir}: missing sample file(s) {', '.join(SAMPLES[s][0] for s in missing)}")
    if peer == "recbole" and not recbole_python().is_file():
        raise InputError(f"--peer recbole: no RecBole environment at {RECBOLE_VENV} (run `make peer-recbole` first)")
    version, commit = benchkit_version()
    report: dict[str, Any] = {
        "version": version,
        "commit": commit,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "cases": [],
    }
    total = len(samples) * len(protocols)
    for i, (sample, protocol) in enumerate(((s, p) for s in samples for p in protocols), 1):
        log.info("bench quality [%d/%d] %s / %s", i, total, sample, protocol)
        try:
            case = run_case(ctx, sample, protocol, data_dir / SAMPLES[sample][0])
        except InputError as exc:  # e.g. a protocol that leaves no test examples on a small sample: reported, not fatal
            log.warning("bench quality: %s / %s failed: %s", sample, protocol, exc)
            report["cases"].append({"sample": sample, "protocol": protocol, "error": str(exc)})
            continue
        if peer == "recbole" and protocol == PEER_PROTOCOL:
            add_recbole_peer(ctx, case)
        case.pop("_cfg"), case.pop("_tables")
        report["cases"].append(case)
    out_dir = Path(catalog(ctx.cfg).reports)
    paths = write_outputs(report, out_dir)
    if docs is not None:
        write_outputs(report, docs)
    log.info("bench quality: %s", paths["md"])
    return report


# --------------------------------------------------------------------------- RecBole peer


def recbole_python() -> Path:
    return RECBOLE_VENV / "bin" / "python"


def recbole_runner() -> Path:
    """``peers/recbole_run.py`` of the source checkout (``$SHOPSEQ_RECBOLE_RUNNER`` overrides).

    The runner is not part of the installed package: it runs in RecBole's own interpreter with its own pins
    (``make peer-recbole``), so it lives beside them in ``peers/``; an installed wheel names the variable to set.
    """
    runner = Path(os.environ.get("SHOPSEQ_RECBOLE_RUNNER", Path(__file__).resolve().parents[2] / "peers" / "recbole_run.py"))
    if not runner.is_file():
        raise InputError(f"the RecBole runner is not at {runner}: it ships in the source checkout's peers/ (set SHOPSEQ_RECBOLE_RUNNER)")
    return runner


def peer_events(tables: TableIO, cfg: Config):
    """The events the features stage kept for the case (its entity mapping and k-core filter), in its order, as pandas.

    Columns: ``user_id``, ``item_id`` (strings), ``order`` (the 0-based position in the
    user's history, :func:`shopseq.features.sequences.order_events`) and ``user_key``
    (``xxhash64(user_id)``, the gold tables' user column).
    """
    from pyspark.sql import functions as F

    from shopseq.features.protocols import as_entity
    from shopseq.features.sequences import order_events, prepare_events
    from shopseq.jobs.stages.build_features import filter_events

    fc = cfg.features
    prepared = tables.read(SILVER_EVENTS).transform(prepare_events, fc).transform(as_entity, fc.entity)
    events, _ = filter_events(prepared, fc)
    ordered = events.transform(order_events).select("user_id", "item_id", F.col("user_pos").alias("order"), F.xxhash64("user_id").alias("user_key"))
    return ordered.toPandas()


def peer_statistics(model_ranks: dict[str, Any], peer: dict[str, Any], name: str, ks: list[int]) -> tuple[dict, int]:
    """Per-row HR/NDCG/MRR statistics of ``model`` and the peer model ``name`` on the same test users, and how many were paired.

    ``model_ranks``: the evaluation's saved per-row ranks (``shopseq.jobs.stages.evaluate.RANKS_FILE``);
    ``peer``: the runner's output. Rows are paired by ``user_key`` (one test row per user
    under leave-one-out); a user the peer did not score is a miss for the peer.
    """
    import numpy as np
    import torch

    from shopseq.training.metrics import TargetRanks, mean_statistic, ranking_values

    keys = model_ranks["user_key"]
    ranks = {u["user_key"]: (u["g"], u["t"]) for u in peer["models"][name]["test_ranks"]}
    g = np.array([ranks.get(int(k), (0, 0))[0] for k in keys], dtype=np.int64)
    t = np.array([ranks.get(int(k), (0, 0))[1] for k in keys], dtype=np.int64)
    found = np.array([int(k) in ranks for k in keys])
    stats = {}
    for method, (above, tied, ok) in {
        "model": (model_ranks["model.above"], model_ranks["model.tied"], model_ranks["model.in_vocab"]),
        f"recbole_{name.lower()}": (g, t, found),
    }.items():
        r = TargetRanks(torch.from_numpy(np.asarray(above)), torch.from_numpy(np.asarray(tied)), torch.from_numpy(np.asarray(ok, dtype=bool)), torch.ones(len(keys), dtype=torch.bool))
        for (metric, k), values in ranking_values(r, ks).items():
            if metric != "oov_share":
                stats[(metric, k, method)] = mean_statistic(values)
    return stats, int(found.sum())


def add_recbole_peer(ctx: Context, case: dict[str, Any]) -> None:
    """Run RecBole's SASRec and GRU4Rec on the case's kept events; add their rows and paired differences to the case.

    The model's rows are recomputed on the same paired rows, so its interval and
    the peers' come from the same resampled users.
    """
    import numpy as np
    import pandas as pd

    from shopseq.jobs.stages.evaluate import RANKS_FILE
    from shopseq.training.evaluation import score_task

    cfg, tables = case["_cfg"], case["_tables"]
    work = Path(catalog(cfg).scratch("peer"))
    work.mkdir(parents=True, exist_ok=True)
    events = peer_events(tables, cfg)
    events_csv, out_json = work / "events.csv", work / "recbole.json"
    events[["user_id", "item_id", "order"]].to_csv(events_csv, index=False)
    keys = dict(zip(events["user_id"].astype(str), events["user_key"].astype(np.int64)))
    runner = recbole_runner()
    cmd = [str(recbole_python()), str(runner), "--events", str(events_csv), "--out", str(out_json), "--models", ",".join(PEER_MODELS)]
    log.info("bench quality: RecBole %s on %d events (%s)", ",".join(PEER_MODELS), len(events), " ".join(cmd))
    started = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise InputError(f"--peer recbole: the RecBole runner exited {done.returncode} (command: {' '.join(cmd)})")
    log.info("bench quality: RecBole done in %.1f s", time.perf_counter() - started)
    peer = json.loads(out_json.read_text())
    for result in peer["models"].values():
        for u in result["test_ranks"]:
            u["user_key"] = int(keys[str(u["user_id"])])
    saved = np.load(os.path.join(case["report_dir"], RANKS_FILE))
    model_ranks = {k: saved[k] for k in saved.files}
    ks = list(cfg.evaluate.ks)
    ec = cfg.evaluate
    case["peer"] = {"name": "recbole", "version": peer.get("recbole_version"), "settings": peer.get("settings"), "models": {}}
    for name in PEER_MODELS:
        stats, paired = peer_statistics(model_ranks, peer, name, ks)
        rows, diffs = score_task("next_item", stats, model_ranks["user_key"], ec.bootstrap_samples, ec.confidence, ec.seed)
        method = f"recbole_{name.lower()}"
        for r in rows:
            if r.method == method:
                case["metrics"].append({"task": r.task, "metric": r.metric, "k": r.k, "method": method, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n_examples": r.n_examples})
        for d in diffs:
            if d.metric == "ndcg" and d.k == 10 and d.baseline == method:
                case["peer"]["models"][method] = {"model_minus": [d.diff, d.low, d.high], "paired_users": paired}
        m = peer["models"][name]
        case["method_seconds"][method] = m.get("wall_seconds")
        case["peer"]["models"].setdefault(method, {}).update(
            {"valid": m.get("valid"), "test": m.get("test"), "best_epoch": m.get("best_epoch"), "train_seconds": m.get("train_seconds"), "wall_seconds": m.get("wall_seconds")}
        )
    case["peer"]["users"] = len(pd.unique(events["user_id"]))


def _run(ctx: Context) -> int:
    a = ctx.args
    samples = [s.strip() for s in (a.samples or ",".join(SAMPLES)).split(",") if s.strip()]
    protocols = [p.strip() for p in (a.protocols or ",".join(PROTOCOLS)).split(",") if p.strip()]
    unknown = [s for s in samples if s not in SAMPLES]
    if unknown:
        raise InputError(f"--samples: unknown {', '.join(unknown)}; choose from {', '.join(SAMPLES)}")
    for p in protocols:
        protocol_layer(a.conf_dir, p)  # an unknown preset is a one-line ConfigError naming the known ones
    data_dir = Path(a.data_dir) if a.data_dir else Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    bench_quality(ctx, data_dir, samples, protocols, peer=a.peer, docs=Path(a.docs) if a.docs else None)
    return 0
