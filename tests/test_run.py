"""`shopseq run`: the whole pipeline from the CLI entry point, its summary, and a second run that changes nothing.

The generated run is also issue 5's end-to-end check (generated data -> 2 Horovod ranks -> the model beats
popularity, the checkpoint's lineage reads back the exact gold rows it trained on): one pipeline serves both.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO, TRAINED_OVERRIDES

TASKS = ("next_item", "next_action", "purchase", "churn")
# The tables a run on generated data writes (it has no dirty rows, so no quarantine table).
WRITTEN = ("bronze_events", "run_metrics", "silver_events", "sessions", "vocab", "gold_train", "gold_val", "gold_test", "metrics", "predictions", "predictions_latest")
# Stages that find their inputs unchanged on a second run, and the tables they leave at the same version.
SKIPPED_ON_RERUN = ("generate", "sessionize", "features", "train", "evaluate")
UNCHANGED_ON_RERUN = ("bronze_events", "silver_events", "sessions", "vocab", "gold_train", "gold_val", "gold_test", "metrics")


def _two_rank_overrides() -> list[str]:
    """The shared small config with 400 users, trained for up to 10 epochs by 2 Horovod ranks on the test's Spark session."""
    two_ranks = {
        "generate.users": "400", "features.train_ranks": "2", "train.launcher": "spark", "train.num_proc": "2",
        # Per rank: batch 32 at lr 0.0015 is global batch 64 at lr 0.003 once Horovod scales lr by 2 ranks.
        "train.epochs": "10", "train.dim": "64", "train.batch_size": "32", "train.lr": "0.0015", "train.patience": "10",
    }  # fmt: skip
    out = [o for o in TRAINED_OVERRIDES if o.split("=", 1)[0] not in two_ranks]
    return out + [f"{k}={v}" for k, v in two_ranks.items()]


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
def test_run_generated_two_ranks_then_rerun_changes_nothing(spark, tmp_path, capsys):
    from shopseq.jobs.config import load_config
    from shopseq.jobs.stages.run import main
    from shopseq.jobs.tables import TableIO

    overrides = _two_rank_overrides()
    tables = TableIO(spark, load_config("local", REPO / "conf", [f"app.data_root={tmp_path}", *overrides]))

    assert main(_args(tmp_path, overrides=overrides)) == 0
    first = capsys.readouterr().out
    versions = _table_versions(first)
    assert set(WRITTEN) <= set(versions), first
    assert versions == {t: tables.version(t) for t in versions}  # the summary shows each table's real version
    rows = _task_rows(first)
    assert set(rows) == set(TASKS), first
    assert "most_popular" in rows["next_item"] and "markov" in rows["next_item"] and "repeat_last" in rows["next_item"]
    assert "logistic_regression" in rows["purchase"] and "logistic_regression" in rows["churn"]
    assert all(re.search(r"\s(yes|no)\s+(beats|ties|loses)$", r) for r in rows.values()), rows
    report = re.search(r"^Report:\s+(\S+)$", first, re.M)
    assert report and Path(report[1]).is_file()
    assert re.search(rf"^Checkpoints: {re.escape(str(tmp_path))}/checkpoints$", first, re.M)
    assert re.search(rf"^MLflow:\s+file:{re.escape(str(tmp_path))}/mlruns \(experiment shopseq, run \w+\)$", first, re.M)
    assert tables.history("gold_train")[0]["metadata"]["lineage"]["features"]["train_ranks"] == 2

    _assert_the_model_learned_and_beats_popularity(tables, tmp_path)

    assert main(_args(tmp_path, overrides=overrides)) == 0
    second = capsys.readouterr().out
    again = _table_versions(second)
    assert {t: again[t] for t in UNCHANGED_ON_RERUN} == {t: versions[t] for t in UNCHANGED_ON_RERUN}
    for stage in SKIPPED_ON_RERUN:
        assert re.search(rf"^{stage}\s+[\d.]+\s+skipped \(up to date\)$", second, re.M), second
    assert re.search(r"^ingest\s+[\d.]+\s+done \(no new rows: all duplicates\)$", second, re.M), second
    assert again["run_metrics"] == versions["run_metrics"] + 1  # every ingest records its run, even one that adds nothing
    assert _task_rows(second) == rows
    _assert_time_travel_reads_the_rows_training_read(spark, tables, tmp_path)


def _assert_the_model_learned_and_beats_popularity(tables, root: Path) -> None:
    """The loss falls over the epochs; on gold_test the model's next-item NDCG@10 is clearly above most-popular's and its purchase AUC above chance."""
    from shopseq.training.checkpoint import load_model

    _, state = load_model(root / "checkpoints" / "best.pt")
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
