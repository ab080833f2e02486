"""Ranking and classification metrics shared by training validation and the evaluation.

**Ties count by their expected value under a uniformly random tie order.**
For a row whose target is a real item, let ``g`` be the number of real items
scored strictly higher than the target and ``t`` the number of *other* real
items scored exactly as high. Ordering the tied items at random puts the
target at a 0-based position uniform over ``g .. g + t``, so

* ``HR@K   = clip((K - g) / (t + 1), 0, 1)``,
* ``NDCG@K = sum_{p=g}^{min(g+t, K-1)} 1 / log2(p + 2) / (t + 1)``,
* ``MRR@K  = sum_{p=g}^{min(g+t, K-1)} 1 / (p + 1) / (t + 1)``.

A constant scorer over ``n`` real items gets ``HR@K = K / n`` (not 1), and a
scorer that never ties gets the usual values. Padding (0) and OOV (1) are
never candidates.

**A target outside the vocabulary is a miss.** A row with ``mask == 1``
whose target is OOV (1) stays in the denominator with HR = NDCG = MRR = 0: no
method can rank it, and leaving it out would flatter every method on data
with many new items. A target below 2 with ``mask == 1`` other than OOV
(padding, a censored marker) is not produced by the feature pipeline; it is
counted the same way, as a miss.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

SPECIAL_ITEMS = 2  # index 0 = padding, 1 = out-of-vocabulary: never recommended


class TargetRanks(NamedTuple):
    """Where each labelled row's target sits in the full-catalogue ranking (one entry per row with ``mask == 1``)."""

    above: Tensor  # [n] long: real items scored strictly higher than the target (0 when the target is not a real item)
    tied: Tensor  # [n] long: other real items scored exactly as high as the target (0 when not a real item)
    in_vocab: Tensor  # [n] bool: the target is a real item; False = OOV, a miss
    kept: Tensor  # [B] bool: the rows (``mask == 1``) the n entries belong to, in order


def target_ranks(scores: Tensor, target: Tensor, mask: Tensor) -> TargetRanks:
    """``g`` (items strictly above) and ``t`` (other items tied) of each labelled row's target.

    ``scores`` is ``[B, n_items]``; every row with ``mask == 1`` is kept. Ties
    are resolved by expected value (module docstring): this function only
    counts them, :func:`expected_at_k` turns the counts into metric values.
    Float64 scores stay float64 (baselines order ties with small fractions).
    """
    kept = mask.bool()
    t = target[kept].long()
    in_vocab = t >= SPECIAL_ITEMS
    s = scores[kept]
    s = s.clone() if s.dtype == torch.float64 else s.float().clone()
    if t.numel() and int(t.max()) >= s.shape[1]:
        raise ValueError(f"target index {int(t.max())} is outside the {s.shape[1]} scored items")
    s[:, :SPECIAL_ITEMS] = -math.inf
    own = s.gather(1, t.clamp(min=0).unsqueeze(1))
    above = (s > own).sum(dim=1)
    tied = ((s == own).sum(dim=1) - 1).clamp(min=0)
    zero = torch.zeros_like(above)
    return TargetRanks(torch.where(in_vocab, above, zero), torch.where(in_vocab, tied, zero), in_vocab, kept)


def _cumulative_gains(k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(dcg, rr)``, each ``[k + 1]`` float64: ``dcg[p] = sum_{q<p} 1/log2(q+2)``, ``rr[p] = sum_{q<p} 1/(q+1)``."""
    q = torch.arange(k, dtype=torch.float64, device=device)
    zero = torch.zeros(1, dtype=torch.float64, device=device)
    return torch.cat([zero, torch.cumsum(1.0 / torch.log2(q + 2.0), 0)]), torch.cat([zero, torch.cumsum(1.0 / (q + 1.0), 0)])


def expected_at_k(ranks: TargetRanks, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row expected ``(HR@k, NDCG@k, MRR@k)`` (float64, ``[n]``) over a uniformly random order of the ties.

    Positions ``g .. g + t`` are equally likely; the ones below ``k`` count.
    Rows whose target is not a real item are 0 (a miss).
    """
    dcg, rr = _cumulative_gains(k, ranks.above.device)
    lo = ranks.above.clamp(max=k)
    hi = (ranks.above + ranks.tied + 1).clamp(max=k)
    n_tied = ranks.tied.double() + 1.0
    ok = ranks.in_vocab.double()
    hr = (hi - lo).double() / n_tied * ok
    ndcg = (dcg[hi] - dcg[lo]) / n_tied * ok
    mrr = (rr[hi] - rr[lo]) / n_tied * ok
    return hr, ndcg, mrr


def batch_ranking_sums(scores: Tensor, target: Tensor, mask: Tensor, k: int = 10) -> Tensor:
    """``[hits@k, ndcg@k, n]`` summed over rows with ``mask == 1`` (full-catalogue ranking).

    Ties count by expected value and OOV targets are misses that stay in ``n``
    (module docstring), as in the evaluation.
    """
    ranks = target_ranks(scores, target, mask)
    n = int(ranks.kept.sum().item())
    if n == 0:
        return torch.zeros(3)
    hr, ndcg, _ = expected_at_k(ranks, k)
    return torch.tensor([hr.sum().item(), ndcg.sum().item(), float(n)])


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
