"""The evaluation report: ``report.md``, ``metrics.json`` and PNG plots in one folder.

Plots (matplotlib, Agg, no pyplot state): ``model_vs_baselines.png`` (each
task's primary metric for the model and every baseline, with the bootstrap
interval as error bars), ``metric_at_k.png`` (HR, NDCG and MRR against K for
the model and each baseline), ``roc_<task>.png`` and
``calibration_<task>.png`` for purchase and churn (the model against logistic
regression and LightGBM on the profiles and the window summary). Every file
is written to a temporary name and renamed, so a reader never sees half a
report (:mod:`shopseq.training.storage`: the folder may be a URI such as ``s3://...``).
Values are shown as ``value [low, high]`` when an interval exists.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Sequence

import numpy as np

from shopseq.training import storage
from shopseq.training.evaluation import PRIMARY_METRICS, Evaluation, MetricRow
from shopseq.training.metrics import ACTION_METRICS, BINARY_METRICS, OOV_METRIC, RANKING_METRICS

log = logging.getLogger(__name__)

BINARY_TASKS: tuple[str, ...] = ("purchase", "churn")
METRIC_NAMES: dict[str, str] = {
    "hr": "HR (= Recall)", "ndcg": "NDCG", "mrr": "MRR", "accuracy": "accuracy", "macro_f1": "macro-F1",
    "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "log_loss": "log loss", "ece": "calibration error (ECE)", OOV_METRIC: "OOV share",
}  # fmt: skip


def report_files(ks: Sequence[int]) -> list[str]:
    """The files :func:`write_report` creates."""
    return ["report.md", "metrics.json", "model_vs_baselines.png", "metric_at_k.png"] + [f"{kind}_{t}.png" for t in BINARY_TASKS for kind in ("roc", "calibration")]


def write_report(report_dir: str, summary: dict[str, Any], evaluation: Evaluation, ks: Sequence[int], bins: int) -> str:
    """Write the report folder (a local path or a URI, :mod:`shopseq.training.storage`); returns the path of ``report.md``."""
    storage.makedirs(report_dir)
    _save_json(storage.join(report_dir, "metrics.json"), summary)
    _plot_model_vs_baselines(storage.join(report_dir, "model_vs_baselines.png"), evaluation.rows, ks)
    _plot_metric_at_k(storage.join(report_dir, "metric_at_k.png"), evaluation.rows, ks)
    for task in BINARY_TASKS:
        series = evaluation.binary.get(task, {})
        _plot_roc(storage.join(report_dir, f"roc_{task}.png"), task, series)
        _plot_calibration(storage.join(report_dir, f"calibration_{task}.png"), task, series, bins)
    path = storage.join(report_dir, "report.md")
    _save_text(path, markdown(summary, evaluation.rows, ks))
    log.info("evaluation report written to %s", report_dir)
    return path


# --------------------------------------------------------------------------- markdown


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: float | None) -> str:
    return "n/a" if _missing(value) else f"{value:.4f}"


def with_interval(value: float | None, low: float | None, high: float | None, signed: bool = False) -> str:
    """``0.1234 [0.1100, 0.1350]``; the value alone when there is no interval (``+`` signs for differences)."""
    if _missing(value):
        return "n/a"
    f = "{:+.4f}" if signed else "{:.4f}"
    text = f.format(value)
    return text if _missing(low) or _missing(high) else f"{text} [{f.format(low)}, {f.format(high)}]"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _methods(rows: Sequence[MetricRow], task: str) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r.task == task and r.method not in seen:
            seen.append(r.method)
    return seen


def _task_table(rows: Sequence[MetricRow], task: str, columns: list[tuple[str, int | None]]) -> list[str]:
    cell = {(r.method, r.metric, r.k): with_interval(r.value, r.ci_low, r.ci_high) for r in rows if r.task == task}
    header = ["method"] + [f"{METRIC_NAMES[m]}@{k}" if k is not None else METRIC_NAMES[m] for m, k in columns]
    return _md_table(header, [[method] + [cell.get((method, m, k), "n/a") for m, k in columns] for method in _methods(rows, task)])


def _outcome(c: dict[str, Any]) -> str:
    return c["outcome"] if c.get("interval", "none") == "bootstrap" else f"{c['outcome']} (interval: none, point values)"


def _comparison_table(comparison: Sequence[dict[str, Any]]) -> list[str]:
    rows = [
        [c["task"], c["metric"], with_interval(c["model"], c.get("model_low"), c.get("model_high")), b["name"],
         with_interval(b["value"], b.get("ci_low"), b.get("ci_high")), with_interval(b.get("diff"), b.get("diff_low"), b.get("diff_high"), signed=True),
         b.get("verdict", ""), _outcome(c)]
        for c in comparison
        for b in c["baselines"]
    ]  # fmt: skip
    return _md_table(["task", "metric", "model", "baseline", "baseline value", "model - baseline", "verdict", "task outcome"], rows)


def markdown(summary: dict[str, Any], rows: Sequence[MetricRow], ks: Sequence[int]) -> str:
    """The report's text: lineage, the model-vs-baselines summary and one table per task."""
    n = summary.get("n_examples", {})
    boot = summary.get("bootstrap") or {}
    users = boot.get("users") or {}
    if boot.get("samples"):
        intervals = (
            f"Intervals: {100 * boot['confidence']:g}% percentile bootstrap over users ({boot['samples']} resamples of the users with "
            f"replacement, all of a user's rows together, seed {boot['seed']}; users per task: "
            + ", ".join(f"{t} {u:,}" for t, u in users.items())
            + "). Model minus baseline is paired: both on the same resamples. `beats` needs that interval above zero for every baseline, "
            "`loses` means it lies below zero for some baseline, `ties` otherwise."
        )
    else:
        intervals = "Intervals: none (`evaluate.bootstrap_samples: 0`): the point values decide the outcome."
    oov = summary.get("oov_share")
    lines = [
        f"# Evaluation `{summary['evaluation_id']}`",
        "",
        f"- split: `{summary['gold_table']}` (Delta version {summary['gold_version']}), protocol `{summary['split_protocol']}`",
        f"- model: `{summary['model_version']}` from `{summary['checkpoint']}` (epoch {summary['checkpoint_epoch']})",
        f"- baselines fitted on `gold_train` version {summary['gold_train_version']}",
        f"- evaluated at {summary['evaluated_at']}",
        "",
        "Only examples whose label is observed count (censored labels are left out, never negatives). "
        "Next item: ties in a method's scores count by their expected value under a random order of the tied items "
        "(a constant scorer over n items gets HR@K = K/n); a target out of vocabulary is a miss that stays in the denominator "
        f"(OOV share of the labelled rows: {_fmt(oov)}).",
        "",
        intervals,
        "",
        "## Model against each baseline",
        "",
    ]
    lines += _comparison_table(summary.get("comparison", []))
    lines += ["", "![model vs baselines](model_vs_baselines.png)", ""]
    lines += [f"## Next item ({n.get('next_item', 0)} labelled examples, full-catalogue ranking; OOV share {_fmt(oov)})", ""]
    lines += _task_table(rows, "next_item", [(m, k) for m in RANKING_METRICS for k in ks])
    lines += ["", "![metric@K](metric_at_k.png)", ""]
    lines += [f"## Next event type ({n.get('next_action', 0)} examples)", ""]
    lines += _task_table(rows, "next_action", [(m, None) for m in ACTION_METRICS])
    for task in BINARY_TASKS:
        lines += ["", f"## {task.capitalize()} ({n.get(task, 0)} labelled examples)", ""]
        lines += _task_table(rows, task, [(m, None) for m in BINARY_METRICS])
        lines += ["", f"![ROC {task}](roc_{task}.png) ![calibration {task}](calibration_{task}.png)"]
    lines += [
        "",
        "## Baselines",
        "",
        "Fitted on the gold train split only, each train event and transition counted once.",
        "",
        "- `most_popular`: items by train count; next event type: the most frequent one after a train cutoff.",
        "- `markov`: items by how often they were the labelled next item after a train cutoff whose window ended with the same item "
        "(the kind of transition it is scored on); a last item never seen at a cutoff backs off to all consecutive train transitions, "
        "then to popularity, which also orders ties; next event type: the most frequent one after the last event's type at the train cutoffs.",
        "- `repeat_last`: the window's last item first, then popularity; next event type: the last event's type.",
        "- `logistic_regression` and `lightgbm` (purchase, churn): the model's own inputs to those heads, the profile features plus the "
        "window summary. Logistic regression: numeric profiles signed log1p, all standardised, top category one-hot. LightGBM: fixed "
        "hyper-parameters (200 trees, 15 leaves, learning rate 0.05, min 20 rows per leaf, seed), top category categorical, never tuned on this split.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _figure(ncols: int = 1, width: float = 5.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.0))
    axes = fig.subplots(1, ncols)
    return fig, (list(axes) if ncols > 1 else [axes])


def _save_figure(fig: Any, path: str) -> None:
    fig.tight_layout()
    with storage.atomic_write(path) as fh:
        fig.savefig(fh, dpi=100, format="png", metadata={"Software": None})


def _plot_model_vs_baselines(path: str, rows: Sequence[MetricRow], ks: Sequence[int]) -> None:
    """One panel per task: its primary metric for every method, the bootstrap interval as error bars."""
    k_primary = 10 if 10 in ks else max(ks)
    fig, axes = _figure(len(PRIMARY_METRICS), 3.6)
    for ax, (task, metric) in zip(axes, PRIMARY_METRICS.items()):
        k = k_primary if task == "next_item" else None
        found = [r for r in rows if r.task == task and r.metric == metric and r.k == k]
        if not found:
            _no_data(ax, "not evaluated")
        for i, r in enumerate(found):
            low = r.value - r.ci_low if not math.isnan(r.ci_low) else 0.0
            high = r.ci_high - r.value if not math.isnan(r.ci_high) else 0.0
            ax.errorbar([i], [r.value], yerr=[[low], [high]], fmt="o", capsize=4, color="C3" if r.method == "model" else "C0")
        ax.set_xticks(range(len(found)))
        ax.set_xticklabels([r.method for r in found], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}: {METRIC_NAMES[metric]}" + (f"@{k}" if k is not None else ""))
        ax.grid(alpha=0.3, axis="y")
    _save_figure(fig, path)


def _plot_metric_at_k(path: str, rows: Sequence[MetricRow], ks: Sequence[int]) -> None:
    fig, axes = _figure(len(RANKING_METRICS), 4.2)
    for ax, metric in zip(axes, RANKING_METRICS):
        for method in _methods(rows, "next_item"):
            value = {r.k: r.value for r in rows if r.task == "next_item" and r.metric == metric and r.method == method}
            ax.plot(list(ks), [value.get(k, math.nan) for k in ks], marker="o", label=method)
        ax.set_xlabel("K")
        ax.set_title(f"{METRIC_NAMES[metric]}@K")
        ax.set_xticks(list(ks))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save_figure(fig, path)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _plot_roc(path: str, task: str, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, (ax,) = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    drawn = False
    for method, (y, p) in series.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{method} (AUC {roc_auc_score(y, p):.3f})")
        drawn = True
    if drawn:
        ax.legend(fontsize=8, loc="lower right")
    else:
        _no_data(ax, "fewer than two classes labelled")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {task}")
    _save_figure(fig, path)


def _plot_calibration(path: str, task: str, series: dict[str, tuple[np.ndarray, np.ndarray]], bins: int) -> None:
    from sklearn.calibration import calibration_curve

    fig, (ax,) = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    drawn = False
    for method, (y, p) in series.items():
        if len(y) == 0:
            continue
        prob_true, prob_pred = calibration_curve(y, np.clip(p, 0.0, 1.0), n_bins=bins, strategy="uniform")
        ax.plot(prob_pred, prob_true, marker="o", label=method)
        drawn = True
    if not drawn:
        _no_data(ax, "no labelled examples")
    ax.legend(fontsize=8, loc="upper left")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=f"Calibration: {task} ({bins} bins)", xlim=(0, 1), ylim=(0, 1))
    _save_figure(fig, path)


# --------------------------------------------------------------------------- files


def _save_text(path: str, text: str) -> None:
    storage.write_text(path, text)


def _save_json(path: str, data: Any) -> None:
    _save_text(path, json.dumps(_no_nan(data), indent=1, sort_keys=True, default=_json_default, allow_nan=False))


def _no_nan(value: Any) -> Any:
    """NaN (an undefined metric) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)
