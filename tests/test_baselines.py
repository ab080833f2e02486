"""The baselines: most popular, Markov, repeat-last and the literature's next-item baselines (training/baselines.py),
the purchase / churn baselines (training/profile_baselines.py); exact scores on tiny literal histories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shopseq.training.baselines import (
    TIE_BREAK,
    US_PER_DAY,
    VSKNN,
    BaselineParams,
    ItemKNN,
    RecentPopularity,
    Reconsume,
    SequenceBaselines,
    SequentialRules,
    _TimeIndex,
    action_baseline_predictions,
    current_session_weights,
    fit_baselines,
    fit_next_item_baselines,
    last_event_types,
    last_items,
    markov_scores,
    popularity_rank,
    popularity_scores,
    repeat_last_scores,
    train_events,
)
from shopseq.training.metrics import ranks_in_batches
from shopseq.training.profile_baselines import LIGHTGBM_PARAMS, baseline_features, fit_profile_baseline, signed_log1p

H = 3_600 * 1_000_000  # one hour in microseconds


def gold(histories: dict[int, list[tuple[int, int, int]]], L: int, anchors: dict[int, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Gold tensors as features/sequences.py lays them out: one row per anchor (default: every event) of each user.

    A history is the user's ``(item, session_start, time_us)`` events in order;
    the row of anchor ``a`` holds events ``a - L + 1 .. a`` left-padded, its
    cutoff is event ``a``'s time and its label event ``a + 1`` (masked when
    there is none).
    """
    rows: dict[str, list] = {k: [] for k in ("item_idx_seq", "session_start_seq", "frequency", "user_key", "cutoff_time_us", "next_item_idx", "next_label_mask")}
    for user, hist in histories.items():
        for a in (anchors or {}).get(user, range(len(hist))):
            win = hist[max(0, a - L + 1) : a + 1]
            pad = [0] * (L - len(win))
            rows["item_idx_seq"].append(pad + [e[0] for e in win])
            rows["session_start_seq"].append(pad + [e[1] for e in win])
            rows["frequency"].append(a + 1)
            rows["user_key"].append(user)
            rows["cutoff_time_us"].append(hist[a][2])
            rows["next_item_idx"].append(hist[a + 1][0] if a + 1 < len(hist) else -100)
            rows["next_label_mask"].append(int(a + 1 < len(hist)))
    return {k: torch.tensor(v) for k, v in rows.items()}


def query(windows: list[list[int]], starts: list[list[int]] | None = None, cutoffs: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Scored rows: windows (left-padded) with their session starts (default: none) and cutoffs (default 0)."""
    n = len(windows)
    return {
        "item_idx_seq": torch.tensor(windows),
        "session_start_seq": torch.tensor(starts if starts is not None else [[0] * len(windows[0])] * n),
        "cutoff_time_us": torch.tensor(cutoffs if cutoffs is not None else [0] * n),
        "user_key": torch.arange(1000, 1000 + n),
        "frequency": (torch.tensor(windows) != 0).sum(dim=1),
    }


# --------------------------------------------------------------------------- train events


def _literal_train() -> dict[str, torch.Tensor]:
    """L = 3, session_end cutoffs. User 10: items 2,3,4 | 5,6 (two windows overlapping at position 2); user 20: 3 | 7 (7 only as a label)."""
    return {
        "item_idx_seq": torch.tensor([[2, 3, 4], [4, 5, 6], [0, 0, 3]]),
        "session_start_seq": torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
        "frequency": torch.tensor([3, 5, 1]),
        "user_key": torch.tensor([10, 10, 20]),
        "cutoff_time_us": torch.tensor([120, 210, 150]),
        "next_item_idx": torch.tensor([5, -100, 7]),
        "next_label_mask": torch.tensor([1, 0, 1]),
    }


def test_train_events_are_unique_with_sessions_and_first_cutoffs():
    ev = train_events(_literal_train())
    assert ev.user.tolist() == [10, 10, 10, 10, 10, 20, 20]
    assert ev.pos.tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert ev.item.tolist() == [2, 3, 4, 5, 6, 3, 7]
    assert ev.session.tolist() == [0, 0, 0, 1, 1, 2, 3]  # the label-only 7 starts its own session
    assert ev.observed.tolist() == [True] * 6 + [False]
    # position 2 is in both windows: the earlier cutoff; 5 is a label at 120 but first in a window at 210
    assert ev.time_us.tolist() == [120, 120, 120, 210, 210, 150, 150]
    assert ev.session_time_us().tolist() == [120, 210, 150, 150]


def test_a_gap_in_positions_splits_a_session():
    train = gold({1: [(2, 1, 0), (3, 0, 1), (4, 0, 2), (5, 0, 3), (6, 0, 4)]}, L=2, anchors={1: [0, 4]})
    ev = train_events(train)  # windows hold positions 0 and 3-4, the label position 1; no train row shows position 2
    assert ev.pos.tolist() == [0, 1, 3, 4] and ev.item.tolist() == [2, 3, 5, 6]
    assert ev.session.tolist() == [0, 1, 2, 2]  # the label-only 3 starts a session; 5 follows a gap


LITERAL_POP_RANK = np.array([1, 0, 6, 7, 5, 4, 3, 2]) / 8  # popularity_rank of _literal_train (next test)


def test_popularity_rank_orders_by_count_then_lower_index():
    ev = train_events(_literal_train())
    # counts: 3 -> 2; 2, 4, 5, 6, 7 -> 1; 0, 1 -> 0. Ranked from the least popular: 1, 0 (count 0, the higher index
    # first), 7, 6, 5, 4, 2 (count 1), 3
    assert (popularity_rank(ev, 8) * 8).tolist() == [1, 0, 6, 7, 5, 4, 3, 2]
    assert popularity_rank(ev, 8).tolist() == LITERAL_POP_RANK.tolist()


# --------------------------------------------------------------------------- shape and fallback


def test_every_scorer_returns_float64_full_catalogue_and_falls_back_to_popularity():
    train = _literal_train()
    scorers = fit_next_item_baselines(train, n_items=8)
    assert sorted(scorers) == ["item_knn", "recent_pop", "reconsume", "sr", "vsknn"]
    # all padding; all OOV (cutoff 0: before every train event, after the third row's events by more than a day,
    # so recent_pop has no recent events either); a real window
    data = query([[0, 0, 0], [1, 1, 1], [0, 2, 3]], starts=[[0, 0, 0], [1, 0, 0], [0, 1, 0]], cutoffs=[0, 0, -10 * US_PER_DAY])
    pop_only = TIE_BREAK * LITERAL_POP_RANK  # no evidence: 0 + the popularity tie-break
    for name, scorer in scorers.items():
        s = scorer.scores(data, slice(0, 3))
        assert s.shape == (3, 8) and s.dtype == torch.float64, name
        assert s[0].tolist() == pop_only.tolist() and s[1].tolist() == pop_only.tolist(), name
        assert torch.equal(scorer.scores(data, slice(1, 3)), s[1:3]), name
        assert len(set(s[2, 2:].tolist())) == 6, name  # no ties left to the evaluation's rule


def test_missing_cutoff_times_and_bad_params_are_clear_errors():
    train = _literal_train()
    del train["cutoff_time_us"]
    with pytest.raises(ValueError, match="cutoff_time_us"):
        fit_next_item_baselines(train, n_items=8)
    with pytest.raises(ValueError, match="decay=0"):
        BaselineParams(decay=0)
    # needs no times: last item 4 ends its session (no rule from it), so the row falls back to popularity
    assert SequentialRules.fit(train, 8).scores(query([[2, 3, 4]]), slice(0, 1))[0].tolist() == (TIE_BREAK * LITERAL_POP_RANK).tolist()


# --------------------------------------------------------------------------- methods


def test_sr_rules_weigh_one_over_the_step_within_sessions():
    train = _literal_train()  # sessions [2, 3, 4], [5, 6], [3], [7]
    sr = SequentialRules.fit(train, 8)
    expected = np.zeros((8, 8))
    expected[2, 3], expected[2, 4], expected[3, 4], expected[5, 6] = 1.0, 0.5, 1.0, 1.0  # nothing across 4 | 5
    assert sr.rules.toarray().tolist() == expected.tolist()
    assert SequentialRules.fit(train, 8, BaselineParams(sr_steps=1)).rules[2, 4] == 0.0
    rows = query([[0, 0, 2], [5, 3, 2]])
    assert sr.primary(rows, slice(0, 2))[:, 3:5].tolist() == [[1.0, 0.5], [1.0, 0.5]]  # the last item only
    s = sr.scores(rows, slice(0, 1))[0]
    assert s[3].item() == 2.0 + TIE_BREAK * (7 / 8) and s[4].item() == 1.5 + TIE_BREAK * (5 / 8)  # 1 + rule + tie-break
    assert s[2:].argsort(descending=True).add(2).tolist()[:2] == [3, 4]


def test_item_knn_shrunk_cosine_of_session_cooccurrence():
    train = _literal_train()  # sessions {2, 3, 4}, {5, 6}, {3}, {7}: n_2 = 1, n_3 = 2, n_4 = 1
    knn = ItemKNN.fit(train, 8)
    assert knn.similarity[2, 3] == pytest.approx(1 / np.sqrt(21 * 22)) and knn.similarity[2, 4] == pytest.approx(1 / 21)
    assert knn.similarity[2, 2] == 0.0 and knn.similarity[4, 5] == 0.0
    unshrunk = ItemKNN.fit(train, 8, BaselineParams(knn_lambda=0.0))
    assert unshrunk.similarity[2, 3] == pytest.approx(1 / np.sqrt(2)) and unshrunk.similarity[3, 4] == pytest.approx(1 / np.sqrt(2))
    # k = 1: item 2 keeps 4 (similarity 1/21) over 3 (1/sqrt(462)); item 3 keeps the tie between 2 and 4 for the more popular (2)
    top1 = ItemKNN.fit(train, 8, BaselineParams(knn_k=1))
    assert top1.similarity[2].nonzero()[1].tolist() == [4] and top1.similarity[3].nonzero()[1].tolist() == [2]
    s = knn.scores(query([[6, 5, 2]]), slice(0, 1))[0]  # last item 2
    assert s[2:].argsort(descending=True).add(2).tolist()[:2] == [4, 3]


def test_reconsume_decay_weights_are_exact():
    pop_train = _literal_train()
    rc = Reconsume.fit(pop_train, 8, BaselineParams(decay=0.8))
    p = rc.primary(query([[2, 3, 2, 4], [0, 0, 5, 6], [0, 1, 1, 1]]), slice(0, 3))
    assert p[0, [2, 3, 4]].tolist() == pytest.approx([0.8 + 0.8**3, 0.8**2, 1.0], rel=1e-15)
    assert p[1, [5, 6]].tolist() == [0.8, 1.0] and np.count_nonzero(p[1]) == 2
    assert not p[2].any()
    s = rc.scores(query([[2, 3, 2, 4]]), slice(0, 1))[0]
    assert s[2:].argsort(descending=True).add(2).tolist()[:3] == [2, 4, 3]  # 1.312 > 1 > 0.64, then popularity


def test_vsknn_prefers_the_train_session_sharing_more_of_the_current_session():
    day = US_PER_DAY
    train = gold(
        {
            1: [(2, 1, 1 * day), (3, 0, 1 * day), (4, 0, 1 * day)],  # session {2, 3, 4}, older
            2: [(3, 1, 2 * day), (5, 0, 2 * day), (6, 0, 2 * day)],  # session {3, 5, 6}, more recent
            3: [(7, 1, 3 * day)],
        },
        L=3,
    )
    # current session [2, 3] (weights 1/2, 1); item 7 belongs to the previous session of the window
    data = query([[7, 2, 3]], starts=[[1, 1, 0]])
    vs = VSKNN.fit(train, 8)
    assert vs.query(data, slice(0, 1)).toarray()[0].tolist() == [0, 0, 0.5, 1.0, 0, 0, 0, 0]
    # similarities: {2,3,4}: 1.5, {3,5,6}: 1.0; an item scores the summed similarity of its neighbours
    assert vs.primary(data, slice(0, 1))[0].tolist() == [0, 0, 1.5, 2.5, 1.5, 1.0, 1.0, 0]
    s = vs.scores(data, slice(0, 1))[0]
    assert s[2:].argsort(descending=True).add(2).tolist()[:3] == [3, 2, 4]  # 4 (the closer session's) over 5 and 6
    one = VSKNN.fit(train, 8, BaselineParams(vsknn_k=1))
    assert one.primary(data, slice(0, 1))[0].tolist() == [0, 0, 1.5, 1.5, 1.5, 0, 0, 0]
    recent = VSKNN.fit(train, 8, BaselineParams(vsknn_sample_size=1))  # only the most recent candidate session
    assert recent.primary(data, slice(0, 1))[0].tolist() == [0, 0, 0, 1.0, 0, 1.0, 1.0, 0]


def test_current_session_weights():
    seq = np.array([[0, 5, 2, 3], [4, 5, 6, 7], [2, 3, 2, 1], [0, 0, 0, 0]])
    starts = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    w = current_session_weights(seq, starts)
    assert w.tolist() == [[0, 0, 0.5, 1.0], [0.25, 0.5, 0.75, 1.0], [0, 1 / 3, 2 / 3, 1.0], [0, 0, 0, 0]]
    data = query([[2, 3, 2, 1]], starts=[[1, 0, 0, 0]])  # item 2 twice: its later weight (3/4, not 1/4); OOV dropped
    vs = VSKNN.fit(gold({1: [(2, 1, 0), (3, 0, 0)]}, L=2), 8)
    assert vs.query(data, slice(0, 1)).toarray()[0, :4].tolist() == [0, 0, 0.75, 0.5]


def test_recent_pop_counts_only_the_window_before_each_cutoff():
    day = US_PER_DAY
    train = gold(
        {
            1: [(5, 1, 0), (5, 0, 1), (5, 0, 2)],  # 5: three events on day 0
            2: [(6, 1, 10 * day - 2 * H), (4, 1, 10 * day + H)],  # 6 two hours before day 10; 4 one hour after it
            3: [(2, 1, 9 * day), (3, 1, 10 * day)],  # 2 exactly one day before day 10 (excluded); 3 at day 10 (included)
        },
        L=2,
    )
    rp = RecentPopularity.fit(train, 8, BaselineParams(recent_scored_history=False))
    data = query([[0, 0], [0, 0]], cutoffs=[10 * day, 10 * day + 2 * H])
    p = rp.primary(data, slice(0, 2))
    assert p[0].tolist() == [0, 0, 0, 1, 0, 0, 1, 0]  # 4 is after the cutoff; 5 long before
    assert p[1].tolist() == [0, 0, 0, 1, 1, 0, 1, 0]
    # 1 + count for the recent items 3 and 6, then the train popularity tie-break: counts 5 -> 3; 2, 3, 4, 6 -> 1, so
    # ranked from the least popular 7, 1, 0, 6, 4, 3, 2, 5. Item 5, the most popular in train, has no recent event.
    s = rp.scores(data, slice(0, 1))[0]
    assert s.tolist() == pytest.approx(
        (np.array([0, 0, 0, 2, 0, 0, 2, 0]) + TIE_BREAK * (np.array([2, 1, 6, 5, 4, 7, 3, 0]) / 8)).tolist(), rel=0, abs=1e-15
    )
    assert s.argsort(descending=True).tolist()[:3] == [3, 6, 5]


def test_recent_pop_counts_the_scored_splits_history_but_never_its_labels():
    day = US_PER_DAY
    train = gold({1: [(5, 1, 0), (5, 0, 1)]}, L=2)
    data = gold({2: [(6, 1, 5 * day), (7, 0, 5 * day + H)], 3: [(2, 1, 5 * day + 2 * H), (3, 0, 5 * day + 3 * H)]}, L=2)
    with_history = RecentPopularity.fit(train, 8).primary(data, slice(0, 4))
    # rows: user 2 at its events 6 then 7; user 3 at 2 then 3 (label 3 of row 2 is never counted before row 3's cutoff)
    assert with_history[:, 2:].tolist() == [
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
        [1, 0, 0, 0, 1, 1],
        [1, 1, 0, 0, 1, 1],
    ]
    assert not RecentPopularity.fit(train, 8, BaselineParams(recent_scored_history=False)).primary(data, slice(0, 4)).any()


def test_time_index_counts_match_a_direct_count():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 1_000, size=400)
    item = rng.integers(2, 12, size=400)
    index = _TimeIndex.build(t, item, 12, bucket_us=37)
    until = rng.integers(-50, 1_100, size=60)
    after = until - rng.integers(0, 400, size=60)
    got = index.counts(after, until)
    want = np.stack([np.bincount(item[(t > a) & (t <= u)], minlength=12) for a, u in zip(after, until)])
    assert got.tolist() == want.tolist()


def test_vsknn_matches_a_dense_search_over_every_train_session():
    rng = np.random.default_rng(1)
    histories = {
        user: [(int(rng.integers(2, 30)), int(j == 0 or rng.random() < 0.3), int(t)) for j, t in enumerate(np.sort(rng.integers(0, 10**6, size=12)))]
        for user in range(40)
    }
    train = gold(histories, L=5)
    vs = VSKNN.fit(train, 30, BaselineParams(vsknn_k=4, vsknn_sample_size=6))
    data = query(rng.integers(0, 30, size=(50, 5)).tolist(), starts=(rng.random((50, 5)) < 0.3).astype(int).tolist())
    q = vs.query(data, slice(0, 50)).toarray()
    x = vs.sessions.toarray()
    want = np.zeros((50, 30))
    for r in range(50):  # the reference: all sessions sharing an item, the 6 most recent, the 4 most similar
        sim = x @ q[r]
        cand = np.flatnonzero(sim > 0)
        cand = cand[np.argsort(-vs.recency[cand], kind="stable")][:6]
        near = cand[np.lexsort((-vs.recency[cand], -sim[cand]))][:4]
        want[r] = sim[near] @ x[near]
    assert np.allclose(vs.primary(data, slice(0, 50)), want, rtol=1e-12, atol=0)
    assert (want > 0).any(axis=1).sum() > 40


# --------------------------------------------------------------------------- most popular, Markov, repeat-last


def _train_tensors() -> dict[str, torch.Tensor]:
    """L = 3. User 10: items 2,3,4,2 (two overlapping windows); user 20: 3 then 4; user 30: OOV, 2, then 3."""
    return {
        "item_idx_seq": torch.tensor([[0, 2, 3], [3, 4, 2], [0, 0, 3], [0, 1, 2]]),
        "event_type_idx_seq": torch.tensor([[0, 2, 2], [2, 3, 4], [0, 0, 2], [0, 2, 3]]),
        "session_start_seq": torch.tensor([[0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0]]),
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
    expected = np.zeros((5, 5))
    expected[2, 3], expected[3, 4], expected[4, 2] = 2, 2, 1  # 10: 2>3, 3>4, 4>2; 20: 3>4; 30: 2>3 (OOV>2 left out)
    assert (b.transitions.toarray() == expected).all()
    # at the labelled cutoffs: 10 (last 3 -> 4), 20 (last 3 -> 4), 30 (last 2 -> 3)
    at_cutoffs = np.zeros((5, 5))
    at_cutoffs[3, 4], at_cutoffs[2, 3] = 2, 1
    assert (b.cutoff_transitions.toarray() == at_cutoffs).all()
    # next event types at the labelled cutoffs: (last 2 -> 3), (2 -> 3), (3 -> 2)
    assert b.action_counts.tolist() == [0, 0, 1, 2, 0]
    assert b.action_transitions[2].tolist() == [0, 0, 0, 2, 0] and b.action_transitions[3].tolist() == [0, 0, 1, 0, 0]


def test_markov_is_fitted_at_cutoffs_and_backs_off():
    """One user, events 2,3,2,3 then the labelled next item 4 at the cutoff: consecutive steps say 3 -> 2 as often as
    3 -> 4, the cutoff says 3 -> 4; item 2 was never last at a cutoff (back-off to consecutive steps: 2 -> 3)."""
    train = {
        "item_idx_seq": torch.tensor([[2, 3, 2, 3]]), "event_type_idx_seq": torch.tensor([[2, 2, 2, 2]]), "session_start_seq": torch.tensor([[1, 0, 0, 0]]),
        "frequency": torch.tensor([4]), "user_key": torch.tensor([1]),
        "next_item_idx": torch.tensor([4]), "next_event_type_idx": torch.tensor([2]), "next_label_mask": torch.tensor([1]),
    }  # fmt: skip
    b = fit_baselines(train, n_items=6, n_event_types=3)
    tb = [0, 0, 2 / 6, 2 / 6, 1 / 6, 0]  # counts 2, 2, 1 over 5 events + 1
    got = markov_scores(b, torch.tensor([3, 2, 5, 1]))
    expected = torch.tensor([
        [0, 0, tb[2], tb[3], 1 + tb[4], 0],  # at a cutoff: only 3 -> 4 counts
        [0, 0, tb[2], 2 + tb[3], tb[4], 0],  # never last at a cutoff: 2 -> 3 twice among consecutive events
        tb,  # never followed: popularity
        tb,  # OOV: popularity
    ], dtype=torch.float64)  # fmt: skip
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def test_item_baseline_scores_and_ranks():
    b = fit_baselines(_train_tensors(), n_items=5, n_event_types=5)
    tb = [0, 0, 3 / 9, 3 / 9, 2 / 9]  # popularity / (total + 1): orders ties only
    assert torch.allclose(markov_scores(b, torch.tensor([3, 1])), torch.tensor([[0, 0, tb[2], tb[3], 2 + tb[4]], tb], dtype=torch.float64))
    assert torch.allclose(repeat_last_scores(b, torch.tensor([4, 1])), torch.tensor([[0, 0, tb[2], tb[3], 1 + tb[4]], tb], dtype=torch.float64))
    target, mask = torch.tensor([4, 2, 3, 2]), torch.ones(4, dtype=torch.long)
    last = torch.tensor([3, 3, 4, 1])  # 4: never last at a train cutoff (back-off: 4 -> 2); OOV last item: popularity only

    def ranks(score_rows):
        r = ranks_in_batches(score_rows, target, mask)
        return r.above.tolist(), r.tied.tolist()

    # items 2 and 3 are equally popular: a target among them is tied with the other one
    assert ranks(lambda r: popularity_scores(b, len(target[r]))) == ([2, 0, 0, 0], [0, 1, 1, 1])
    assert ranks(lambda r: markov_scores(b, last[r])) == ([0, 1, 1, 0], [0, 1, 0, 1])
    assert ranks(lambda r: repeat_last_scores(b, last[r])) == ([2, 1, 1, 0], [0, 0, 1, 1])


def test_last_item_and_type_and_action_baselines():
    data = _train_tensors()
    assert last_items(data).tolist() == [3, 2, 3, 2]
    assert last_event_types(data).tolist() == [2, 4, 2, 3]
    b = fit_baselines(data, n_items=5, n_event_types=5)
    pred = action_baseline_predictions(b, np.array([2, 3, 4, 0]))
    assert pred["most_popular"].tolist() == [3, 3, 3, 3]  # 3 follows twice, 2 once
    assert pred["markov"].tolist() == [3, 2, 3, 3]  # after 2 -> 3; after 3 -> 2; unseen 4 and padding -> most popular
    assert pred["repeat_last"].tolist() == [2, 3, 4, 0]


# --------------------------------------------------------------------------- purchase / churn: profiles + window summary


def test_profile_logistic_regression_uses_only_labelled_rows():
    assert signed_log1p(np.array([-1.0, 0.0, math.e - 1])).tolist() == pytest.approx([-math.log(2), 0.0, 1.0])
    x = np.array([[0.0, 2], [1, 2], [2, 3], [10, 3], [20, 2], [30, 3], [0, 2], [30, 2]])
    y = np.array([0, 0, 0, 1, 1, 1, -100, -100])  # censored rows: label -100 (three classes would fail the fit)
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    lr = fit_profile_baseline(x, y, mask, n_numeric=1, n_embedded=1)
    assert lr.n_train == 6 and lr.train_rate == 0.5
    # features: signed log1p then standardised (log1p(e-1) = 1), embedded column one-hot
    features = lr.pipeline[0]  # type: ignore[index]
    z = np.log1p(x[:6, 0])
    got = features.transform(np.array([[math.e - 1, 2], [0.0, 3]]))
    assert np.allclose(got, [[(1 - z.mean()) / z.std(), 1.0, 0.0], [(0 - z.mean()) / z.std(), 0.0, 1.0]], rtol=0, atol=1e-12)
    # the fit: a plain logistic regression on the six labelled rows' features built by hand as above
    from sklearn.linear_model import LogisticRegression

    design = np.column_stack([(z - z.mean()) / z.std(), x[:6, 1] == 2, x[:6, 1] == 3]).astype(np.float64)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit(design, y[:6])
    assert lr.predict_proba(x[:6]).tolist() == pytest.approx(reference.predict_proba(design)[:, 1].tolist(), rel=0, abs=1e-9)
    single = fit_profile_baseline(x, np.array([0, 0, 0, 0, 0, 1, -100, -100]), np.array([1, 1, 1, 1, 1, 0, 0, 0]), 1, 1)
    assert single.pipeline is None and single.predict_proba(x).tolist() == [0.0] * 8
    # The summary columns (after the embedded ones) are standardised as they are, not log-transformed.
    xs = np.hstack([x, np.array([[4.0], [0], [4], [0], [4], [0], [9], [9]])])
    with_summary = fit_profile_baseline(xs, y, mask, n_numeric=1, n_embedded=1, n_summary=1)
    assert np.allclose(with_summary.pipeline[0].transform(xs[:2])[:, -1], [1.0, -1.0], rtol=0, atol=1e-12)  # type: ignore[index]


def test_lightgbm_baseline_fixed_parameters_and_labelled_rows_only():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.random(400) * 10, rng.integers(0, 3, 400), rng.random(400)])
    y = ((x[:, 0] > 5) ^ (x[:, 1] == 2)).astype(np.int64)  # a threshold crossed with a category: needs a tree
    mask = np.ones(400, dtype=np.int64)
    mask[-50:] = 0
    y[-50:] = -100
    gbm = fit_profile_baseline(x, y, mask, n_numeric=1, n_embedded=1, n_summary=1, kind="lightgbm")
    params = gbm.pipeline.get_params()  # type: ignore[attr-defined]
    assert {k: params[k] for k in ("n_estimators", "num_leaves", "learning_rate", "min_child_samples", "random_state")} == {
        "n_estimators": 200, "num_leaves": 15, "learning_rate": 0.05, "min_child_samples": 20, "random_state": 0
    } and LIGHTGBM_PARAMS["n_estimators"] == 200  # fmt: skip
    assert gbm.n_train == 350
    test = np.array([[2.0, 0, 0.5], [8.0, 0, 0.5], [2.0, 2, 0.5], [8.0, 2, 0.5]])
    assert (gbm.predict_proba(test).round() == [0, 1, 1, 0]).all()
    with pytest.raises(ValueError, match="unknown profile baseline 'xgb'"):
        fit_profile_baseline(x, y, mask, 1, 1, kind="xgb")


def test_baseline_features_are_the_profiles_plus_the_models_window_summary():
    schema = {
        "columns": [
            {"name": "item_idx_seq", "role": "sequence", "shape": [4], "embedding": "item"},
            {"name": "event_type_idx_seq", "role": "sequence", "shape": [4], "embedding": "event_type"},
            {"name": "dt_bucket_seq", "role": "sequence", "shape": [4], "embedding": "dt_bucket"},
            {"name": "session_start_seq", "role": "sequence", "shape": [4], "embedding": "session_start"},
            {"name": "frequency", "role": "profile", "shape": []},
            {"name": "top_category_idx", "role": "profile", "shape": [], "embedding": "category"},
        ],
        "embedding_sizes": {"item": 8, "event_type": 4, "dt_bucket": 5, "session_start": 2, "category": 3},
        "max_len": 4,
    }
    data = {
        "item_idx_seq": torch.tensor([[0, 5, 6, 7]]), "event_type_idx_seq": torch.tensor([[0, 2, 3, 2]]),
        "dt_bucket_seq": torch.tensor([[0, 3, 1, 2]]), "session_start_seq": torch.tensor([[0, 1, 0, 1]]),
        "frequency": torch.tensor([12]), "top_category_idx": torch.tensor([2]),
    }  # fmt: skip
    x, n_numeric, n_embedded, n_summary = baseline_features(data, schema)
    assert (n_numeric, n_embedded, n_summary) == (1, 1, 9)
    # sessions start at positions 1 and 3: last one 1 event, the one before 2; gap buckets 2/4 and 3/4; 2 sessions;
    # event-type shares 0, 0, 2/3, 1/3
    expected = [12, 2, math.log(2), math.log(3), 0.5, 0.75, math.log(3), 0, 0, 2 / 3, 1 / 3]
    assert x.shape == (1, 11) and np.allclose(x[0], expected, rtol=0, atol=1e-6)


def test_sequence_baselines_tie_break_below_one():
    b = SequenceBaselines(np.array([0.0, 0.0, 5.0, 1.0]), None, np.zeros(3), np.zeros((3, 3)))  # type: ignore[arg-type]
    assert b.tie_break.max() < 1.0 and b.tie_break.tolist() == [0, 0, 5 / 7, 1 / 7]
