"""The training loop, one function for every launcher: ``train_fn(params)``.

Self-contained and picklable: it imports inside, reads its own shard, and runs
the same in one process (``params.distributed = False``), in Horovod ranks
started by ``horovod.spark.run`` or ``horovodrun`` (``params.backend =
"horovod"``), or in ``torch.distributed`` ranks started by ``TorchDistributor``
(``"torch"``), on CPU (gloo) or one GPU per rank. Everything distributed goes
through :mod:`shopseq.training.dist`. Only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from shopseq.training.dist import Dist, init_dist

log = logging.getLogger(__name__)


def _from_train_config() -> Any:
    """A field whose value is the ``train`` config key of the same name: required, no default of its own (see :meth:`TrainParams.from_config`)."""
    return field(kw_only=True, metadata={"train_config": True})


@dataclass
class TrainParams:
    """Everything a rank needs, resolved on the driver (no Spark inside ranks).

    The fields marked ``_from_train_config()`` are the ``train.*`` keys of the
    same name: they have no defaults here (the typed config and
    ``conf/base.yaml`` hold the one default), and :meth:`from_config` is the
    one place they are copied from the config.
    """

    schema: dict[str, Any]
    train_files: list[str]
    val_files: list[str]
    checkpoint_dir: str
    model: dict[str, Any] = field(kw_only=True)  # ModelConfig kwargs (shopseq.jobs.stages.train.model_kwargs): encoder, dim, layers, heads, dropout, repeat, ...
    batch_size: int = _from_train_config()
    epochs: int = _from_train_config()
    lr: float = _from_train_config()
    weight_decay: float = _from_train_config()
    wide_lr_scale: float = _from_train_config()  # the wide (linear) parts' learning rate relative to lr
    lr_schedule: str = _from_train_config()  # "cosine": per step from the peak (lr) down to 0 at the last epoch's end | "constant"
    loss_weights: dict[str, float] = _from_train_config()
    num_negatives: int = _from_train_config()  # 0: full softmax; > 0: sampled softmax with log-Q correction
    next_item_positions: str = _from_train_config()  # "all": every window position learns its next item | "last": the cutoff's label only
    repeat_lr_scale: float = _from_train_config()  # the repeat bias's learning rate relative to lr
    seed: int = _from_train_config()
    resume: bool = _from_train_config()
    patience: int = _from_train_config()  # early stopping: epochs without validation improvement
    amp: bool = _from_train_config()
    deterministic: bool = _from_train_config()
    workers: int = _from_train_config()
    max_steps_per_epoch: int | None = _from_train_config()  # quick mode
    item_counts: list[int] | None = None  # item frequencies (index order) for the sampled softmax proposal
    distributed: bool = True
    backend: str = "horovod"  # the ranks' collectives (shopseq.training.dist): "horovod" | "torch" (TorchDistributor); set by shopseq.training.launch
    rank_timeout_s: int | None = None  # torch backend: seconds a collective waits for a peer (train.rank_timeout_s, set by shopseq.training.launch)
    lineage: dict[str, Any] = field(default_factory=dict)  # vocab version, gold versions: saved in checkpoints
    source: str = "petastorm"  # "petastorm" (streamed) | "memory" (this rank's shard preloaded as tensors: benchmark reference)
    mlflow_tracking_uri: str | None = None  # rank 0 logs per-epoch metrics into mlflow_run_id
    mlflow_run_id: str | None = None
    log_level: str = "INFO"  # rank 0's progress lines (app.log_level); other ranks log warnings only

    @classmethod
    def config_fields(cls) -> tuple[str, ...]:
        """The fields copied from the ``train`` config section."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("train_config"))

    @classmethod
    def from_config(cls, train: Any, **run: Any) -> "TrainParams":
        """Params from the ``train`` config section (a ``shopseq.jobs.config.TrainConfig``) plus this run's own fields.

        ``run`` gives the fields config does not hold (schema, files,
        checkpoint folder, model kwargs, lineage, ...) and may override a
        config field for this run (``epochs`` from ``--epochs``, ``resume``
        from ``--fresh``).
        """
        values: dict[str, Any] = {name: copy.deepcopy(getattr(train, name)) for name in cls.config_fields()}
        values.update(run)
        return cls(**values)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning rate at global ``step`` over its peak: 1 (constant) or a cosine from 1 down to 0 at ``total_steps``.

    A function of the step alone, so a resumed run continues the same curve.
    """
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise ValueError(f"unknown lr_schedule {schedule!r}: use constant or cosine")


def set_learning_rates(optimizer: Any, peaks: list[float], factor: float) -> None:
    """Each parameter group's learning rate = its peak x ``factor``."""
    for group, peak in zip(optimizer.param_groups, peaks):
        group["lr"] = peak * factor


def _configure_rank_logging(rank: int, level: str) -> None:
    """Rank 0 logs progress at ``level``, other ranks warnings only.

    Distributed only: a rank started by ``horovod.spark.run`` or ``horovodrun``
    is a fresh process with no logging set up; its stderr reaches the job's log.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("shopseq.training").setLevel(level if rank == 0 else logging.WARNING)


def train_fn(params: TrainParams) -> dict[str, Any]:
    """Train, validate each epoch, checkpoint on rank 0, resume from the last checkpoint."""
    import numpy as np
    import torch

    from shopseq.training.data import load_tensors, model_columns, petastorm_batches, shard_files, steps_per_epoch, tensor_batches
    from shopseq.training.metrics import batch_ranking_sums, roc_auc
    from shopseq.training.model import ITEM_FEATURE, ModelConfig, MultiTaskModel, last_valid_index, masked_bce, next_item_loss, next_targets

    dist = init_dist(params.distributed, params.backend, params.rank_timeout_s)  # None for one process
    rank, size = (dist.rank, dist.size) if dist else (0, 1)
    _configure_rank_logging(rank, params.log_level)
    if dist and not torch.cuda.is_available():
        # Distributed only: ranks share the host's cores; one thread each avoids oversubscription.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_size))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        # Distributed only: one GPU per rank, pinned by local rank.
        torch.cuda.set_device(dist.local_rank if dist else 0)
        device = torch.device("cuda")
    if params.deterministic:
        # Bit-reproducible runs (resume tests): one intra-op thread, deterministic kernels.
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(params.seed)
    np.random.seed(params.seed)

    model = MultiTaskModel(ModelConfig.from_schema(params.schema, **params.model)).to(device)
    # Distributed only: the learning rate scales with the number of ranks (the global batch grows with it).
    # Wide & deep: the linear wide parts get their own, larger step (rare churn positives move them slowly).
    wide = {id(p) for p in model.wide_parameters()}
    rep = {id(p) for p in model.repeat.parameters()} if model.repeat is not None else set()
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in wide and id(p) not in rep]},
        {"params": [p for p in model.parameters() if id(p) in wide], "lr": params.lr * size * params.wide_lr_scale},
        {"params": [p for p in model.parameters() if id(p) in rep], "lr": params.lr * size * params.repeat_lr_scale},
    ]
    optimizer: Any = torch.optim.AdamW(groups, lr=params.lr * size, weight_decay=params.weight_decay)
    peak_lrs = [g["lr"] for g in optimizer.param_groups]
    if dist:
        # Distributed only: Horovod's DistributedOptimizer (the torch backend keeps the optimizer), before any state is loaded.
        optimizer = dist.distributed_optimizer(optimizer, model)
    start_epoch, best, history, bad_epochs, saved_optimizer = 0, -math.inf, [], 0, None
    ckpt = _latest_checkpoint(params.checkpoint_dir) if params.resume else None
    if ckpt and rank == 0:
        from shopseq.training import storage

        state = storage.load_torch(ckpt, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, history, bad_epochs, saved_optimizer = state["epoch"] + 1, state["best"], state["history"], state["bad_epochs"], state["optimizer"]
        log.info("resumed from %s (next epoch %d)", ckpt, start_epoch)
    if dist:
        # Distributed only: every rank starts from rank 0's weights, optimizer state (Adam's moments, step) and progress.
        dist.broadcast_state(model.state_dict())
        start_epoch, best, history, bad_epochs, saved_optimizer = dist.broadcast_object((start_epoch, best, history, bad_epochs, saved_optimizer))
        if saved_optimizer is not None and rank != 0:
            optimizer.load_state_dict(saved_optimizer)

    columns = model_columns(params.schema)
    steps = steps_per_epoch(params.train_files, params.batch_size, size)
    if params.max_steps_per_epoch:
        steps = min(steps, params.max_steps_per_epoch)
    log_q = None
    if params.num_negatives > 0:
        counts = torch.tensor(params.item_counts or [1] * params.schema["embedding_sizes"]["item"], dtype=torch.float)
        counts[0] = 0  # never sample padding
        log_q = torch.log((counts + 1e-3) / (counts + 1e-3).sum()).to(device)
    use_amp = params.amp
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if use_amp and device.type == "cuda" else None
    weights = params.loss_weights

    def losses(batch: dict[str, Any]) -> dict[str, Any]:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            out = model(batch)
        hidden = out["hidden"].float()
        items = batch[ITEM_FEATURE].long()
        t_item, m_item = next_targets(items, batch["next_item_idx"].long(), batch["next_label_mask"])
        if params.next_item_positions == "last":
            m_item = m_item & (torch.arange(items.shape[1], device=items.device) == last_valid_index(items).unsqueeze(1))
        repeat = model.repeat_weights(batch) if model.repeat is not None else None
        t_act, m_act = batch["next_event_type_idx"].long(), batch["next_label_mask"].bool()  # the cutoff's next event type
        parts = {
            "next_item": next_item_loss(model, hidden, t_item, m_item, params.num_negatives, log_q, items, repeat),
            "next_action": torch.nn.functional.cross_entropy(out["action_logits"].float()[m_act], t_act[m_act]) if m_act.any() else hidden.sum() * 0,
            "purchase": masked_bce(out["purchase_logit"].float(), batch["purchase_label"], batch["purchase_label_mask"]),
            "churn": masked_bce(out["churn_logit"].float(), batch["churn_label"], batch["churn_label_mask"]),
        }
        parts["total"] = sum(weights.get(k, 0.0) * v for k, v in parts.items())
        return parts

    in_memory = load_tensors(shard_files(params.train_files, rank, size), columns) if params.source == "memory" else None

    def epoch_batches(epoch: int) -> Any:
        if in_memory is not None:
            return tensor_batches(in_memory, params.batch_size, 0, 1, params.seed + epoch, steps)
        return petastorm_batches(params.train_files, columns, params.batch_size, rank, size, params.seed + epoch, steps, True, params.workers, params.deterministic)

    fault = _rank_fault(rank)  # test hook (docs/reliability.md): None unless $SHOPSEQ_FAULT names this rank
    stopped_early = False
    for epoch in range(start_epoch, params.epochs):
        model.train()
        torch.manual_seed(params.seed * 1000 + epoch)  # dropout and sampling: reproducible per epoch, so resume matches
        t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros(5)
        for i, batch in enumerate(epoch_batches(epoch)):
            if fault == (epoch, i):
                _die(f"rank {rank} at epoch {epoch} step {i}")
            set_learning_rates(optimizer, peak_lrs, lr_factor(params.lr_schedule, epoch * steps + i, params.epochs * steps))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            parts = losses(batch)
            optimizer.zero_grad()
            (scaler.scale(parts["total"]) if scaler is not None else parts["total"]).backward()
            if dist:
                dist.average_gradients(optimizer)  # Distributed only: the mean gradient over ranks, before unscaling
            if scaler is not None:
                scaler.unscale_(optimizer)
            with dist.stepping(optimizer) if dist else contextlib.nullcontext():
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            seen += len(batch[ITEM_FEATURE])
            loss_sum += torch.tensor([parts[k].item() for k in ("total", "next_item", "next_action", "purchase", "churn")])
        elapsed = time.perf_counter() - t0
        train_loss = loss_sum / max(1, steps)
        samples = torch.tensor([float(seen)])
        if dist:
            # Distributed only: average the losses and sum the throughput across ranks.
            train_loss = dist.allreduce(train_loss, "mean", name=f"train_loss_{epoch}")
            samples = dist.allreduce(samples, "sum", name=f"samples_{epoch}")
        val = _validate(model, params, columns, rank, size, dist, device, batch_ranking_sums, roc_auc)
        row = {
            "epoch": epoch,
            "train_loss": float(train_loss[0]),
            "train_loss_parts": {k: float(v) for k, v in zip(("next_item", "next_action", "purchase", "churn"), train_loss[1:])},
            "samples_per_s": float(samples[0]) / elapsed if elapsed > 0 else 0.0,
            "steps": steps,
            **val,
        }
        history.append(row)
        score = val.get("val_ndcg@10", 0.0)
        improved = score > best
        best, bad_epochs = (score, 0) if improved else (best, bad_epochs + 1)
        if rank == 0:
            log.info("epoch %d: loss %.4f, %.0f samples/s, val ndcg@10 %.4f, purchase auc %s", epoch, row["train_loss"], row["samples_per_s"], score, val.get("val_purchase_auc"))
            _save_checkpoint(params, model, optimizer, epoch, best, history, bad_epochs, improved)
            _track(params, row)
        if bad_epochs >= params.patience:
            stopped_early = True
            if rank == 0:
                log.info("early stopping after epoch %d (no val ndcg@10 gain for %d epochs)", epoch, bad_epochs)
            break
    digest = float(sum(p.detach().double().sum().item() for p in model.parameters()))
    # Distributed only: every rank's digest (equal when the ranks stayed in step), as rank 0 is the only result TorchDistributor returns.
    digests = dist.allgather_object(digest, name="weights_digests") if dist else [digest]
    if dist:
        dist.close()
    return {"rank": rank, "size": size, "history": history, "weights_digest": digest, "weights_digests": digests, "stopped_early": stopped_early, "best": best}


FAULT_ENV = "SHOPSEQ_FAULT"  # the same test hook as shopseq.jobs.tables.fault_point
_RANK_FAULT = re.compile(r"rank(\d+):epoch(\d+):step(\d+)")


def _rank_fault(rank: int) -> tuple[int, int] | None:
    """Test hook: ``$SHOPSEQ_FAULT=rank<r>:epoch<e>:step<s>`` makes rank ``r`` die before step ``s`` of epoch ``e``; (e, s) or None."""
    m = _RANK_FAULT.fullmatch(os.environ.get(FAULT_ENV, ""))
    return (int(m[2]), int(m[3])) if m and int(m[1]) == rank else None


def _die(where: str) -> None:
    """Exit at once with SIGKILL's status (137): no cleanup, no Horovod shutdown, as a killed process."""
    log.warning("fault injection: %s=%s: %s exits now with status 137", FAULT_ENV, os.environ.get(FAULT_ENV), where)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(137)


def _track(params: TrainParams, row: dict[str, Any]) -> None:
    """Rank 0: this epoch's metrics into the MLflow run the driver opened."""
    if not (params.mlflow_tracking_uri and params.mlflow_run_id):
        return
    from mlflow.tracking import MlflowClient

    flat = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(v)}
    flat.update({f"train_loss_{k}": v for k, v in row["train_loss_parts"].items()})
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = [Metric(k.replace("@", "_at_"), float(v), ts, row["epoch"]) for k, v in flat.items()]  # MLflow names: no "@"
    try:
        MlflowClient(tracking_uri=params.mlflow_tracking_uri).log_batch(params.mlflow_run_id, metrics=metrics)
    except Exception as exc:  # noqa: BLE001 - tracking must never stop training
        log.warning("MLflow logging failed for epoch %s: %s", row["epoch"], exc)


def _validate(model: Any, params: TrainParams, columns: list[str], rank: int, size: int, dist: Dist | None, device: Any, ranking: Any, auc: Any) -> dict[str, float]:
    """Next-item HR/NDCG@10 and purchase/churn AUC on the validation files (every rank its shard)."""
    import numpy as np
    import torch

    from shopseq.training.data import petastorm_batches
    from shopseq.training.model import ITEM_FEATURE

    if not params.val_files:
        return {}
    model.eval()
    sums = torch.zeros(3)  # hits@10, ndcg@10, n
    scores: dict[str, list[np.ndarray]] = {"purchase": [], "churn": []}
    labels: dict[str, list[np.ndarray]] = {"purchase": [], "churn": []}
    with torch.no_grad():
        for batch in petastorm_batches(params.val_files, columns, params.batch_size, rank, size, params.seed, None, False, params.workers, True):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch)
            item_scores = model.item_scores(out["hidden_last"].float(), batch[ITEM_FEATURE], out["repeat_last"])
            sums += ranking(item_scores, batch["next_item_idx"], batch["next_label_mask"], k=10)
            for task in ("purchase", "churn"):
                m = batch[f"{task}_label_mask"].bool()
                scores[task].append(torch.sigmoid(out[f"{task}_logit"].float()[m]).cpu().numpy())
                labels[task].append(batch[f"{task}_label"][m].cpu().numpy())
    gathered = {t: (np.concatenate(scores[t]) if scores[t] else np.zeros(0), np.concatenate(labels[t]) if labels[t] else np.zeros(0)) for t in scores}
    if dist:
        # Distributed only: metrics over the whole validation set, not one shard.
        sums = dist.allreduce(sums, "sum", name="val_sums")
        parts = dist.allgather_object(gathered, name="val_scores")
        gathered = {t: (np.concatenate([p[t][0] for p in parts]), np.concatenate([p[t][1] for p in parts])) for t in gathered}
    n = max(1.0, float(sums[2]))
    out_metrics = {"val_hr@10": float(sums[0]) / n, "val_ndcg@10": float(sums[1]) / n, "val_examples": float(sums[2])}
    for task, (s, y) in gathered.items():
        out_metrics[f"val_{task}_auc"] = auc(y, s)
    return out_metrics


def _latest_checkpoint(directory: str) -> str | None:
    """``<directory>/last.pt`` when it exists (a local path or a URI, :mod:`shopseq.training.storage`), else None."""
    from shopseq.training import storage

    path = storage.join(directory, "last.pt")
    return path if storage.isfile(path) else None


def _save_checkpoint(params: TrainParams, model: Any, optimizer: Any, epoch: int, best: float, history: list, bad_epochs: int, improved: bool) -> None:
    """Rank 0 only: ``epoch-NNNN.pt``, then ``last.pt`` (and ``best.pt``), then ``history.json``, each written atomically.

    Through :mod:`shopseq.training.storage`, so ``params.checkpoint_dir`` may be a URI
    (``s3://...``) that the driver reads back when the rank runs on another
    machine: a temporary file and a rename locally, one PUT per object on
    object storage.
    """
    from shopseq.training import storage

    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "best": best,
        "bad_epochs": bad_epochs,
        "history": history,
        "schema": params.schema,
        "model_config": params.model,
        "params": {k: v for k, v in asdict(params).items() if k not in ("schema", "item_counts", "train_files", "val_files")},
        "lineage": params.lineage,
    }
    data = storage.torch_bytes(state)  # serialised once, written under each name
    storage.makedirs(params.checkpoint_dir)
    for name in (f"epoch-{epoch:04d}.pt", "last.pt") + (("best.pt",) if improved else ()):
        storage.write_bytes(storage.join(params.checkpoint_dir, name), data)
    storage.write_json(storage.join(params.checkpoint_dir, "history.json"), history, indent=1)
