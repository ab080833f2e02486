"""Offline evaluation: metrics on a gold split and the baselines the model is compared with.

Pure numpy / torch / scikit-learn / LightGBM: no Spark, no I/O
(``jobs/stages/evaluate.py`` reads the tables and writes the results). Every metric
counts only the rows whose label mask is 1; a censored label (mask 0) is left
out, never a negative.

**Next item** (full-catalogue ranking, :mod:`shopseq.training.metrics`). Ties count by
their expected value under a uniformly random order of the tied items: with
``g`` real items scored strictly higher than the target and ``t`` other real
items scored exactly as high, the target's position is uniform over
``g .. g + t``, so ``HR@K = clip((K - g) / (t + 1), 0, 1)`` and NDCG@K / MRR@K
average ``1 / log2(p + 2)`` / ``1 / (p + 1)`` over the positions ``p < K`` of
that range (a constant scorer over ``n`` items gets ``HR@K = K / n``). Padding
(0) and OOV (1) are never candidates. A labelled row whose next item is OOV
(unseen in training) is a **miss** that stays in the denominator
(HR = NDCG = MRR = 0), and its share is reported as the metric ``oov_share``
(one row per method, the same value for each). ``HR@K`` (= Recall@K with one
relevant item), ``NDCG@K`` and ``MRR@K`` are means of these per-row values.

**Next event type**: accuracy and macro-F1 over the event types present in
the labels (as scikit-learn's ``f1_score(labels=unique(y), average="macro")``),
so every method is scored over the same classes.

**Purchase and churn**: ROC-AUC, PR-AUC (average precision), log loss and the
expected calibration error over ``bins`` equal-width probability bins
(``sum_b n_b / n * |positive rate_b - mean probability_b|``, bins as
:func:`sklearn.calibration.calibration_curve` forms them). ROC-AUC and PR-AUC
are NaN when the labels hold one class only.

**Intervals: a percentile bootstrap over users.** Every metric is a function
of row weights (:data:`Statistic`): a ratio metric (HR, NDCG, MRR, OOV share,
accuracy, log loss) is the weighted mean of its per-row values; macro-F1
comes from weighted confusion counts, ROC-AUC and PR-AUC from weighted counts
of positives and negatives per distinct score (the weighted Mann-Whitney
statistic and the step-wise average precision, equal to scikit-learn's with
``sample_weight``), the calibration error from weighted bin sums. The point
value uses weight 1 per row. A resample draws the task's users (``user_key``
of the counted rows) with replacement, so all of a user's rows go together
(a user's windows are correlated); a user drawn ``c`` times weighs ``c`` on
each of their rows. ``samples`` resamples (multinomial counts from
``numpy.random.default_rng(seed)``, the same draws for every method of a
task) give each metric's ``confidence`` interval as the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles (numpy's
linear interpolation) of its resampled values, and the same for
**model minus each baseline** on the same resamples (paired): a
:class:`Difference`. Resamples where a metric is undefined (one class) are
left out of its percentiles. ``samples = 0`` gives no intervals (NaN).

**Outcome** (:func:`compare`, on each task's primary metric): ``beats`` when
the model-minus-baseline interval lies entirely above zero (below, for
lower-is-better metrics) for every baseline; ``loses`` when for some baseline
it lies entirely on the wrong side; ``ties`` otherwise; ``n/a`` when the
model's value is undefined. Without an interval (bootstrap disabled) the
point values decide, and the comparison says ``interval: none``.

**Baselines**, fitted on the gold *train* split only (:func:`fit_baselines`):

* ``most_popular``: items by their count in the train data; next event type:
  the most frequent next event type of the train examples.
* ``markov`` (first order), fitted on the kind of transition it is scored on.
  The next-item label at a cutoff is the first event after the cutoff, which
  for session-end cutoffs is usually the next session's first item, not a
  within-session step. So the next item is scored by how often it was the
  label after a train cutoff whose window ended with the same last item
  (``cutoff_transitions``). A last item never seen at a train cutoff backs off
  to all consecutive train transitions from it (``transitions``), and one
  never seen followed (or OOV) to popularity; popularity also orders the ties.
  Under stride-1 cutoffs (every event a cutoff) the two kinds coincide. Next
  event type: the most frequent next type after the last event's type at the
  train cutoffs, falling back to the most frequent overall.
* ``repeat_last``: the window's last item first, then popularity; next event
  type: the last event's type.
* the literature's next-item baselines of :mod:`shopseq.training.baselines`, fitted on
  the same train split: ``recent_pop`` (popularity in the last day before the
  cutoff), ``reconsume`` (recency-weighted re-consumption of the window's own
  items), ``item_knn`` (session co-occurrence cosine kNN of the last item),
  ``sr`` (sequential rules) and ``vsknn`` (session-based kNN); their costs are
  in that module and their wall times in ``method_seconds``.
* ``logistic_regression`` and ``lightgbm`` (purchase, churn) see the inputs
  the model's purchase and churn heads see: the scalar profile features plus
  the model's window summary (:func:`shopseq.training.model.window_summary`, built
  with ``ModelConfig.from_schema``). Logistic regression (scikit-learn):
  numeric profiles as ``sign(x) * log1p(|x|)``, the summary as it is, both
  standardised on train, embedded profiles (the top category) one-hot.
  LightGBM: raw values, embedded profiles as categorical features, fixed
  hyper-parameters (:data:`LIGHTGBM_PARAMS`: 200 trees, 15 leaves, learning
  rate 0.05, at least 20 rows per leaf, seed 0, one thread), never tuned on
  the evaluated split.

Train data, counted once: consecutive train windows of a user overlap, so
each event and each transition is identified by ``(user_key, position in the
user's history)``, where the position of window slot ``j`` is
``frequency - L + j`` (``frequency`` = the user's events up to the cutoff) and
the next-item label sits at ``frequency``; duplicates are dropped before
counting. Item counts and transitions cover the events inside the train
windows and the train next-item labels.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from shopseq.training.baselines import BaselineParams, fit_next_item_baselines
from shopseq.training.metrics import SPECIAL_ITEMS, TargetRanks, expected_at_k, target_ranks
from shopseq.training.model import ITEM_FEATURE, ModelConfig, last_valid_index, window_summary, window_summary_size

log = logging.getLogger(__name__)

ACTION_FEATURE = "event_type_idx_seq"
RANKING_METRICS: tuple[str, ...] = ("hr", "ndcg", "mrr")
OOV_METRIC = "oov_share"  # next item: share of labelled rows whose target is out of vocabulary (misses)
ACTION_METRICS: tuple[str, ...] = ("accuracy", "macro_f1")
BINARY_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "ece")
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "ece"})
PROBABILITY_EPS = 1e-7  # log loss clips probabilities to [eps, 1 - eps]
BINARY_BASELINES: tuple[str, ...] = ("logistic_regression", "lightgbm")
# Fixed, small and documented; never tuned on the evaluated split.
LIGHTGBM_PARAMS: dict[str, Any] = {
    "n_estimators": 200, "num_leaves": 15, "learning_rate": 0.05, "min_child_samples": 20,
    "random_state": 0, "n_jobs": 1, "deterministic": True, "verbose": -1,
}  # fmt: skip

Statistic = Callable[[np.ndarray], np.ndarray]
"""A metric as a function of row weights: ``[B, n]`` float64 weights -> ``[B]`` values (NaN where undefined)."""


# --------------------------------------------------------------------------- statistics (vectorised over weight rows)


def mean_statistic(values: np.ndarray) -> Statistic:
    """The weighted mean of per-row ``values`` (HR, NDCG, MRR, OOV share, accuracy, log loss)."""
    x = np.asarray(values, dtype=np.float64)
    return lambda w: (w @ x) / w.sum(axis=1)


def macro_f1_statistic(labels: np.ndarray, predicted: np.ndarray) -> Statistic:
    """Weighted macro-F1 over the classes with positive weight among the labels (``2 TP / (support + predicted)``)."""
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    n_classes = int(max(y.max(initial=0), p.max(initial=0))) + 1
    truth = np.eye(n_classes)[y] if len(y) else np.zeros((0, n_classes))
    pred = np.eye(n_classes)[p] if len(p) else np.zeros((0, n_classes))

    def stat(w: np.ndarray) -> np.ndarray:
        support, guessed, tp = w @ truth, w @ pred, w @ (truth * pred)
        present = support > 0
        f1 = np.where(present, 2.0 * tp / np.where(present, support + guessed, 1.0), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return f1.sum(axis=1) / present.sum(axis=1)

    return stat


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


def roc_auc_statistic(labels: np.ndarray, probs: np.ndarray) -> Statistic:
    """Weighted ROC-AUC: ``P(score+ > score-) + P(equal) / 2`` over weighted (positive, negative) pairs."""
    order, y, ends = _score_groups(np.asarray(labels), np.asarray(probs, dtype=np.float64))

    def stat(w: np.ndarray) -> np.ndarray:
        pos, neg = _group_masses(w, order, y, ends)
        below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower
        total = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / total, np.nan)

    return stat


def average_precision_statistic(labels: np.ndarray, probs: np.ndarray) -> Statistic:
    """Weighted average precision, step-wise as scikit-learn's: ``sum_g (positives_g / P) * precision at threshold g``.

    NaN unless both classes have weight (as :func:`binary_metrics` treats one class).
    """
    order, y, ends = _score_groups(np.asarray(labels), np.asarray(probs, dtype=np.float64))

    def stat(w: np.ndarray) -> np.ndarray:
        pos, neg = _group_masses(w, order, y, ends)
        p_total, n_total = pos.sum(axis=1, keepdims=True), neg.sum(axis=1, keepdims=True)
        tp = p_total - (np.cumsum(pos, axis=1) - pos)  # positives scored >= this group's score
        fp = n_total - (np.cumsum(neg, axis=1) - neg)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            ap = (pos * precision).sum(axis=1) / p_total[:, 0]
        return np.where((p_total[:, 0] > 0) & (n_total[:, 0] > 0), ap, np.nan)

    return stat


def log_loss_values(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-row binary log loss, probabilities clipped to ``[eps, 1 - eps]``."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def calibration_bins(probs: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each probability: ``bins`` equal-width bins over [0, 1], as ``calibration_curve`` forms them."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], probs)


def ece_statistic(labels: np.ndarray, probs: np.ndarray, bins: int) -> Statistic:
    """Weighted expected calibration error: ``sum_b |weighted positives_b - weighted probability mass_b| / total weight``."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    onehot = np.eye(bins)[calibration_bins(p, bins)] if len(p) else np.zeros((0, bins))
    gap = onehot * (y - p)[:, None]
    return lambda w: np.abs(w @ gap).sum(axis=1) / w.sum(axis=1)


def point_value(stat: Statistic, n: int) -> float:
    """The statistic with weight 1 on each of ``n`` rows; NaN when there are no rows."""
    if n == 0:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(stat(np.ones((1, n)))[0])


# --------------------------------------------------------------------------- metrics (point values)


def ranks_in_batches(score_rows: Callable[[slice], Tensor], target: Tensor, mask: Tensor, batch_size: int = 1024) -> TargetRanks:
    """:func:`shopseq.training.metrics.target_ranks` of every labelled row, scoring ``batch_size`` rows at a time.

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
    return {key: float(v.mean()) if len(v) else math.nan for key, v in ranking_values(ranks, ks).items()}


def action_statistics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Statistic]:
    """Accuracy and macro-F1 of the predicted event types as :data:`Statistic` s."""
    y, p = np.asarray(labels), np.asarray(predicted)
    return {"accuracy": mean_statistic((y == p).astype(np.float64)), "macro_f1": macro_f1_statistic(y, p)}


def action_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in ``labels`` (the masked rows only)."""
    return {m: point_value(s, len(labels)) for m, s in action_statistics(labels, predicted).items()}


def binary_statistics(labels: np.ndarray, probs: np.ndarray, bins: int) -> dict[str, Statistic]:
    """ROC-AUC, PR-AUC, log loss and calibration error of probabilities as :data:`Statistic` s."""
    y = np.asarray(labels).astype(np.int64)
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    return {
        "roc_auc": roc_auc_statistic(y, p),
        "pr_auc": average_precision_statistic(y, p),
        "log_loss": mean_statistic(log_loss_values(y, p)),
        "ece": ece_statistic(y, p, bins),
    }


def binary_metrics(labels: np.ndarray, probs: np.ndarray, bins: int) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), log loss and calibration error of probabilities (masked rows only)."""
    return {m: point_value(s, len(labels)) for m, s in binary_statistics(labels, probs, bins).items()}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """``sum_b n_b / n * |positive rate_b - mean probability_b|`` over the non-empty equal-width bins."""
    return point_value(ece_statistic(labels, probs, bins), len(labels))


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` is strictly better than ``b`` for ``metric`` (NaN is never better)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b


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


# --------------------------------------------------------------------------- sequence baselines


@dataclass(frozen=True)
class SequenceBaselines:
    """Counts from the train split that the next-item and next-action baselines score with."""

    item_counts: np.ndarray  # [n_items] float64: occurrences in the train data (each event once)
    transitions: sparse.csr_matrix  # [n_items, n_items]: times item j followed item i (consecutive train events)
    action_counts: np.ndarray  # [n_event_types]: next event types of the train examples
    action_transitions: np.ndarray  # [n_event_types, n_event_types]: next type by the last event's type
    cutoff_transitions: sparse.csr_matrix | None = None  # [n_items, n_items]: times j was the label after a train cutoff ending with i

    @property
    def tie_break(self) -> np.ndarray:
        """Popularity scaled into [0, 1): added to whole-number scores, it only orders their ties."""
        return self.item_counts / (self.item_counts.sum() + 1.0)


def _train_events(train: dict[str, Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique train events as ``(user_key, position, item)`` arrays: window slots and the next-item labels."""
    seq = train[ITEM_FEATURE].long().numpy()
    n, L = seq.shape
    freq = train["frequency"].long().numpy()
    users = np.repeat(train["user_key"].long().numpy(), L)
    pos = (freq[:, None] - L + np.arange(L)[None, :]).reshape(-1)
    items = seq.reshape(-1)
    keep = items != 0
    label_mask = train["next_label_mask"].numpy().astype(bool)
    users = np.concatenate([users[keep], train["user_key"].long().numpy()[label_mask]])
    pos = np.concatenate([pos[keep], freq[label_mask]])
    items = np.concatenate([items[keep], train["next_item_idx"].long().numpy()[label_mask]])
    key = np.stack([users, pos], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    order = np.sort(first)
    return users[order], pos[order], items[order]


def _count_matrix(src: np.ndarray, dst: np.ndarray, n_items: int) -> sparse.csr_matrix:
    m = sparse.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n_items, n_items), dtype=np.float64)
    m.sum_duplicates()
    return m


def fit_baselines(train: dict[str, Tensor], n_items: int, n_event_types: int) -> SequenceBaselines:
    """Item counts, item transitions (consecutive and at cutoffs) and event-type counts from the gold train split.

    Needs: ``item_idx_seq``, ``event_type_idx_seq``, ``frequency``, ``user_key``,
    ``next_item_idx``, ``next_event_type_idx``, ``next_label_mask``. See the
    module docstring for what each baseline counts.
    """
    users, pos, items = _train_events(train)
    real = items >= SPECIAL_ITEMS
    counts = np.bincount(items[real], minlength=n_items)[:n_items].astype(np.float64)
    # Consecutive events of a user: sorted by (user, position), pairs one position apart.
    order = np.lexsort((pos, users))
    u, p, it = users[order], pos[order], items[order]
    pair = (u[1:] == u[:-1]) & (p[1:] == p[:-1] + 1) & (it[:-1] >= SPECIAL_ITEMS) & (it[1:] >= SPECIAL_ITEMS)
    transitions = _count_matrix(it[:-1][pair], it[1:][pair], n_items)
    # (last window item -> labelled next item) at each labelled train cutoff, once per (user, cutoff).
    m = train["next_label_mask"].numpy().astype(bool)
    last, nxt_item = last_items(train).numpy()[m], train["next_item_idx"].long().numpy()[m]
    _, once = np.unique(np.stack([train["user_key"].long().numpy()[m], train["frequency"].long().numpy()[m]], axis=1), axis=0, return_index=True)
    ok = np.zeros(len(last), dtype=bool)
    ok[once] = True
    ok &= (last >= SPECIAL_ITEMS) & (nxt_item >= SPECIAL_ITEMS)
    cutoff_transitions = _count_matrix(last[ok], nxt_item[ok], n_items)
    # Next event types at the train cutoffs (each example is one cutoff).
    nxt = train["next_event_type_idx"].long().numpy()[m]
    last_type = last_event_types(train)[m]
    action_counts = np.bincount(nxt, minlength=n_event_types)[:n_event_types].astype(np.float64)
    action_transitions = np.zeros((n_event_types, n_event_types))
    np.add.at(action_transitions, (last_type, nxt), 1.0)
    return SequenceBaselines(counts, transitions, action_counts, action_transitions, cutoff_transitions)


def last_items(data: dict[str, Tensor]) -> Tensor:
    """The last valid item of each window (``[B]`` long)."""
    seq = data[ITEM_FEATURE].long()
    return seq[torch.arange(len(seq)), last_valid_index(seq)]


def last_event_types(data: dict[str, Tensor]) -> np.ndarray:
    """The event type of each window's last valid event."""
    seq = data[ITEM_FEATURE].long()
    types = data[ACTION_FEATURE].long()
    return types[torch.arange(len(seq)), last_valid_index(seq)].numpy()


def popularity_scores(b: SequenceBaselines, n_rows: int) -> Tensor:
    """``[n_rows, n_items]``: every row scores items by their train count."""
    return torch.from_numpy(b.item_counts).expand(n_rows, -1)


def markov_scores(b: SequenceBaselines, last: Tensor) -> Tensor:
    """``[B, n_items]``: counts of what followed each row's last item at train cutoffs, backing off to all
    consecutive train transitions from it, then to popularity; popularity orders the ties."""
    n_items = b.transitions.shape[0]
    src = np.clip(last.long().numpy(), 0, n_items - 1)
    cut = b.cutoff_transitions if b.cutoff_transitions is not None else sparse.csr_matrix((n_items, n_items))
    at_cutoff = np.asarray(cut.sum(axis=1)).ravel()[src] > 0
    rows = np.zeros((len(src), n_items))
    if at_cutoff.any():
        rows[at_cutoff] = cut[src[at_cutoff]].toarray()
    if (~at_cutoff).any():
        rows[~at_cutoff] = b.transitions[src[~at_cutoff]].toarray()
    rows[src < SPECIAL_ITEMS] = 0.0  # padding / OOV last item: popularity only
    return torch.from_numpy(rows + b.tie_break[None, :])


def repeat_last_scores(b: SequenceBaselines, last: Tensor) -> Tensor:
    """``[B, n_items]``: each row's last item first, then the rest by popularity."""
    scores = np.repeat(b.tie_break[None, :], len(last), axis=0)
    src = last.long().numpy()
    ok = (src >= SPECIAL_ITEMS) & (src < scores.shape[1])
    scores[np.flatnonzero(ok), src[ok]] += 1.0
    return torch.from_numpy(scores)


def predict_action(probs: np.ndarray) -> np.ndarray:
    """The most probable event type per row; padding (index 0) is never predicted (first index wins ties)."""
    p = np.array(probs, dtype=np.float64, copy=True)
    p[:, 0] = -np.inf
    return p.argmax(axis=1)


def action_baseline_predictions(b: SequenceBaselines, last_types: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted next event type per row for ``most_popular``, ``markov`` and ``repeat_last``."""
    n_types = len(b.action_counts)
    prior = b.action_counts / (b.action_counts.sum() + 1.0)  # < 1: orders the ties of whole counts
    last = np.clip(np.asarray(last_types, dtype=np.int64), 0, n_types - 1)
    return {
        "most_popular": predict_action(np.repeat(prior[None, :], len(last), axis=0)),
        "markov": predict_action(b.action_transitions[last] + prior[None, :]),
        "repeat_last": np.asarray(last_types, dtype=np.int64),
    }


# --------------------------------------------------------------------------- purchase / churn baselines on the model's inputs


def profile_columns(schema: dict) -> tuple[list[str], list[str]]:
    """``(numeric, embedded)`` scalar profile columns of the gold schema artifact."""
    prof = [c for c in schema["columns"] if c.get("role") == "profile" and not c.get("shape")]
    return [c["name"] for c in prof if not c.get("embedding")], [c["name"] for c in prof if c.get("embedding")]


def profile_matrix(data: dict[str, Tensor], numeric: Sequence[str], embedded: Sequence[str]) -> np.ndarray:
    """``[n, len(numeric) + len(embedded)]`` float64: the raw profile values, numeric columns first."""
    cols = [data[c].double().numpy() for c in [*numeric, *embedded]]
    return np.stack(cols, axis=1) if cols else np.zeros((len(next(iter(data.values()))), 0))


@torch.no_grad()
def summary_matrix(data: dict[str, Tensor], cfg: ModelConfig, batch_size: int = 8192) -> np.ndarray:
    """``[n, window_summary_size(cfg)]`` float64: the model's :func:`shopseq.training.model.window_summary` of each window."""
    n = len(data[ITEM_FEATURE])
    width = window_summary_size(cfg)
    if width == 0:
        return np.zeros((n, 0))
    parts = [window_summary({k: v[s : s + batch_size] for k, v in data.items()}, cfg).double().numpy() for s in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, width))


def baseline_features(data: dict[str, Tensor], schema: dict) -> tuple[np.ndarray, int, int, int]:
    """The purchase / churn baselines' inputs: ``(x, n_numeric, n_embedded, n_summary)``.

    ``x`` columns: numeric profiles, embedded profiles, then the window
    summary (the model's inputs to its purchase and churn heads).
    """
    numeric, embedded = profile_columns(schema)
    summary = summary_matrix(data, ModelConfig.from_schema(schema))
    return np.hstack([profile_matrix(data, numeric, embedded), summary]), len(numeric), len(embedded), summary.shape[1]


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: the scale the model reads profiles on."""
    return np.sign(x) * np.log1p(np.abs(x))


def profile_model(n_numeric: int, n_embedded: int, seed: int = 0, n_summary: int = 0, kind: str = "logistic_regression"):
    """The unfitted classifier for ``x = [numeric | embedded | summary]`` (see the module docstring).

    ``logistic_regression``: ``sign(x) * log1p(|x|)`` + standardisation for
    numeric columns, standardisation for the summary, one-hot for embedded
    ones. ``lightgbm``: :data:`LIGHTGBM_PARAMS` on the raw columns (embedded
    ones categorical at fit time).
    """
    if kind == "lightgbm":
        from lightgbm import LGBMClassifier

        return LGBMClassifier(**{**LIGHTGBM_PARAMS, "random_state": seed})
    if kind != "logistic_regression":
        raise ValueError(f"unknown profile baseline {kind!r}; expected one of {', '.join(BINARY_BASELINES)}")
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    numeric = list(range(n_numeric))
    embedded = list(range(n_numeric, n_numeric + n_embedded))
    summary = list(range(n_numeric + n_embedded, n_numeric + n_embedded + n_summary))
    parts = [("numeric", make_pipeline(FunctionTransformer(signed_log1p), StandardScaler()), numeric), ("embedded", OneHotEncoder(handle_unknown="ignore"), embedded)]
    if summary:
        parts.append(("summary", StandardScaler(), summary))
    return make_pipeline(ColumnTransformer(parts), LogisticRegression(max_iter=1000, random_state=seed))


@dataclass
class ProfileBaseline:
    """A fitted purchase / churn baseline, or the train rate when train has one class."""

    pipeline: object | None
    train_rate: float
    n_train: int

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.pipeline is None:
            return np.full(len(x), self.train_rate)
        return self.pipeline.predict_proba(x)[:, 1]  # type: ignore[attr-defined]


def fit_profile_baseline(
    x: np.ndarray, labels: np.ndarray, mask: np.ndarray, n_numeric: int, n_embedded: int, n_summary: int = 0, kind: str = "logistic_regression", seed: int = 0
) -> ProfileBaseline:
    """Fit ``kind`` (:data:`BINARY_BASELINES`) on the rows whose label mask is 1 (censored rows are never used)."""
    m = np.asarray(mask).astype(bool)
    y = np.asarray(labels)[m].astype(np.int64)
    rate = float(y.mean()) if len(y) else math.nan
    if len(np.unique(y)) < 2:
        log.warning("%s: %d labeled train rows with a single class; predicting the train rate %s", kind, len(y), rate)
        return ProfileBaseline(None, 0.0 if math.isnan(rate) else rate, len(y))
    model = profile_model(n_numeric, n_embedded, seed, n_summary, kind)
    fit_args = {"categorical_feature": list(range(n_numeric, n_numeric + n_embedded))} if kind == "lightgbm" and n_embedded else {}
    model.fit(np.asarray(x)[m], y, **fit_args)
    return ProfileBaseline(model, rate, len(y))


# --------------------------------------------------------------------------- model and baselines together


@dataclass(frozen=True)
class MetricRow:
    """One number of an evaluation: ``k`` only for ranking metrics; the interval is NaN when not computed."""

    task: str  # next_item | next_action | purchase | churn
    metric: str  # hr | ndcg | mrr | oov_share | accuracy | macro_f1 | roc_auc | pr_auc | log_loss | ece
    k: int | None
    method: str  # model | most_popular | markov | repeat_last | logistic_regression | lightgbm
    value: float  # NaN when undefined (no rows, one class)
    n_examples: int
    ci_low: float = math.nan  # bootstrap percentile interval over users
    ci_high: float = math.nan


@dataclass(frozen=True)
class Difference:
    """Model minus one baseline on one metric, with its paired bootstrap interval (NaN when not computed)."""

    task: str
    metric: str
    k: int | None
    baseline: str
    diff: float
    low: float
    high: float


@dataclass
class Evaluation:
    """Metric rows, paired model-minus-baseline differences, and the labelled probabilities of the binary tasks."""

    rows: list[MetricRow]
    binary: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # task -> method -> (labels, probabilities)
    differences: list[Difference] = field(default_factory=list)
    bootstrap: dict[str, Any] = field(default_factory=dict)  # samples, confidence, seed, users per task
    method_seconds: dict[str, float] = field(default_factory=dict)  # wall time per method (see evaluate_all)
    next_item_ranks: dict[str, TargetRanks] = field(default_factory=dict)  # method -> per labelled row: items above / tied (peer comparisons)


def score_task(
    task: str,
    stats: Mapping[tuple[str, int | None, str], Statistic],
    users: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[list[MetricRow], list[Difference]]:
    """Point values, bootstrap intervals and paired model-minus-baseline intervals of one task's statistics.

    ``stats`` maps ``(metric, k, method)`` to a :data:`Statistic` over the
    task's counted rows, whose users are ``users``; differences are formed
    for every baseline of every metric the model has (not ``oov_share``).
    """
    n = len(users)
    dist = bootstrap_distributions(stats, users, samples, seed)
    point = {key: point_value(stat, n) for key, stat in stats.items()}
    rows = []
    for (metric, k, method), value in point.items():
        low, high = percentile_interval(dist[(metric, k, method)], confidence) if not math.isnan(value) else (math.nan, math.nan)
        undefined = int(np.isnan(dist[(metric, k, method)]).sum())
        if undefined and not math.isnan(value):
            log.warning("%s %s (%s): undefined in %d of %d resamples (one class); the interval uses the rest", task, metric, method, undefined, samples)
        rows.append(MetricRow(task, metric, k, method, value, n, low, high))
    diffs = []
    for (metric, k, method), value in point.items():
        if method == "model" or metric == OOV_METRIC or (metric, k, "model") not in point:
            continue
        paired = dist[(metric, k, "model")] - dist[(metric, k, method)]
        low, high = percentile_interval(paired, confidence)
        diffs.append(Difference(task, metric, k, method, point[(metric, k, "model")] - value, low, high))
    return rows, diffs


@torch.no_grad()
def evaluate_all(
    model: torch.nn.Module,
    data: dict[str, Tensor],
    train: dict[str, Tensor],
    schema: dict,
    ks: Sequence[int],
    bins: int,
    batch_size: int = 1024,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    baseline_params: BaselineParams | None = None,
) -> Evaluation:
    """Score ``data`` with the model and every baseline (fitted on ``train``); all metrics with bootstrap intervals.

    ``model`` is a :class:`shopseq.training.model.MultiTaskModel` in eval mode;
    ``data`` and ``train`` hold the gold model columns plus ``user_key``.
    ``bootstrap_samples = 0`` computes no intervals. ``method_seconds``: the
    model's forward pass and ranking; each next-item baseline's ranking (their
    shared counts: ``sequence_baselines_fit``); each purchase / churn
    baseline's fit and prediction, both tasks together.
    """
    from shopseq.training.checkpoint import predict_tensors

    sizes = schema["embedding_sizes"]
    n_items, n_types = int(sizes["item"]), int(sizes["event_type"])
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    out = predict_tensors(model, data, batch_size=batch_size)
    seconds["model"] = time.perf_counter() - started
    started = time.perf_counter()
    base = fit_baselines(train, n_items, n_types)
    seconds["sequence_baselines_fit"] = time.perf_counter() - started
    users = data["user_key"].long().numpy()
    rows: list[MetricRow] = []
    diffs: list[Difference] = []
    units: dict[str, int] = {}

    def add(task: str, stats: dict[tuple[str, int | None, str], Statistic], task_users: np.ndarray) -> None:
        r, d = score_task(task, stats, task_users, bootstrap_samples, confidence, seed)
        rows.extend(r)
        diffs.extend(d)
        units[task] = len(np.unique(task_users))

    # Next item: every labelled row, the same rows for every method (OOV targets are misses).
    target, mask = data["next_item_idx"], data["next_label_mask"]
    m = mask.numpy().astype(bool)
    last = last_items(data)
    hidden = out["hidden_last"]
    scorers: dict[str, Callable[[slice], Tensor]] = {  # method -> scores of a slice of rows
        "model": lambda r: model.item_scores(hidden[r], data[ITEM_FEATURE][r], out["repeat_last"][r]),  # type: ignore[operator]
        "most_popular": lambda r: popularity_scores(base, len(target[r])),
        "markov": lambda r: markov_scores(base, last[r]),
        "repeat_last": lambda r: repeat_last_scores(base, last[r]),
    }
    started = time.perf_counter()
    literature = fit_next_item_baselines(train, n_items, baseline_params)
    seconds["literature_baselines_fit"] = time.perf_counter() - started
    for name, scorer in literature.items():
        scorers[name] = lambda r, s=scorer: s.scores(data, r)
    stats: dict[tuple[str, int | None, str], Statistic] = {}
    next_item_ranks: dict[str, TargetRanks] = {}
    for method, score_rows in scorers.items():
        started = time.perf_counter()
        ranks = ranks_in_batches(score_rows, target, mask, batch_size)
        seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - started
        next_item_ranks[method] = ranks
        for (metric, k), values in ranking_values(ranks, ks).items():
            stats[(metric, k, method)] = mean_statistic(values)
    add("next_item", stats, users[m])

    # Next event type.
    y_action = data["next_event_type_idx"].long().numpy()[m]
    predictions = {"model": predict_action(out["action"].numpy())}
    predictions.update(action_baseline_predictions(base, last_event_types(data)))
    stats = {(metric, None, method): s for method, pred in predictions.items() for metric, s in action_statistics(y_action, pred[m]).items()}
    add("next_action", stats, users[m])

    # Purchase and churn: the model against logistic regression and LightGBM on the same inputs (profiles + window summary).
    x_train, n_num, n_emb, n_sum = baseline_features(train, schema)
    x_data = baseline_features(data, schema)[0]
    binary: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for task in ("purchase", "churn"):
        m = data[f"{task}_label_mask"].numpy().astype(bool)
        y = data[f"{task}_label"].long().numpy()[m]
        probs = {"model": out[task].double().numpy()[m]}
        for kind in BINARY_BASELINES:
            started = time.perf_counter()
            fitted = fit_profile_baseline(x_train, train[f"{task}_label"].numpy(), train[f"{task}_label_mask"].numpy(), n_num, n_emb, n_sum, kind, seed)
            probs[kind] = fitted.predict_proba(x_data[m]) if m.any() else np.zeros(0)
            seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - started
        binary[task] = {method: (y, p) for method, p in probs.items()}
        stats = {(metric, None, method): s for method, p in probs.items() for metric, s in binary_statistics(y, p, bins).items()}
        add(task, stats, users[m])
    info = {"samples": bootstrap_samples, "confidence": confidence, "seed": seed, "users": units}
    return Evaluation(rows, binary, diffs, info, {k: round(v, 3) for k, v in seconds.items()}, next_item_ranks)


PRIMARY_METRICS: dict[str, str] = {"next_item": "ndcg", "next_action": "macro_f1", "purchase": "roc_auc", "churn": "roc_auc"}


def verdict(metric: str, model: float, baseline: float, low: float, high: float) -> tuple[str, str]:
    """``(better | worse | tie | n/a, bootstrap | none)``: the model against one baseline.

    With an interval of model minus baseline: ``better`` when it lies
    entirely on the good side of zero, ``worse`` entirely on the bad side,
    ``tie`` when it holds zero. Without one (NaN): the point values decide
    (equal within 1e-9 relative is a tie). ``n/a`` when either value is undefined.
    """
    if math.isnan(model) or math.isnan(baseline):
        return "n/a", "none"
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    if not (math.isnan(low) or math.isnan(high)):
        lo, hi = sorted((sign * low, sign * high))
        return ("better" if lo > 0 else "worse" if hi < 0 else "tie"), "bootstrap"
    if math.isclose(model, baseline, rel_tol=1e-9, abs_tol=1e-12):
        return "tie", "none"
    return ("better" if better(metric, model, baseline) else "worse"), "none"


def compare(rows: Sequence[MetricRow], ks: Sequence[int], differences: Sequence[Difference] = (), primary: Mapping[str, str] = PRIMARY_METRICS) -> list[dict]:
    """Per task, the model against every baseline on the task's primary metric.

    Primary metrics (``primary``, task -> metric; default): NDCG@10 (or the largest K when 10 is not evaluated) for
    the next item, macro-F1 for the next event type, ROC-AUC for purchase and
    churn. Each baseline gets its value and interval, ``diff`` (model minus
    baseline) with ``diff_low``/``diff_high`` from ``differences`` and a
    :func:`verdict`. ``outcome``: ``beats`` when the model is better than
    every baseline (interval above zero), ``loses`` when it is worse than
    some baseline (interval below zero), ``ties`` otherwise, ``n/a`` when the
    model's value is undefined or no baseline is defined. ``interval`` is
    ``bootstrap`` when every verdict came from an interval, else ``none``
    (point values decided). ``diff``/``diff_low``/``diff_high`` at the top
    level are against ``best_baseline``, the best baseline by point value;
    ``beats_baselines`` is ``outcome == "beats"``.
    """
    k_primary = 10 if 10 in ks else max(ks)
    paired = {(d.task, d.metric, d.k, d.baseline): d for d in differences}
    out = []
    for task, metric in primary.items():
        k = k_primary if task == "next_item" else None
        found = {r.method: r for r in rows if r.task == task and r.metric == metric and r.k == k}
        if "model" not in found:
            continue
        model = found.pop("model")
        baselines = []
        for name, r in found.items():
            d = paired.get((task, metric, k, name))
            low, high = (d.low, d.high) if d else (math.nan, math.nan)
            v, interval = verdict(metric, model.value, r.value, low, high)
            baselines.append({"name": name, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "diff": model.value - r.value, "diff_low": low, "diff_high": high, "verdict": v, "interval": interval})
        defined = [b for b in baselines if b["verdict"] != "n/a"]
        if math.isnan(model.value) or not defined:
            outcome = "n/a"
        elif any(b["verdict"] == "worse" for b in defined):
            outcome = "loses"
        elif all(b["verdict"] == "better" for b in defined):
            outcome = "beats"
        else:
            outcome = "ties"
        best = None
        for b in baselines:
            if best is None or better(metric, b["value"], best["value"]):
                best = b
        out.append(
            {
                "task": task,
                "metric": f"{metric}@{k}" if k is not None else metric,
                "model": model.value,
                "model_low": model.ci_low,
                "model_high": model.ci_high,
                "baselines": baselines,
                "best_baseline": best["name"] if best else None,
                "diff": best["diff"] if best else math.nan,
                "diff_low": best["diff_low"] if best else math.nan,
                "diff_high": best["diff_high"] if best else math.nan,
                "interval": "bootstrap" if defined and all(b["interval"] == "bootstrap" for b in defined) else "none",
                "beats_baselines": outcome == "beats",
                "outcome": outcome,
            }
        )
    return out
