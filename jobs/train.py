"""`shopseq train`: gold tables -> the multi-task sequence model, distributed with Horovod.

Recipe: read the gold schema artifact (``<app.data_root>/gold/schema.json``);
resolve the current files of ``gold_train`` and ``gold_val`` on the driver
(training never touches Spark); open an MLflow run (local file store by
default, the workspace on Databricks) with the config and lineage; launch
:func:`training.loop.train_fn` on ``train.num_proc`` ranks with
``train.launcher``; log the rank-0 history and the checkpoint location.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from jobs.build_features import schema_path
from jobs.common import Context, InputError, run_stage, stage_parser
from jobs.config import Config, TrainConfig, to_dict
from jobs.tables import TableIO
from training.launch import launch
from training.loop import TrainParams, train_fn

log = logging.getLogger(__name__)


def build_parser():
    parser = stage_parser("train", "Train the multi-task sequence model on the gold tables (Petastorm -> Horovod -> PyTorch).")
    parser.add_argument("--launcher", choices=["spark", "horovodrun", "local"], default=None, help="override train.launcher")
    parser.add_argument("--num-proc", type=int, default=None, help="override train.num_proc (ranks)")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--fresh", action="store_true", help="ignore existing checkpoints (do not resume)")
    return parser


def checkpoint_dir(cfg: Config) -> str:
    return os.path.abspath(cfg.train.checkpoint_dir or os.path.join(cfg.app.data_root, "checkpoints"))


def tracking_uri(cfg: Config) -> str:
    """``train.mlflow_tracking_uri``, else a file store under the data root (``databricks`` on Databricks)."""
    if cfg.train.mlflow_tracking_uri:
        return cfg.train.mlflow_tracking_uri
    if "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return "databricks"
    return "file:" + os.path.abspath(os.path.join(cfg.app.data_root, "mlruns"))


def model_kwargs(tc: TrainConfig) -> dict[str, Any]:
    """The :class:`training.model.ModelConfig` keys that come from ``train`` config (the schema gives the sizes).

    The one place they are chosen: training saves them in the checkpoint and
    ``shopseq run`` compares them to decide whether a checkpoint still fits.
    """
    return {
        "encoder": tc.encoder, "dim": tc.dim, "layers": tc.layers, "heads": tc.heads, "dropout": tc.dropout,
        "repeat": tc.repeat, "embedding_init_std": tc.embedding_init_std,
    }


def load_schema(cfg: Config) -> dict[str, Any]:
    path = schema_path(cfg)
    if not os.path.exists(path):
        raise InputError(f"no gold schema artifact at {path}: run `shopseq features` first")
    with open(path) as fh:
        return json.load(fh)


def item_counts(tables: TableIO, size: int) -> list[int]:
    """Training-range item frequencies by vocabulary index (the sampled-softmax proposal)."""
    rows = tables.read("vocab").where("kind = 'item'").select("index", "count").collect()
    counts = [0] * size
    for r in rows:
        if 0 <= int(r["index"]) < size:
            counts[int(r["index"])] = int(r["count"] or 0)
    return counts


def run_train(tables: TableIO, cfg: Config, launcher: str | None = None, num_proc: int | None = None, epochs: int | None = None, fresh: bool = False) -> dict[str, Any]:
    """Train with config ``train``; returns rank 0's result plus the run's lineage."""
    import mlflow

    tc = cfg.train
    schema = load_schema(cfg)
    lineage = {
        "gold_train_version": tables.version("gold_train"),
        "gold_val_version": tables.version("gold_val"),
        "vocab_version": schema.get("inputs", {}).get("vocab_version"),
        "silver_version": schema.get("inputs", {}).get("silver_version"),
    }
    ckpt = checkpoint_dir(cfg)
    if fresh and os.path.isdir(ckpt):
        for name in os.listdir(ckpt):
            if name.endswith(".pt") or name == "history.json":
                os.remove(os.path.join(ckpt, name))
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(tc.experiment)
    with mlflow.start_run(run_name=f"train-{cfg.env}") as run:
        mlflow.log_params({f"train.{k}": v for k, v in to_dict(tc).items() if not isinstance(v, dict)})
        mlflow.log_params({k: str(v) for k, v in lineage.items()})
        params = TrainParams(
            schema=schema,
            # The snapshot the lineage names: Delta's file list of exactly those versions (time travel reads them back).
            train_files=tables.files("gold_train", version=lineage["gold_train_version"]),
            val_files=tables.files("gold_val", version=lineage["gold_val_version"]),
            checkpoint_dir=ckpt,
            model=model_kwargs(tc),
            log_level=cfg.app.log_level,
            batch_size=tc.batch_size,
            epochs=epochs or tc.epochs,
            lr=tc.lr,
            weight_decay=tc.weight_decay,
            wide_lr_scale=tc.wide_lr_scale,
            lr_schedule=tc.lr_schedule,
            loss_weights=dict(tc.loss_weights),
            num_negatives=tc.num_negatives,
            next_item_positions=tc.next_item_positions,
            repeat_lr_scale=tc.repeat_lr_scale,
            item_counts=item_counts(tables, schema["embedding_sizes"]["item"]) if tc.num_negatives > 0 else None,
            seed=tc.seed,
            resume=tc.resume and not fresh,
            patience=tc.patience,
            amp=tc.amp,
            deterministic=tc.deterministic,
            workers=tc.workers,
            max_steps_per_epoch=tc.max_steps_per_epoch,
            lineage=lineage,
            mlflow_tracking_uri=uri,
            mlflow_run_id=run.info.run_id,
        )
        how = launcher or tc.launcher
        ranks = num_proc or tc.num_proc
        for name, files in (("gold_train", params.train_files), ("gold_val", params.val_files)):
            if len(files) < ranks:
                raise InputError(
                    f"{name} has {len(files)} file(s) for {ranks} rank(s): the split is (nearly) empty; "
                    "use a longer data range, shorter horizons (features.*_horizon_days) or other split fractions"
                )
        log.info("training on %d rank(s) via %s: %d train files, %d val files, checkpoints in %s", ranks, how, len(params.train_files), len(params.val_files), ckpt)
        results = launch(train_fn, params, how, ranks)
        result = results[0]
        mlflow.log_dict(schema, "gold_schema.json")
        mlflow.set_tags({"checkpoint_dir": ckpt, "ranks": str(result["size"]), "launcher": how})
    history = result["history"]
    if history:
        last = history[-1]
        log.info("trained %d epoch(s): loss %.4f, val ndcg@10 %.4f, val purchase auc %.3f", len(history), last["train_loss"], last.get("val_ndcg@10", float("nan")), last.get("val_purchase_auc", float("nan")))
    return {**result, "lineage": lineage, "checkpoint_dir": ckpt, "mlflow_run_id": run.info.run_id, "tracking_uri": uri}


def _run(ctx: Context) -> int:
    a = ctx.args
    run_train(ctx.tables, ctx.cfg, a.launcher, a.num_proc, a.epochs, a.fresh)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
