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
    m = mask.bool() & (target.long() >= SPECIAL_ITEMS)
    if not m.any():
        return torch.zeros(3)
    s = scores[m].float().clone()
    s[:, :SPECIAL_ITEMS] = -math.inf
    t = target[m].long()
    rank = (s > s.gather(1, t.unsqueeze(1))).sum(dim=1)  # 0-based
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros_like(rank, dtype=torch.float))
    return torch.tensor([hit.sum().item(), ndcg.sum().item(), float(m.sum().item())])


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
