"""Issue 18, item 5: the whole pipeline by spark-submit on a real standalone cluster (a master, two 1-core workers on 127.0.0.1).

The code reaches the driver and the executors only through ``make dist``'s
``--py-files`` zip: both run a Python without shopseq installed
(:func:`tests.cluster.exec_python`), from a folder holding nothing but the zip
and the entry script extracted from it. The tables equal a local-mode run of
the same config; Spark's REST API shows that both executors ran tasks; every
process the fixture started is gone afterwards.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.cluster import (
    DELTA_JARS,
    ENTRY,
    ENV_PACK,
    ENV_VENV,
    PACKED_PYTHON,
    PIPELINE_SETS,
    PYFILES,
    ExecutorWatch,
    build_dist,
    cluster_env,
    exec_python,
    free_port,
    master_command,
    pipeline_args,
    run_probe,
    spark_bin,
    standalone_cluster,  # noqa: F401 - the session fixture
    stop_processes,
    submit_command,
    submit_dir,
    submit_packed_command,
    tail,
    worker_command,
)
from tests.checksums import checksum
from tests.conftest import REPO

LAUNCHERS = ("spark", "torch_distributor")
# Tables whose every row is a function of the config and the seed: equal row counts and checksums in both modes.
DETERMINISTIC = ("bronze_events", "quarantine", "silver_events", "sessions", "vocab", "gold_train", "gold_val", "gold_test")
# Columns that hold the wall clock of the run that wrote the row (bronze's and silver's ingest batch id): left out of checksums.
WALL_CLOCK = ("ingest_batch",)
# Tables that depend on the trained weights or the wall clock: checked for their shape (a prediction per user, every task
# evaluated), not their values (training differs: the cluster trains 2 Horovod ranks for 1 epoch, `trained` one process).
MODEL_OUTPUTS = ("run_metrics", "metrics", "predictions", "predictions_latest")


# --------------------------------------------------------------------------- the README shows what the test runs


def readme_block() -> list[str]:
    """The command lines of README.md's standalone block (continuations joined, comments and a trailing ``&`` dropped, single spaces)."""
    from tests.test_docs import readme_commands

    block = [c for c in readme_commands() if c.startswith(("$SPARK/", "SPARK=", "J=", "PY=", "export SPARK_LOCAL_IP"))]
    return [" ".join(re.sub(r"\s*&$", "", c).split()) for c in block]


def test_readme_cluster_section_is_the_commands_this_test_runs():
    """Rendered with the README's values (ports 7077, 8080-8082, 4040; ``$SPARK``, ``$J``, ``$PY``) the test's own builders give the README's lines."""
    expected = [
        "SPARK=.venv/lib/python3.11/site-packages/pyspark/bin",
        "J=$HOME/.cache/shopseq/jars/delta-3.2.1",
        "PY=$PWD/.venv/bin/python",
        "export SPARK_LOCAL_IP=127.0.0.1",
        " ".join(master_command("$SPARK", 7077, 8080)),
        " ".join(worker_command("$SPARK", 7077, 8081, "/tmp/shopseq-worker1")),
        " ".join(worker_command("$SPARK", 7077, 8082, "/tmp/shopseq-worker2")),
        " ".join(submit_command("$SPARK", 7077, "$J", "$PY", 4040, pipeline_args("/tmp/shopseq-cluster"))),
    ]
    assert readme_block() == expected
    assert spark_bin() == REPO / expected[0].split("=", 1)[1]  # the pyspark package's bin/ of this venv
    assert all((Path.home() / ".cache/shopseq/jars/delta-3.2.1" / j).is_file() for j in DELTA_JARS)


# --------------------------------------------------------------------------- what is submitted


@pytest.fixture(scope="session")
def submission(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The executors' and driver's Python (no shopseq), and a submit folder with only ``make dist``'s zip and the entry script from it."""
    tmp = tmp_path_factory.mktemp("submission")
    python = exec_python(tmp / "execpy")
    missing = run_probe(python, "import shopseq.jobs", tmp)
    assert missing.returncode == 1 and "ModuleNotFoundError: No module named 'shopseq'" in missing.stderr, missing.stderr
    stack = run_probe(python, "import torch, pyspark, petastorm, horovod.torch, delta", tmp)
    assert stack.returncode == 0, stack.stderr
    folder = submit_dir(tmp / "submit", build_dist(tmp / "build"))
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted([PYFILES, ENTRY])
    return SimpleNamespace(python=python, folder=folder)


def spark_submit(cluster, submission, args: list[str], log: Path, timeout_s: float, archive: Path | None = None) -> SimpleNamespace:
    """Run the entry script by spark-submit against ``cluster`` while polling the driver's REST API; returns rc, watch, seconds, log.

    With ``archive`` (``make dist-env``'s packed environment) the code travels in it instead of the ``--py-files`` zip.
    """
    from shopseq.jobs.spark import delta_jars_dir

    ui = free_port()
    spark, jars = str(spark_bin()), str(delta_jars_dir())
    if archive is None:
        cmd = submit_command(spark, cluster.port, jars, str(submission.python), ui, args)
    else:
        cmd = submit_packed_command(spark, cluster.port, jars, str(submission.python), ui, str(archive), args)
    watch = ExecutorWatch(ui)
    watch.start()
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=submission.folder, env=cluster_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            left = stop_processes([proc])
            watch.stop()
    assert not left, f"spark-submit left processes running: {left}"
    return SimpleNamespace(rc=rc, watch=watch, seconds=time.monotonic() - started, log=log)


def table_checksum(spark, location: str) -> tuple[int, str]:
    """(rows, order-independent checksum) of a Delta table, its :data:`WALL_CLOCK` columns left out."""
    df = spark.read.format("delta").load(location)
    return checksum(df.drop(*[c for c in WALL_CLOCK if c in df.columns]))


@pytest.fixture(scope="session")
def cluster_pipeline(standalone_cluster, submission, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:  # noqa: F811
    """The whole pipeline (train: ``horovod.spark.run``, 2 ranks) by spark-submit on the cluster, under its own data root."""
    tmp = tmp_path_factory.mktemp("cluster_pipeline")
    run = spark_submit(standalone_cluster, submission, pipeline_args(str(tmp / "data")), tmp / "submit.log", timeout_s=900)
    run.root = tmp / "data"
    return run


def assert_tables_equal_local_mode(spark, root: Path, trained: SimpleNamespace) -> None:
    """The cluster run under ``root`` holds exactly the local-mode run's data tables, a prediction per user and every task's metrics.

    The local-mode run is the suite's shared ``trained`` run (the test session, local[2]). Its data stages (generate ...
    features) have the settings of PIPELINE_SETS; only training differs (one process, 2 epochs), and the data tables do not
    depend on it (gold's file count follows train_ranks, its rows do not).
    """
    from shopseq.jobs.catalog import TABLES, catalog
    from shopseq.jobs.config import load_config

    remote, here = catalog(load_config("cluster", REPO / "conf", [f"app.data_root={root}", *PIPELINE_SETS])), catalog(trained.cfg)
    exists = {name: Path(remote.table(name).location).is_dir() for name in TABLES}
    assert {n for n, e in exists.items() if e} == {*DETERMINISTIC, *MODEL_OUTPUTS} - {"quarantine"}, exists  # generated data: nothing quarantined
    for name in DETERMINISTIC:
        if exists[name]:
            assert table_checksum(spark, remote.table(name).location) == table_checksum(spark, here.table(name).location), name
    # Model outputs: one prediction per user of silver, and the evaluation's rows keyed by what the data decides.
    users = spark.read.format("delta").load(here.table("silver_events").location).select("user_id").distinct().count()
    preds = spark.read.format("delta").load(remote.table("predictions_latest").location)
    assert preds.count() == preds.select("user_id").distinct().count() == users
    metrics = spark.read.format("delta").load(remote.table("metrics").location)
    assert {r["task"] for r in metrics.select("task").distinct().collect()} == {"next_item", "next_action", "purchase", "churn"}


def _failed(run: SimpleNamespace, cluster) -> str:
    """The assertion message of a failed submit: its exit code and time, the driver's log tail, the cluster's logs and executor errors."""
    return f"spark-submit exited {run.rc} after {run.seconds:.0f} s\n{tail(run.log, 6000)}\n{cluster.log_tails()}"


@pytest.mark.e2e
@pytest.mark.cluster
@pytest.mark.horovod
@pytest.mark.timeout(2400)  # the cluster's start and the whole pipeline run in the first test's setup
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_cluster_pipeline_equals_local_mode(launcher, standalone_cluster, submission, cluster_pipeline, trained, spark, tmp_path):  # noqa: F811
    from pyspark.sql import functions as F

    from shopseq.jobs.catalog import catalog
    from shopseq.jobs.config import TrainConfig, load_config, type_hints

    run = cluster_pipeline
    assert run.rc == 0, _failed(run, standalone_cluster)
    cluster_cfg = load_config("cluster", REPO / "conf", [f"app.data_root={run.root}", *PIPELINE_SETS])
    if launcher == "spark":
        # Both executors ran tasks (Spark's REST API on the driver's UI, polled during the run).
        busy = run.watch.executors_with_tasks()
        assert len(busy) == 2, (run.watch.tasks, run.watch.hosts, run.watch.errors)
        assert_tables_equal_local_mode(spark, run.root, trained)
        return
    choices = type_hints(TrainConfig)["launcher"].__args__
    if launcher not in choices:
        pytest.skip(f"train.launcher has no {launcher!r} yet (choices {choices}): issue 18 item 4 adds it in training/launch.py")
    # TorchDistributor: only train (2 ranks, a fresh checkpoint folder) on the cluster pipeline's data root. Predict is not
    # run again: the Horovod run above scored on the cluster, and a checkpoint is the same file whichever launcher wrote it
    # (rank 0 saves it), which the in-process scoring below checks against the Horovod model's inputs.
    ckpt = tmp_path / "checkpoints-td"
    again = spark_submit(
        standalone_cluster, submission,
        [*pipeline_args(str(run.root)), "--set", f"train.launcher={launcher}", "--set", f"train.checkpoint_dir={ckpt}", "--stages", "train"],
        tmp_path / "submit-td.log", timeout_s=420,
    )  # fmt: skip
    assert again.rc == 0, _failed(again, standalone_cluster)
    assert len(again.watch.executors_with_tasks()) == 2, (again.watch.tasks, again.watch.errors)  # one rank per 1-core executor
    from shopseq.training.checkpoint import load_model

    td_model, state = load_model(ckpt / "best.pt")
    assert state["epoch"] == 0 and len(state["history"]) == 1  # train.epochs=1, epochs counted from 0
    hvd_model, hvd_state = load_model(Path(catalog(cluster_cfg).checkpoints) / "best.pt")
    assert state["lineage"] == hvd_state["lineage"] and state["model_config"] == hvd_state["model_config"]  # same gold, vocabulary, model
    assert {k: v.shape for k, v in td_model.state_dict().items()} == {k: v.shape for k, v in hvd_model.state_dict().items()}
    # Both checkpoints predicted rows for every user of silver: the Horovod one by the cluster's predict stage (above).
    users = spark.read.format("delta").load(catalog(cluster_cfg).table("silver_events").location).select("user_id").distinct().count()
    scored = spark.read.format("delta").load(catalog(cluster_cfg).table("predictions").location).agg(F.countDistinct("user_id")).head()[0]
    assert scored == users


# --------------------------------------------------------------------------- the packed environment (make dist-env)


@pytest.fixture(scope="session")
def packed_env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``make dist-env``'s archive and venv, and a submit folder holding only the entry script; skips without them.

    The archive holds torch's CUDA build (several GB, minutes to pack), so ``make test`` does not build it: run
    ``make dist-env`` first. It packs the code of the commit it was built from, not of the working tree.
    """
    driver = ENV_VENV / "bin" / "python"
    if not (ENV_PACK.is_file() and driver.is_file()):
        pytest.skip(f"no packed environment ({ENV_PACK.relative_to(REPO)}): `make dist-env` builds it (several GB; not part of make test)")
    folder = tmp_path_factory.mktemp("submit-packed")
    (folder / ENTRY).parent.mkdir(parents=True)
    shutil.copy2(REPO / ENTRY, folder / ENTRY)
    return SimpleNamespace(python=driver, folder=folder, archive=ENV_PACK)


@pytest.mark.e2e
@pytest.mark.cluster
@pytest.mark.horovod
@pytest.mark.timeout(2400)
def test_packed_environment_runs_the_pipeline_without_py_files(packed_env, standalone_cluster, trained, spark, tmp_path):  # noqa: F811
    """`--archives dist/shopseq-0.1.0-env.tar.gz#environment` alone carries the code: Python workers and Horovod's ranks run ``./environment/bin/python``."""
    root = tmp_path / "data"
    run = spark_submit(standalone_cluster, packed_env, pipeline_args(str(root)), tmp_path / "submit.log", timeout_s=1500, archive=packed_env.archive)
    assert run.rc == 0, _failed(run, standalone_cluster)
    assert len(run.watch.executors_with_tasks()) == 2, (run.watch.tasks, run.watch.errors)
    # Each executor unpacked the archive in its working directory (<worker>/<app id>/<executor id>/environment).
    unpacked = sorted(standalone_cluster.root.glob(f"worker*/{run.watch.app_id}/*/{PACKED_PYTHON[2:]}"))
    assert len(unpacked) == 2, unpacked
    assert_tables_equal_local_mode(spark, root, trained)
