"""`shopseq run`: the whole pipeline from the CLI entry point, its summary, and a second run that changes nothing.

The pipeline is the suite's shared ``trained`` run (tests/conftest.py: generated data -> 2 Horovod ranks ->
evaluate -> predict); these tests read its summary and tables, and run ``shopseq run`` a second time through
the CLI on a copy of its data root. It is also issue 5's end-to-end check (the model beats popularity; the
checkpoint's lineage reads back the exact gold rows it trained on).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import EPOCHS, REPO, TRAINED_OVERRIDES, copy_root

TASKS = ("next_item", "next_action", "purchase", "churn")
# The tables a run on generated data writes (it has no dirty rows, so no quarantine table).
WRITTEN = ("bronze_events", "run_metrics", "silver_events", "sessions", "vocab", "gold_train", "gold_val", "gold_test", "metrics", "predictions", "predictions_latest")
# Stages that find their inputs unchanged on a second run, and the tables they leave at the same version.
SKIPPED_ON_RERUN = ("generate", "sessionize", "features", "train", "evaluate")
UNCHANGED_ON_RERUN = ("bronze_events", "silver_events", "sessions", "vocab", "gold_train", "gold_val", "gold_test", "metrics")
# The summary's metric column -> the metrics table's (metric, k).
METRIC = {"ndcg@10": ("ndcg", 10), "macro_f1": ("macro_f1", None), "roc_auc": ("roc_auc", None)}


def _args(root: Path, *extra: str, overrides: list[str]) -> list[str]:
    sets = [a for o in [f"app.data_root={root}", *overrides] for a in ("--set", o)]
    return ["--conf-dir", str(REPO / "conf"), *sets, *extra]


def _table_versions(summary: str) -> dict[str, int]:
    """``table -> version`` from the summary's table section."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s+[\d,]+\s+(?:yes|no)\s", summary, re.M)}


def _task_rows(summary: str) -> dict[str, str]:
    return {m[1]: m[0] for m in re.finditer(rf"^({'|'.join(TASKS)})\s+\S+\s+.*$", summary, re.M)}


@pytest.mark.e2e
@pytest.mark.horovod
def test_the_run_summary_shows_each_table_s_version_and_what_evaluate_wrote(trained):
    summary, tables = trained.summary, trained.tables
    versions = _table_versions(summary)
    assert set(WRITTEN) <= set(versions), summary
    assert versions == {t: trained.versions[t] for t in versions}  # each table's real version when the run ended (tests after it write)
    for stage in ("generate", "ingest", "sessionize", "features", "train", "evaluate", "predict"):
        assert re.search(rf"^{stage}\s+[\d.]+\s+done$", summary, re.M), summary
    # Each task's row: the metric, the model's test value as the metrics table holds it, the baselines by name, and
    # the outcome evaluate decided (its rule is tested on hand-computed intervals in tests/test_evaluate.py).
    rows = _task_rows(summary)
    assert set(rows) == set(TASKS), summary
    metrics = {(r["task"], r["metric"], r["k"], r["method"]): r["value"] for r in tables.read("metrics").where("split = 'test'").collect()}
    outcome = {c["task"]: c["outcome"] for c in trained.run["evaluation"]["comparison"]}
    expected_baselines = {"next_item": ("most_popular", "markov", "repeat_last"), "next_action": ("most_popular", "repeat_last"),
                          "purchase": ("logistic_regression",), "churn": ("logistic_regression",)}  # fmt: skip
    for task, row in rows.items():
        cells = row.split()
        metric, k = METRIC[cells[1]]
        assert float(cells[2]) == pytest.approx(metrics[(task, metric, k, "model")], abs=5e-5), row
        assert all(f" {b} " in row for b in expected_baselines[task]), row
        assert cells[-1] == outcome[task] and cells[-2] == ("yes" if outcome[task] == "beats" else "no"), row
    report = re.search(r"^Report:\s+(\S+)$", summary, re.M)
    assert report and Path(report[1]).is_file()
    assert re.search(rf"^Training:\s+{EPOCHS} epoch\(s\), last train loss \d+\.\d{{4}}, val NDCG@10 \d\.\d{{4}}$", summary, re.M), summary
    assert re.search(rf"^Checkpoints: {re.escape(str(trained.root))}/checkpoints$", summary, re.M)
    assert re.search(rf"^MLflow:\s+file:{re.escape(str(trained.root))}/mlruns \(experiment shopseq, run \w+\)$", summary, re.M)
    assert tables.history("gold_train")[0]["metadata"]["lineage"]["features"]["train_ranks"] == 2


@pytest.mark.e2e
@pytest.mark.horovod
def test_the_model_learned_and_beats_popularity(trained):
    """The loss falls over the epochs; on gold_test the model's next-item NDCG@10 is clearly above most-popular's and its purchase AUC above chance."""
    from shopseq.training.checkpoint import load_model

    tables = trained.tables
    _, state = load_model(trained.root / "checkpoints" / "best.pt")
    hist = state["history"]
    assert len(hist) >= 2 and hist[-1]["train_loss"] < hist[0]["train_loss"], [h["train_loss"] for h in hist]
    assert state["lineage"]["gold_train_version"] == tables.version("gold_train")
    m = {(r["task"], r["metric"], r["k"], r["method"]): r for r in tables.read("metrics").where("split = 'test'").collect()}
    model, popular = m[("next_item", "ndcg", 10, "model")], m[("next_item", "ndcg", 10, "most_popular")]
    assert model["n_examples"] > 200
    # Margin: the planted interests and funnel make the model clearly better than popularity (evaluate's protocol:
    # out-of-vocabulary targets count as misses, ties rank against the target).
    assert model["value"] > 1.2 * popular["value"], (model["value"], popular["value"])
    auc = m[("purchase", "roc_auc", None, "model")]["value"]
    assert auc is not None and auc > 0.6, auc  # margin 0.1 over chance


@pytest.mark.e2e
@pytest.mark.horovod
def test_a_second_run_through_the_cli_changes_nothing_and_time_travel_reads_the_trained_rows(spark, trained, tmp_path, capsys):
    """The second ``shopseq run`` is on the shared root itself (a copy would re-evaluate: evaluate's lineage names the
    checkpoint's path); it adds only an all-duplicates audit row and rewrites predict's own partition with the same rows,
    which the tests sharing the run allow for. Time travel overwrites gold_train, so it runs on a copy."""
    from shopseq.jobs.config import load_config
    from shopseq.jobs.stages.predict import PREDICTIONS
    from shopseq.jobs.stages.run import main
    from shopseq.jobs.tables import TableIO

    from tests.checksums import checksum

    versions = _table_versions(trained.summary)
    predicted = checksum(trained.tables.read(PREDICTIONS).drop("scored_at"))
    assert main(_args(trained.root, overrides=TRAINED_OVERRIDES)) == 0
    second = capsys.readouterr().out
    again = _table_versions(second)
    assert {t: again[t] for t in UNCHANGED_ON_RERUN} == {t: versions[t] for t in UNCHANGED_ON_RERUN}
    for stage in SKIPPED_ON_RERUN:
        assert re.search(rf"^{stage}\s+[\d.]+\s+skipped \(up to date\)$", second, re.M), second
    assert re.search(r"^ingest\s+[\d.]+\s+done \(no new rows: all duplicates\)$", second, re.M), second
    assert again["run_metrics"] >= versions["run_metrics"] + 1  # every ingest records its run, even one that adds nothing
    assert _task_rows(second) == _task_rows(trained.summary)
    assert checksum(trained.tables.read(PREDICTIONS).drop("scored_at")) == predicted  # its partition replaced by the same rows

    root = copy_root(trained, tmp_path / "root")
    _assert_time_travel_reads_the_rows_training_read(spark, TableIO(spark, load_config("local", REPO / "conf", [f"app.data_root={root}", *TRAINED_OVERRIDES])), root)


def test_run_stage_subset_and_bad_stage(spark, tmp_path, capsys):
    from shopseq.jobs.stages.run import main

    # Without generate, the generated input is missing: the failing stage's one-line error, exit 2.
    assert main(_args(tmp_path, "--stages", "ingest,sessionize", overrides=[])) == 2
    missing = tmp_path / "raw" / "generated" / "events"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"shopseq run: error: input {missing} does not exist; run 'shopseq generate' first or pass --input"
    assert main(_args(tmp_path, "--stages", "ingest,sesionize", overrides=[])) == 2
    assert capsys.readouterr().err.strip() == "shopseq run: error: --stages: unknown stage(s) ['sesionize']; choose from generate,ingest,sessionize,features,train,evaluate,predict"


def test_dataset_layer_sits_between_env_and_set(tmp_path):
    from shopseq.jobs.config import ConfigError, load_config
    from shopseq.jobs.stages.run import dataset_layer

    layer = dataset_layer(str(REPO / "conf"), "taobao")
    assert layer == REPO / "conf" / "datasets" / "taobao.yaml"
    assert dataset_layer(str(REPO / "conf"), "retailrocket") is None and dataset_layer(str(REPO / "conf"), None) is None
    cfg = load_config("local", REPO / "conf", ["features.val_end=2017-12-01"], [layer])
    fc = cfg.features
    assert (cfg.app.data_root, fc.train_end, fc.val_end, fc.purchase_horizon_days, fc.churn_horizon_days) == ("shopseq-data/taobao", "2017-11-30", "2017-12-01", 1.0, 1.0)
    assert (cfg.ingest.min_event_time, cfg.ingest.now, cfg.ingest.max_future_skew_hours) == ("2017-11-25T00:00:00+08:00", "2017-12-04T00:00:00+08:00", 0.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("features:\n  horizon_days: 3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: unknown key 'features.horizon_days'$"):
        load_config("local", REPO / "conf", [], [bad])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("local", REPO / "conf", [], [tmp_path / "missing.yaml"])


def test_select_stages():
    from shopseq.jobs.common import InputError
    from shopseq.jobs.stages.run import STAGES, select_stages

    assert select_stages(None, real_data=False) == STAGES
    assert select_stages(None, real_data=True) == STAGES[1:]
    assert select_stages("train, features", real_data=False) == ("features", "train")  # pipeline order, not the order given
    assert select_stages("generate,ingest", real_data=True) == ("ingest",)
    with pytest.raises(InputError, match=r"unknown stage\(s\) \['trian'\]"):
        select_stages("features,trian", real_data=False)


def test_summary_text():
    from shopseq.jobs.stages.run import format_summary

    result = {
        "stages": [{"stage": "features", "seconds": 3.25, "skipped": True}, {"stage": "evaluate", "seconds": 12.0, "skipped": False}],
        "seconds": 15.3,
        "data_root": "/data",
        "tables": [
            {"table": "gold_test", "location": "/data/tables/gold_test", "version": 3, "changed": False, "rows": 1200},
            {"table": "metrics", "location": "/data/tables/metrics", "version": 0, "changed": True, "rows": 60},
        ],
        "evaluation": {
            "split": "test",
            "report_path": "/data/reports/abc/report.md",
            "comparison": [
                {"task": "next_item", "metric": "ndcg@10", "model": 0.1375, "baselines": [{"name": "most_popular", "value": 0.02}, {"name": "markov", "value": 0.1035}], "beats_baselines": True, "outcome": "beats"},
                {"task": "churn", "metric": "roc_auc", "model": 0.8674, "baselines": [{"name": "logistic_regression", "value": None}], "beats_baselines": False, "outcome": "loses"},
            ],
        },
        "prediction": {"rows": 1000, "as_of_key": "20240421T235954.000001Z", "model_version": "run1-e0004"},
        "results": {"train": {"history": [{"train_loss": 6.05, "val_ndcg@10": 0.1368}]}},
        "checkpoint_dir": "/data/checkpoints",
        "mlflow": {"tracking_uri": "file:/data/mlruns", "experiment": "shopseq", "run_id": "run1"},
    }
    assert format_summary(result) == (
        "shopseq run: 2 stage(s) in 15.3 s, data root /data\n"
        "\n"
        "stage     seconds  status\n"
        "--------  -------  --------------------\n"
        "features      3.2  skipped (up to date)\n"
        "evaluate     12.0  done\n"
        "\n"
        "Tables (Delta version; changed = written by this run)\n"
        "table      version  rows   changed  location\n"
        "---------  -------  -----  -------  ----------------------\n"
        "gold_test        3  1,200  no       /data/tables/gold_test\n"
        "metrics          0     60  yes      /data/tables/metrics\n"
        "\n"
        "Model vs baselines (test split)\n"
        "task       metric   model   baselines                           beats baselines  outcome\n"
        "---------  -------  ------  ----------------------------------  ---------------  -------\n"
        "next_item  ndcg@10  0.1375  most_popular 0.0200, markov 0.1035  yes              beats\n"
        "churn      roc_auc  0.8674  logistic_regression n/a             no               loses\n"
        "\n"
        "Report:      /data/reports/abc/report.md\n"
        "\n"
        "Training:    1 epoch(s), last train loss 6.0500, val NDCG@10 0.1368\n"
        "Predictions: 1,000 users as of 20240421T235954.000001Z, model version run1-e0004\n"
        "Checkpoints: /data/checkpoints\n"
        "MLflow:      file:/data/mlruns (experiment shopseq, run run1)\n"
    )


def _assert_time_travel_reads_the_rows_training_read(spark, tables, root: Path) -> None:
    """gold_train moves on, and its version in the checkpoint's lineage still reads exactly the rows training read.

    (The files Delta's log lists for that version, which train.py hands to Petastorm.)
    """
    from shopseq.training.checkpoint import load_model

    used = load_model(root / "checkpoints" / "best.pt")[1]["lineage"]["gold_train_version"]
    trained_on = spark.read.parquet(*tables.files("gold_train", version=used))
    tables.overwrite("gold_train", tables.read("gold_train").limit(5), metadata={"test": "a later gold"})
    assert tables.version("gold_train") == used + 1 and tables.read("gold_train").count() == 5
    again = tables.read("gold_train", version=used)
    assert again.count() == trained_on.count() > 5
    assert again.exceptAll(trained_on).count() == 0 and trained_on.exceptAll(again).count() == 0
