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
    """A small generated dataset taken through ingest, sessionize, features and a short single-process training.

    Shared (session-scoped) by the evaluate, predict and notebook tests; tests
    that write tables must leave the ones written here readable. Returns a
    namespace with ``cfg``, ``tables``, ``root`` and the ``train`` result.
    """
    from types import SimpleNamespace

    from shopseq.jobs.stages.build_features import run_features
    from shopseq.jobs.config import load_config
    from shopseq.jobs.stages.generate import landing_dir, write_generated
    from shopseq.jobs.stages.ingest import run_ingest
    from shopseq.jobs.stages.sessionize import run_sessionize
    from shopseq.jobs.tables import TableIO
    from shopseq.jobs.stages.train import run_train

    root = tmp_path_factory.mktemp("trained")
    cfg = load_config("local", REPO / "conf", [f"app.data_root={root}", *TRAINED_OVERRIDES])
    tables = TableIO(spark, cfg)
    write_generated(spark, cfg, landing_dir(cfg))
    run_ingest(tables, cfg)
    run_sessionize(tables, cfg, plot=False)
    run_features(tables, cfg)
    result = run_train(tables, cfg)
    return SimpleNamespace(cfg=cfg, tables=tables, root=root, train=result)


# Small and quick: about 200 users over 6 weeks, short horizons so every split has labels, 2 epochs in one process.
TRAINED_OVERRIDES = [
    "generate.users=200", "generate.days=42",
    "features.purchase_horizon_days=3", "features.churn_horizon_days=7", "features.train_fraction=0.5", "features.val_fraction=0.25",
    "features.train_ranks=1", "features.row_groups_per_rank=2",
    "train.launcher=local", "train.num_proc=1", "train.epochs=2", "train.dim=32", "train.layers=1", "train.batch_size=64", "train.lr=0.003",
]  # fmt: skip
