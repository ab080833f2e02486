"""`shopseq bench train`: Petastorm-fed training vs the same loop fed from in-memory tensors.

In one run, on the same gold files, the same model and the same number of
steps: for 1 and 2 ranks (Horovod on the job's Spark session for 2), the
training samples/s with ``source=petastorm`` and with ``source=memory`` (each
rank's shard preloaded as tensors; loading is not timed). The first epoch is
a warm-up; the reported figure is the mean of the remaining epochs. Target:
Petastorm reaches at least 0.8x the in-memory samples/s.

The gold tables come from the configured data root (run ``shopseq run`` or
the stages first), or, with ``--events N``, are built here from N generated
events in ``<app.data_root>/bench/train``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from shopseq.jobs.bench.kit import provenance, provenance_line, write_report
from shopseq.jobs.catalog import GOLD_TRAIN, catalog
from shopseq.jobs.common import Context
from shopseq.jobs.config import Config
from shopseq.jobs.tables import TableIO

log = logging.getLogger(__name__)


def _build_gold(ctx: Context, events: int) -> tuple[TableIO, Config]:
    from shopseq.jobs.stages.build_features import run_features
    from shopseq.jobs.config import load_config
    from shopseq.jobs.stages.generate import landing_dir, write_generated
    from shopseq.jobs.stages.ingest import run_ingest
    from shopseq.jobs.stages.sessionize import run_sessionize

    root = catalog(ctx.cfg).bench("train")
    cfg = load_config(ctx.cfg.env, ctx.args.conf_dir, [*ctx.args.overrides, f"app.data_root={root}"])
    tables = TableIO(ctx.spark, cfg)
    if not tables.exists(GOLD_TRAIN):
        write_generated(ctx.spark, cfg, landing_dir(cfg), target_events=events)
        run_ingest(tables, cfg)
        run_sessionize(tables, cfg, plot=False)
        run_features(tables, cfg)
    return tables, cfg


def bench_train(ctx: Context, events: int | None, epochs: int = 3, ranks: tuple[int, ...] = (1, 2), docs: Path | None = None) -> dict[str, Any]:
    """Samples/s of both data sources for each rank count; writes ``reports/bench_train.{md,json}``."""
    from shopseq.jobs.stages.train import load_schema, train_params
    from shopseq.training.launch import launch
    from shopseq.training.loop import train_fn

    tables, cfg = _build_gold(ctx, events) if events else (ctx.tables, ctx.cfg)
    schema = load_schema(cfg)
    tc = cfg.train
    base = train_params(cfg, schema=schema, train_files=tables.files("gold_train"), val_files=[], checkpoint_dir="", epochs=epochs, resume=False, patience=epochs + 1)
    rows = []
    for n in ranks:
        for source in ("memory", "petastorm"):
            ckpt = catalog(cfg).bench("train-ckpt", f"{source}-{n}")
            params = dataclasses.replace(base, source=source, checkpoint_dir=ckpt, distributed=n > 1)
            result = launch(train_fn, params, "spark" if n > 1 else "local", n)[0]
            timed = result["history"][1:] or result["history"]
            sps = sum(h["samples_per_s"] for h in timed) / len(timed)
            rows.append({"ranks": n, "source": source, "samples_per_s": sps, "steps_per_epoch": timed[0]["steps"]})
            log.info("bench train: %d rank(s), %s: %.0f samples/s", n, source, sps)
    report: dict[str, Any] = {"rows": rows, "ratios": {}, "target": 0.8, "batch_size": tc.batch_size}
    for n in ranks:
        mem = next(r["samples_per_s"] for r in rows if r["ranks"] == n and r["source"] == "memory")
        pet = next(r["samples_per_s"] for r in rows if r["ranks"] == n and r["source"] == "petastorm")
        report["ratios"][str(n)] = pet / mem if mem else float("nan")
    report |= provenance()
    md = write_report("train", report, render_markdown, [catalog(cfg).reports] + ([docs] if docs else []))
    log.info("bench train:\n%s", md)
    return report


def render_markdown(report: dict[str, Any]) -> str:
    """Samples/s of the in-memory and Petastorm sources per rank count, and their ratio against the target."""
    lines = [
        f"# bench train (batch {report['batch_size']})",
        "",
        provenance_line(report, "train"),
        "",
        "| ranks | in-memory samples/s | Petastorm samples/s | Petastorm / in-memory |",
        "|---|---|---|---|",
    ]
    for n, ratio in report["ratios"].items():
        mem = next(r["samples_per_s"] for r in report["rows"] if str(r["ranks"]) == n and r["source"] == "memory")
        pet = next(r["samples_per_s"] for r in report["rows"] if str(r["ranks"]) == n and r["source"] == "petastorm")
        lines.append(f"| {n} | {mem:,.0f} | {pet:,.0f} | {ratio:.2f}x (target >= {report['target']}x) |")
    return "\n".join(lines) + "\n"
