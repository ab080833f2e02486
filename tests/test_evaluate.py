"""Evaluation (issues 6 and 14): metrics, ties, OOV, bootstrap intervals and outcomes on hand-built data (exact
values, the hand computation beside each), then `shopseq evaluate` on the trained fixture. The baselines' tests are in
tests/test_baselines.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shopseq.training.evaluation import Difference, MetricRow, compare, score_task
from shopseq.training.metrics import (
    Statistic,
    TargetRanks,
    accuracy_statistic,
    action_metrics,
    average_precision_statistic,
    batch_ranking_sums,
    binary_metrics,
    binary_statistics,
    bootstrap_distributions,
    calibration_bins,
    expected_at_k,
    log_loss_statistic,
    macro_f1_statistic,
    mean_statistic,
    percentile_interval,
    ranking_metrics,
    ranking_values,
    ranks_in_batches,
    roc_auc,
    roc_auc_statistic,
    target_ranks,
)

INV_LOG2_3 = 1 / math.log2(3)

# --------------------------------------------------------------------------- ranking: ties by expected value, OOV = miss


def test_target_ranks_count_higher_and_tied_real_items_and_keep_oov_rows_as_misses():
    scores = torch.tensor(
        [
            [9.0, 9.0, 0.5, 0.5, 0.1],  # target 3: padding/OOV never count; item 2 ties -> above 0, tied 1
            [0.0, 0.0, 0.1, 0.3, 0.2],  # target 2: items 3 and 4 higher -> above 2, tied 0
            [0.0, 0.0, 0.9, 0.1, 0.1],  # mask 0 -> left out
            [0.0, 5.0, 0.1, 0.2, 0.3],  # target OOV -> kept, a miss
        ]
    )
    target, mask = torch.tensor([3, 2, 4, 1]), torch.tensor([1, 1, 0, 1])
    r = target_ranks(scores, target, mask)
    assert r.above.tolist() == [0, 2, 0] and r.tied.tolist() == [1, 0, 0]
    assert r.in_vocab.tolist() == [True, True, False] and r.kept.tolist() == [True, True, False, True]
    for batch in (1, 3, 10):
        got = ranks_in_batches(lambda rows: scores[rows], target, mask, batch)
        assert got.above.tolist() == [0, 2, 0] and got.tied.tolist() == [1, 0, 0] and got.in_vocab.tolist() == [True, True, False]
    # batch_ranking_sums (training validation): row 0 is at position 0 or 1 (both < 2) -> hit 1, NDCG (1 + 1/log2 3) / 2;
    # row 1 (position 2) misses @2; the OOV row misses and stays in n.
    hits, ndcg, n = batch_ranking_sums(scores, target, mask, k=2).tolist()
    assert (hits, n) == (1.0, 3.0) and ndcg == pytest.approx((1 + INV_LOG2_3) / 2, abs=1e-6)  # float32 sums, as training reduces them
    assert batch_ranking_sums(scores, target, torch.zeros(4, dtype=torch.long)).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="target index 7 is outside the 5 scored items"):
        target_ranks(scores, torch.tensor([7, 2, 2, 2]), mask)


def test_constant_scorer_gets_k_over_n():
    n_items, n_real = 7, 5  # indices 0 and 1 are padding and OOV
    scores = torch.zeros(3, n_items)
    target, mask = torch.tensor([2, 4, 6]), torch.ones(3, dtype=torch.long)
    r = target_ranks(scores, target, mask)
    assert r.above.tolist() == [0, 0, 0] and r.tied.tolist() == [4, 4, 4]
    m = ranking_metrics(r, [2, 10])
    assert m[("hr", 2)] == pytest.approx(2 / n_real, abs=1e-15)
    assert m[("ndcg", 2)] == pytest.approx((1 + INV_LOG2_3) / n_real, abs=1e-15)
    assert m[("mrr", 2)] == pytest.approx((1 + 1 / 2) / n_real, abs=1e-15)
    assert m[("hr", 10)] == 1.0  # K >= n: every position is inside the list
    assert m[("ndcg", 10)] == pytest.approx(sum(1 / math.log2(p + 2) for p in range(n_real)) / n_real, abs=1e-15)
    assert m[("oov_share", None)] == 0.0
    hits, ndcg, n = batch_ranking_sums(scores, target, mask, k=2).tolist()
    assert hits == pytest.approx(3 * 2 / n_real) and ndcg == pytest.approx(3 * (1 + INV_LOG2_3) / n_real) and n == 3


def test_tie_with_one_other_item_at_the_top_is_half_a_hit_at_1():
    scores = torch.tensor([[0.0, 0.0, 0.9, 0.9, 0.1, 0.2]])
    hr, ndcg, mrr = expected_at_k(target_ranks(scores, torch.tensor([3]), torch.tensor([1])), 1)
    assert hr.tolist() == [0.5] and ndcg.tolist() == [0.5] and mrr.tolist() == [0.5]
    hr, ndcg, mrr = expected_at_k(target_ranks(scores, torch.tensor([3]), torch.tensor([1])), 2)
    assert hr.tolist() == [1.0] and ndcg.item() == pytest.approx((1 + INV_LOG2_3) / 2) and mrr.item() == pytest.approx(0.75)
    # Tied in the middle: g = 1, t = 2 (items 3 and 4 tie with target 2), positions 1..3; @3 -> positions 1, 2 count.
    scores = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.5, 0.9]])
    hr, ndcg, mrr = expected_at_k(target_ranks(scores, torch.tensor([2]), torch.tensor([1])), 3)
    assert hr.item() == pytest.approx(2 / 3) and ndcg.item() == pytest.approx((INV_LOG2_3 + 0.5) / 3) and mrr.item() == pytest.approx((1 / 2 + 1 / 3) / 3)


def test_oov_target_is_a_miss_and_its_share_is_reported():
    scores = torch.tensor([[0.0, 0.0, 0.9, 0.1], [0.0, 9.0, 0.9, 0.1], [0.0, 0.0, 0.2, 0.8], [0.0, 0.0, 0.2, 0.8]])
    target, mask = torch.tensor([2, 1, 3, 1]), torch.tensor([1, 1, 1, 0])  # row 1: OOV target; row 3: censored
    values = ranking_values(ranks_in_batches(lambda r: scores[r], target, mask), [1])
    assert values[("hr", 1)].tolist() == [1.0, 0.0, 1.0] and values[("oov_share", None)].tolist() == [0.0, 1.0, 0.0]
    m = ranking_metrics(ranks_in_batches(lambda r: scores[r], target, mask), [1])
    assert m[("hr", 1)] == pytest.approx(2 / 3) and m[("oov_share", None)] == pytest.approx(1 / 3)
    # A batch with OOV targets only is never scored, and still counts.
    only_oov = ranks_in_batches(lambda r: pytest.fail("scored a batch without rankable rows"), torch.tensor([1, 1]), torch.tensor([1, 1]))
    assert only_oov.in_vocab.tolist() == [False, False] and ranking_metrics(only_oov, [5])[("hr", 5)] == 0.0
    assert all(math.isnan(v) for v in ranking_metrics(ranks_in_batches(lambda r: scores[r], target, torch.zeros(4)), [5]).values())


def test_ranking_metrics_exact_without_ties():
    none = torch.zeros(4, dtype=torch.long)
    ranks = TargetRanks(torch.tensor([0, 1, 4, 9]), none, torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    m = ranking_metrics(ranks, [1, 5])
    assert m[("hr", 1)] == 0.25 and m[("ndcg", 1)] == 0.25 and m[("mrr", 1)] == 0.25
    assert m[("hr", 5)] == 0.75
    assert m[("ndcg", 5)] == pytest.approx((1 + INV_LOG2_3 + 1 / math.log2(6)) / 4, abs=1e-12)
    assert m[("mrr", 5)] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4, abs=1e-12)


def _expected_by_positions(scores: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """``[n, 3]``: HR@k, NDCG@k and MRR@k of each row, listing the positions a random tie order gives the target.

    Written apart from :mod:`shopseq.training.metrics` (no shared code): columns 0 and 1 (padding, OOV) are never
    candidates; a real target is equally likely at each position from the number of real items above it to that plus
    the number of other real items tied with it; any other target is a miss.
    """
    out = np.zeros((len(target), 3))
    for i, (row, t) in enumerate(zip(scores, target)):
        if t < 2:
            continue
        real, own = row[2:], row[t]
        above, tied = int((real > own).sum()), int((real == own).sum()) - 1
        for position in range(above, min(above + tied + 1, k)):
            out[i] += [1.0, 1.0 / math.log2(position + 2), 1.0 / (position + 1)]
        out[i] /= tied + 1
    return out


def test_expected_at_k_equals_a_direct_count_of_the_targets_positions():
    # the direct count on the hand row of test_tie_with_one_other_item_at_the_top_is_half_a_hit_at_1: g = 1, t = 2,
    # positions 1, 2, 3; @3 -> positions 1 and 2
    hand = _expected_by_positions(np.array([[0.0, 0.0, 0.5, 0.5, 0.5, 0.9]]), np.array([2]), 3)
    assert hand[0] == pytest.approx([2 / 3, (INV_LOG2_3 + 1 / 2) / 3, (1 / 2 + 1 / 3) / 3], abs=1e-15)
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (60, 12)).astype(np.float64)  # 10 real items on 4 score levels: ties in every row
    target = rng.integers(1, 12, 60)  # target 1 (OOV) in some rows: misses
    assert 0 < (target == 1).sum() < 60
    ranks = target_ranks(torch.from_numpy(scores), torch.from_numpy(target), torch.ones(60, dtype=torch.long))
    for k in (1, 3, 10):
        got = np.stack([v.numpy() for v in expected_at_k(ranks, k)], axis=1)
        assert np.allclose(got, _expected_by_positions(scores, target, k), rtol=0, atol=1e-12), k


def test_ndcg_is_sklearns_ndcg_score_with_ties_averaged():
    from sklearn.metrics import ndcg_score

    scores = np.array([[0, 0, 0.5, 0.5, 0.5, 0.9], [0, 0, 0.9, 0.9, 0.1, 0.2], [0, 0, 0.3, 0.1, 0.3, 0.3]])
    target = np.array([2, 3, 5])
    # row 0: 1 above, 2 tied -> positions 1..3; row 1: 0 above, 1 tied -> positions 0..1; row 2: 0 above, 2 tied -> 0..2
    hand = {
        1: [0.0, 1 / 2, 1 / 3],
        3: [(INV_LOG2_3 + 1 / 2) / 3, (1 + INV_LOG2_3) / 2, (1 + INV_LOG2_3 + 1 / 2) / 3],
    }
    ranks = target_ranks(torch.from_numpy(scores), torch.from_numpy(target), torch.ones(3, dtype=torch.long))
    relevance = np.eye(6)[target][:, 2:]  # one relevant item per row, over the real items
    for k, want in hand.items():
        ndcg = expected_at_k(ranks, k)[1].tolist()
        assert ndcg == pytest.approx(want, abs=1e-15)
        assert ndcg == pytest.approx([ndcg_score(relevance[[i]], scores[[i], 2:], k=k, ignore_ties=False) for i in range(3)], abs=1e-15)


# --------------------------------------------------------------------------- classification


def test_action_metrics_macro_f1_over_label_classes():
    # class 2: P 1/2 R 1/2 -> 1/2; class 3: P 1/2 R 1 -> 2/3; class 4: 0; the prediction 5 (no label) is just a miss
    m = action_metrics(np.array([2, 2, 3, 4, 4]), np.array([2, 3, 3, 2, 5]))
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert all(math.isnan(v) for v in action_metrics(np.zeros(0), np.zeros(0)).values())


def test_binary_metrics_exact():
    y, p = np.array([0, 0, 1, 1]), np.array([0.12, 0.38, 0.36, 0.82])
    m = binary_metrics(y, p, bins=10)
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ordered
    assert m["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.88, 0.62, 0.36, 0.82])))
    # bins: 0.12 alone (|0 - 0.12|), 0.36 and 0.38 together (|0.5 - 0.37|), 0.82 alone (|1 - 0.82|)
    assert m["ece"] == pytest.approx((0.12 + 2 * 0.13 + 0.18) / 4)
    tied = binary_metrics(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9]), bins=10)
    assert tied["roc_auc"] == pytest.approx((0.5 + 1) / 2)  # a tied pair counts one half
    one_class = binary_metrics(np.array([0, 0]), np.array([0.2, 0.4]), bins=10)
    assert math.isnan(one_class["roc_auc"]) and math.isnan(one_class["pr_auc"]) and one_class["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.6])))
    assert all(math.isnan(v) for v in binary_metrics(np.zeros(0), np.zeros(0), bins=10).values())
    # probabilities 0 and 1 are clipped to [1e-7, 1 - 1e-7]: a sure miss costs -log(1e-7) = 7 ln 10, a sure hit 1e-7
    sure = binary_metrics(np.array([0, 1]), np.array([1.0, 1.0]), bins=10)
    assert sure["log_loss"] == pytest.approx((7 * math.log(10) + 1e-7) / 2, rel=1e-8)


def test_roc_auc_of_training_validation_counts_a_tied_pair_one_half():
    # (positive, negative) pairs: (0.5, 0.5) tied -> 1/2; (0.9, 0.5) ordered -> 1; AUC (1/2 + 1) / 2
    assert roc_auc(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9])) == 0.75
    # as validation passes them (float labels, float32 scores): positives 0.8, 0.3; negatives 0.1, 0.4 -> 3 of 4 ordered
    assert roc_auc(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.8, 0.1, 0.3, 0.4], dtype=np.float32)) == 0.75
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3]))) and math.isnan(roc_auc(np.zeros(0), np.zeros(0)))


def test_calibration_error_bins_are_calibration_curves():
    from sklearn.calibration import calibration_curve

    # equal-width bins, an edge value belongs to the bin below (as calibration_curve bins it)
    assert calibration_bins(np.array([0.0, 0.5, 0.50001, 1.0]), 2).tolist() == [0, 0, 1, 1]
    y, p = np.array([0, 1, 1, 0, 1]), np.array([0.05, 0.15, 0.85, 0.95, 0.95])
    # bin 0: rate 1/2, mean 0.1 -> 0.4 x 2/5; bin 1: rate 2/3, mean 0.91667 -> 0.25 x 3/5
    assert binary_metrics(y, p, 2)["ece"] == pytest.approx(0.4 * 2 / 5 + 0.25 * 3 / 5, abs=1e-15)
    assert binary_metrics(np.array([0, 1]), np.array([0.0, 1.0]), 10)["ece"] == 0.0
    # every bin edge and random values: per non-empty bin, the positive rate and mean probability are calibration_curve's
    rng = np.random.default_rng(1)
    p = np.concatenate([np.linspace(0.0, 1.0, 11), rng.random(40)])
    y = (rng.random(len(p)) < p).astype(np.int64)
    b = calibration_bins(p, 10)
    present = np.unique(b)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    assert [y[b == i].mean() for i in present] == pytest.approx(prob_true.tolist(), abs=1e-15)
    assert [p[b == i].mean() for i in present] == pytest.approx(prob_pred.tolist(), abs=1e-15)


def test_weighted_statistics_are_sklearns_metrics_with_sample_weight():
    """The bootstrap's vectorised replicates against scikit-learn: bit for bit on the hand data with weight 1 (where the
    point value is scikit-learn's), and scikit-learn with ``sample_weight`` on resample-like integer weights over many
    tied scores, to a few float64 ulps (the sums run in another order)."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, log_loss, roc_auc_score

    # test_binary_metrics_exact's and test_action_metrics_macro_f1_over_label_classes's data: AUC 3/4, AP 1/2 + 1/3,
    # ECE 0.14, accuracy 2/5, macro-F1 (1/2 + 2/3) / 3
    y, p = np.array([0, 0, 1, 1]), np.array([0.12, 0.38, 0.36, 0.82])
    binary = binary_statistics(y, p, 10)
    ya, pa = np.array([2, 2, 3, 4, 4]), np.array([2, 3, 3, 2, 5])
    action = {"accuracy": accuracy_statistic(ya, pa), "macro_f1": macro_f1_statistic(ya, pa)}
    for name, s in binary.items():
        assert s(np.ones((1, 4)))[0] == s.value, name
    for name, s in action.items():
        assert s(np.ones((1, 5)))[0] == s.value, name
    assert [binary["roc_auc"].value, binary["ece"].value, action["accuracy"].value] == [0.75, 0.14, 0.4]

    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 2, 40), np.round(rng.random(40), 1)  # rounded: many tied scores
    ya, pa = rng.integers(1, 5, 40), rng.integers(1, 6, 40)
    w = np.vstack([np.ones(40), rng.integers(0, 4, (5, 40))]).astype(float)  # weight 1, then five resamples' counts
    got = {
        "roc_auc": roc_auc_statistic(y, p)(w), "pr_auc": average_precision_statistic(y, p)(w),
        "log_loss": log_loss_statistic(y, p)(w), "accuracy": accuracy_statistic(ya, pa)(w),
        "macro_f1": macro_f1_statistic(ya, pa)(w),
    }  # fmt: skip
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    for i, wi in enumerate(w):
        want = {
            "roc_auc": roc_auc_score(y, p, sample_weight=wi), "pr_auc": average_precision_score(y, p, sample_weight=wi),
            "log_loss": log_loss(y, clipped, sample_weight=wi, labels=[0, 1]), "accuracy": accuracy_score(ya, pa, sample_weight=wi),
            "macro_f1": f1_score(ya, pa, labels=np.unique(ya[wi > 0]), average="macro", sample_weight=wi, zero_division=0),
        }  # fmt: skip
        for name, value in want.items():
            assert got[name][i] == pytest.approx(value, rel=1e-14, abs=1e-15), (name, i)
    one_class = np.zeros((1, 40))
    one_class[0, np.flatnonzero(y == 1)] = 1.0
    assert math.isnan(roc_auc_statistic(y, p)(one_class)[0]) and math.isnan(average_precision_statistic(y, p)(one_class)[0])


# --------------------------------------------------------------------------- bootstrap over users


def test_bootstrap_of_identical_users_collapses_to_the_point():
    users = np.array([1, 1, 2, 2, 3, 3])
    values = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # every user: mean 1/2
    dist = bootstrap_distributions({"hr": mean_statistic(values)}, users, samples=200, seed=0)
    assert dist["hr"].shape == (200,) and percentile_interval(dist["hr"], 0.95) == (0.5, 0.5)


def test_bootstrap_two_users_matches_the_enumerated_distribution():
    """User A: 1 row worth 1; user B: 3 rows worth 0. Resamples: AA (1/4) -> 1, AB (1/2) -> 1/4, BB (1/4) -> 0.

    With 1,000 resamples about 250 are BB and 250 AA, far more than the 25 below the 2.5% percentile and the 25 above
    the 97.5% one, so the interval is exactly [0, 1].
    """
    users, values = np.array([7, 9, 9, 9]), np.array([1.0, 0.0, 0.0, 0.0])
    dist = bootstrap_distributions({"m": mean_statistic(values)}, users, samples=1000, seed=0)["m"]
    assert set(np.round(dist, 12)) == {0.0, 0.25, 1.0}
    assert percentile_interval(dist, 0.95) == (0.0, 1.0)
    # the same seed gives the same resamples; all of a user's rows move together (user 9's rows weigh the same)
    same_weight = Statistic(math.nan, lambda w: w[:, 1] - w[:, 3])
    again = bootstrap_distributions({"m": mean_statistic(values), "w": same_weight}, users, samples=1000, seed=0)
    assert np.array_equal(again["m"], dist) and not again["w"].any()
    assert bootstrap_distributions({"m": mean_statistic(values)}, users, samples=0, seed=0)["m"].shape == (0,)
    assert all(math.isnan(v) for v in percentile_interval(np.array([np.nan, np.nan]), 0.95))


def test_score_task_paired_differences():
    users = np.array([1, 2, 3, 4])
    model, base = np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0, 0.0])
    stats = {("hr", 5, "model"): mean_statistic(model), ("hr", 5, "markov"): mean_statistic(base), ("oov_share", None, "model"): mean_statistic(np.zeros(4))}
    rows, diffs = score_task("next_item", stats, users, samples=500, confidence=0.95, seed=0)
    by = {(r.metric, r.method): r for r in rows}
    assert by[("hr", "model")].value == 0.75 and by[("hr", "markov")].value == 0.25 and by[("hr", "model")].n_examples == 4
    assert [(d.baseline, d.metric, d.diff) for d in diffs] == [("markov", "hr", 0.5)]  # no difference for the OOV share
    # paired: per user the model is never worse, so no resample has a negative difference
    # per user the differences are 1, 0, 0, 1: a resample's mean is (number of 1-users drawn) / 4, Binomial(4, 1/2) with
    # 1/16 at each end (> 2.5%), so the interval is exactly [0, 1]
    assert (diffs[0].low, diffs[0].high) == (0.0, 1.0)
    rows, diffs = score_task("next_item", stats, users, samples=0, confidence=0.95, seed=0)
    assert all(math.isnan(r.ci_low) and math.isnan(r.ci_high) for r in rows) and math.isnan(diffs[0].low)


# --------------------------------------------------------------------------- outcomes


def _primary(task: str, metric: str, k: int | None, model: float, baselines: dict[str, float]) -> list[MetricRow]:
    return [MetricRow(task, metric, k, "model", model, 10, model - 0.1, model + 0.1)] + [MetricRow(task, metric, k, b, v, 10) for b, v in baselines.items()]


def test_compare_by_interval_beats_ties_loses():
    rows = _primary("next_item", "ndcg", 10, 0.3, {"markov": 0.2, "most_popular": 0.1})
    rows += _primary("next_action", "macro_f1", None, 0.5, {"markov": 0.45, "repeat_last": 0.4})
    rows += _primary("purchase", "roc_auc", None, 0.6, {"logistic_regression": 0.62, "lightgbm": 0.5})
    rows += _primary("churn", "roc_auc", None, 0.7, {"logistic_regression": 0.6})
    diffs = [
        Difference("next_item", "ndcg", 10, "markov", 0.1, 0.02, 0.18), Difference("next_item", "ndcg", 10, "most_popular", 0.2, 0.1, 0.3),
        Difference("next_action", "macro_f1", None, "markov", 0.05, -0.01, 0.11), Difference("next_action", "macro_f1", None, "repeat_last", 0.1, 0.03, 0.2),
        Difference("purchase", "roc_auc", None, "logistic_regression", -0.02, -0.05, -0.001), Difference("purchase", "roc_auc", None, "lightgbm", 0.1, 0.05, 0.15),
        Difference("churn", "roc_auc", None, "logistic_regression", 0.1, math.nan, math.nan),
    ]  # fmt: skip
    out = {c["task"]: c for c in compare(rows, [5, 10], diffs)}
    item = out["next_item"]
    assert item["outcome"] == "beats" and item["beats_baselines"] and item["interval"] == "bootstrap" and item["metric"] == "ndcg@10"
    assert (item["model"], item["model_low"], item["model_high"]) == (0.3, pytest.approx(0.2), pytest.approx(0.4))
    assert item["best_baseline"] == "markov" and (item["diff"], item["diff_low"], item["diff_high"]) == (pytest.approx(0.1), 0.02, 0.18)
    assert [b["verdict"] for b in item["baselines"]] == ["better", "better"]
    # the point estimate is ahead of both, but the interval against markov holds zero -> ties
    assert out["next_action"]["outcome"] == "ties" and [b["verdict"] for b in out["next_action"]["baselines"]] == ["tie", "better"]
    # below zero against one baseline -> loses, even though it is above zero against the other
    assert out["purchase"]["outcome"] == "loses" and not out["purchase"]["beats_baselines"]
    # no interval: the point values decide, and the comparison says so
    assert out["churn"]["outcome"] == "beats" and out["churn"]["interval"] == "none" and out["churn"]["baselines"][0]["interval"] == "none"


def test_compare_lower_is_better_and_point_fallback():
    rows = [MetricRow("purchase", "log_loss", None, "model", 0.3, 5), MetricRow("purchase", "log_loss", None, "lightgbm", 0.4, 5)]
    below = compare(rows, [10], [Difference("purchase", "log_loss", None, "lightgbm", -0.1, -0.2, -0.05)], primary={"purchase": "log_loss"})
    above = compare(rows, [10], [Difference("purchase", "log_loss", None, "lightgbm", -0.1, 0.01, 0.2)], primary={"purchase": "log_loss"})
    assert below[0]["outcome"] == "beats" and above[0]["outcome"] == "loses"  # lower is better: below zero is good
    # Without differences (bootstrap disabled): point comparison, interval none.
    rows = [
        MetricRow("next_item", "ndcg", 10, "model", 0.3, 5), MetricRow("next_item", "ndcg", 10, "markov", 0.2, 5),
        MetricRow("next_item", "ndcg", 10, "most_popular", 0.1, 5), MetricRow("next_item", "ndcg", 5, "most_popular", 0.9, 5),
        MetricRow("next_action", "macro_f1", None, "model", 1.0, 5), MetricRow("next_action", "macro_f1", None, "markov", 1.0, 5),
        MetricRow("purchase", "roc_auc", None, "model", 0.6, 5), MetricRow("purchase", "roc_auc", None, "logistic_regression", 0.7, 5),
        MetricRow("churn", "roc_auc", None, "model", math.nan, 0), MetricRow("churn", "roc_auc", None, "logistic_regression", math.nan, 0),
    ]  # fmt: skip
    out = {c["task"]: c for c in compare(rows, [5, 10])}
    assert out["next_item"]["metric"] == "ndcg@10" and out["next_item"]["outcome"] == "beats" and out["next_item"]["best_baseline"] == "markov"
    assert all(c["interval"] == "none" for c in out.values() if c["outcome"] != "n/a")
    assert out["next_action"]["outcome"] == "ties" and not out["next_action"]["beats_baselines"]
    assert out["purchase"]["outcome"] == "loses" and out["purchase"]["best_baseline"] == "logistic_regression"
    assert out["churn"]["outcome"] == "n/a" and not out["churn"]["beats_baselines"]  # no labelled rows: undefined, not a loss


def test_summary_rows_show_intervals_and_outcome():
    from shopseq.jobs.stages.run import comparison_rows, format_summary

    rows = [MetricRow("next_item", "ndcg", 10, "model", 0.3, 5, 0.25, 0.35), MetricRow("next_item", "ndcg", 10, "markov", 0.2, 5, 0.15, 0.24)]
    with_ci = compare(rows, [10], [Difference("next_item", "ndcg", 10, "markov", 0.1, 0.04, 0.16)])
    assert comparison_rows({"comparison": with_ci}) == [
        ["next_item", "ndcg@10", "0.3000 [0.2500, 0.3500]", "markov 0.2000 [0.1500, 0.2400]", "+0.1000 [+0.0400, +0.1600]", "yes", "beats"]
    ]
    point = compare([MetricRow("next_item", "ndcg", 10, "model", 0.3, 5), MetricRow("next_item", "ndcg", 10, "markov", 0.2, 5)], [10])
    assert comparison_rows({"comparison": point})[0][2:] == ["0.3000", "markov 0.2000", "+0.1000", "yes", "beats (no interval)"]
    text = format_summary({
        "stages": [{"stage": "evaluate", "seconds": 1.0, "skipped": False}], "seconds": 1.0, "data_root": "/d", "tables": [],
        "evaluation": {"split": "test", "report_path": "/d/r.md", "comparison": with_ci}, "results": {}, "checkpoint_dir": "/d/c",
        "mlflow": {"tracking_uri": "file:/d/m", "experiment": "shopseq"},
    })  # fmt: skip
    assert (
        "task       metric   model                    baselines                       model - best baseline       beats baselines  outcome\n"
        "---------  -------  -----------------------  ------------------------------  --------------------------  ---------------  -------\n"
        "next_item  ndcg@10  0.3000 [0.2500, 0.3500]  markov 0.2000 [0.1500, 0.2400]  +0.1000 [+0.0400, +0.1600]  yes              beats\n"
    ) in text


# --------------------------------------------------------------------------- shopseq evaluate on the trained fixture

METHODS = {
    "next_item": ("model", "most_popular", "markov", "repeat_last", "recent_pop", "reconsume", "item_knn", "sr", "vsknn"),
    "next_action": ("model", "most_popular", "markov", "repeat_last"),
    "purchase": ("model", "logistic_regression", "lightgbm"),
    "churn": ("model", "logistic_regression", "lightgbm"),
}


def _expected_keys(ks: list[int]) -> set[tuple]:
    keys = {("next_item", m, k, method) for m in ("hr", "ndcg", "mrr") for k in ks for method in METHODS["next_item"]}
    keys |= {("next_item", "oov_share", None, method) for method in METHODS["next_item"]}
    keys |= {("next_action", m, None, method) for m in ("accuracy", "macro_f1") for method in METHODS["next_action"]}
    keys |= {(t, m, None, method) for t in ("purchase", "churn") for m in ("roc_auc", "pr_auc", "log_loss", "ece") for method in METHODS[t]}
    return keys


@pytest.fixture(scope="module")
def evaluated(trained):
    """The evaluate stage's result in the shared pipeline run (it evaluated the trained model's best checkpoint)."""
    return trained.run["evaluation"]


def _stored(tables, evaluation_id: str) -> list[dict]:
    from pyspark.sql import functions as F

    rows = tables.read("metrics").where(F.col("evaluation_id") == evaluation_id).collect()
    return sorted((r.asDict() for r in rows), key=lambda r: (r["task"], r["metric"], r["k"] or 0, r["method"]))


def test_evaluate_writes_metrics_table_and_report(trained, evaluated):
    import os

    from shopseq.jobs.stages.report import report_files
    from shopseq.jobs.stages.train import load_schema
    from shopseq.training.checkpoint import load_model, predict_tensors
    from shopseq.training.data import load_tensors, model_columns

    cfg, tables = trained.cfg, trained.tables
    ks = list(cfg.evaluate.ks)
    rows = _stored(tables, evaluated["evaluation_id"])
    assert {(r["task"], r["metric"], r["k"], r["method"]) for r in rows} == _expected_keys(ks)
    assert len(rows) == len(_expected_keys(ks)) == tables.read("metrics").count()

    # n_examples: exactly the observed labels of gold_test (next item: every labelled row, an OOV target is a miss)
    schema = load_schema(cfg)
    data = load_tensors(tables.files("gold_test"), model_columns(schema))
    masked = {
        "next_item": int(data["next_label_mask"].sum()),
        "next_action": int(data["next_label_mask"].sum()),
        "purchase": int(data["purchase_label_mask"].sum()),
        "churn": int(data["churn_label_mask"].sum()),
    }
    assert all(n > 0 for n in masked.values()), masked
    for r in rows:
        assert r["n_examples"] == masked[r["task"]], r
        assert r["value"] is not None and r["ci_low"] is not None and r["ci_high"] is not None, r
        for v in (r["value"], r["ci_low"], r["ci_high"]):
            assert (v >= 0) if r["metric"] == "log_loss" else (0.0 <= v <= 1.0), r
        assert r["ci_low"] <= r["ci_high"], r
        assert r["split"] == "test" and r["split_protocol"] == "temporal" and r["gold_table"] == "gold_test"
        assert r["gold_version"] == tables.version("gold_test") and r["gold_train_version"] == tables.version("gold_train")
        assert r["model_version"] == evaluated["model_version"] and r["checkpoint"].endswith("best.pt")
    assert evaluated["model_version"] == f"{trained.train['mlflow_run_id']}-e{evaluated['checkpoint_epoch']:04d}"

    # The per-row ranks beside the report reproduce the stored HR@10 of every next-item method (peer comparisons pair with them).
    from shopseq.jobs.stages.evaluate import RANKS_FILE

    saved = np.load(os.path.join(evaluated["report_dir"], RANKS_FILE))
    assert len(saved["user_key"]) == masked["next_item"]
    for method in METHODS["next_item"]:
        above, tied, ok = saved[f"{method}.above"], saved[f"{method}.tied"], saved[f"{method}.in_vocab"]
        hr10 = np.where(ok, np.clip((10 - above) / (tied + 1.0), 0.0, 1.0), 0.0).mean()
        stored = next(r["value"] for r in rows if (r["task"], r["metric"], r["k"], r["method"]) == ("next_item", "hr", 10, method))
        assert hr10 == pytest.approx(stored, abs=1e-12), method

    # The model's numbers: the checkpoint's scores of gold_test, each labelled row's positions counted directly
    # (_expected_by_positions shares no code with the evaluation's ranking).
    model, _ = load_model(os.path.join(trained.train["checkpoint_dir"], "best.pt"))
    out = predict_tensors(model, data)
    with torch.no_grad():
        scores = model.item_scores(out["hidden_last"], data["item_idx_seq"], out["repeat_last"])  # with the window's repeat mixture (train.repeat)
    kept = data["next_label_mask"].numpy() == 1
    direct = _expected_by_positions(scores.double().numpy()[kept], data["next_item_idx"].numpy()[kept], 10).mean(axis=0)
    value = {(r["task"], r["metric"], r["k"], r["method"]): r["value"] for r in rows}
    for i, metric in enumerate(("hr", "ndcg", "mrr")):
        assert value[("next_item", metric, 10, "model")] == pytest.approx(direct[i], abs=1e-9), metric
    n = masked["next_item"]
    n_oov = int(((data["next_label_mask"] == 1) & (data["next_item_idx"] < 2)).sum())
    for method in METHODS["next_item"]:
        assert value[("next_item", "oov_share", None, method)] == pytest.approx(n_oov / n, abs=1e-12)
    assert evaluated["oov_share"] == pytest.approx(n_oov / n, abs=1e-12)
    assert evaluated["bootstrap"]["samples"] == cfg.evaluate.bootstrap_samples == 1000
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
    assert "![metric@K](metric_at_k.png)" in text and "![model vs baselines](model_vs_baselines.png)" in text
    assert "lightgbm" in text and "OOV share" in text and "percentile bootstrap over users (1000 resamples" in text
    # The comparison is made of the stored rows of each task's primary metric, the model's and every baseline's value
    # and interval as recorded (how intervals become verdicts and outcomes: test_compare_by_interval_beats_ties_loses).
    recorded = {(r["task"], r["metric"], r["k"], r["method"]): r for r in rows}
    primary = {"next_item": ("ndcg", 10), "next_action": ("macro_f1", None), "purchase": ("roc_auc", None), "churn": ("roc_auc", None)}
    assert [c["task"] for c in evaluated["comparison"]] == list(primary)
    for c in evaluated["comparison"]:
        metric, k = primary[c["task"]]
        model_row = recorded[(c["task"], metric, k, "model")]
        assert c["metric"] == (f"{metric}@{k}" if k else metric) and c["interval"] == "bootstrap"
        assert (c["model"], c["model_low"], c["model_high"]) == (model_row["value"], model_row["ci_low"], model_row["ci_high"])
        assert [b["name"] for b in c["baselines"]] == list(METHODS[c["task"]][1:])
        for b in c["baselines"]:
            r = recorded[(c["task"], metric, k, b["name"])]
            assert (b["value"], b["ci_low"], b["ci_high"]) == (r["value"], r["ci_low"], r["ci_high"]), (c["task"], b["name"])


def test_evaluation_is_logged_to_the_training_run(trained, evaluated):
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=trained.train["tracking_uri"]).get_run(trained.train["mlflow_run_id"])
    assert "eval_test_next_item_model_ndcg_at_10" in run.data.metrics
    assert run.data.tags["evaluation_test"] == evaluated["evaluation_id"]


def test_rerun_changes_nothing(trained, evaluated):
    """Chosen behaviour: a re-run that finds its rows already recorded writes nothing (no new table version)."""
    import os

    from shopseq.jobs.stages.evaluate import run_evaluate

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
    from shopseq.jobs.stages.evaluate import main
    from tests.conftest import TRAINED_OVERRIDES

    args = ["--set", f"app.data_root={trained.root}", "--set", "evaluate.checkpoint=nope.pt"]
    for o in TRAINED_OVERRIDES:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("shopseq evaluate: error: no checkpoint at ") and err[-1].endswith("nope.pt: run `shopseq train` first (or set evaluate.checkpoint)")


def test_metrics_table_from_before_intervals_gains_the_columns(tables):
    from datetime import datetime, timezone

    from pyspark.sql import types as T

    from shopseq.jobs.stages.evaluate import METRICS_SCHEMA, METRICS_TABLE, _write_metrics

    old_schema = T.StructType([f for f in METRICS_SCHEMA.fields if f.name not in ("ci_low", "ci_high")])
    at = datetime(2026, 1, 2, tzinfo=timezone.utc)
    lineage = {
        "evaluation_id": "old", "split": "test", "split_protocol": "temporal", "model_version": "m-e0001", "gold_table": "gold_test",
        "gold_version": 3, "gold_train_version": 2, "vocab_version": "v", "checkpoint": "/c/best.pt", "checkpoint_epoch": 1, "mlflow_run_id": None,
    }  # fmt: skip
    row = {**lineage, "evaluated_at": at, "task": "next_item", "metric": "hr", "k": 10, "method": "model", "value": 0.5, "n_examples": 4}
    tables.overwrite_partitions(METRICS_TABLE, tables.spark.createDataFrame([tuple(row[f.name] for f in old_schema.fields)], old_schema), ["evaluation_id"])
    new = {"task": "next_item", "metric": "hr", "k": 10, "method": "model", "value": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n_examples": 8}
    written, _ = _write_metrics(tables, {**lineage, "evaluation_id": "new"}, [new], at)
    assert written
    got = {r["evaluation_id"]: r.asDict() for r in tables.read(METRICS_TABLE).collect()}
    assert [f.name for f in tables.read(METRICS_TABLE).schema.fields] == [f.name for f in METRICS_SCHEMA.fields]
    assert (got["old"]["value"], got["old"]["ci_low"], got["old"]["ci_high"]) == (0.5, None, None)
    assert (got["new"]["value"], got["new"]["ci_low"], got["new"]["ci_high"]) == (0.25, 0.1, 0.4)
    version = tables.version(METRICS_TABLE)
    assert _write_metrics(tables, {**lineage, "evaluation_id": "new"}, [new], at) == (False, version)  # same rows and intervals: nothing written
    assert _write_metrics(tables, {**lineage, "evaluation_id": "new"}, [{**new, "ci_high": 0.45}], at)[0]  # a changed interval is a change
