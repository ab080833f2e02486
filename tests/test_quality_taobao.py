"""The model on real data: the shared Taobao sample, RecBole's leave-one-out protocol, default model settings.

Skips without ``../shared/data`` (a user's fresh clone has none).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO


@pytest.mark.e2e
@pytest.mark.horovod
@pytest.mark.shared_data
def test_model_beats_markov_and_repeat_last_on_taobao_leave_one_out(spark, tmp_path, shared_data):
    """NDCG@10 on the test targets (each user's last event), the paired bootstrap interval of model - baseline above 0."""
    from jobs.run import main

    path = shared_data / "taobao_head.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    args = ["--conf-dir", str(REPO / "conf"), "--input", str(path), "--format", "taobao", "--protocol", "recbole_loo",
            "--set", f"app.data_root={tmp_path}", "--stages", "ingest,sessionize,features,train,evaluate"]  # fmt: skip
    assert main(args) == 0
    (metrics,) = (tmp_path / "reports").glob("*/metrics.json")
    report = json.loads(metrics.read_text())
    assert (report["split"], report["n_examples"]["next_item"]) == ("test", 477)  # one target per user of the 5-core data
    (next_item,) = [c for c in report["comparison"] if c["task"] == "next_item"]
    assert next_item["metric"] == "ndcg@10"
    baselines = {b["name"]: b for b in next_item["baselines"]}
    for name in ("markov", "repeat_last"):
        assert baselines[name]["diff_low"] > 0, (name, baselines[name])
