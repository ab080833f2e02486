"""Every metric of the evaluation and of training validation, once, and the per-user bootstrap of their intervals.

Pure numpy / torch / scikit-learn: no Spark, no I/O. Every metric counts only
the rows whose label mask is 1 (the caller passes those rows); a censored
label is left out, never a negative.

**Next item: full-catalogue ranking, ties by their expected value under a
uniformly random tie order.** For a row whose target is a real item, let ``g``
be the number of real items scored strictly higher than the target and ``t``
the number of *other* real items scored exactly as high. Ordering the tied
items at random puts the target at a 0-based position uniform over
``g .. g + t``, so

* ``HR@K   = clip((K - g) / (t + 1), 0, 1)`` (= Recall@K with one relevant item),
* ``NDCG@K = sum_{p=g}^{min(g+t, K-1)} 1 / log2(p + 2) / (t + 1)``,
* ``MRR@K  = sum_{p=g}^{min(g+t, K-1)} 1 / (p + 1) / (t + 1)``.

A constant scorer over ``n`` real items gets ``HR@K = K / n`` (not 1), and a
scorer that never ties gets the usual values. NDCG@K is scikit-learn's
``ndcg_score(ignore_ties=False)`` of a one-hot relevance row (checked in
tests/test_evaluate.py); it is computed here because scikit-learn's needs a
dense ``[rows, catalogue]`` relevance matrix and averages the ties row by row
in Python, and scikit-learn has no HR or MRR that averages ties. Padding (0)
and OOV (1) are never candidates.

**A target outside the vocabulary is a miss.** A row with ``mask == 1``
whose target is OOV (1) stays in the denominator with HR = NDCG = MRR = 0: no
method can rank it, and leaving it out would flatter every method on data
with many new items. Its share is the metric ``oov_share``. A target below 2
with ``mask == 1`` other than OOV (padding, a censored marker) is not produced
by the feature pipeline; it is counted the same way, as a miss.

**Next event type**: accuracy and macro-F1 over the event types present in
the labels (scikit-learn's ``f1_score(labels=unique(y), average="macro")``),
so every method is scored over the same classes.

**Purchase and churn**: ROC-AUC (``roc_auc_score``), PR-AUC
(``average_precision_score``), log loss (``log_loss`` of the probabilities
clipped to ``[1e-7, 1 - 1e-7]``) and the expected calibration error over
``bins`` equal-width probability bins (``sum_b n_b / n * |positive rate_b -
mean probability_b|``, bins as :func:`sklearn.calibration.calibration_curve`
forms them; scikit-learn has no such score). ROC-AUC and PR-AUC are NaN when
the labels hold one class only.

**A metric is a** :class:`Statistic`: its point value (scikit-learn's where
scikit-learn has the metric) and the same metric as a function of row weights,
vectorised over many weight rows at once, for the bootstrap. A ratio metric
(HR, NDCG, MRR, OOV share, accuracy, log loss) is the weighted mean of its
per-row values; macro-F1 comes from weighted confusion counts, ROC-AUC and
PR-AUC from weighted counts of positives and negatives per distinct score (the
weighted Mann-Whitney statistic and the step-wise average precision), the
calibration error from weighted bin sums. With integer weights each of these
equals scikit-learn's metric with ``sample_weight`` (tests/test_evaluate.py;
equal up to the last bit or two of a float64). Calling scikit-learn once per
resample instead was measured (synthetic gold tensors of about 2,700 to 3,100
labelled rows per task, 1,000 resamples, one thread): 24 s of CPU for the
intervals of one evaluation against 1.2 s vectorised.

**Intervals: a percentile bootstrap over users** (:func:`bootstrap_distributions`).
A resample draws the task's users (``user_key`` of the counted rows) with
replacement, so all of a user's rows go together (a user's windows are
correlated); a user drawn ``c`` times weighs ``c`` on each of their rows.
``samples`` resamples (multinomial counts from
``numpy.random.default_rng(seed)``, the same draws for every statistic of a
task, so differences are paired) give each statistic's ``confidence``
interval as the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
percentiles (numpy's linear interpolation) of its resampled values
(:func:`percentile_interval`). Resamples where a metric is undefined (one
class) are left out of its percentiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

SPECIAL_ITEMS = 2  # index 0 = padding, 1 = out-of-vocabulary: never recommended
RANKING_METRICS: tuple[str, ...] = ("hr", "ndcg", "mrr")
OOV_METRIC = "oov_share"  # next item: share of labelled rows whose target is out of vocabulary (misses)
ACTION_METRICS: tuple[str, ...] = ("accuracy", "macro_f1")
BINARY_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "ece")
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "ece"})
PROBABILITY_EPS = 1e-7  # log loss clips probabilities to [eps, 1 - eps]


# --------------------------------------------------------------------------- next item: ranks with ties


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


def ranks_in_batches(score_rows: Callable[[slice], Tensor], target: Tensor, mask: Tensor, batch_size: int = 1024) -> TargetRanks:
    """:func:`target_ranks` of every labelled row, scoring ``batch_size`` rows at a time.

    ``score_rows(rows)`` returns the ``[len(rows), n_items]`` scores of those
    rows (the full catalogue never has to be held for every row at once).
    Rows whose target is not a real item are never scored (they are misses).
    """
    n = len(target)
    parts: list[TargetRanks] = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        m, t = mask[rows].bool(), target[rows].long()
        if bool((m & (t >= SPECIAL_ITEMS)).any()):
            parts.append(target_ranks(score_rows(rows), t, m))
        else:  # nothing to rank: the labelled rows (if any) are all misses
            zero = torch.zeros(int(m.sum()), dtype=torch.long)
            parts.append(TargetRanks(zero, zero, torch.zeros(len(zero), dtype=torch.bool), m))
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return TargetRanks(empty, empty, torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))
    return TargetRanks(*(torch.cat([p[i].cpu() for p in parts]) for i in range(4)))


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


def ranking_values(ranks: TargetRanks, ks: Sequence[int]) -> dict[tuple[str, int | None], np.ndarray]:
    """Per-row ``{(metric, K): values}`` for HR, NDCG and MRR at each K, plus ``(oov_share, None)`` (1 = OOV target)."""
    out: dict[tuple[str, int | None], np.ndarray] = {}
    for k in ks:
        for metric, values in zip(RANKING_METRICS, expected_at_k(ranks, k)):
            out[(metric, k)] = values.numpy()
    out[(OOV_METRIC, None)] = (~ranks.in_vocab).double().numpy()
    return out


def ranking_metrics(ranks: TargetRanks, ks: Sequence[int]) -> dict[tuple[str, int | None], float]:
    """``{(metric, K): value}``: means of :func:`ranking_values` (NaN when there are no rows)."""
    return {key: mean_statistic(v).value for key, v in ranking_values(ranks, ks).items()}


def batch_ranking_sums(scores: Tensor, target: Tensor, mask: Tensor, k: int = 10) -> Tensor:
    """``[hits@k, ndcg@k, n]`` summed over rows with ``mask == 1`` (training validation; sums reduce across ranks).

    Ties count by expected value and OOV targets are misses that stay in ``n``
    (module docstring), as in the evaluation.
    """
    ranks = target_ranks(scores, target, mask)
    n = int(ranks.kept.sum().item())
    if n == 0:
        return torch.zeros(3)
    hr, ndcg, _ = expected_at_k(ranks, k)
    return torch.tensor([hr.sum().item(), ndcg.sum().item(), float(n)])


# --------------------------------------------------------------------------- statistics: point value + weighted replicates


@dataclass(frozen=True)
class Statistic:
    """One metric on a task's counted rows: its point value, and called on row weights its value under each weight row.

    ``stat(w)``: ``[B, n]`` float64 weights -> ``[B]`` values, NaN where undefined (the bootstrap's replicates).
    """

    value: float  # the point value; NaN when undefined (no rows, one class)
    weighted: Callable[[np.ndarray], np.ndarray]

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return self.weighted(w)


def _both_classes(y: np.ndarray) -> bool:
    return bool((y == 1).any() and (y == 0).any())


def mean_statistic(values: np.ndarray) -> Statistic:
    """The mean of per-row ``values`` (HR, NDCG, MRR, OOV share); weighted: the weighted mean."""
    x = np.asarray(values, dtype=np.float64)
    return Statistic(float(x.mean()) if len(x) else math.nan, lambda w: (w @ x) / w.sum(axis=1))


def accuracy_statistic(labels: np.ndarray, predicted: np.ndarray) -> Statistic:
    """scikit-learn's ``accuracy_score``; weighted: the weighted share of correct rows."""
    from sklearn.metrics import accuracy_score

    y, p = np.asarray(labels), np.asarray(predicted)
    correct = (y == p).astype(np.float64)
    return Statistic(float(accuracy_score(y, p)) if len(y) else math.nan, lambda w: (w @ correct) / w.sum(axis=1))


def macro_f1_statistic(labels: np.ndarray, predicted: np.ndarray) -> Statistic:
    """scikit-learn's macro-F1 over the classes of ``labels``; weighted: ``2 TP / (support + predicted)`` per class
    with positive weight among the labels, averaged."""
    from sklearn.metrics import f1_score

    y, p = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    value = float(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)) if len(y) else math.nan
    n_classes = int(max(y.max(initial=0), p.max(initial=0))) + 1
    truth = np.eye(n_classes)[y] if len(y) else np.zeros((0, n_classes))
    pred = np.eye(n_classes)[p] if len(p) else np.zeros((0, n_classes))

    def weighted(w: np.ndarray) -> np.ndarray:
        support, guessed, tp = w @ truth, w @ pred, w @ (truth * pred)
        present = support > 0
        f1 = np.where(present, 2.0 * tp / np.where(present, support + guessed, 1.0), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return f1.sum(axis=1) / present.sum(axis=1)

    return Statistic(value, weighted)


def _score_groups(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by score (ascending, stable), their labels, and the last index of each group of equal scores."""
    order = np.argsort(probs, kind="mergesort")
    s = probs[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, dtype=np.int64)
    return order, labels[order].astype(np.float64), ends


def _group_masses(w: np.ndarray, order: np.ndarray, y: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[B, G]`` weighted positives and negatives per distinct score, ascending."""
    ws = w[:, order]
    pos = np.cumsum(ws * y, axis=1)[:, ends]
    neg = np.cumsum(ws * (1.0 - y), axis=1)[:, ends]
    return np.diff(pos, axis=1, prepend=0.0), np.diff(neg, axis=1, prepend=0.0)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's ``roc_auc_score`` (a tied (positive, negative) pair counts one half); NaN unless both classes occur."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(np.int64)
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64))) if _both_classes(y) else math.nan


def roc_auc_statistic(labels: np.ndarray, probs: np.ndarray) -> Statistic:
    """:func:`roc_auc`; weighted: ``P(score+ > score-) + P(equal) / 2`` over weighted (positive, negative) pairs."""
    y, p = np.asarray(labels).astype(np.int64), np.asarray(probs, dtype=np.float64)
    order, ys, ends = _score_groups(y, p)

    def weighted(w: np.ndarray) -> np.ndarray:
        pos, neg = _group_masses(w, order, ys, ends)
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
        total = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / total, np.nan)

    return Statistic(roc_auc(y, p), weighted)


def average_precision_statistic(labels: np.ndarray, probs: np.ndarray) -> Statistic:
    """scikit-learn's ``average_precision_score``, NaN unless both classes occur; weighted: step-wise as scikit-learn's,
    ``sum_g (positives_g / P) * precision at threshold g``."""
    from sklearn.metrics import average_precision_score

    y, p = np.asarray(labels).astype(np.int64), np.asarray(probs, dtype=np.float64)
    order, ys, ends = _score_groups(y, p)

    def weighted(w: np.ndarray) -> np.ndarray:
        pos, neg = _group_masses(w, order, ys, ends)
        p_total, n_total = pos.sum(axis=1, keepdims=True), neg.sum(axis=1, keepdims=True)
        tp = p_total - (np.cumsum(pos, axis=1) - pos)  # positives scored >= this group's score
        fp = n_total - (np.cumsum(neg, axis=1) - neg)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            ap = (pos * precision).sum(axis=1) / p_total[:, 0]
        return np.where((p_total[:, 0] > 0) & (n_total[:, 0] > 0), ap, np.nan)

    return Statistic(float(average_precision_score(y, p)) if _both_classes(y) else math.nan, weighted)


def log_loss_statistic(labels: np.ndarray, probs: np.ndarray) -> Statistic:
    """scikit-learn's binary ``log_loss`` of the probabilities clipped to ``[eps, 1 - eps]``; weighted: the weighted
    mean of the per-row losses."""
    from sklearn.metrics import log_loss

    y = np.asarray(labels).astype(np.int64)
    p = np.clip(np.asarray(probs, dtype=np.float64), PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    per_row = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    return Statistic(float(log_loss(y, p, labels=[0, 1])) if len(y) else math.nan, lambda w: (w @ per_row) / w.sum(axis=1))


def calibration_bins(probs: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each probability: ``bins`` equal-width bins over [0, 1], as ``calibration_curve`` forms them."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], probs)


def ece_statistic(labels: np.ndarray, probs: np.ndarray, bins: int) -> Statistic:
    """Expected calibration error, ``sum_b |weighted positives_b - weighted probability mass_b| / total weight``
    (scikit-learn has no such score: the point value is this with weight 1 per row)."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    onehot = np.eye(bins)[calibration_bins(p, bins)] if len(p) else np.zeros((0, bins))
    gap = onehot * (y - p)[:, None]

    def weighted(w: np.ndarray) -> np.ndarray:
        return np.abs(w @ gap).sum(axis=1) / w.sum(axis=1)

    return Statistic(float(weighted(np.ones((1, len(y))))[0]) if len(y) else math.nan, weighted)


def action_statistics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Statistic]:
    """Accuracy and macro-F1 of the predicted event types (:data:`ACTION_METRICS`)."""
    return {"accuracy": accuracy_statistic(labels, predicted), "macro_f1": macro_f1_statistic(labels, predicted)}


def binary_statistics(labels: np.ndarray, probs: np.ndarray, bins: int) -> dict[str, Statistic]:
    """ROC-AUC, PR-AUC, log loss and calibration error of probabilities (:data:`BINARY_METRICS`; clipped to [0, 1])."""
    y = np.asarray(labels).astype(np.int64)
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    return {"roc_auc": roc_auc_statistic(y, p), "pr_auc": average_precision_statistic(y, p), "log_loss": log_loss_statistic(y, p), "ece": ece_statistic(y, p, bins)}


def action_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Point values of :func:`action_statistics`."""
    return {m: s.value for m, s in action_statistics(labels, predicted).items()}


def binary_metrics(labels: np.ndarray, probs: np.ndarray, bins: int) -> dict[str, float]:
    """Point values of :func:`binary_statistics`."""
    return {m: s.value for m, s in binary_statistics(labels, probs, bins).items()}


# --------------------------------------------------------------------------- bootstrap over users


def bootstrap_distributions(stats: Mapping[Any, Statistic], users: np.ndarray, samples: int, seed: int, chunk: int = 100) -> dict[Any, np.ndarray]:
    """Each statistic on ``samples`` resamples of the users: ``{key: [samples] values}``.

    A resample draws ``n_users`` users with replacement (multinomial counts
    from ``numpy.random.default_rng(seed)``); each row weighs its user's
    count, so all of a user's rows go together. Every statistic sees the same
    resamples (paired differences). ``chunk`` resamples are held at a time.
    """
    users = np.asarray(users)
    if samples <= 0 or len(users) == 0:
        return {key: np.zeros(0) for key in stats}
    _, inverse = np.unique(users, return_inverse=True)
    n_users = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    parts: dict[Any, list[np.ndarray]] = {key: [] for key in stats}
    for start in range(0, samples, chunk):
        counts = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=min(chunk, samples - start))
        w = counts[:, inverse].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            for key, stat in stats.items():
                parts[key].append(stat(w))
    return {key: np.concatenate(v) for key, v in parts.items()}


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the defined values; NaN when none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan
    low, high = np.percentile(v, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)])
    return float(low), float(high)
