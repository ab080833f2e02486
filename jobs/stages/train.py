"""`shopseq train`: gold tables -> the multi-task sequence model, distributed with Horovod or TorchDistributor.

Recipe: read the gold schema artifact (``<artifacts>/gold/schema.json``: ``app.artifact_root``, else ``app.data_root``);
decide what to do with the checkpoint already there (:func:`train_status`);
resolve the current files of ``gold_train`` and ``gold_val`` on the driver
(training never touches Spark); open an MLflow run (local file store by
default, the workspace on Databricks) with the config and lineage; launch
:func:`shopseq.training.loop.train_fn` on ``train.num_proc`` ranks with
``train.launcher``; log the rank-0 history and the checkpoint location.

**A model is never stale.** Every entry point that trains (``shopseq train``,
the Databricks task, ``shopseq run``) goes through :func:`run_train`, which
compares ``<checkpoints>/last.pt`` with the current gold tables, vocabulary and
model config (:data:`FRESHNESS_KEYS`, :func:`model_kwargs`):

* ``done``: the same, and finished (all epochs, or stopped early): nothing is
  trained, one line says so;
* ``resume``: the same, unfinished: training continues from it (unless
  ``train.resume`` is false or ``--fresh``);
* ``fresh``: no checkpoint, or one of other data or another model config:
  a new run starts at epoch 0, and the earlier run's files (``last.pt``,
  ``best.pt``, ``epoch-NNNN.pt``, ``history.json``) are first moved to
  ``<checkpoints>/runs/<its MLflow run id>/`` (one line says so); nothing is deleted.

Evaluation and prediction open a checkpoint through :func:`open_checkpoint`:
one resolution of ``best``/``last``/a path, one model version, and a refusal
(:class:`~shopseq.jobs.common.InputError`, exit 2) of a checkpoint whose vocabulary is
not the gold tables' current one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import sys
from typing import Any, Literal

from shopseq.jobs.stages.build_features import schema_path
from shopseq.jobs.catalog import GOLD_TRAIN, GOLD_VAL, VOCAB, catalog
from shopseq.jobs.common import Context, InputError, run_stage, stage_parser
from shopseq.jobs.config import Config, TrainConfig, to_dict
from shopseq.jobs.tables import TableIO
from shopseq.training import storage
from shopseq.training.launch import LAUNCHERS, launch
from shopseq.training.loop import TrainParams, train_fn

log = logging.getLogger(__name__)


def build_parser():
    parser = stage_parser("train", "Train the multi-task sequence model on the gold tables (Petastorm -> Horovod or TorchDistributor -> PyTorch).")
    parser.add_argument("--launcher", choices=list(LAUNCHERS), default=None, help="how ranks are started (default: train.launcher)")
    parser.add_argument("--num-proc", type=int, default=None, help="number of ranks (default: train.num_proc)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (default: train.epochs)")
    parser.add_argument("--fresh", action="store_true", help="start a new run even when the checkpoint is current (the old one is kept under <checkpoints>/runs/)")
    return parser


FRESHNESS_KEYS: tuple[str, ...] = ("gold_train_version", "gold_val_version", "vocab_version")  # lineage a checkpoint must share to be kept
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def checkpoint_dir(cfg: Config) -> str:
    """The catalog's checkpoint folder: ``train.checkpoint_dir``, else ``<artifacts>/checkpoints`` (a local path or a URI)."""
    return catalog(cfg).checkpoints


def tracking_uri(cfg: Config) -> str:
    """The catalog's MLflow store: ``train.mlflow_tracking_uri``, else a file store under the data root (``databricks`` on Databricks)."""
    return catalog(cfg).mlflow_uri


def model_kwargs(tc: TrainConfig) -> dict[str, Any]:
    """The :class:`shopseq.training.model.ModelConfig` keys that come from ``train`` config (the schema gives the sizes).

    The one place they are chosen: training saves them in the checkpoint and
    :func:`train_status` compares them to decide whether a checkpoint still fits.
    """
    return {
        "encoder": tc.encoder, "dim": tc.dim, "layers": tc.layers, "heads": tc.heads, "dropout": tc.dropout,
        "repeat": tc.repeat, "embedding_init_std": tc.embedding_init_std,
    }


def train_params(cfg: Config, **run: Any) -> TrainParams:
    """The one builder of :class:`shopseq.training.loop.TrainParams` (``shopseq train`` and ``shopseq bench train``).

    Every ``train.*`` field comes from ``cfg.train`` (:meth:`TrainParams.from_config`),
    the model kwargs from :func:`model_kwargs`, the rank-0 log level from
    ``app.log_level``; ``run`` gives the run's own fields and may override a
    config field for this run.
    """
    return TrainParams.from_config(cfg.train, **{"model": model_kwargs(cfg.train), "log_level": cfg.app.log_level, **run})


def load_schema(cfg: Config) -> dict[str, Any]:
    """The gold schema artifact (a local path or a URI, :mod:`shopseq.training.storage`); InputError when there is none."""
    path = schema_path(cfg)
    if not storage.isfile(path):
        raise InputError(f"no gold schema artifact at {path}: run `shopseq features` first")
    return storage.read_json(path)


def item_counts(tables: TableIO, size: int) -> list[int]:
    """Training-range item frequencies by vocabulary index (the sampled-softmax proposal)."""
    rows = tables.read(VOCAB).where("kind = 'item'").select("index", "count").collect()
    counts = [0] * size
    for r in rows:
        if 0 <= int(r["index"]) < size:
            counts[int(r["index"])] = int(r["count"] or 0)
    return counts


# --------------------------------------------------------------------------- freshness of the checkpoint


def current_lineage(tables: TableIO, schema: dict[str, Any]) -> dict[str, Any]:
    """What a model trained now is trained on: the gold tables' current versions and the schema artifact's vocabulary."""
    inputs = schema.get("inputs") or {}
    return {
        "gold_train_version": tables.version(GOLD_TRAIN),
        "gold_val_version": tables.version(GOLD_VAL),
        "vocab_version": inputs.get("vocab_version"),
        "silver_version": inputs.get("silver_events_version"),
    }


TrainVerdict = Literal["done", "resume", "fresh"]


@dataclasses.dataclass(frozen=True)
class TrainStatus:
    """What :func:`run_train` does with the checkpoint in the checkpoint folder, and why (one phrase)."""

    status: TrainVerdict
    reason: str
    path: str  # <checkpoints>/last.pt
    state: dict[str, Any]  # the checkpoint's epoch, bad_epochs, history, params, lineage, model_config; {} without one


def checkpoint_verdict(state: dict[str, Any], current: dict[str, Any], model: dict[str, Any], epochs: int, patience: int) -> tuple[TrainVerdict, str]:
    """``done`` / ``resume`` / ``fresh`` for a checkpoint's ``state`` against the ``current`` lineage and ``model`` config.

    ``fresh`` when any of :data:`FRESHNESS_KEYS` or the model config differs
    (resuming would mix datasets or fail to load); else ``done`` when it ran
    all ``epochs`` or stopped early (``patience`` epochs without gain), else ``resume``.
    """
    if not state:
        return "fresh", "no checkpoint"
    lineage = state.get("lineage") or {}
    changed = [f"{k} {lineage.get(k)} -> {current.get(k)}" for k in FRESHNESS_KEYS if lineage.get(k) != current.get(k)]
    if state.get("model_config") != model:
        changed.append("model config")
    if changed:
        return "fresh", "trained on other data or another model config (" + ", ".join(changed) + ")"
    epoch = int(state["epoch"])
    if epoch + 1 >= epochs or int(state.get("bad_epochs", 0)) >= patience:
        return "done", f"trained on the current gold tables, vocabulary and model config, finished at epoch {epoch}"
    return "resume", f"trained on the current gold tables, vocabulary and model config, unfinished at epoch {epoch} of {epochs}"


def train_status(tables: TableIO, cfg: Config, epochs: int | None = None, schema: dict[str, Any] | None = None) -> TrainStatus:
    """The verdict on ``<checkpoints>/last.pt`` (:func:`checkpoint_verdict`) for config ``train`` (``epochs`` overrides ``train.epochs``)."""
    path = catalog(cfg).checkpoint("last")
    schema = schema if schema is not None else load_schema(cfg)
    if not storage.isfile(path):
        return TrainStatus("fresh", "no checkpoint", path, {})
    try:
        loaded = storage.load_torch(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable last.pt cannot be resumed; it is kept, not deleted
        return TrainStatus("fresh", f"unreadable checkpoint ({type(exc).__name__})", path, {})
    keep = ("epoch", "bad_epochs", "history", "params", "lineage", "model_config")
    state = {k: loaded.get(k) for k in keep} if isinstance(loaded, dict) else {}
    verdict, reason = checkpoint_verdict(state, current_lineage(tables, schema), model_kwargs(cfg.train), epochs or cfg.train.epochs, cfg.train.patience)
    return TrainStatus(verdict, reason, path, state)


def run_key(state: dict[str, Any]) -> str:
    """An earlier run's folder name: its MLflow run id, else ``lineage-<12 hex of its lineage and model config>``."""
    run_id = str((state.get("params") or {}).get("mlflow_run_id") or "")
    if _SAFE_VERSION.match(run_id):
        return run_id
    key = json.dumps({"lineage": state.get("lineage"), "model_config": state.get("model_config")}, sort_keys=True, default=str)
    return "lineage-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def keep_earlier_run(cfg: Config, state: dict[str, Any]) -> str | None:
    """Move the checkpoint folder's run files (``*.pt``, ``history.json``) to ``<checkpoints>/runs/<run key>/``.

    Returns that folder, or None when there was nothing to move. A folder of
    the same name already there gets a ``-2``, ``-3``, ... suffix; nothing is overwritten.
    """
    cat = catalog(cfg)
    folder = cat.checkpoints
    names = [n for n in storage.listdir(folder) if n.endswith(".pt") or n == "history.json"]
    if not names:
        return None
    base = cat.earlier_run(run_key(state))
    dest, n = base, 1
    while storage.exists(dest):
        n += 1
        dest = f"{base}-{n}"
    storage.move_files(folder, names, dest)  # local: renames; object storage: copy + delete per object
    return dest


def _up_to_date(cfg: Config, status: TrainStatus) -> dict[str, Any]:
    """The result of a run that trains nothing: the finished checkpoint's history, lineage and MLflow run."""
    params = status.state.get("params") or {}
    return {
        "skipped": True, "status": status.status, "history": status.state.get("history") or [], "lineage": status.state.get("lineage") or {},
        "checkpoint_dir": checkpoint_dir(cfg), "mlflow_run_id": params.get("mlflow_run_id"),
        "tracking_uri": params.get("mlflow_tracking_uri") or tracking_uri(cfg), "size": None, "kept": None,
    }  # fmt: skip


# --------------------------------------------------------------------------- training


def run_train(tables: TableIO, cfg: Config, launcher: str | None = None, num_proc: int | None = None, epochs: int | None = None, fresh: bool = False) -> dict[str, Any]:
    """Train with config ``train`` unless the checkpoint is current and finished; returns rank 0's result plus the run's lineage.

    ``skipped`` says nothing was trained (:func:`train_status` found the
    checkpoint ``done``); ``kept`` names the folder the earlier run's
    checkpoint was moved to when a new run started over it (else None).
    ``fresh`` starts a new run even over a current checkpoint.
    """
    import mlflow

    tc = cfg.train
    schema = load_schema(cfg)
    lineage = current_lineage(tables, schema)
    ckpt = checkpoint_dir(cfg)
    status = train_status(tables, cfg, epochs, schema)
    if status.status == "done" and not fresh:
        log.info("checkpoint %s is %s; not retrained (--fresh starts a new run)", status.path, status.reason)
        return _up_to_date(cfg, status)
    resume = status.status == "resume" and tc.resume and not fresh
    kept = None if resume else keep_earlier_run(cfg, status.state)
    if resume:
        log.info("checkpoint %s is %s; resuming it", status.path, status.reason)
    elif kept:
        why = "--fresh" if fresh else "train.resume is false" if status.status == "resume" else status.reason
        log.info("checkpoint %s: %s; starting a new run from epoch 0, the earlier run's checkpoint is kept in %s", status.path, why, kept)
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(tc.experiment)
    with mlflow.start_run(run_name=f"train-{cfg.env}") as run:
        mlflow.log_params({f"train.{k}": v for k, v in to_dict(tc).items() if not isinstance(v, dict)})
        mlflow.log_params({k: str(v) for k, v in lineage.items()})
        params = train_params(
            cfg,
            schema=schema,
            # The snapshot the lineage names: Delta's file list of exactly those versions (time travel reads them back).
            train_files=tables.files("gold_train", version=lineage["gold_train_version"]),
            val_files=tables.files("gold_val", version=lineage["gold_val_version"]),
            checkpoint_dir=ckpt,
            epochs=epochs or tc.epochs,
            resume=resume,
            item_counts=item_counts(tables, schema["embedding_sizes"]["item"]) if tc.num_negatives > 0 else None,
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
        # Rank 0's result comes first (TorchDistributor returns only that one).
        result = launch(train_fn, params, how, ranks, start_timeout=tc.start_timeout_s, rank_timeout_s=tc.rank_timeout_s, nics=tc.nics)[0]
        mlflow.log_dict(schema, "gold_schema.json")
        mlflow.set_tags({"checkpoint_dir": ckpt, "ranks": str(result["size"]), "launcher": how})
    history = result["history"]
    if history:
        last = history[-1]
        log.info("trained %d epoch(s): loss %.4f, val ndcg@10 %.4f, val purchase auc %.3f", len(history), last["train_loss"], last.get("val_ndcg@10", float("nan")), last.get("val_purchase_auc", float("nan")))
    return {**result, "lineage": lineage, "checkpoint_dir": ckpt, "mlflow_run_id": run.info.run_id, "tracking_uri": uri, "skipped": False, "status": status.status, "kept": kept}


# --------------------------------------------------------------------------- opening a trained model (evaluate, predict)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as the driver sees it: its bytes (what executors load), content digest and saved state."""

    path: str
    data: bytes
    digest: str  # sha256 of the bytes: the executors' model-cache key and the fallback model version
    state: dict[str, Any]

    @property
    def schema(self) -> dict[str, Any]:
        """The gold schema artifact the model was built from."""
        return self.state["schema"]


def resolve_checkpoint(cfg: Config, choice: str, section: str) -> str:
    """``best`` / ``last`` -> the catalog's ``<checkpoints>/<name>.pt``; a relative path is looked up in the
    checkpoint folder, then the working directory. It must exist (else InputError naming ``<section>.checkpoint``)."""
    cat = catalog(cfg)
    if choice in ("best", "last"):
        path = cat.checkpoint(choice)
    elif storage.is_uri(choice) or os.path.isabs(choice):
        path = choice
    else:
        inside = storage.join(cat.checkpoints, choice)
        path = inside if storage.isfile(inside) else os.path.abspath(choice)
    if not storage.isfile(path):
        raise InputError(f"no checkpoint at {path}: run `shopseq train` first (or set {section}.checkpoint)")
    return path


def read_checkpoint(path: str) -> Checkpoint:
    """Read the checkpoint once on the driver (no model is built here)."""
    import torch

    data = storage.read_bytes(path)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is not a checkpoint
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "schema" not in state or "model" not in state:
        raise InputError(f"{path}: not a shopseq checkpoint (no model or schema)")
    return Checkpoint(path, data, hashlib.sha256(data).hexdigest(), state)


def model_version(ckpt: Checkpoint, override: str | None = None) -> str:
    """``override`` (``predict.model_version``), else ``<MLflow run id>-e<epoch, 4 digits>``, else ``sha256-<16 hex of the file>``.

    The same checkpoint always gets the same version; ``best.pt`` and
    ``epoch-NNNN.pt`` of the same epoch hold the same weights and share it.
    """
    version = override
    if version is None:
        run_id = (ckpt.state.get("params") or {}).get("mlflow_run_id")
        epoch = ckpt.state.get("epoch")
        version = f"{run_id}-e{int(epoch):04d}" if run_id and epoch is not None else f"sha256-{ckpt.digest[:16]}"
    if not _SAFE_VERSION.match(version):
        raise InputError(f"predict.model_version: {version!r} must be letters, digits, '.', '_' or '-' (it names a partition)")
    return version


def vocabulary(schema: dict[str, Any], lineage: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``(vocab_version, item embedding size)`` of a schema artifact (the lineage's vocab_version wins when it names one)."""
    version = (lineage or {}).get("vocab_version") or (schema.get("inputs") or {}).get("vocab_version")
    return version, (schema.get("embedding_sizes") or {}).get("item")


def check_vocabulary(ckpt: Checkpoint, schema: dict[str, Any]) -> None:
    """Refuse a checkpoint trained on another vocabulary than the gold schema artifact's (version or item count differ)."""
    trained, items = vocabulary(ckpt.schema, ckpt.state.get("lineage"))
    current, now = vocabulary(schema)
    if (trained, items) != (current, now):
        raise InputError(
            f"checkpoint {ckpt.path} was trained on vocabulary {trained} ({items} items), the gold tables now use vocabulary {current} "
            f"({now} items): run `shopseq train` to train a model on them"
        )


def open_checkpoint(cfg: Config, choice: str, section: str, version: str | None = None) -> tuple[Checkpoint, str]:
    """The one way evaluate and predict open a model: resolve ``choice`` (:func:`resolve_checkpoint`), read it,
    refuse a stale vocabulary (:func:`check_vocabulary`) and name its version (:func:`model_version`)."""
    ckpt = read_checkpoint(resolve_checkpoint(cfg, choice, section))
    check_vocabulary(ckpt, load_schema(cfg))
    return ckpt, model_version(ckpt, version)


def _run(ctx: Context) -> int:
    a = ctx.args
    run_train(ctx.tables, ctx.cfg, a.launcher, a.num_proc, a.epochs, a.fresh)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
