"""The evaluation report: ``report.md``, ``metrics.json`` and PNG plots in one folder.

Plots (matplotlib, Agg, no pyplot state): ``metric_at_k.png`` (HR, NDCG and
MRR against K for the model and each baseline), ``roc_<task>.png`` and
``calibration_<task>.png`` for purchase and churn (the model against logistic
regression on the profiles). Every file is written to a temporary name and
renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Sequence

import numpy as np

from training.evaluation import ACTION_METRICS, BINARY_METRICS, RANKING_METRICS, Evaluation, MetricRow

log = logging.getLogger(__name__)

BINARY_TASKS: tuple[str, ...] = ("purchase", "churn")
METRIC_NAMES: dict[str, str] = {
    "hr": "HR (= Recall)", "ndcg": "NDCG", "mrr": "MRR", "accuracy": "accuracy", "macro_f1": "macro-F1",
    "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "log_loss": "log loss", "ece": "calibration error (ECE)",
}  # fmt: skip


def report_files(ks: Sequence[int]) -> list[str]:
    """The files :func:`write_report` creates."""
    return ["report.md", "metrics.json", "metric_at_k.png"] + [f"{kind}_{t}.png" for t in BINARY_TASKS for kind in ("roc", "calibration")]


def write_report(report_dir: str, summary: dict[str, Any], evaluation: Evaluation, ks: Sequence[int], bins: int) -> str:
    """Write the report folder; returns the path of ``report.md``."""
    os.makedirs(report_dir, exist_ok=True)
    _save_json(os.path.join(report_dir, "metrics.json"), summary)
    _plot_metric_at_k(os.path.join(report_dir, "metric_at_k.png"), evaluation.rows, ks)
    for task in BINARY_TASKS:
        series = evaluation.binary.get(task, {})
        _plot_roc(os.path.join(report_dir, f"roc_{task}.png"), task, series)
        _plot_calibration(os.path.join(report_dir, f"calibration_{task}.png"), task, series, bins)
    path = os.path.join(report_dir, "report.md")
    _save_text(path, markdown(summary, evaluation.rows, ks))
    log.info("evaluation report written to %s", report_dir)
    return path


# --------------------------------------------------------------------------- markdown


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


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
    value = {(r.method, r.metric, r.k): r.value for r in rows if r.task == task}
    header = ["method"] + [f"{METRIC_NAMES[m]}@{k}" if k is not None else METRIC_NAMES[m] for m, k in columns]
    return _md_table(header, [[method] + [_fmt(value.get((method, m, k))) for m, k in columns] for method in _methods(rows, task)])


def markdown(summary: dict[str, Any], rows: Sequence[MetricRow], ks: Sequence[int]) -> str:
    """The report's text: lineage, the model-vs-baselines summary and one table per task."""
    n = summary.get("n_examples", {})
    lines = [
        f"# Evaluation `{summary['evaluation_id']}`",
        "",
        f"- split: `{summary['gold_table']}` (Delta version {summary['gold_version']}), protocol `{summary['split_protocol']}`",
        f"- model: `{summary['model_version']}` from `{summary['checkpoint']}` (epoch {summary['checkpoint_epoch']})",
        f"- baselines fitted on `gold_train` version {summary['gold_train_version']}",
        f"- evaluated at {summary['evaluated_at']}",
        "",
        "Only examples whose label is observed count (censored labels are left out, never negatives); "
        "next-item rows whose target is out of vocabulary are left out (no method can rank them).",
        "",
        "## Model against the best baseline",
        "",
    ]
    comp = [
        [c["task"], c["metric"], _fmt(c["model"]), str(c["best_baseline"]), _fmt(next((b["value"] for b in c["baselines"] if b["name"] == c["best_baseline"]), None)), c["outcome"]]
        for c in summary.get("comparison", [])
    ]
    lines += _md_table(["task", "metric", "model", "best baseline", "its value", "outcome"], comp)
    lines += ["", f"## Next item ({n.get('next_item', 0)} examples, full-catalogue ranking)", ""]
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
        "- `markov`: items by how often they followed the window's last item in train, ties and unseen last items by popularity; "
        "next event type: the most frequent one after the last event's type at the train cutoffs.",
        "- `repeat_last`: the window's last item first, then popularity; next event type: the last event's type.",
        "- `logistic_regression`: scikit-learn logistic regression on the profile features (signed log1p, standardised; top category one-hot).",
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
    tmp = f"{path}.tmp.png"
    fig.tight_layout()
    fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})
    os.replace(tmp, path)


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
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


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
