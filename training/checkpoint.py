"""Loading a trained model back from a checkpoint (evaluation, prediction, notebooks)."""

from __future__ import annotations

import os
from typing import Any

import torch

from shopseq.training import storage
from shopseq.training.model import ModelConfig, MultiTaskModel


def load_model(path: Any, device: str = "cpu") -> tuple[MultiTaskModel, dict[str, Any]]:
    """The model in eval mode, and the checkpoint's state (epoch, history, schema, lineage).

    ``path``: a local path, a URI (``s3://...``, read through :mod:`shopseq.training.storage`) or a file object.
    """
    if isinstance(path, (str, os.PathLike)):
        state = storage.load_torch(os.fspath(path), map_location=device)
    else:
        state = torch.load(path, map_location=device, weights_only=False)
    return model_from_state(state, device), state


def model_from_state(state: dict[str, Any], device: str = "cpu") -> MultiTaskModel:
    """The model of a checkpoint's state already in memory, in eval mode."""
    model = MultiTaskModel(ModelConfig.from_schema(state["schema"], **state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def predict_tensors(model: MultiTaskModel, data: dict[str, torch.Tensor], batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Last-position outputs for every row: ``hidden_last``, ``repeat_last``, purchase/churn probabilities, action probabilities."""
    n = len(next(iter(data.values())))
    parts: dict[str, list[torch.Tensor]] = {"hidden_last": [], "repeat_last": [], "purchase": [], "churn": [], "action": []}
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in data.items()}
        out = model(batch)
        parts["hidden_last"].append(out["hidden_last"])
        parts["repeat_last"].append(out["repeat_last"])  # the repeat bias of the last position's window (zeros without one)
        parts["purchase"].append(torch.sigmoid(out["purchase_logit"]))
        parts["churn"].append(torch.sigmoid(out["churn_logit"]))
        parts["action"].append(torch.softmax(out["action_logits"], dim=-1))
    return {k: torch.cat(v) for k, v in parts.items()}
