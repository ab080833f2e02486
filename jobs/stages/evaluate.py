"""`shopseq evaluate`: the trained model against baselines on a gold split -> ``metrics`` table + report.

Recipe: load the checkpoint (``evaluate.checkpoint``: ``best``, ``last`` or a
path); check it was trained on the current vocabulary (the gold schema
artifact's ``vocab_version``); read ``gold_<evaluate.split>`` and
``gold_train`` at their current versions as tensors (no Spark beyond
resolving the snapshot files); score the split with the model and with the
baselines fitted on train (:mod:`shopseq.training.evaluation`), with percentile
bootstrap intervals over users for every metric and for model minus each
baseline (``evaluate.bootstrap_samples``, ``evaluate.confidence``,
``evaluate.seed``); write the metrics (value, ``ci_low``, ``ci_high``) to the
``metrics`` Delta table and the report folder; log the model against the
baselines per task (``beats`` only when the interval of model minus every
baseline lies above zero), and the metrics into the training run's MLflow run.

**Idempotent.** ``evaluation_id`` is a hash of the model version (MLflow run
id and epoch of the checkpoint, named as ``shopseq predict`` names it), the
split, the gold table versions and the evaluation config (including the
bootstrap settings), and the table is partitioned by it. A run whose rows are
already in the table with the same values (everything but ``evaluated_at``)
writes nothing: no new table version, the report and MLflow are left as they
are (``skipped``). Otherwise its partition is replaced (``overwrite_partitions``),
so the table never holds an evaluation twice. A ``metrics`` table written
before the intervals existed (no ``ci_low``/``ci_high`` columns) is rewritten
once with those columns null for its old rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseq.jobs.catalog import GOLD_TRAIN, METRICS, catalog
from shopseq.jobs.common import Context, InputError, run_stage, stage_parser
from shopseq.jobs.config import Config
from shopseq.jobs.stages.report import write_report
from shopseq.jobs.tables import TableError, TableIO
from shopseq.jobs.stages.train import load_schema, open_checkpoint
from shopseq.training import storage

log = logging.getLogger(__name__)

METRICS_TABLE = METRICS
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
        T.StructField("ci_low", T.DoubleType()),  # bootstrap percentile interval over users; null when not computed
        T.StructField("ci_high", T.DoubleType()),
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
    parser.add_argument("--split", choices=["test", "val"], default=None, help="gold split to score (default: evaluate.split)")
    parser.add_argument("--checkpoint", default=None, metavar="best|last|PATH", help="checkpoint to evaluate (default: evaluate.checkpoint)")
    return parser


def evaluation_id(model: str, gold_table: str, gold_version: int, gold_train_version: int, cfg: Config) -> str:
    """16 hex characters identifying (model version, split table and versions, evaluation config)."""
    ec = cfg.evaluate
    key = {
        "model_version": model, "gold_table": gold_table, "gold_version": gold_version, "gold_train_version": gold_train_version,
        "ks": list(ec.ks), "bins": ec.calibration_bins, "bootstrap_samples": ec.bootstrap_samples, "confidence": ec.confidence, "seed": ec.seed,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def report_dir(cfg: Config, eval_id: str) -> str:
    """The catalog's report folder: ``evaluate.report_dir``, else ``<artifacts>/reports/<evaluation id>`` (a local path or a URI)."""
    return catalog(cfg).report(eval_id)


def _check_config(cfg: Config) -> None:
    ec = cfg.evaluate
    if not ec.ks or any(k < 1 for k in ec.ks):
        raise InputError(f"evaluate.ks must be a non-empty list of positive integers, got {ec.ks!r}")
    if ec.calibration_bins < 1:
        raise InputError(f"evaluate.calibration_bins must be >= 1, got {ec.calibration_bins}")
    if ec.batch_size < 1:
        raise InputError(f"evaluate.batch_size must be >= 1, got {ec.batch_size}")
    if ec.bootstrap_samples < 0:
        raise InputError(f"evaluate.bootstrap_samples must be >= 0 (0 disables intervals), got {ec.bootstrap_samples}")
    if not 0.0 < ec.confidence < 1.0:
        raise InputError(f"evaluate.confidence must be strictly between 0 and 1, got {ec.confidence}")


def run_evaluate(tables: TableIO, cfg: Config, checkpoint: str | None = None, split: str | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint on ``gold_<split>`` against the baselines; write ``metrics`` and the report.

    Returns ``evaluation_id``, ``split``, ``split_protocol``, ``model_version``,
    ``checkpoint``, ``checkpoint_epoch``, the gold lineage, ``metrics`` (one
    dict per table row), ``comparison`` (per task: the primary metric, the
    model's value and interval, each baseline's with the paired interval of
    model minus baseline, ``beats_baselines``, ``outcome`` and ``interval``),
    ``n_examples`` per task, ``oov_share`` (next-item rows whose target is out
    of vocabulary: misses), ``bootstrap`` (samples, confidence, seed, users
    per task), ``method_seconds`` (wall time per method), ``report_dir``, ``report_path``,
    ``metrics_table_version`` and ``skipped`` (nothing written: already recorded).
    """
    from shopseq.training.checkpoint import model_from_state
    from shopseq.training.data import count_rows, load_tensors, model_columns
    from shopseq.training.evaluation import OOV_METRIC, compare, evaluate_all

    _check_config(cfg)
    ec = cfg.evaluate
    split = split or ec.split
    ckpt, version = open_checkpoint(cfg, checkpoint or ec.checkpoint, "evaluate")  # refuses a checkpoint of another vocabulary
    path, state = ckpt.path, ckpt.state
    try:
        model = model_from_state(state)
    except Exception as exc:  # noqa: BLE001 - any failure to build or load the weights means the file is not a usable checkpoint
        raise InputError(f"{path}: not a loadable shopseq checkpoint ({type(exc).__name__}: {exc})") from None
    schema = load_schema(cfg)
    vocab = schema.get("inputs", {}).get("vocab_version")
    gold_table = f"gold_{split}"
    gold_version, train_version = tables.version(gold_table), tables.version(GOLD_TRAIN)
    if gold_version is None or train_version is None:
        raise TableError(f"tables {gold_table!r} and 'gold_train' must exist: run `shopseq features` first")
    if (state.get("lineage") or {}).get("gold_train_version") not in (None, train_version):
        log.warning("checkpoint %s was trained on gold_train version %s; the baselines use version %d", path, state["lineage"]["gold_train_version"], train_version)

    columns = model_columns(schema) + ["user_key", "cutoff_time_us"]
    files = {name: tables.files(name, version=v) for name, v in ((gold_table, gold_version), (GOLD_TRAIN, train_version))}
    if not all(files.values()) or not all(count_rows(f) for f in files.values()):
        raise InputError(f"{gold_table} (version {gold_version}) or gold_train (version {train_version}) has no examples to evaluate")
    data = load_tensors(files[gold_table], columns)
    train = load_tensors(files[GOLD_TRAIN], columns)
    n_rows = len(data["next_item_idx"])
    log.info("evaluating %s on %s version %d (%d examples); baselines from gold_train version %d", path, gold_table, gold_version, n_rows, train_version)
    evaluation = evaluate_all(model, data, train, schema, ec.ks, ec.calibration_bins, ec.batch_size, ec.bootstrap_samples, ec.confidence, ec.seed)

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
    metrics = [
        {"task": r.task, "metric": r.metric, "k": r.k, "method": r.method, "value": _null(r.value), "ci_low": _null(r.ci_low), "ci_high": _null(r.ci_high), "n_examples": r.n_examples}
        for r in evaluation.rows
    ]
    comparison = compare(evaluation.rows, ec.ks, evaluation.differences)
    n_examples = {r.task: r.n_examples for r in evaluation.rows}
    oov_share = next((r.value for r in evaluation.rows if r.task == "next_item" and r.metric == OOV_METRIC and r.method == "model"), math.nan)
    if oov_share > 0:
        log.info("next item: %.2f%% of the labelled %s rows have an out-of-vocabulary target, counted as misses", 100 * oov_share, gold_table)
    for task, n in n_examples.items():
        if n == 0:
            log.warning("%s: no labelled %s examples in %s version %d; its metrics are undefined (null)", METRICS_TABLE, task, gold_table, gold_version)

    evaluated_at = datetime.now(timezone.utc).replace(microsecond=0)
    written, table_version = _write_metrics(tables, lineage, metrics, evaluated_at)
    out_dir = report_dir(cfg, eval_id)
    report_path = storage.join(out_dir, "report.md")
    summary = {
        **lineage, "evaluated_at": evaluated_at.isoformat(), "metrics": metrics, "comparison": comparison, "n_examples": n_examples,
        "oov_share": oov_share, "bootstrap": evaluation.bootstrap, "method_seconds": evaluation.method_seconds, "metrics_table_version": table_version,
    }  # fmt: skip
    if written or not _report_current(out_dir, eval_id):
        report_path = write_report(out_dir, summary, evaluation, ec.ks, ec.calibration_bins)
        save_next_item_ranks(storage.join(out_dir, RANKS_FILE), data, evaluation)
    if written:
        _track(state, lineage, metrics, out_dir)
    _log_comparison(comparison, split)
    return {**summary, "report_dir": out_dir, "report_path": report_path, "skipped": not written}


RANKS_FILE = "next_item_ranks.npz"  # in the report folder: per labelled row and method, items above / tied (paired peer comparisons)


def save_next_item_ranks(path: str, data: dict[str, Any], evaluation: Any) -> None:
    """Per labelled next-item row: ``user_key``, ``target`` and, per method, ``<method>.above`` / ``<method>.tied`` / ``<method>.in_vocab``.

    ``shopseq bench quality --peer`` pairs these with a peer's own per-user ranks.
    """
    import numpy as np

    kept = data["next_label_mask"].bool()
    arrays: dict[str, Any] = {"user_key": data["user_key"][kept].numpy(), "target": data["next_item_idx"][kept].numpy()}
    for method, ranks in evaluation.next_item_ranks.items():
        arrays.update({f"{method}.above": ranks.above.numpy(), f"{method}.tied": ranks.tied.numpy(), f"{method}.in_vocab": ranks.in_vocab.numpy()})
    with storage.atomic_write(path) as fh:  # a reader never sees half a file (a local path or a URI)
        np.savez_compressed(fh, **arrays)


def _write_metrics(tables: TableIO, lineage: dict[str, Any], metrics: list[dict[str, Any]], evaluated_at: datetime) -> tuple[bool, int]:
    """Replace this evaluation's partition unless it already holds the same rows; returns (written, table version)."""
    fields = [f.name for f in METRICS_SCHEMA.fields]
    rows = [tuple({**lineage, **m, "evaluated_at": evaluated_at}[name] for name in fields) for m in metrics]
    _add_interval_columns(tables)
    if _already_recorded(tables, lineage, metrics):
        version = tables.version(METRICS_TABLE)
        log.info("%s: evaluation %s already recorded with the same values (table version %d); not written", METRICS_TABLE, lineage["evaluation_id"], version)
        return False, int(version)  # type: ignore[arg-type]
    df = tables.spark.createDataFrame(rows, METRICS_SCHEMA)
    commit = tables.overwrite_partitions(METRICS_TABLE, df, partition_by=["evaluation_id"], metadata={"evaluation_id": lineage["evaluation_id"], "model_version": lineage["model_version"]})
    return True, commit.version


def _add_interval_columns(tables: TableIO) -> None:
    """A ``metrics`` table from before the intervals: rewrite it once with ``ci_low``/``ci_high`` null on its rows."""
    if not tables.exists(METRICS_TABLE):
        return
    old = tables.read(METRICS_TABLE)
    missing = [f for f in METRICS_SCHEMA.fields if f.name not in old.columns]
    if not missing:
        return
    upgraded = old.select(*[F.col(f.name).cast(f.dataType) if f.name in old.columns else F.lit(None).cast(f.dataType).alias(f.name) for f in METRICS_SCHEMA.fields])
    commit = tables.overwrite(METRICS_TABLE, upgraded, partition_by=["evaluation_id"], metadata={"upgrade": "add " + ", ".join(f.name for f in missing)})
    log.info("%s: added the columns %s (null on the existing rows); table version %d", METRICS_TABLE, ", ".join(f.name for f in missing), commit.version)


def _same(a: float | None, b: float | None) -> bool:
    """Both null, or equal within 1e-9 relative."""
    return (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))  # type: ignore[arg-type]


def _already_recorded(tables: TableIO, lineage: dict[str, Any], metrics: list[dict[str, Any]]) -> bool:
    """Whether the table holds exactly these rows for this evaluation (values and intervals within 1e-9 relative)."""
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
        if not all(_same(r[c], m[c]) for c in ("value", "ci_low", "ci_high")):
            return False
    return True


def _report_current(out_dir: str, eval_id: str) -> bool:
    """Whether ``out_dir`` already holds this evaluation's ``report.md`` and ``metrics.json``."""
    path = storage.join(out_dir, "metrics.json")
    if not storage.isfile(storage.join(out_dir, "report.md")) or not storage.isfile(path):
        return False
    return storage.read_json(path).get("evaluation_id") == eval_id


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
        with storage.local_folder(out_dir) as local_dir:  # MLflow uploads from a local folder
            client.log_artifacts(run_id, local_dir, artifact_path=f"evaluation/{lineage['evaluation_id']}")
    except Exception as exc:  # noqa: BLE001 - tracking must never fail the evaluation
        log.warning("MLflow logging of the evaluation failed: %s", exc)


def _log_comparison(comparison: list[dict[str, Any]], split: str) -> None:
    log.info("model vs baselines on the %s split (interval: model minus baseline):", split)
    for c in comparison:
        for b in c["baselines"]:
            log.info(
                "  %-11s %-9s model %.4f  %-19s %.4f  diff %+.4f [%+.4f, %+.4f]  %s",
                c["task"], c["metric"], _nan(c["model"]), b["name"], _nan(b["value"]), _nan(b["diff"]), _nan(b["diff_low"]), _nan(b["diff_high"]), b["verdict"],
            )  # fmt: skip
        log.info("  %-11s -> %s (interval: %s)", c["task"], c["outcome"], c.get("interval", "none"))


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _null(value: float) -> float | None:
    return None if math.isnan(value) else value


def _run(ctx: Context) -> int:
    run_evaluate(ctx.tables, ctx.cfg, checkpoint=ctx.args.checkpoint, split=ctx.args.split)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
