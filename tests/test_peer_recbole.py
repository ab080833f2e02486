"""The RecBole peer runner (peers/recbole_run.py) in the RecBole venv that `make peer-recbole` builds.

Skips when that venv is absent: it lives outside the repo and is not part of `make test`.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from shopseq.training.metrics import TargetRanks, expected_at_k

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "peers" / "recbole_run.py"
RECBOLE_VENV = Path(os.environ.get("SHOPSEQ_RECBOLE_VENV", Path.home() / ".cache" / "shopseq" / "recbole-venv"))
RECBOLE_PYTHON = RECBOLE_VENV / "bin" / "python"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (RECBOLE_PYTHON.is_file() and (RECBOLE_VENV / ".shopseq-recbole").is_file()),
        reason=f"no RecBole venv at {RECBOLE_VENV} (run `make peer-recbole`)",
    ),
]

N_USERS, N_ITEMS, PER_USER = 24, 12, 6


def write_events(path: Path, rows: list[tuple[int, str, int]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "order"])
        w.writerows(rows)


def synthetic_rows() -> list[tuple[int, str, int]]:
    """User 7000+u sees items sku-(u+j)%12 for j = 0..5; order 5j + u%3 (gaps); rows written newest first."""
    rows = [(7000 + u, f"sku-{(u + j) % N_ITEMS}", 5 * j + u % 3) for u in range(N_USERS) for j in range(PER_USER)]
    return rows[::-1]


def run_runner(tmp_path: Path, events: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RECBOLE_PYTHON), str(RUNNER), "--events", str(events), "--out", str(tmp_path / "out.json"), *extra],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )


def test_runner_ranks_reproduce_recbole_test_metrics(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    write_events(events, synthetic_rows())
    proc = run_runner(tmp_path, events, "--models", "SASRec,GRU4Rec", "--epochs", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())

    assert (out["peer"], out["recbole_version"]) == ("recbole", "1.2.1")
    assert out["autograd_anomaly_detection"] is False  # SINE's import-time set_detect_anomaly(True) undone
    assert (out["n_events"], out["n_users"], out["n_items"]) == (N_USERS * PER_USER, N_USERS, N_ITEMS)
    assert out["settings"]["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert set(out["models"]) == {"SASRec", "GRU4Rec"} and out["complete"] is True
    # the held-out test event of each user is its last by `order`, under the original ids
    last = {7000 + u: f"sku-{(u + PER_USER - 1) % N_ITEMS}" for u in range(N_USERS)}
    for name, res in out["models"].items():
        assert set(res["valid"]) == set(res["test"]) == {"hit@10", "ndcg@10", "mrr@10"}, name
        assert res["hyper_parameters"]["epochs"] == 1 and res["best_epoch"] == 0
        assert res["n_items"] == N_ITEMS and res["wall_seconds"] > 0
        ranks = res["test_ranks"]
        assert {r["user_id"]: r["item_id"] for r in ranks} == last and len(ranks) == N_USERS
        assert all(r["g"] >= 0 and r["t"] >= 0 and r["g"] + r["t"] < N_ITEMS for r in ranks)
        # shopseq's tie rule on the runner's g/t gives RecBole's own test metrics
        g = torch.tensor([r["g"] for r in ranks])
        t = torch.tensor([r["t"] for r in ranks])
        hr, ndcg, mrr = expected_at_k(TargetRanks(g, t, torch.ones(len(ranks), dtype=torch.bool), torch.ones(len(ranks), dtype=torch.bool)), 10)
        for metric, values in (("hit@10", hr), ("ndcg@10", ndcg), ("mrr@10", mrr)):
            assert abs(values.mean().item() - res["test_unrounded"][metric]) < 1e-6, (name, metric)
            assert abs(values.mean().item() - res["test"][metric]) <= 5e-5 + 1e-9, (name, metric)  # RecBole rounds to 4 places


def test_runner_rejects_unfiltered_events(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    write_events(events, [(1, "a", 0), (1, "b", 1), (1, "c", 2), (2, "a", 0), (2, "b", 1)])
    proc = run_runner(tmp_path, events)
    assert proc.returncode == 2
    assert "1 user(s) with fewer than 3 events" in proc.stderr
    assert not (tmp_path / "out.json").exists()
