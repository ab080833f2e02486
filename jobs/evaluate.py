"""`shopseq evaluate`: the trained model against baselines on a gold split -> ``metrics`` table + report.

Recipe: load the checkpoint (``evaluate.checkpoint``: ``best``, ``last`` or a
path); check it was trained on the current vocabulary (the gold schema
artifact's ``vocab_version``); read ``gold_<evaluate.split>`` and
``gold_train`` at their current versions as tensors (no Spark beyond
resolving the snapshot files); score the split with the model and with the
baselines fitted on train (:mod:`training.evaluation`); write the metrics to
the ``metrics`` Delta table and the report folder; log the model against the
best baseline per task, and the metrics into the training run's MLflow run.

**Idempotent.** ``evaluation_id`` is a hash of the model version (MLflow run
id and epoch of the checkpoint, named as ``shopseq predict`` names it), the
split, the gold table versions and the evaluation config, and the table is
partitioned by it. A run whose rows are
already in the table with the same values (everything but ``evaluated_at``)
writes nothing: no new table version, the report and MLflow are left as they
are (``skipped``). Otherwise its partition is replaced (``overwrite_partitions``),
so the table never holds an evaluation twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import Context, InputError, run_stage, stage_parser
from jobs.config import Config
from jobs.report import write_report
from jobs.tables import TableError, TableIO
from jobs.train import checkpoint_dir, load_schema

log = logging.getLogger(__name__)

METRICS_TABLE = "metrics"
METRICS_SCHEMA = T.StructType(
    [
        T.StructField("evaluation_id", T.StringType()),
        T.StructField("evaluated_at", T.TimestampType()),
        T.StructField("split", T.StringType()),
        T.StructField("split_protocol", T.StringType()),
        T.StructField("model_version", T.StringType()),
        T.StructField("task", T.StringType()),
        T.StructField("metric", T.StringType()),
        T.StructField("k", T.IntegerType()),  # ranking metrics only
        T.StructField("method", T.StringType()),
        T.StructField("value", T.DoubleType()),  # null when undefined (no rows, one class)
        T.StructField("n_examples", T.LongType()),
        T.StructField("gold_table", T.StringType()),
        T.StructField("gold_version", T.LongType()),
        T.StructField("gold_train_version", T.LongType()),
        T.StructField("vocab_version", T.StringType()),
        T.StructField("checkpoint", T.StringType()),
        T.StructField("checkpoint_epoch", T.IntegerType()),
        T.StructField("mlflow_run_id", T.StringType()),
    ]
)
ROW_KEY = ("task", "metric", "k", "method")


def build_parser():
    parser = stage_parser("evaluate", "Evaluate the trained model against baselines on a gold split -> metrics table + report (Markdown, PNG).")
    parser.add_argument("--split", choices=["test", "val"], default=None, help="override evaluate.split")
    parser.add_argument("--checkpoint", default=None, metavar="best|last|PATH", help="override evaluate.checkpoint")
    return parser


def checkpoint_path(cfg: Config, checkpoint: str | None = None) -> str:
    """``best``/``last`` -> ``<checkpoint_dir>/<name>.pt``; a relative path is looked up in the checkpoint dir, then the working dir."""
    choice = checkpoint or cfg.evaluate.checkpoint
    base = checkpoint_dir(cfg)
    if choice in ("best", "last"):
        return os.path.join(base, f"{choice}.pt")
    if os.path.isabs(choice):
        return choice
    inside = os.path.join(base, choice)
    return inside if os.path.exists(inside) else os.path.abspath(choice)


def model_version(state: dict[str, Any], path: str) -> str:
    """``<MLflow run id>-e<epoch, 4 digits>``, else ``sha256-<16 hex of the checkpoint file>``: the default of ``shopseq predict``'s ``model_version``."""
    run_id = (state.get("params") or {}).get("mlflow_run_id")
    if run_id and state.get("epoch") is not None:
        return f"{run_id}-e{int(state['epoch']):04d}"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256-{digest.hexdigest()[:16]}"


def evaluation_id(model: str, gold_table: str, gold_version: int, gold_train_version: int, cfg: Config) -> str:
    """16 hex characters identifying (model version, split table and versions, evaluation config)."""
    ec = cfg.evaluate
    key = {"model_version": model, "gold_table": gold_table, "gold_version": gold_version, "gold_train_version": gold_train_version, "ks": list(ec.ks), "bins": ec.calibration_bins}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def report_dir(cfg: Config, eval_id: str) -> str:
    """``evaluate.report_dir``, else ``<app.data_root>/reports/<evaluation id>``."""
    return os.path.abspath(cfg.evaluate.report_dir or os.path.join(cfg.app.data_root, "reports", eval_id))


def _check_config(cfg: Config) -> None:
    ec = cfg.evaluate
    if not ec.ks or any(k < 1 for k in ec.ks):
        raise InputError(f"evaluate.ks must be a non-empty list of positive integers, got {ec.ks!r}")
    if ec.calibration_bins < 1:
        raise InputError(f"evaluate.calibration_bins must be >= 1, got {ec.calibration_bins}")
    if ec.batch_size < 1:
        raise InputError(f"evaluate.batch_size must be >= 1, got {ec.batch_size}")


def run_evaluate(tables: TableIO, cfg: Config, checkpoint: str | None = None, split: str | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint on ``gold_<split>`` against the baselines; write ``metrics`` and the report.

    Returns ``evaluation_id``, ``split``, ``split_protocol``, ``model_version``,
    ``checkpoint``, ``checkpoint_epoch``, the gold lineage, ``metrics`` (one
    dict per table row), ``comparison`` (per task: the primary metric, the
    model's value, each baseline's, ``beats_baselines`` and ``outcome``),
    ``n_examples`` per task, ``report_dir``, ``report_path``,
    ``metrics_table_version`` and ``skipped`` (nothing written: already recorded).
    """
    from training.checkpoint import load_model
    from training.data import count_rows, load_tensors, model_columns
    from training.evaluation import compare, evaluate_all

    _check_config(cfg)
    ec = cfg.evaluate
    split = split or ec.split
    path = checkpoint_path(cfg, checkpoint)
    if not os.path.isfile(path):
        raise InputError(f"no checkpoint at {path}: run `shopseq train` first (or set evaluate.checkpoint)")
    try:
        model, state = load_model(path)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle or load means the file is not a usable checkpoint
        raise InputError(f"{path}: not a loadable shopseq checkpoint ({type(exc).__name__}: {exc})") from None
    schema = load_schema(cfg)
    vocab = schema.get("inputs", {}).get("vocab_version")
    trained_on = (state.get("schema") or {}).get("inputs", {}).get("vocab_version")
    if trained_on != vocab:
        raise InputError(f"checkpoint {path} was trained on vocabulary {trained_on}, the gold tables use {vocab}: retrain before evaluating")
    gold_table = f"gold_{split}"
    gold_version, train_version = tables.version(gold_table), tables.version("gold_train")
    if gold_version is None or train_version is None:
        raise TableError(f"tables {gold_table!r} and 'gold_train' must exist: run `shopseq features` first")
    if (state.get("lineage") or {}).get("gold_train_version") not in (None, train_version):
        log.warning("checkpoint %s was trained on gold_train version %s; the baselines use version %d", path, state["lineage"]["gold_train_version"], train_version)

    columns = model_columns(schema) + ["user_key"]
    files = {name: tables.files(name, version=v) for name, v in ((gold_table, gold_version), ("gold_train", train_version))}
    if not all(files.values()) or not all(count_rows(f) for f in files.values()):
        raise InputError(f"{gold_table} (version {gold_version}) or gold_train (version {train_version}) has no examples to evaluate")
    data = load_tensors(files[gold_table], columns)
    train = load_tensors(files["gold_train"], columns)
    n_rows = len(data["next_item_idx"])
    log.info("evaluating %s on %s version %d (%d examples); baselines from gold_train version %d", path, gold_table, gold_version, n_rows, train_version)
    evaluation = evaluate_all(model, data, train, schema, ec.ks, ec.calibration_bins, ec.batch_size)

    version = model_version(state, path)
    eval_id = evaluation_id(version, gold_table, gold_version, train_version, cfg)
    lineage = {
        "evaluation_id": eval_id,
        "split": split,
        "split_protocol": (schema.get("split") or {}).get("method", cfg.features.split),
        "model_version": version,
        "gold_table": gold_table,
        "gold_version": gold_version,
        "gold_train_version": train_version,
        "vocab_version": vocab,
        "checkpoint": path,
        "checkpoint_epoch": int(state["epoch"]),
        "mlflow_run_id": (state.get("params") or {}).get("mlflow_run_id"),
    }
    metrics = [{"task": r.task, "metric": r.metric, "k": r.k, "method": r.method, "value": None if math.isnan(r.value) else r.value, "n_examples": r.n_examples} for r in evaluation.rows]
    comparison = compare(evaluation.rows, ec.ks)
    n_examples = {r.task: r.n_examples for r in evaluation.rows}
    for task, n in n_examples.items():
        if n == 0:
            log.warning("%s: no labelled %s examples in %s version %d; its metrics are undefined (null)", METRICS_TABLE, task, gold_table, gold_version)

    evaluated_at = datetime.now(timezone.utc).replace(microsecond=0)
    written, table_version = _write_metrics(tables, lineage, metrics, evaluated_at)
    out_dir = report_dir(cfg, eval_id)
    report_path = os.path.join(out_dir, "report.md")
    summary = {**lineage, "evaluated_at": evaluated_at.isoformat(), "metrics": metrics, "comparison": comparison, "n_examples": n_examples, "metrics_table_version": table_version}
    if written or not _report_current(out_dir, eval_id):
        report_path = write_report(out_dir, summary, evaluation, ec.ks, ec.calibration_bins)
    if written:
        _track(state, lineage, metrics, out_dir)
    _log_comparison(comparison, split)
    return {**summary, "report_dir": out_dir, "report_path": report_path, "skipped": not written}


def _write_metrics(tables: TableIO, lineage: dict[str, Any], metrics: list[dict[str, Any]], evaluated_at: datetime) -> tuple[bool, int]:
    """Replace this evaluation's partition unless it already holds the same rows; returns (written, table version)."""
    fields = [f.name for f in METRICS_SCHEMA.fields]
    rows = [tuple({**lineage, **m, "evaluated_at": evaluated_at}[name] for name in fields) for m in metrics]
    if _already_recorded(tables, lineage, metrics):
        version = tables.version(METRICS_TABLE)
        log.info("%s: evaluation %s already recorded with the same values (table version %d); not written", METRICS_TABLE, lineage["evaluation_id"], version)
        return False, int(version)  # type: ignore[arg-type]
    df = tables.spark.createDataFrame(rows, METRICS_SCHEMA)
    commit = tables.overwrite_partitions(METRICS_TABLE, df, partition_by=["evaluation_id"], metadata={"evaluation_id": lineage["evaluation_id"], "model_version": lineage["model_version"]})
    return True, commit.version


def _already_recorded(tables: TableIO, lineage: dict[str, Any], metrics: list[dict[str, Any]]) -> bool:
    """Whether the table holds exactly these rows for this evaluation (values within 1e-9 relative)."""
    if not tables.exists(METRICS_TABLE):
        return False
    stored = [r.asDict() for r in tables.read(METRICS_TABLE).where(F.col("evaluation_id") == lineage["evaluation_id"]).collect()]
    if len(stored) != len(metrics):
        return False
    by_key = {tuple(r[c] for c in ROW_KEY): r for r in stored}
    for m in metrics:
        r = by_key.get(tuple(m[c] for c in ROW_KEY))
        if r is None or r["n_examples"] != m["n_examples"] or any(r[c] != v for c, v in lineage.items()):
            return False
        a, b = r["value"], m["value"]
        if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)):
            return False
    return True


def _report_current(out_dir: str, eval_id: str) -> bool:
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.isfile(os.path.join(out_dir, "report.md")) or not os.path.isfile(path):
        return False
    with open(path) as fh:
        return json.load(fh).get("evaluation_id") == eval_id


def _track(state: dict[str, Any], lineage: dict[str, Any], metrics: list[dict[str, Any]], out_dir: str) -> None:
    """The metrics (and the report) into the training run's MLflow run, when the checkpoint names one."""
    params = state.get("params") or {}
    run_id, uri = params.get("mlflow_run_id"), params.get("mlflow_tracking_uri")
    if not (run_id and uri):
        return
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
    except ImportError:
        return
    split = lineage["split"]
    ts = int(datetime.now(timezone.utc).timestamp() * 1000)
    batch = [
        Metric(f"eval_{split}_{m['task']}_{m['method']}_{m['metric']}" + (f"_at_{m['k']}" if m["k"] is not None else ""), float(m["value"]), ts, lineage["checkpoint_epoch"])
        for m in metrics
        if m["value"] is not None
    ]
    try:
        client = MlflowClient(tracking_uri=uri)
        client.log_batch(run_id, metrics=batch)
        client.set_tag(run_id, f"evaluation_{split}", lineage["evaluation_id"])
        client.log_artifacts(run_id, out_dir, artifact_path=f"evaluation/{lineage['evaluation_id']}")
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the evaluation
        log.warning("MLflow logging of the evaluation failed: %s", exc)


def _log_comparison(comparison: list[dict[str, Any]], split: str) -> None:
    log.info("model vs baselines on the %s split:", split)
    for c in comparison:
        best = next((b for b in c["baselines"] if b["name"] == c["best_baseline"]), None)
        log.info(
            "  %-11s %-9s model %.4f  best baseline %s %.4f  -> %s",
            c["task"], c["metric"], _nan(c["model"]), c["best_baseline"], _nan(best["value"] if best else None), c["outcome"],
        )  # fmt: skip


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _run(ctx: Context) -> int:
    run_evaluate(ctx.tables, ctx.cfg, checkpoint=ctx.args.checkpoint, split=ctx.args.split)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
