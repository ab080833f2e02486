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
    from jobs.config import SparkConfig
    from jobs.spark import get_spark

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
    from jobs.config import load_config

    def make(*overrides: str, env: str = "local"):
        return load_config(env, REPO / "conf", [f"app.data_root={tmp_path}", *overrides])

    return make


@pytest.fixture
def tables(spark, cfg_factory):
    """TableIO on the delta-rs backend, rooted in the test's tmp dir."""
    from jobs.tables import TableIO

    return TableIO(spark, cfg_factory())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED_DATA} (only present beside a developer checkout)")
    return SHARED_DATA
