"""Issue 6, evaluation: metrics and baselines on hand-built tensors (exact values), then `shopseq evaluate` on the trained fixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.evaluation import (
    MetricRow,
    SequenceBaselines,
    action_baseline_predictions,
    action_metrics,
    binary_metrics,
    calibration_bins,
    compare,
    expected_calibration_error,
    fit_baselines,
    fit_profile_baseline,
    last_event_types,
    last_items,
    markov_scores,
    popularity_scores,
    ranking_metrics,
    ranks_in_batches,
    repeat_last_scores,
    signed_log1p,
)
from training.metrics import batch_ranking_sums, target_ranks

# --------------------------------------------------------------------------- ranking


def test_target_ranks_count_strictly_higher_real_items_and_skip_masked_and_oov_rows():
    scores = torch.tensor(
        [
            [9.0, 9.0, 0.5, 0.5, 0.1],  # target 3: padding/OOV never count, item 2 ties (target's favour) -> rank 0
            [0.0, 0.0, 0.1, 0.3, 0.2],  # target 2: items 3 and 4 higher -> rank 2
            [0.0, 0.0, 0.9, 0.1, 0.1],  # mask 0 -> left out
            [0.0, 5.0, 0.1, 0.2, 0.3],  # target OOV -> left out
        ]
    )
    target, mask = torch.tensor([3, 2, 4, 1]), torch.tensor([1, 1, 0, 1])
    rank, kept = target_ranks(scores, target, mask)
    assert rank.tolist() == [0, 2] and kept.tolist() == [True, True, False, False]
    for batch in (1, 3, 10):
        assert ranks_in_batches(lambda r: scores[r], target, mask, batch).tolist() == [0, 2]
    # batch_ranking_sums (training) is built on the same ranks: hits@2 = 1, ndcg@2 = 1, n = 2
    assert batch_ranking_sums(scores, target, mask, k=2).tolist() == [1.0, 1.0, 2.0]


def test_ranking_metrics_exact():
    m = ranking_metrics(np.array([0, 1, 4, 9]), [1, 5])
    assert m[("hr", 1)] == 0.25 and m[("ndcg", 1)] == 0.25 and m[("mrr", 1)] == 0.25
    assert m[("hr", 5)] == 0.75
    assert m[("ndcg", 5)] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4, abs=1e-12)
    assert m[("mrr", 5)] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4, abs=1e-12)
    assert all(math.isnan(v) for v in ranking_metrics(np.zeros(0), [5]).values())


# --------------------------------------------------------------------------- classification


def test_action_metrics_macro_f1_over_label_classes():
    # class 2: P 1/2 R 1/2 -> 1/2; class 3: P 1/2 R 1 -> 2/3; class 4: 0; the prediction 5 (no label) is just a miss
    m = action_metrics(np.array([2, 2, 3, 4, 4]), np.array([2, 3, 3, 2, 5]))
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)


def test_binary_metrics_exact():
    y, p = np.array([0, 0, 1, 1]), np.array([0.12, 0.38, 0.36, 0.82])
    m = binary_metrics(y, p, bins=10)
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ordered
    assert m["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.88, 0.62, 0.36, 0.82])))
    # bins: 0.12 alone (|0 - 0.12|), 0.36 and 0.38 together (|0.5 - 0.37|), 0.82 alone (|1 - 0.82|)
    assert m["ece"] == pytest.approx((0.12 + 2 * 0.13 + 0.18) / 4)
    one_class = binary_metrics(np.array([0, 0]), np.array([0.2, 0.4]), bins=10)
    assert math.isnan(one_class["roc_auc"]) and math.isnan(one_class["pr_auc"]) and one_class["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.6])))
    assert all(math.isnan(v) for v in binary_metrics(np.zeros(0), np.zeros(0), bins=10).values())


def test_calibration_error_bins_match_sklearn_edges():
    # equal-width bins, an edge value belongs to the bin below (as calibration_curve bins it)
    assert calibration_bins(np.array([0.0, 0.5, 0.50001, 1.0]), 2).tolist() == [0, 0, 1, 1]
    y, p = np.array([0, 1, 1, 0, 1]), np.array([0.05, 0.15, 0.85, 0.95, 0.95])
    # bin 0: rate 1/2, mean 0.1 -> 0.4 x 2/5; bin 1: rate 2/3, mean 0.91667 -> 0.25 x 3/5
    assert expected_calibration_error(y, p, 2) == pytest.approx(0.4 * 2 / 5 + 0.25 * 3 / 5)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0]), 10) == 0.0


# --------------------------------------------------------------------------- baselines


def _train_tensors() -> dict[str, torch.Tensor]:
    """L = 3. User 10: items 2,3,4,2 (two overlapping windows); user 20: 3 then 4; user 30: OOV, 2, then 3."""
    return {
        "item_idx_seq": torch.tensor([[0, 2, 3], [3, 4, 2], [0, 0, 3], [0, 1, 2]]),
        "event_type_idx_seq": torch.tensor([[0, 2, 2], [2, 3, 4], [0, 0, 2], [0, 2, 3]]),
        "frequency": torch.tensor([2, 4, 1, 2]),
        "user_key": torch.tensor([10, 10, 20, 30]),
        "next_item_idx": torch.tensor([4, -100, 4, 3]),
        "next_event_type_idx": torch.tensor([3, -100, 3, 2]),
        "next_label_mask": torch.tensor([1, 0, 1, 1]),
    }


def test_fit_baselines_counts_each_train_event_and_transition_once():
    b = fit_baselines(_train_tensors(), n_items=5, n_event_types=5)
    # user 10 positions 0..3 = 2,3,4,2 (position 2 is a label and a window slot); user 20: 3,4; user 30: OOV,2,3
    assert b.item_counts.tolist() == [0, 0, 3, 3, 2]
    dense = b.transitions.toarray()
    expected = np.zeros((5, 5))
    expected[2, 3], expected[3, 4], expected[4, 2] = 2, 2, 1  # 10: 2>3, 3>4, 4>2; 20: 3>4; 30: 2>3 (OOV>2 left out)
    assert (dense == expected).all()
    # next event types at the labelled cutoffs: (last 2 -> 3), (2 -> 3), (3 -> 2)
    assert b.action_counts.tolist() == [0, 0, 1, 2, 0]
    assert b.action_transitions[2].tolist() == [0, 0, 0, 2, 0] and b.action_transitions[3].tolist() == [0, 0, 1, 0, 0]


def test_item_baseline_scores_and_ranks():
    b = fit_baselines(_train_tensors(), n_items=5, n_event_types=5)
    tb = [0, 0, 3 / 9, 3 / 9, 2 / 9]  # popularity / (total + 1): orders ties only
    assert torch.allclose(markov_scores(b, torch.tensor([3, 1])), torch.tensor([[0, 0, tb[2], tb[3], 2 + tb[4]], tb], dtype=torch.float64))
    assert torch.allclose(repeat_last_scores(b, torch.tensor([4, 1])), torch.tensor([[0, 0, tb[2], tb[3], 1 + tb[4]], tb], dtype=torch.float64))
    target, mask = torch.tensor([4, 2, 3, 2]), torch.ones(4, dtype=torch.long)
    last = torch.tensor([3, 3, 4, 1])  # OOV last item: popularity only
    assert ranks_in_batches(lambda r: popularity_scores(b, len(target[r])), target, mask).tolist() == [2, 0, 0, 0]
    assert ranks_in_batches(lambda r: markov_scores(b, last[r]), target, mask).tolist() == [0, 1, 1, 0]
    assert ranks_in_batches(lambda r: repeat_last_scores(b, last[r]), target, mask).tolist() == [2, 1, 1, 0]


def test_last_item_and_type_and_action_baselines():
    data = _train_tensors()
    assert last_items(data).tolist() == [3, 2, 3, 2]
    assert last_event_types(data).tolist() == [2, 4, 2, 3]
    b = fit_baselines(data, n_items=5, n_event_types=5)
    pred = action_baseline_predictions(b, np.array([2, 3, 4, 0]))
    assert pred["most_popular"].tolist() == [3, 3, 3, 3]  # 3 follows twice, 2 once
    assert pred["markov"].tolist() == [3, 2, 3, 3]  # after 2 -> 3; after 3 -> 2; unseen 4 and padding -> most popular
    assert pred["repeat_last"].tolist() == [2, 3, 4, 0]


def test_profile_logistic_regression_uses_only_labelled_rows():
    assert signed_log1p(np.array([-1.0, 0.0, math.e - 1])).tolist() == pytest.approx([-math.log(2), 0.0, 1.0])
    x = np.array([[0.0, 2], [1, 2], [2, 3], [10, 3], [20, 2], [30, 3], [0, 2], [30, 2]])
    y = np.array([0, 0, 0, 1, 1, 1, -100, -100])  # censored rows: label -100 (three classes would fail the fit)
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    lr = fit_profile_baseline(x, y, mask, n_numeric=1, n_embedded=1)
    assert lr.n_train == 6 and lr.train_rate == 0.5
    p = lr.predict_proba(x[:6])
    assert (np.diff(p[[0, 1, 3, 5]]) > 0).all() and p[0] < 0.5 < p[5]
    # features: signed log1p then standardised (log1p(e-1) = 1), embedded column one-hot
    features = lr.pipeline[0]  # type: ignore[index]
    z = np.log1p(x[:6, 0])
    got = features.transform(np.array([[math.e - 1, 2], [0.0, 3]]))
    assert np.allclose(got, [[(1 - z.mean()) / z.std(), 1.0, 0.0], [(0 - z.mean()) / z.std(), 0.0, 1.0]], rtol=0, atol=1e-12)
    single = fit_profile_baseline(x, np.array([0, 0, 0, 0, 0, 1, -100, -100]), np.array([1, 1, 1, 1, 1, 0, 0, 0]), 1, 1)
    assert single.pipeline is None and single.predict_proba(x).tolist() == [0.0] * 8


def test_compare_outcomes():
    rows = [
        MetricRow("next_item", "ndcg", 10, "model", 0.3, 5), MetricRow("next_item", "ndcg", 10, "markov", 0.2, 5),
        MetricRow("next_item", "ndcg", 10, "most_popular", 0.1, 5), MetricRow("next_item", "ndcg", 5, "most_popular", 0.9, 5),
        MetricRow("next_action", "macro_f1", None, "model", 1.0, 5), MetricRow("next_action", "macro_f1", None, "markov", 1.0, 5),
        MetricRow("purchase", "roc_auc", None, "model", 0.6, 5), MetricRow("purchase", "roc_auc", None, "logistic_regression", 0.7, 5),
        MetricRow("churn", "roc_auc", None, "model", math.nan, 0), MetricRow("churn", "roc_auc", None, "logistic_regression", math.nan, 0),
    ]  # fmt: skip
    out = {c["task"]: c for c in compare(rows, [5, 10])}
    assert out["next_item"]["metric"] == "ndcg@10" and out["next_item"]["outcome"] == "beats" and out["next_item"]["best_baseline"] == "markov"
    assert out["next_action"]["outcome"] == "ties" and not out["next_action"]["beats_baselines"]
    assert out["purchase"]["outcome"] == "loses" and out["purchase"]["best_baseline"] == "logistic_regression"
    assert out["churn"]["outcome"] == "n/a" and not out["churn"]["beats_baselines"]  # no labelled rows: undefined, not a loss


def test_sequence_baselines_tie_break_below_one():
    b = SequenceBaselines(np.array([0.0, 0.0, 5.0, 1.0]), None, np.zeros(3), np.zeros((3, 3)))  # type: ignore[arg-type]
    assert b.tie_break.max() < 1.0 and b.tie_break.tolist() == [0, 0, 5 / 7, 1 / 7]


# --------------------------------------------------------------------------- shopseq evaluate on the trained fixture

METHODS = {
    "next_item": ("model", "most_popular", "markov", "repeat_last"),
    "next_action": ("model", "most_popular", "markov", "repeat_last"),
    "purchase": ("model", "logistic_regression"),
    "churn": ("model", "logistic_regression"),
}


def _expected_keys(ks: list[int]) -> set[tuple]:
    keys = {("next_item", m, k, method) for m in ("hr", "ndcg", "mrr") for k in ks for method in METHODS["next_item"]}
    keys |= {("next_action", m, None, method) for m in ("accuracy", "macro_f1") for method in METHODS["next_action"]}
    keys |= {(t, m, None, method) for t in ("purchase", "churn") for m in ("roc_auc", "pr_auc", "log_loss", "ece") for method in METHODS[t]}
    return keys


@pytest.fixture(scope="module")
def evaluated(trained):
    from jobs.evaluate import run_evaluate

    return run_evaluate(trained.tables, trained.cfg)


def _stored(tables, evaluation_id: str) -> list[dict]:
    from pyspark.sql import functions as F

    rows = tables.read("metrics").where(F.col("evaluation_id") == evaluation_id).collect()
    return sorted((r.asDict() for r in rows), key=lambda r: (r["task"], r["metric"], r["k"] or 0, r["method"]))


def test_evaluate_writes_metrics_table_and_report(trained, evaluated):
    import os

    from jobs.report import report_files
    from jobs.train import load_schema
    from training.checkpoint import load_model, predict_tensors
    from training.data import load_tensors, model_columns

    cfg, tables = trained.cfg, trained.tables
    ks = list(cfg.evaluate.ks)
    rows = _stored(tables, evaluated["evaluation_id"])
    assert {(r["task"], r["metric"], r["k"], r["method"]) for r in rows} == _expected_keys(ks)
    assert len(rows) == len(_expected_keys(ks)) == tables.read("metrics").count()

    # n_examples: exactly the observed labels of gold_test (next item: a real, in-vocabulary target)
    schema = load_schema(cfg)
    data = load_tensors(tables.files("gold_test"), model_columns(schema))
    masked = {
        "next_item": int(((data["next_label_mask"] == 1) & (data["next_item_idx"] >= 2)).sum()),
        "next_action": int(data["next_label_mask"].sum()),
        "purchase": int(data["purchase_label_mask"].sum()),
        "churn": int(data["churn_label_mask"].sum()),
    }
    assert all(n > 0 for n in masked.values()), masked
    for r in rows:
        assert r["n_examples"] == masked[r["task"]], r
        assert r["value"] is not None, r
        assert (r["value"] >= 0) if r["metric"] == "log_loss" else (0.0 <= r["value"] <= 1.0), r
        assert r["split"] == "test" and r["split_protocol"] == "temporal" and r["gold_table"] == "gold_test"
        assert r["gold_version"] == tables.version("gold_test") and r["gold_train_version"] == tables.version("gold_train")
        assert r["model_version"] == evaluated["model_version"] and r["checkpoint"].endswith("best.pt")
    assert evaluated["model_version"] == f"{trained.train['mlflow_run_id']}-e{evaluated['checkpoint_epoch']:04d}"

    # The model's numbers agree with the training metric code run independently on the same checkpoint.
    model, _ = load_model(os.path.join(trained.train["checkpoint_dir"], "best.pt"))
    out = predict_tensors(model, data)
    hits, ndcg, n = batch_ranking_sums(model.item_scores(out["hidden_last"]), data["next_item_idx"], data["next_label_mask"], k=10).tolist()
    value = {(r["task"], r["metric"], r["k"], r["method"]): r["value"] for r in rows}
    assert n == masked["next_item"]
    assert value[("next_item", "hr", 10, "model")] == pytest.approx(hits / n, abs=1e-9)
    assert value[("next_item", "ndcg", 10, "model")] == pytest.approx(ndcg / n, abs=1e-6)
    # HR is monotone in K
    for method in METHODS["next_item"]:
        hr = [value[("next_item", "hr", k, method)] for k in sorted(ks)]
        assert hr == sorted(hr), (method, hr)

    # Report: the Markdown, the JSON and every plot (real PNGs).
    assert evaluated["report_dir"] == os.path.abspath(os.path.join(cfg.app.data_root, "reports", evaluated["evaluation_id"]))
    for name in report_files(ks):
        path = os.path.join(evaluated["report_dir"], name)
        assert os.path.getsize(path) > 0, name
        if name.endswith(".png"):
            with open(path, "rb") as fh:
                assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(evaluated["report_path"]).read()
    assert "![metric@K](metric_at_k.png)" in text and "logistic_regression" in text
    assert {c["task"] for c in evaluated["comparison"]} == set(METHODS)
    for c in evaluated["comparison"]:
        print(c["task"], c["metric"], c["model"], c["baselines"], c["outcome"])  # shown with -s: the numbers behind the summary


def test_evaluation_is_logged_to_the_training_run(trained, evaluated):
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=trained.train["tracking_uri"]).get_run(trained.train["mlflow_run_id"])
    assert "eval_test_next_item_model_ndcg_at_10" in run.data.metrics
    assert run.data.tags["evaluation_test"] == evaluated["evaluation_id"]


def test_rerun_changes_nothing(trained, evaluated):
    """Chosen behaviour: a re-run that finds its rows already recorded writes nothing (no new table version)."""
    import os

    from jobs.evaluate import run_evaluate

    tables = trained.tables
    before_rows, before_version = _stored(tables, evaluated["evaluation_id"]), tables.version("metrics")
    report_mtime = os.path.getmtime(evaluated["report_path"])
    again = run_evaluate(tables, trained.cfg, checkpoint="best")
    assert again["skipped"] and again["evaluation_id"] == evaluated["evaluation_id"]
    assert tables.version("metrics") == before_version == again["metrics_table_version"]
    assert _stored(tables, evaluated["evaluation_id"]) == before_rows
    assert os.path.getmtime(evaluated["report_path"]) == report_mtime
    assert again["comparison"] == evaluated["comparison"]


def test_cli_missing_checkpoint_is_a_one_line_error(trained, capsys):
    from jobs.evaluate import main
    from tests.conftest import TRAINED_OVERRIDES

    args = ["--set", f"app.data_root={trained.root}", "--set", "evaluate.checkpoint=nope.pt"]
    for o in TRAINED_OVERRIDES:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("shopseq evaluate: error: no checkpoint at ") and err[-1].endswith("nope.pt: run `shopseq train` first (or set evaluate.checkpoint)")
