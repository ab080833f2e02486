"""Every table-I/O operation on delta-spark, checked through the Delta log itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date, datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shopseq.jobs.tables import TableError, TableIO, table_ref
from tests.conftest import REPO

SCHEMA = "id long, name string, ts timestamp, event_date date"
ROWS = [
    (1, "a", datetime(2024, 1, 1, 8, 0, 0, 123456), date(2024, 1, 1)),
    (2, "b", datetime(2024, 1, 1, 9, 30), date(2024, 1, 1)),
    (3, "c", datetime(2024, 1, 2, 23, 59, 59), date(2024, 1, 2)),
]


@pytest.fixture
def df(spark):
    return spark.createDataFrame(ROWS, SCHEMA)


def _log(tables: TableIO, name: str) -> list[list[dict]]:
    """The JSON commits of the table's ``_delta_log``, oldest first, each a list of actions."""
    log_dir = Path(tables.ref(name).location, "_delta_log")
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in sorted(log_dir.glob("*.json"))]


def _live_partitions(tables: TableIO, name: str) -> list[str]:
    """Partition values of the live files (added and not removed), as the log's strings."""
    actions = [a for commit in _log(tables, name) for a in commit]
    removed = {a["remove"]["path"] for a in actions if "remove" in a}
    return sorted({a["add"]["partitionValues"]["event_date"] for a in actions if "add" in a and a["add"]["path"] not in removed})


def _rows(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.collect())


def test_table_ref_resolution(tmp_path):
    from shopseq.jobs.config import TablesConfig

    assert table_ref(TablesConfig(), "silver_events", str(tmp_path)).location == str(tmp_path / "tables" / "silver_events")
    uc = table_ref(TablesConfig(catalog="main", schema="shop"), "silver_events", "x")
    assert (uc.location, uc.is_catalog) == ("main.shop.silver_events", True)
    over = table_ref(TablesConfig(locations={"gold": "dev.ml.gold_v2", "raw": "s3://b/raw"}), "gold", "x")
    assert (over.location, over.is_catalog) == ("dev.ml.gold_v2", True)
    assert table_ref(TablesConfig(locations={"raw": "s3://b/raw"}), "raw", "x").location == "s3://b/raw"


def test_the_session_runs_delta_spark_from_the_cached_jars(spark):
    from shopseq.jobs.spark import delta_jars, delta_version

    assert spark.conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    assert delta_version() == "3.2.1"  # = DELTA_VERSION in the Makefile, whose JARs these are
    assert [os.path.basename(j) for j in delta_jars()] == ["delta-spark_2.12-3.2.1.jar", "delta-storage-3.2.1.jar"]
    assert set(delta_jars()) <= set(spark.sparkContext.getConf().get("spark.jars").split(","))


def test_append_creates_version_0_with_a_log_any_delta_reader_can_read(tables, df):
    commit = tables.append("events", df.repartition(1), partition_by=["event_date"], metadata={"stage": "test"})
    assert (commit.version, commit.num_rows, commit.skipped, commit.operation) == (0, 3, False, "WRITE")
    (v0,) = _log(tables, "events")
    proto = next(a["protocol"] for a in v0 if "protocol" in a)
    assert (proto["minReaderVersion"], proto["minWriterVersion"]) == (1, 2)
    meta = next(a["metaData"] for a in v0 if "metaData" in a)
    assert meta["partitionColumns"] == ["event_date"]
    fields = json.loads(meta["schemaString"])["fields"]
    assert [(f["name"], f["type"]) for f in fields] == [("id", "long"), ("name", "string"), ("ts", "timestamp"), ("event_date", "date")]
    assert _live_partitions(tables, "events") == ["2024-01-01", "2024-01-02"]
    stats = sorted(json.loads(a["add"]["stats"])["numRecords"] for a in v0 if "add" in a)
    assert stats == [1, 2]
    assertDataFrameEqual(tables.read("events"), df)
    assert tables.history("events")[0]["metadata"] == {"stage": "test"}
    assert tables.version("events") == 0


def test_append_overwrite_partitions_and_time_travel(tables, df, spark):
    tables.append("events", df, partition_by=["event_date"])
    more = spark.createDataFrame([(4, "d", datetime(2024, 1, 3, 1, 0), date(2024, 1, 3))], SCHEMA)
    assert tables.append("events", more, partition_by=["event_date"]).version == 1
    assert _rows(tables.read("events")) == sorted(ROWS + [(4, "d", datetime(2024, 1, 3, 1, 0), date(2024, 1, 3))])
    # Replace only 2024-01-02 (replaceWhere): ids 1, 2 (01-01) and 4 (01-03) stay, id 3 is replaced by 30.
    repl = spark.createDataFrame([(30, "c2", datetime(2024, 1, 2, 5, 0), date(2024, 1, 2))], SCHEMA)
    commit = tables.overwrite_partitions("events", repl, partition_by=["event_date"])
    assert commit.version == 2
    assert [r.id for r in tables.read("events").orderBy("id").collect()] == [1, 2, 4, 30]
    assert _live_partitions(tables, "events") == ["2024-01-01", "2024-01-02", "2024-01-03"]
    removed = [a["remove"] for a in _log(tables, "events")[2] if "remove" in a]
    assert {r["partitionValues"]["event_date"] for r in removed} == {"2024-01-02"}  # only the replaced partition
    # Named partitions: a row outside them is refused whole, and the table stays at version 2.
    with pytest.raises(TableError, match="events: the overwrite was not committed"):
        tables.overwrite_partitions("events", more, partition_by=["event_date"], values=[{"event_date": date(2024, 1, 1)}])
    assert tables.version("events") == 2
    # Time travel: by version and by timestamp.
    assert _rows(tables.read("events", version=0)) == sorted(ROWS)
    assert [r.id for r in tables.read("events", version=1).orderBy("id").collect()] == [1, 2, 3, 4]
    hist = tables.history("events")
    assert [h["version"] for h in hist] == [2, 1, 0]
    assert [h["operation"] for h in hist] == ["WRITE", "WRITE", "WRITE"]
    v1_time = hist[1]["timestamp"]
    assert [r.id for r in tables.read("events", timestamp=v1_time).orderBy("id").collect()] == [1, 2, 3, 4]


def test_overwrite_replaces_everything_and_keeps_history(tables, df, spark):
    tables.append("events", df, partition_by=["event_date"])
    new = spark.createDataFrame([(9, "z", datetime(2024, 2, 1), date(2024, 2, 1))], SCHEMA)
    assert tables.overwrite("events", new, partition_by=["event_date"]).version == 1
    assert _rows(tables.read("events")) == [(9, "z", datetime(2024, 2, 1), date(2024, 2, 1))]
    assert _live_partitions(tables, "events") == ["2024-02-01"]
    assert tables.read("events", version=0).count() == 3


def test_files_are_the_snapshot_of_one_version(tables, df, spark):
    tables.append("flat", df.drop("event_date").repartition(1))
    v0 = tables.files("flat")
    tables.overwrite("flat", spark.createDataFrame([(9, "z", datetime(2024, 2, 1))], "id long, name string, ts timestamp").repartition(1))
    assert tables.files("flat", version=0) == v0
    assert len(v0) == 1 and v0[0].startswith("file:") and v0[0].endswith(".parquet")
    assert tables.files("flat") != v0
    assert spark.read.parquet(*tables.files("flat", version=0)).count() == 3  # a plain Parquet reader gets version 0's rows


def test_merge_insert_writes_each_key_once(tables, df, spark):
    tables.create("keyed", df.schema, ["event_date"], constraints={"id_positive": "id > 0"}, not_null=["name"])
    first = tables.merge_insert("keyed", df, ["id"], metadata={"batch": 1})
    assert (first.version, first.operation, first.num_rows) == (1, "MERGE", 3)  # 0: CREATE TABLE with its constraints
    more = spark.createDataFrame([*ROWS, (4, "d", datetime(2024, 1, 3), date(2024, 1, 3))], SCHEMA)
    second = tables.merge_insert("keyed", more, ["id"], target_filter="t.event_date >= DATE '2024-01-01'")
    assert (second.version, second.num_rows) == (2, 1)
    assert [r.id for r in tables.read("keyed").orderBy("id").collect()] == [1, 2, 3, 4]
    assert tables.history("keyed")[1]["metadata"] == {"batch": 1}
    # The CHECK and NOT NULL constraints hold for every later write: a bad row refuses the whole commit.
    assert tables.properties("keyed")["delta.constraints.id_positive"] == "id > 0"
    bad = spark.createDataFrame([(-5, "x", datetime(2024, 1, 4), date(2024, 1, 4)), (6, "y", datetime(2024, 1, 4), date(2024, 1, 4))], SCHEMA)
    with pytest.raises(TableError, match=r"keyed: the insert-only MERGE was not committed: .*id_positive"):
        tables.merge_insert("keyed", bad, ["id"])
    with pytest.raises(TableError, match=r"keyed: the append was not committed: .*NOT NULL"):
        tables.append("keyed", spark.createDataFrame([(7, None, datetime(2024, 1, 4), date(2024, 1, 4))], SCHEMA), partition_by=["event_date"])
    assert tables.version("keyed") == 2
    assert tables.create("keyed", df.schema) is False  # already there: nothing happens


def test_change_data_feed_on_the_event_tables(tables, df, spark):
    tables.append("silver_events", df, partition_by=["event_date"])
    tables.overwrite_partitions("silver_events", spark.createDataFrame([(30, "c2", datetime(2024, 1, 2, 5), date(2024, 1, 2))], SCHEMA), ["event_date"])
    assert tables.properties("silver_events")["delta.enableChangeDataFeed"] == "true"
    changes = tables.changes("silver_events", 1).select("id", "_change_type", "_commit_version")
    assert _rows(changes) == [(3, "delete", 1), (30, "insert", 1)]
    tables.append("gold_train", df, partition_by=["event_date"])
    assert "delta.enableChangeDataFeed" not in tables.properties("gold_train")


def test_upsert_by_key_with_a_condition(tables, df, spark):
    tables.upsert("latest", df.drop("event_date"), keys=["id"])  # creates the table
    changes = spark.createDataFrame([(2, "B", datetime(2024, 1, 5)), (3, "old", datetime(2023, 1, 1)), (5, "e", datetime(2024, 1, 6))], "id long, name string, ts timestamp")
    commit = tables.upsert("latest", changes, keys=["id"], update_when="s.ts >= t.ts")
    assert (commit.version, commit.operation) == (1, "MERGE")
    assert _rows(tables.read("latest")) == [
        (1, "a", datetime(2024, 1, 1, 8, 0, 0, 123456)),
        (2, "B", datetime(2024, 1, 5)),
        (3, "c", datetime(2024, 1, 2, 23, 59, 59)),  # the older row did not replace the newer one
        (5, "e", datetime(2024, 1, 6)),
    ]
    with pytest.raises(TableError, match="plain column names"):
        tables.upsert("latest", changes, keys=["id; drop"])


def test_refused_write_leaves_table_unchanged(tables, df, spark):
    tables.append("events", df, partition_by=["event_date"])
    root = Path(tables.ref("events").location)
    before_files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    bad = spark.createDataFrame([(7, 7, datetime(2024, 1, 1), date(2024, 1, 1))], "id long, name long, ts timestamp, event_date date")
    with pytest.raises(TableError, match=r"changed \['name: string -> bigint'\]"):
        tables.append("events", bad, partition_by=["event_date"])
    assert tables.version("events") == 0
    assert _rows(tables.read("events")) == sorted(ROWS)
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == before_files
    with pytest.raises(TableError, match="partitioned by"):
        tables.append("events", df, partition_by=[])


# A writer whose only task blocks after it signals: killed with SIGKILL mid-write, it never reaches the commit.
_KILLED_WRITER = """
import sys, time
from pathlib import Path
from shopseq.jobs.config import load_config
from shopseq.jobs.spark import get_spark
from shopseq.jobs.tables import TableIO
root, marker = sys.argv[1], Path(sys.argv[2])
cfg = load_config("local", "conf", [f"app.data_root={root}"])
spark = get_spark(cfg.spark)
def slow(batches):
    for b in batches:
        yield b
        marker.write_text("writing")
        time.sleep(600)
df = spark.range(0, 1000, numPartitions=1).selectExpr("id", "'x' AS name", "TIMESTAMP '2024-01-01 00:00:00' AS ts", "DATE '2024-01-01' AS event_date")
TableIO(spark, cfg).append("events", df.mapInPandas(slow, df.schema), partition_by=["event_date"])
"""


def test_a_write_killed_before_its_commit_leaves_the_previous_version(tables, df, tmp_path):
    tables.append("events", df, partition_by=["event_date"])
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), str(marker)], cwd=REPO, env=env, start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never started its task"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and the Python worker: nothing gets to commit
        proc.wait()
    assert tables.version("events") == 0
    assert _rows(tables.read("events")) == sorted(ROWS)
    assert len(_log(tables, "events")) == 1


def test_concurrent_merge_inserts_double_nothing_and_lose_nothing(spark, cfg_factory):
    """Two insert-only MERGEs of overlapping keys race from two sessions: each key lands once; the loser retries."""
    cfg = cfg_factory()
    first = TableIO(spark.newSession(), cfg)  # a session each: a MERGE's commit metadata is session conf
    second = TableIO(spark.newSession(), cfg)
    make = lambda s, lo, hi: s.range(lo, hi).selectExpr("id", "'x' AS name", "TIMESTAMP '2024-01-01 00:00:00' AS ts", "DATE '2024-01-01' AS event_date")  # noqa: E731
    first.create("keyed", make(spark, 0, 1).schema, ["event_date"])
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def run(name: str, io: TableIO, lo: int, hi: int) -> None:
        barrier.wait()
        try:
            results[name] = io.merge_insert("keyed", make(io.spark, lo, hi), ["id"])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=run, args=("a", first, 0, 600)), threading.Thread(target=run, args=("b", second, 400, 1000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    a, b = results["a"], results["b"]
    assert not isinstance(a, Exception) and not isinstance(b, Exception), results
    assert a.num_rows + b.num_rows == 1000  # the 200 shared ids counted once, by whichever committed first
    assert sorted({a.version, b.version}) == [1, 2]
    ids = first.read("keyed").select("id")
    assert ids.count() == 1000 and ids.distinct().count() == 1000
    assert ids.agg(F.min("id"), F.max("id")).first() == (0, 999)


def test_catalog_names_resolve_through_the_session_catalog(spark, cfg_factory):
    io = TableIO(spark, cfg_factory("tables.catalog=spark_catalog", "tables.schema=shopseq_test"))
    assert io.ref("events").is_catalog and io.exists("events") is False


def test_missing_table_is_a_clear_error(tables):
    with pytest.raises(TableError, match="does not exist"):
        tables.read("nope")
    assert tables.version("nope") is None


def test_vacuum_deletes_superseded_and_orphan_files_only_past_the_retention(tables, df, spark):
    from shopseq.jobs.tables import local_path

    tables.append("flat", df.drop("event_date").repartition(1))
    root = Path(tables.ref("flat").location)
    (v0_file,) = [local_path(f) for f in tables.files("flat")]
    tables.overwrite("flat", spark.createDataFrame([(9, "z", datetime(2024, 2, 1))], "id long, name string, ts timestamp").repartition(1))
    orphan = root / "part-99999-orphan-of-a-killed-write.snappy.parquet"  # what a write killed before its commit leaves
    orphan.write_bytes(Path(v0_file).read_bytes())
    live = [local_path(f) for f in tables.files("flat")]
    on_disk = lambda: sorted(str(p) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts)  # noqa: E731
    assert on_disk() == sorted([v0_file, str(orphan), *live])
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    before = spark.conf.get(check, None)
    assert [local_path(f) for f in tables.vacuum("flat", retain_hours=0, dry_run=True)] == sorted([v0_file, str(orphan)])
    assert [local_path(f) for f in tables.vacuum("flat", retain_hours=0)] == sorted([v0_file, str(orphan)])
    assert on_disk() == live  # every Parquet file left is one the current snapshot references
    assert tables.version("flat") == 1  # VACUUM committed nothing: lineage that names version 1 stays current
    assert spark.conf.get(check, None) == before  # the retention check was turned off for that call only
    assert _rows(tables.read("flat")) == [(9, "z", datetime(2024, 2, 1))]
    with pytest.raises(TableError, match=r"vacuum: retain_hours must be >= 0, got -1"):
        tables.vacuum("flat", retain_hours=-1)


def test_a_table_another_process_creates_is_seen_after_this_session_looked(tables, df):
    """A first write killed before its commit leaves an empty ``_delta_log``; Delta then caches "no table" for the path in
    this session. The re-run, in its own process, creates the table: this session must see it."""
    import shutil

    tables.append("made_elsewhere", df, partition_by=["event_date"])
    (Path(tables.ref("later").location) / "_delta_log").mkdir(parents=True)  # what the killed first write left
    assert tables.exists("later") is False and tables.version("later") is None  # this session has now looked at "later"
    shutil.copytree(tables.ref("made_elsewhere").location, tables.ref("later").location, dirs_exist_ok=True)  # created behind its back
    assert tables.exists("later") is True and tables.version("later") == 0
    assert _rows(tables.read("later")) == sorted(ROWS)
