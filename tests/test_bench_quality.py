"""`shopseq bench quality`: the model against every baseline on the real samples, per protocol, with intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _case() -> dict:
    metrics = [
        {"task": "next_item", "metric": m, "k": 10, "method": method, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n_examples": 477}
        for method, base in (("model", 0.5), ("markov", 0.3))
        for m, v in (("ndcg", base), ("hr", base + 0.2), ("mrr", base - 0.1))
    ]
    return {
        "sample": "taobao",
        "protocol": "recbole_loo",
        "seconds": 100.0,
        "stage_seconds": {"ingest": 10.0, "train": 80.0},
        "filter": {"entity": "user", "min_user_events": 5, "min_item_events": 5, "rounds": 8, "before": {"users": 815, "items": 55344, "events": 84440}, "after": {"users": 477, "items": 1655, "events": 11887}},
        "examples": {"train": 10456, "val": 477, "test": 954},
        "metrics": metrics,
        "comparison": [
            {"task": "next_item", "metric": "ndcg@10", "model": 0.5, "baselines": [{"name": "markov", "value": 0.3, "diff": 0.2, "diff_low": 0.15, "diff_high": 0.25}], "best_baseline": "markov", "outcome": "beats"},
            {"task": "churn", "metric": "roc_auc", "model": 0.7, "model_low": 0.6, "model_high": 0.8, "baselines": [{"name": "lightgbm", "value": 0.65, "diff": 0.05, "diff_low": -0.02, "diff_high": 0.1}], "best_baseline": "lightgbm", "outcome": "ties"},
        ],
        "method_seconds": {"model": 1.5, "markov": 0.25},
    }


def test_render_markdown_shows_intervals_filter_and_outcomes():
    from shopseq.jobs.bench.quality import render_markdown

    md = render_markdown({"version": "0.1.0", "commit": "abc1234", "created": "2026-12-02 18:00 UTC", "machine": "2 cores, x86_64", "cases": [_case(), {"sample": "diginetica", "protocol": "session", "error": "no test examples"}]})
    assert "## taobao / recbole_loo" in md
    assert "Data: users >= 5 events, items >= 5 events, 8 rounds; 477 users, 1,655 items, 11,887 events kept of 815 / 55,344 / 84,440." in md
    assert "Examples: train 10,456, val 477, test 954." in md
    # Methods sorted by NDCG@10; the model's row has no difference with itself, markov's carries the paired interval.
    lines = md.splitlines()
    model = next(i for i, l in enumerate(lines) if l.startswith("| model |"))
    markov = next(i for i, l in enumerate(lines) if l.startswith("| markov |"))
    assert model < markov
    assert lines[model] == "| model | 0.5000 [0.4500, 0.5500] | 0.7000 [0.6500, 0.7500] | 0.4000 [0.3500, 0.4500] | n/a | 1.5 |"
    assert lines[markov] == "| markov | 0.3000 [0.2500, 0.3500] | 0.5000 [0.4500, 0.5500] | 0.2000 [0.1500, 0.2500] | 0.2000 [0.1500, 0.2500] | 0.2 |"
    assert "| churn | roc_auc | 0.7000 [0.6000, 0.8000] | lightgbm 0.6500 | 0.0500 [-0.0200, 0.1000] | ties |" in md
    assert "## diginetica / session\n\nFailed: no test examples" in md
    assert "commit abc1234" in md


def test_peer_statistics_pair_users_and_count_an_unscored_user_as_a_miss():
    from shopseq.jobs.bench.quality import peer_statistics

    # Three test users; the model ranks their targets at 0, 1 (tied with one other) and OOV; the peer at 2, 0 and
    # never scored the third user (a miss for the peer).
    saved = {
        "user_key": np.array([11, 22, 33]),
        "model.above": np.array([0, 1, 0]),
        "model.tied": np.array([0, 1, 0]),
        "model.in_vocab": np.array([True, True, False]),
    }
    peer = {"models": {"SASRec": {"test_ranks": [{"user_key": 22, "g": 0, "t": 0}, {"user_key": 11, "g": 2, "t": 0}]}}}
    stats, paired = peer_statistics(saved, peer, "SASRec", [1, 10])
    assert paired == 2
    ones = np.ones((1, 3))
    assert stats[("hr", 1, "model")](ones)[0] == pytest.approx(1 / 3)  # user 11 hits; user 22 is tied for ranks 1-2: HR@1 0
    assert stats[("hr", 1, "recbole_sasrec")](ones)[0] == pytest.approx(1 / 3)  # user 22 only
    expected_model_ndcg = (1.0 + (1 / math.log2(3) + 1 / math.log2(4)) / 2) / 3
    assert stats[("ndcg", 10, "model")](ones)[0] == pytest.approx(expected_model_ndcg)
    assert stats[("ndcg", 10, "recbole_sasrec")](ones)[0] == pytest.approx((1 / math.log2(4) + 1.0) / 3)
    assert ("oov_share", None, "model") not in stats


def test_bench_quality_rejects_unknown_sample_and_protocol(spark, capsys, tmp_path):
    from shopseq.jobs.bench.cli import main

    base = ["quality", "--conf-dir", str(REPO / "conf"), "--set", f"app.data_root={tmp_path}"]
    assert main([*base, "--samples", "amazon"]) == 2
    assert "--samples: unknown amazon" in capsys.readouterr().err
    assert main([*base, "--protocols", "random_split"]) == 2
    assert "--protocol: unknown protocol 'random_split'" in capsys.readouterr().err
    assert main([*base, "--samples", "taobao", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "missing sample file(s) taobao_head.csv" in capsys.readouterr().err
