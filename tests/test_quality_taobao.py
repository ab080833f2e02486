"""The whole pipeline on real data: the shared Taobao sample through ``shopseq run``, RecBole's leave-one-out protocol,
default model settings. One run serves two checks: what the run writes and reports, and that the model beats
the Markov chain and repeat-last with the paired interval's lower bound above zero.

Skips without ``../shared/data`` (a user's fresh clone has none).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO

TASKS = ("next_item", "next_action", "purchase", "churn")
EPOCHS = 2


@pytest.mark.e2e
@pytest.mark.horovod
@pytest.mark.shared_data
def test_run_taobao_leave_one_out_writes_every_table_and_the_model_beats_markov_and_repeat_last(spark, tmp_path, capsys, shared_data):
    """NDCG@10 on the test targets (each user's last event), the paired bootstrap interval of model - baseline above 0."""
    from shopseq.jobs.stages.run import main

    path = shared_data / "taobao_head.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    # conf/datasets/taobao.yaml (applied by --format taobao) sets the window and horizons; --set app.data_root wins over its root.
    # Default model settings except the epochs: 2 of the default 8 (train was 150 of the run's 221 s). The claim still
    # holds there: two thirds of the test targets are in the user's window, which the repeat mixture ranks from its first
    # epochs on, and the margins over Markov and repeat-last are wide (docs/model-and-evaluation.md).
    args = ["--conf-dir", str(REPO / "conf"), "--input", str(path), "--format", "taobao", "--protocol", "recbole_loo",
            "--set", f"app.data_root={tmp_path}", "--set", f"train.epochs={EPOCHS}"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    versions = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s+[\d,]+\s+(?:yes|no)\s", out, re.M)}
    assert {"bronze_events", "quarantine", "gold_test", "metrics", "predictions_latest"} <= set(versions), out
    assert not re.search(r"^generate\s", out, re.M)  # real data: no synthetic stage
    assert {m[1] for m in re.finditer(rf"^({'|'.join(TASKS)})\s+\S+\s+.*$", out, re.M)} == set(TASKS), out
    # Bronze and quarantine: 0 CREATE TABLE (with bronze's constraints), 1 the MERGE.
    assert re.search(r"^bronze_events\s+1\s+84,440\s", out, re.M)  # the 35 rows before 2017-11-25 +08:00 are quarantined
    assert re.search(r"^quarantine\s+1\s+35\s", out, re.M)

    (metrics,) = (tmp_path / "reports").glob("*/metrics.json")
    report = json.loads(metrics.read_text())
    assert (report["split"], report["n_examples"]["next_item"]) == ("test", 477)  # one target per user of the 5-core data
    (next_item,) = [c for c in report["comparison"] if c["task"] == "next_item"]
    assert next_item["metric"] == "ndcg@10"
    baselines = {b["name"]: b for b in next_item["baselines"]}
    for name in ("markov", "repeat_last"):
        assert baselines[name]["diff_low"] > 0, (name, baselines[name])
    assert re.search(rf"^Training:\s+{EPOCHS} epoch\(s\)", out, re.M), out
