"""Ranking and classification metrics used during training (evaluation proper lives with issue 6)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

SPECIAL_ITEMS = 2  # index 0 = padding, 1 = out-of-vocabulary: never recommended


def batch_ranking_sums(scores: Tensor, target: Tensor, mask: Tensor, k: int = 10) -> Tensor:
    """``[hits@k, ndcg@k, n]`` summed over rows with ``mask == 1`` (full-catalogue ranking).

    The target's rank counts items scored strictly higher (ties resolved in
    the target's favour); padding and OOV are never candidates.
    """
    rank, m = target_ranks(scores, target, mask)
    if not m.any():
        return torch.zeros(3)
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros_like(rank, dtype=torch.float))
    return torch.tensor([hit.sum().item(), ndcg.sum().item(), float(m.sum().item())])


def target_ranks(scores: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """0-based full-catalogue rank of each kept row's target, and which rows were kept.

    Kept rows: ``mask == 1`` and the target a real item (not padding or OOV,
    which no method can recommend). The rank counts the real items scored
    strictly higher than the target (ties resolved in the target's favour).
    Float64 scores stay float64 (baselines break ties with small fractions).
    """
    m = mask.bool() & (target.long() >= SPECIAL_ITEMS)
    s = scores[m]
    s = s.clone() if s.dtype == torch.float64 else s.float().clone()
    s[:, :SPECIAL_ITEMS] = -math.inf
    t = target[m].long()
    return (s > s.gather(1, t.unsqueeze(1))).sum(dim=1), m


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by the rank-sum (Mann-Whitney) formula with average ranks for ties; NaN if one class."""
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
