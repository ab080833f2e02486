"""Offline evaluation: metrics on a gold split and the baselines the model is compared with.

Pure numpy / torch / scikit-learn: no Spark, no I/O (``jobs/evaluate.py``
reads the tables and writes the results). Every metric counts only the rows
whose label mask is 1; a censored label (mask 0) is left out, never a
negative.

**Next item** (full-catalogue ranking). The target's 0-based rank counts the
real items scored strictly higher (ties go to the target, the rule of
:func:`training.metrics.target_ranks`); padding (0) and OOV (1) are never
candidates, and rows whose next item is OOV (unseen in training) are left
out, because no method can rank them. With one relevant item,
``HR@K`` (= Recall@K) is ``mean(rank < K)``, ``NDCG@K`` is
``mean(1 / log2(rank + 2))`` over hits, ``MRR@K`` is ``mean(1 / (rank + 1))``
over hits.

**Next event type**: accuracy and macro-F1 (scikit-learn) over the event
types present in the labels, so every method is scored over the same classes.

**Purchase and churn**: ROC-AUC, PR-AUC (average precision), log loss and the
expected calibration error over ``bins`` equal-width probability bins
(``sum_b n_b / n * |positive rate_b - mean probability_b|``, bins as
:func:`sklearn.calibration.calibration_curve` forms them). ROC-AUC and PR-AUC
are NaN when the labels hold one class only.

**Baselines**, fitted on the gold *train* split only (:func:`fit_baselines`):

* ``most_popular``: items by their count in the train data; next event type:
  the most frequent next event type of the train examples.
* ``markov`` (first order): the next item scored by how often it followed the
  window's last item in the train data, ties (and a last item never seen
  followed, or OOV) broken by popularity, so an unseen last item falls back to
  popularity. Next event type: the most frequent next type after the last
  event's type at the train cutoffs, falling back to the most frequent overall.
* ``repeat_last``: the window's last item first, then popularity; next event
  type: the last event's type.
* ``logistic_regression`` (purchase, churn): scikit-learn's
  ``LogisticRegression`` on the profile features: numeric ones as
  ``sign(x) * log1p(|x|)`` standardised on train, embedded ones (the top
  category) one-hot.

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
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from training.metrics import SPECIAL_ITEMS, target_ranks
from training.model import ITEM_FEATURE, last_valid_index

log = logging.getLogger(__name__)

ACTION_FEATURE = "event_type_idx_seq"
RANKING_METRICS: tuple[str, ...] = ("hr", "ndcg", "mrr")
ACTION_METRICS: tuple[str, ...] = ("accuracy", "macro_f1")
BINARY_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "ece")
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "ece"})
PROBABILITY_EPS = 1e-7  # log loss clips probabilities to [eps, 1 - eps]


# --------------------------------------------------------------------------- metrics


def ranks_in_batches(score_rows: Callable[[slice], Tensor], target: Tensor, mask: Tensor, batch_size: int = 1024) -> np.ndarray:
    """0-based ranks of the kept rows' targets, scoring ``batch_size`` rows at a time.

    ``score_rows(rows)`` returns the ``[len(rows), n_items]`` scores of those
    rows (the full catalogue never has to be held for every row at once).
    """
    n = len(target)
    out: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        if not bool((mask[rows].bool() & (target[rows].long() >= SPECIAL_ITEMS)).any()):
            continue
        rank, _ = target_ranks(score_rows(rows), target[rows], mask[rows])
        out.append(rank.numpy())
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[tuple[str, int], float]:
    """``{(metric, K): value}`` for HR, NDCG and MRR at each K (NaN when there are no rows)."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[tuple[str, int], float] = {}
    for k in ks:
        hit = r < k
        if len(r) == 0:
            out.update({(m, k): math.nan for m in RANKING_METRICS})
            continue
        out[("hr", k)] = float(hit.mean())
        out[("ndcg", k)] = float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean())
        out[("mrr", k)] = float(np.where(hit, 1.0 / (r + 1.0), 0.0).mean())
    return out


def action_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in ``labels`` (the masked rows only)."""
    from sklearn.metrics import accuracy_score, f1_score

    y, p = np.asarray(labels), np.asarray(predicted)
    if len(y) == 0:
        return {"accuracy": math.nan, "macro_f1": math.nan}
    return {
        "accuracy": float(accuracy_score(y, p)),
        "macro_f1": float(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)),
    }


def calibration_bins(probs: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each probability: ``bins`` equal-width bins over [0, 1], as ``calibration_curve`` forms them."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], probs)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int) -> float:
    """``sum_b n_b / n * |positive rate_b - mean probability_b|`` over the non-empty equal-width bins."""
    from sklearn.calibration import calibration_curve

    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    counts = np.bincount(calibration_bins(p, bins), minlength=bins)
    weights = counts[counts > 0] / len(p)
    return float(np.sum(weights * np.abs(prob_true - prob_pred)))


def binary_metrics(labels: np.ndarray, probs: np.ndarray, bins: int) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision), log loss and calibration error of probabilities (masked rows only)."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    y = np.asarray(labels).astype(np.int64)
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    if len(y) == 0:
        return {m: math.nan for m in BINARY_METRICS}
    two_classes = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if two_classes else math.nan,
        "pr_auc": float(average_precision_score(y, p)) if two_classes else math.nan,
        "log_loss": float(log_loss(y, np.clip(p, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS), labels=[0, 1])),
        "ece": expected_calibration_error(y, p, bins),
    }


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` is strictly better than ``b`` for ``metric`` (NaN is never better)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b


# --------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class SequenceBaselines:
    """Counts from the train split that the next-item and next-action baselines score with."""

    item_counts: np.ndarray  # [n_items] float64: occurrences in the train data (each event once)
    transitions: sparse.csr_matrix  # [n_items, n_items]: times item j followed item i
    action_counts: np.ndarray  # [n_event_types]: next event types of the train examples
    action_transitions: np.ndarray  # [n_event_types, n_event_types]: next type by the last event's type

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


def fit_baselines(train: dict[str, Tensor], n_items: int, n_event_types: int) -> SequenceBaselines:
    """Item counts, item transitions and event-type counts from the gold train split (see the module docstring).

    Needs: ``item_idx_seq``, ``event_type_idx_seq``, ``frequency``, ``user_key``,
    ``next_item_idx``, ``next_event_type_idx``, ``next_label_mask``.
    """
    users, pos, items = _train_events(train)
    real = items >= SPECIAL_ITEMS
    counts = np.bincount(items[real], minlength=n_items)[:n_items].astype(np.float64)
    # Consecutive events of a user: sorted by (user, position), pairs one position apart.
    order = np.lexsort((pos, users))
    u, p, it = users[order], pos[order], items[order]
    pair = (u[1:] == u[:-1]) & (p[1:] == p[:-1] + 1) & (it[:-1] >= SPECIAL_ITEMS) & (it[1:] >= SPECIAL_ITEMS)
    src, dst = it[:-1][pair], it[1:][pair]
    transitions = sparse.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n_items, n_items), dtype=np.float64)
    transitions.sum_duplicates()
    # Next event types at the train cutoffs (each example is one cutoff).
    m = train["next_label_mask"].numpy().astype(bool)
    nxt = train["next_event_type_idx"].long().numpy()[m]
    last = last_event_types(train)[m]
    action_counts = np.bincount(nxt, minlength=n_event_types)[:n_event_types].astype(np.float64)
    action_transitions = np.zeros((n_event_types, n_event_types))
    np.add.at(action_transitions, (last, nxt), 1.0)
    return SequenceBaselines(counts, transitions, action_counts, action_transitions)


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
    """``[B, n_items]``: transition counts from each row's last item, ties broken by popularity."""
    src = last.long().numpy()
    rows = np.asarray(b.transitions[np.clip(src, 0, b.transitions.shape[0] - 1)].todense())
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


# --------------------------------------------------------------------------- logistic regression on profiles


def profile_columns(schema: dict) -> tuple[list[str], list[str]]:
    """``(numeric, embedded)`` scalar profile columns of the gold schema artifact."""
    prof = [c for c in schema["columns"] if c.get("role") == "profile" and not c.get("shape")]
    return [c["name"] for c in prof if not c.get("embedding")], [c["name"] for c in prof if c.get("embedding")]


def profile_matrix(data: dict[str, Tensor], numeric: Sequence[str], embedded: Sequence[str]) -> np.ndarray:
    """``[n, len(numeric) + len(embedded)]`` float64: the raw profile values, numeric columns first."""
    cols = [data[c].double().numpy() for c in [*numeric, *embedded]]
    return np.stack(cols, axis=1) if cols else np.zeros((len(next(iter(data.values()))), 0))


def profile_model(n_numeric: int, n_embedded: int, seed: int = 0):
    """The unfitted pipeline: ``sign(x) * log1p(|x|)`` + standardisation for numeric columns, one-hot for embedded ones."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    numeric = list(range(n_numeric))
    embedded = list(range(n_numeric, n_numeric + n_embedded))
    signed_log = FunctionTransformer(signed_log1p)
    features = ColumnTransformer(
        [("numeric", make_pipeline(signed_log, StandardScaler()), numeric), ("embedded", OneHotEncoder(handle_unknown="ignore"), embedded)]
    )
    return make_pipeline(features, LogisticRegression(max_iter=1000, random_state=seed))


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: the scale the model reads profiles on."""
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class ProfileBaseline:
    """Logistic regression on the profile features for one binary task, or the train rate when train has one class."""

    pipeline: object | None
    train_rate: float
    n_train: int

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.pipeline is None:
            return np.full(len(x), self.train_rate)
        return self.pipeline.predict_proba(x)[:, 1]  # type: ignore[attr-defined]


def fit_profile_baseline(x: np.ndarray, labels: np.ndarray, mask: np.ndarray, n_numeric: int, n_embedded: int) -> ProfileBaseline:
    """Fit on the rows whose label mask is 1 (censored rows are never used)."""
    m = np.asarray(mask).astype(bool)
    y = np.asarray(labels)[m].astype(np.int64)
    rate = float(y.mean()) if len(y) else math.nan
    if len(np.unique(y)) < 2:
        log.warning("logistic regression: %d labeled train rows with a single class; predicting the train rate %s", len(y), rate)
        return ProfileBaseline(None, 0.0 if math.isnan(rate) else rate, len(y))
    pipeline = profile_model(n_numeric, n_embedded)
    pipeline.fit(np.asarray(x)[m], y)
    return ProfileBaseline(pipeline, rate, len(y))


# --------------------------------------------------------------------------- model and baselines together


@dataclass(frozen=True)
class MetricRow:
    """One number of an evaluation: ``k`` only for ranking metrics."""

    task: str  # next_item | next_action | purchase | churn
    metric: str  # hr | ndcg | mrr | accuracy | macro_f1 | roc_auc | pr_auc | log_loss | ece
    k: int | None
    method: str  # model | most_popular | markov | repeat_last | logistic_regression
    value: float  # NaN when undefined (no rows, one class)
    n_examples: int


@dataclass
class Evaluation:
    """Metric rows plus the labelled probabilities of the binary tasks (for ROC and calibration plots)."""

    rows: list[MetricRow]
    binary: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # task -> method -> (labels, probabilities)


@torch.no_grad()
def evaluate_all(
    model: torch.nn.Module,
    data: dict[str, Tensor],
    train: dict[str, Tensor],
    schema: dict,
    ks: Sequence[int],
    bins: int,
    batch_size: int = 1024,
) -> Evaluation:
    """Score ``data`` with the model and every baseline (fitted on ``train``) and compute all metrics.

    ``model`` is a :class:`training.model.MultiTaskModel` in eval mode;
    ``data`` and ``train`` hold the gold model columns plus ``user_key``.
    """
    from training.checkpoint import predict_tensors

    sizes = schema["embedding_sizes"]
    n_items, n_types = int(sizes["item"]), int(sizes["event_type"])
    out = predict_tensors(model, data, batch_size=batch_size)
    base = fit_baselines(train, n_items, n_types)
    rows: list[MetricRow] = []

    # Next item: the same kept rows for every method.
    target, mask = data["next_item_idx"], data["next_label_mask"]
    last = last_items(data)
    hidden = out["hidden_last"]
    scorers: dict[str, Callable[[slice], Tensor]] = {
        "model": lambda r: model.item_scores(hidden[r]),  # type: ignore[operator]
        "most_popular": lambda r: popularity_scores(base, len(target[r])),
        "markov": lambda r: markov_scores(base, last[r]),
        "repeat_last": lambda r: repeat_last_scores(base, last[r]),
    }
    for method, score_rows in scorers.items():
        ranks = ranks_in_batches(score_rows, target, mask, batch_size)
        for (metric, k), value in ranking_metrics(ranks, ks).items():
            rows.append(MetricRow("next_item", metric, k, method, value, len(ranks)))

    # Next event type.
    m = data["next_label_mask"].numpy().astype(bool)
    y_action = data["next_event_type_idx"].long().numpy()[m]
    predictions = {"model": predict_action(out["action"].numpy())}
    predictions.update(action_baseline_predictions(base, last_event_types(data)))
    for method, pred in predictions.items():
        for metric, value in action_metrics(y_action, pred[m]).items():
            rows.append(MetricRow("next_action", metric, None, method, value, int(m.sum())))

    # Purchase and churn: the model against logistic regression on the profiles.
    numeric, embedded = profile_columns(schema)
    x_train, x_data = profile_matrix(train, numeric, embedded), profile_matrix(data, numeric, embedded)
    binary: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for task in ("purchase", "churn"):
        m = data[f"{task}_label_mask"].numpy().astype(bool)
        y = data[f"{task}_label"].long().numpy()[m]
        lr = fit_profile_baseline(x_train, train[f"{task}_label"].numpy(), train[f"{task}_label_mask"].numpy(), len(numeric), len(embedded))
        probs = {"model": out[task].double().numpy()[m], "logistic_regression": lr.predict_proba(x_data[m]) if m.any() else np.zeros(0)}
        binary[task] = {method: (y, p) for method, p in probs.items()}
        for method, p in probs.items():
            for metric, value in binary_metrics(y, p, bins).items():
                rows.append(MetricRow(task, metric, None, method, value, int(m.sum())))
    return Evaluation(rows, binary)


PRIMARY_METRICS: dict[str, str] = {"next_item": "ndcg", "next_action": "macro_f1", "purchase": "roc_auc", "churn": "roc_auc"}


def compare(rows: Sequence[MetricRow], ks: Sequence[int]) -> list[dict]:
    """Per task, the model against every baseline on the task's primary metric.

    Primary metrics: NDCG@10 (or the largest K when 10 is not evaluated) for
    the next item, macro-F1 for the next event type, ROC-AUC for purchase and
    churn. ``outcome`` is ``beats`` (strictly better than every baseline),
    ``ties`` (equal to the best baseline), ``loses``, or ``n/a`` when the
    model's value is undefined (no labelled rows, one class);
    ``beats_baselines`` is ``outcome == "beats"``.
    """
    k_primary = 10 if 10 in ks else max(ks)
    out = []
    for task, metric in PRIMARY_METRICS.items():
        k = k_primary if task == "next_item" else None
        found = {r.method: r.value for r in rows if r.task == task and r.metric == metric and r.k == k}
        if "model" not in found:
            continue
        model = found.pop("model")
        baselines = [{"name": name, "value": value} for name, value in found.items()]
        beats = all(better(metric, model, b["value"]) for b in baselines)
        best = None
        for b in baselines:
            if best is None or better(metric, b["value"], best["value"]):
                best = b
        tie = not beats and best is not None and not math.isnan(model) and math.isclose(model, best["value"], rel_tol=1e-9, abs_tol=1e-12)
        outcome = "n/a" if math.isnan(model) else "beats" if beats else "ties" if tie else "loses"
        out.append(
            {
                "task": task,
                "metric": f"{metric}@{k}" if k is not None else metric,
                "model": model,
                "baselines": baselines,
                "best_baseline": best["name"] if best else None,
                "beats_baselines": beats,
                "outcome": outcome,
            }
        )
    return out
