"""Offline evaluation: the model and every baseline scored on the same gold rows, and the model's outcome per task.

Pure numpy / torch / scikit-learn: no Spark, no I/O (``jobs/stages/evaluate.py``
reads the tables and writes the results). What each part does, and where:

* the metrics, their ties and OOV rule, and the per-user bootstrap of their
  intervals: :mod:`shopseq.training.metrics`;
* ``most_popular``, ``markov``, ``repeat_last`` and the literature's
  next-item baselines (``recent_pop``, ``reconsume``, ``item_knn``, ``sr``,
  ``vsknn``, their costs and their wall times in ``method_seconds``):
  :mod:`shopseq.training.baselines`;
* the purchase and churn baselines (``logistic_regression``, ``lightgbm`` on
  the model's inputs to those heads): :mod:`shopseq.training.profile_baselines`;
* here: :func:`evaluate_all` fits the baselines on the gold *train* split
  only, scores the evaluated split with the model and every baseline on the
  same rows, and :func:`score_task` gives every metric its point value and
  bootstrap interval, and model minus each baseline its paired interval (the
  same resamples of the task's users for every method): a :class:`Difference`.

Every metric counts only the rows whose label mask is 1; a censored label
(mask 0) is left out, never a negative. ``samples = 0`` gives no intervals
(NaN).

**Outcome** (:func:`compare`, on each task's primary metric): ``beats`` when
the model-minus-baseline interval lies entirely above zero (below, for
lower-is-better metrics) for every baseline; ``loses`` when for some baseline
it lies entirely on the wrong side; ``ties`` otherwise; ``n/a`` when the
model's value is undefined. Without an interval (bootstrap disabled) the
point values decide, and the comparison says ``interval: none``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from shopseq.training.baselines import (
    BaselineParams,
    action_baseline_predictions,
    fit_baselines,
    fit_next_item_baselines,
    last_event_types,
    last_items,
    markov_scores,
    popularity_scores,
    predict_action,
    repeat_last_scores,
)
from shopseq.training.metrics import (
    LOWER_IS_BETTER,
    OOV_METRIC,
    Statistic,
    TargetRanks,
    action_statistics,
    binary_statistics,
    bootstrap_distributions,
    mean_statistic,
    percentile_interval,
    ranking_values,
    ranks_in_batches,
)
from shopseq.training.model import ITEM_FEATURE
from shopseq.training.profile_baselines import BINARY_BASELINES, baseline_features, fit_profile_baseline

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- scoring: the model and the baselines on the same rows


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

    ``stats`` maps ``(metric, k, method)`` to a :class:`Statistic` over the
    task's counted rows, whose users are ``users``; differences are formed
    for every baseline of every metric the model has (not ``oov_share``).
    """
    n = len(users)
    dist = bootstrap_distributions(stats, users, samples, seed)
    point = {key: stat.value for key, stat in stats.items()}
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


# --------------------------------------------------------------------------- verdicts


PRIMARY_METRICS: dict[str, str] = {"next_item": "ndcg", "next_action": "macro_f1", "purchase": "roc_auc", "churn": "roc_auc"}


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` is strictly better than ``b`` for ``metric`` (NaN is never better)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b


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
