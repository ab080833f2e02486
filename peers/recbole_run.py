"""Run RecBole's sequential models on events already split by shopseq; write metrics and per-user ranks.

Run by the RecBole environment's Python (``make peer-recbole``), as a script::

    python recbole_run.py --events EVENTS.csv --out RESULT.json --models SASRec,GRU4Rec [--epochs N --seed S]

It imports only recbole, torch, numpy, pandas and the standard library (never
``jobs``, ``features`` or ``training``: those live in the other venv).

Input: ``EVENTS.csv`` with columns ``user_id,item_id,order``: the events
shopseq's protocol kept (k-core already applied), ``order`` a strictly
increasing integer per user that fixes the sequence order. RecBole must not
filter again: the user/item interaction intervals are left open
(``[0,inf)``) and duplicates are kept. ``order`` becomes RecBole's time field,
so RecBole's leave-one-out (``split: {LS: valid_and_test}``, ``order: TO``)
holds out each user's last event for test and the one before for validation,
in exactly shopseq's order.

Settings: ``MAX_ITEM_LIST_LENGTH: 50``, ``metrics: [Hit, NDCG, MRR]``,
``topk: [10]``, ``valid_metric: NDCG@10``, full-catalogue ranking
(``mode: full``), CPU, ``train_neg_sample_args: None`` (RecBole requires it
for the CE loss), and RecBole 1.2.1's defaults for everything else:
300 epochs with early stopping after 10 epochs without a better validation
NDCG@10, batch 2048, Adam at lr 0.001, no weight decay, seed 2020.
SASRec: 2 layers, 2 heads, hidden 64, inner 256, dropout 0.5/0.5, GELU, CE.
GRU4Rec: embedding 64, hidden 128, 1 layer, dropout 0.3, CE.
(``properties/overall.yaml`` and ``properties/model/<Model>.yaml`` of the
installed recbole; the resolved values are written to the output.)

Output JSON (rewritten after each model; ``complete`` turns true with the
last), per model: ``valid`` (the best epoch's validation metrics as
RecBole reports them, 4 decimals), ``test`` (RecBole's test metrics with the
best model, 4 decimals), ``test_unrounded`` (the same evaluator at 12
decimals), ``test_from_ranks`` (Hit/NDCG/MRR@10 recomputed from the ranks
below with random-tie expectation), ``train_seconds``, ``eval_seconds``,
``wall_seconds`` (train + test evaluation + ranks), ``best_epoch`` and
``test_ranks``: ``[{"user_id", "item_id", "g", "t"}]`` per test user, with
shopseq's original ids (integers when the CSV column is integer), ``g`` the
number of items scored strictly above the held-out item and ``t`` the number
of other items tied with it, so HR@K = clip((K-g)/(t+1), 0, 1).

What RecBole scores (from recbole 1.2.1's source): for sequential models the
full-sort loader passes no history (``FullSortEvalDataLoader.collate_fn``
returns ``None`` for it), so ``Trainer._full_sort_batch_eval`` masks only the
padding item 0 and the user's earlier items stay in the ranking. The ranks here
do the same. RecBole's top-k (``torch.topk``) orders tied scores arbitrarily;
the ranks count ties by their expectation, so the two agree whenever the held
out item ties with no other item (``ties_with_target`` counts the users where
it does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

log = logging.getLogger("recbole_run")

DATASET = "shopseq"
K = 10
COMMON_CONFIG: dict[str, Any] = {
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    # shopseq filtered already: no second k-core, no de-duplication
    "user_inter_num_interval": "[0,inf)",
    "item_inter_num_interval": "[0,inf)",
    "rm_dup_inter": None,
    "val_interval": None,
    "MAX_ITEM_LIST_LENGTH": 50,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "metrics": ["Hit", "NDCG", "MRR"],
    "topk": [K],
    "valid_metric": "NDCG@10",
    "train_neg_sample_args": None,  # RecBole refuses negative sampling with the CE loss
    "use_gpu": False,
    "gpu_id": "",
    "show_progress": False,
    "save_dataset": False,
    "save_dataloaders": False,
    "log_wandb": False,
    "reproducibility": True,
}
# The resolved settings written with each model's results.
REPORTED_KEYS = (
    "epochs", "train_batch_size", "eval_batch_size", "learner", "learning_rate", "weight_decay", "stopping_step",
    "eval_step", "seed", "MAX_ITEM_LIST_LENGTH", "loss_type", "n_layers", "n_heads", "hidden_size", "inner_size",
    "hidden_dropout_prob", "attn_dropout_prob", "hidden_act", "layer_norm_eps", "initializer_range",
    "embedding_size", "num_layers", "dropout_prob",
)


class InputError(ValueError):
    """Bad input: reported as one line, exit code 2."""


def read_events(path: Path) -> pd.DataFrame:
    """Read and check ``user_id,item_id,order`` events (order strictly increasing per user, >= 3 events a user)."""
    events = pd.read_csv(path)
    missing = [c for c in ("user_id", "item_id", "order") if c not in events.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need user_id,item_id,order)")
    events = events[["user_id", "item_id", "order"]]
    if events.empty:
        raise InputError(f"{path}: no events")
    if events.isna().any().any():
        raise InputError(f"{path}: null values in user_id/item_id/order")
    if not pd.api.types.is_integer_dtype(events["order"]):
        raise InputError(f"{path}: column order must be integer, got {events['order'].dtype}")
    for col in ("user_id", "item_id"):
        text = events[col].astype(str)
        if text.str.contains(r"[\t\n\r]").any():
            raise InputError(f"{path}: {col} values may not contain tabs or newlines (RecBole atomic files)")
    dup = events.duplicated(["user_id", "order"])
    if dup.any():
        row = events[dup].iloc[0]
        raise InputError(f"{path}: order must be strictly increasing per user; user {row['user_id']} repeats order {row['order']}")
    per_user = events.groupby("user_id").size()
    if (per_user < 3).any():
        raise InputError(
            f"{path}: {int((per_user < 3).sum())} user(s) with fewer than 3 events (leave-one-out needs train, valid, test);"
            " pass the events after shopseq's filter"
        )
    return events


def write_atomic(events: pd.DataFrame, data_path: Path) -> Path:
    """Write ``<data_path>/shopseq/shopseq.inter``: ``user_id:token item_id:token timestamp:float`` (TAB-separated)."""
    folder = data_path / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{DATASET}.inter"
    atomic = pd.DataFrame({
        "user_id:token": events["user_id"].astype(str),
        "item_id:token": events["item_id"].astype(str),
        "timestamp:float": events["order"].astype(np.float64),
    })
    atomic.to_csv(out, sep="\t", index=False)
    return out


def expected_at_k(g: np.ndarray, t: np.ndarray, k: int) -> dict[str, float]:
    """Mean Hit/NDCG/MRR@k when the target ranks uniformly among positions g .. g+t (0-based)."""
    pos = np.arange(k)
    dcg = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(pos + 2.0))])
    rr = np.concatenate([[0.0], np.cumsum(1.0 / (pos + 1.0))])
    lo = np.minimum(g, k)
    hi = np.minimum(g + t + 1, k)
    n = t + 1.0
    return {
        f"hit@{k}": float(np.mean((hi - lo) / n)),
        f"ndcg@{k}": float(np.mean((dcg[hi] - dcg[lo]) / n)),
        f"mrr@{k}": float(np.mean((rr[hi] - rr[lo]) / n)),
    }


@torch.no_grad()
def test_ranks(model: torch.nn.Module, test_data: Any, dataset: Any, id_types: dict[str, Any]) -> list[dict[str, Any]]:
    """Per test row: original user and item id, items scored above the target (g), other items tied (t).

    Scores as ``Trainer._full_sort_batch_eval`` does for sequential models: ``full_sort_predict`` over the
    whole catalogue, padding item 0 set to -inf, no history mask.
    """
    model.eval()
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    rows: list[dict[str, Any]] = []
    for interaction, history_index, positive_u, positive_i in test_data:
        if history_index is not None:
            raise RuntimeError("expected a sequential full-sort loader (no history mask)")
        scores = model.full_sort_predict(interaction.to(model.device)).view(-1, dataset.item_num)
        scores[:, 0] = -np.inf
        target = scores[positive_u, positive_i].unsqueeze(1)
        above = (scores[positive_u] > target).sum(dim=1)
        tied = (scores[positive_u] == target).sum(dim=1) - 1
        users = dataset.id2token(uid_field, interaction[uid_field][positive_u].cpu().numpy())
        items = dataset.id2token(iid_field, positive_i.cpu().numpy())
        for u, i, g, t in zip(users, items, above.tolist(), tied.tolist()):
            rows.append({"user_id": id_types["user_id"](u), "item_id": id_types["item_id"](i), "g": int(g), "t": int(t)})
    return rows


def run_model(name: str, data_path: Path, work: Path, overrides: dict[str, Any], id_types: dict[str, Any]) -> dict[str, Any]:
    """Train one RecBole model with early stopping on validation NDCG@10; evaluate the best epoch on test."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.evaluator import Evaluator
    from recbole.utils import get_model, get_trainer, init_seed

    config_dict = {**COMMON_CONFIG, "data_path": str(data_path), "checkpoint_dir": str(work / "saved" / name), **overrides}
    config = Config(model=name, dataset=DATASET, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    start = time.perf_counter()
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    # RecBole saves the best epoch's checkpoint (model state plus its Config object); torch >= 2.6 loads
    # weights only by default, which Trainer.evaluate(load_best_model=True) cannot, so load it here.
    checkpoint = torch.load(trainer.saved_model_file, map_location=config["device"], weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    test = trainer.evaluate(test_data, load_best_model=False)
    ranks = test_ranks(model, test_data, test_data._dataset, id_types)
    eval_seconds = time.perf_counter() - start

    config["metric_decimal_place"] = 12  # the same evaluator, unrounded, for the check against the ranks
    trainer.evaluator = Evaluator(config)
    test_unrounded = trainer.evaluate(test_data, load_best_model=False)

    g = np.array([r["g"] for r in ranks])
    t = np.array([r["t"] for r in ranks])
    from_ranks = expected_at_k(g, t, K)
    diff = max(abs(from_ranks[m] - float(test_unrounded[m])) for m in from_ranks)
    log.info("%s: test ndcg@10 %.4f (RecBole) vs %.6f (ranks), max |diff| %.2e, %.0f s", name, test["ndcg@10"], from_ranks["ndcg@10"], diff, train_seconds + eval_seconds)
    return {
        "hyper_parameters": {k: config[k] for k in REPORTED_KEYS if config[k] is not None},
        "n_users": int(dataset.user_num - 1),
        "n_items": int(dataset.item_num - 1),
        "best_epoch": int(checkpoint["epoch"]),
        "valid": {k: float(v) for k, v in best_valid.items()},
        "test": {k: float(v) for k, v in test.items()},
        "test_unrounded": {k: float(v) for k, v in test_unrounded.items()},
        "test_from_ranks": from_ranks,
        "max_abs_diff_ranks_vs_recbole": diff,
        "ties_with_target": int((t > 0).sum()),
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "wall_seconds": round(train_seconds + eval_seconds, 3),
        "test_ranks": ranks,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", required=True, help="CSV with user_id,item_id,order (already filtered)")
    p.add_argument("--out", required=True, help="result JSON path")
    p.add_argument("--models", default="SASRec,GRU4Rec", help="comma-separated RecBole sequential models")
    p.add_argument("--epochs", type=int, default=None, help="max epochs (RecBole default 300)")
    p.add_argument("--stopping-step", type=int, default=None, help="early-stopping patience (RecBole default 10)")
    p.add_argument("--seed", type=int, default=None, help="random seed (RecBole default 2020)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--work-dir", default=None, help="keep RecBole's files here instead of a temp dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    events_path, out_path = Path(a.events).resolve(), Path(a.out).resolve()
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    overrides = {k: v for k, v in {"epochs": a.epochs, "stopping_step": a.stopping_step, "seed": a.seed}.items() if v is not None}
    try:
        if not events_path.is_file():
            raise InputError(f"--events: no file {events_path}")
        if not models:
            raise InputError("--models: give at least one model")
        events = read_events(events_path)
    except InputError as e:
        log.error("%s", e)
        return 2
    # recbole 1.2.1 on pandas 2.2 / torch 2.13: chained-assignment and torch.cuda.amp deprecation notices only
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    if a.threads:
        torch.set_num_threads(a.threads)
    # RecBole's Config also parses sys.argv for --key=value; keep this script's own arguments away from it.
    sys.argv = sys.argv[:1]
    id_types = {c: (int if pd.api.types.is_integer_dtype(events[c]) else str) for c in ("user_id", "item_id")}

    import recbole
    import recbole.model.sequential_recommender  # noqa: F401  (imports every sequential model, SINE among them)

    # recbole/model/sequential_recommender/sine.py calls torch.autograd.set_detect_anomaly(True) at import, for the
    # whole process: a NaN check after every backward op that made SASRec ~2x slower here (aten::ne + aten::any took
    # half the CPU time of a training step). It changes no result; RecBole's Trainer still stops on a NaN loss.
    torch.autograd.set_detect_anomaly(False)

    result: dict[str, Any] = {
        "peer": "recbole",
        "recbole_version": recbole.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "autograd_anomaly_detection": torch.is_anomaly_enabled(),
        "events_file": str(events_path),
        "n_events": int(len(events)),
        "n_users": int(events["user_id"].nunique()),
        "n_items": int(events["item_id"].nunique()),
        "settings": {k: v for k, v in COMMON_CONFIG.items()},
        "complete": False,  # True once every model in --models is in "models"
        "models": {},
    }
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="recbole-run-") as tmp:
        work = Path(a.work_dir).resolve() if a.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        write_atomic(events, work / "data")
        os.chdir(work)  # RecBole writes log_tensorboard/ under the working directory
        try:
            for name in models:
                result["models"][name] = run_model(name, work / "data", work, overrides, id_types)
                result["complete"] = len(result["models"]) == len(models)
                write_json(result, out_path)  # after each model: a long run keeps what it finished
        finally:
            os.chdir(cwd)
    log.info("wrote %s", out_path)
    return 0


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` to ``path`` atomically (a temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
