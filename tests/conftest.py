"""One session-scoped local Spark for the whole suite, plus shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SHOPSEQ_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """local[2], 2 shuffle partitions, UI off, UTC, temp warehouse and local dirs."""
    from shopseq.jobs.config import SparkConfig
    from shopseq.jobs.spark import get_spark

    tmp = tmp_path_factory.mktemp("spark")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = get_spark(
        SparkConfig(
            master="local[2]",
            app_name="shopseq-tests",
            shuffle_partitions=2,
            driver_memory="2g",
            conf={
                "spark.sql.warehouse.dir": str(tmp / "warehouse"),
                "spark.local.dir": str(tmp / "local"),
                "spark.default.parallelism": "2",
                "spark.driver.extraJavaOptions": f"-Duser.timezone=UTC -Dderby.system.home={tmp / 'derby'}",
            },
        )
    )
    yield session
    session.stop()


@pytest.fixture
def cfg_factory(tmp_path: Path):
    """Build a validated Config for a test, with tables under its own tmp dir."""
    from shopseq.jobs.config import load_config

    def make(*overrides: str, env: str = "local"):
        return load_config(env, REPO / "conf", [f"app.data_root={tmp_path}", *overrides])

    return make


@pytest.fixture
def tables(spark, cfg_factory):
    """TableIO (delta-spark) rooted in the test's tmp dir."""
    from shopseq.jobs.tables import TableIO

    return TableIO(spark, cfg_factory())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA} (only present beside a developer checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained(spark, tmp_path_factory: pytest.TempPathFactory):
    """The suite's one end-to-end pipeline: ``shopseq run`` (generate -> predict) on a small generated dataset.

    Training runs on 2 gloo ranks through ``horovod.spark.run`` on the test session, as a user's ``make run``
    does. Every end-to-end check that can read it shares it (the run summary and re-run, evaluate, predict,
    notebooks, the cluster test's local-mode reference, freshness, the reliability chain's uninterrupted
    run); tests that write must work on a copy of ``root`` (``copy_root``) or leave its tables readable and
    its audit rows as they are. Returns a namespace with ``cfg``, ``tables``, ``root``, ``run`` (the
    pipeline's result, :func:`shopseq.jobs.stages.run.run_pipeline`), ``summary`` (the text ``shopseq run``
    prints), ``train`` (the train stage's result) and ``versions`` (each table's Delta version when the run ended).
    """
    from types import SimpleNamespace

    from shopseq.jobs.config import load_config
    from shopseq.jobs.stages.run import format_summary, run_pipeline
    from shopseq.jobs.tables import TableIO

    root = tmp_path_factory.mktemp("trained")
    cfg = load_config("local", REPO / "conf", [f"app.data_root={root}", *TRAINED_OVERRIDES])
    tables = TableIO(spark, cfg)
    from shopseq.jobs.catalog import TABLES

    result = run_pipeline(tables, cfg)
    versions = {name: tables.version(name) for name in TABLES}  # read back from each table's log when the run ended
    return SimpleNamespace(cfg=cfg, tables=tables, root=root, run=result, summary=format_summary(result), train=result["results"]["train"], versions=versions)


def copy_root(trained, dest: Path) -> Path:
    """A copy of the shared pipeline's data root to write in (Delta tables are relative to their folders).

    The copy gets a new MLflow store (the runs the checkpoints name stay readable in the original).
    """
    import shutil

    shutil.copytree(trained.root, dest, ignore=shutil.ignore_patterns("mlruns"))
    return dest


# Small and quick: 200 users over 6 weeks, short horizons so every split has labels; 2 Horovod ranks (gloo) on the
# test session, EPOCHS epochs. Per rank batch 32 at lr 0.0015 = global batch 64 at lr 0.003 once Horovod scales lr by 2.
EPOCHS = 4
TRAINED_OVERRIDES = [
    "generate.users=200", "generate.days=42",
    "features.purchase_horizon_days=3", "features.churn_horizon_days=7", "features.train_fraction=0.5", "features.val_fraction=0.25",
    "features.train_ranks=2", "features.row_groups_per_rank=2",
    "train.launcher=spark", "train.num_proc=2", f"train.epochs={EPOCHS}", f"train.patience={EPOCHS}",
    "train.dim=32", "train.layers=1", "train.batch_size=32", "train.lr=0.0015",
]  # fmt: skip
