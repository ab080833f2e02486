"""Every table-I/O operation on the delta-rs backend, checked through the Delta log itself."""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs.tables import TableError, TableIO, table_ref

SCHEMA = "id long, name string, ts timestamp, event_date date"
ROWS = [
    (1, "a", datetime(2024, 1, 1, 8, 0, 0, 123456), date(2024, 1, 1)),
    (2, "b", datetime(2024, 1, 1, 9, 30), date(2024, 1, 1)),
    (3, "c", datetime(2024, 1, 2, 23, 59, 59), date(2024, 1, 2)),
]


@pytest.fixture
def df(spark):
    return spark.createDataFrame(ROWS, SCHEMA)


def _dt(tables: TableIO, name: str) -> DeltaTable:
    return DeltaTable(tables.ref(name).location)


def _log_actions(dt: DeltaTable, kind: str) -> list[dict]:
    """Every ``add``/``remove`` action in the JSON commits, oldest first."""
    log_dir = Path(dt.table_uri.replace("file://", ""), "_delta_log")
    return [a[kind] for f in sorted(log_dir.glob("*.json")) for a in map(json.loads, f.read_text().splitlines()) if kind in a]


def _partitions(dt: DeltaTable) -> list[str | None]:
    """Partition values of the live files, as the log's strings."""
    removed = {a["path"] for a in _log_actions(dt, "remove")}
    return sorted({a["partitionValues"]["event_date"] for a in _log_actions(dt, "add") if a["path"] not in removed})


def _rows(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.collect())


def test_table_ref_resolution(tmp_path):
    from jobs.config import TablesConfig

    assert table_ref(TablesConfig(), "silver_events", str(tmp_path)).location == str(tmp_path / "tables" / "silver_events")
    uc = table_ref(TablesConfig(catalog="main", schema="shop"), "silver_events", "x")
    assert (uc.location, uc.is_catalog) == ("main.shop.silver_events", True)
    over = table_ref(TablesConfig(locations={"gold": "dev.ml.gold_v2", "raw": "s3://b/raw"}), "gold", "x")
    assert (over.location, over.is_catalog) == ("dev.ml.gold_v2", True)
    assert table_ref(TablesConfig(locations={"raw": "s3://b/raw"}), "raw", "x").location == "s3://b/raw"


def test_append_creates_version_0_with_log_databricks_can_read(tables, df):
    commit = tables.append("events", df.repartition(1), partition_by=["event_date"], metadata={"stage": "test"})
    assert (commit.version, commit.num_rows, commit.skipped) == (0, 3, False)
    dt = _dt(tables, "events")
    assert dt.version() == 0
    proto = dt.protocol()
    assert (proto.min_reader_version, proto.min_writer_version) == (1, 2)
    assert dt.metadata().partition_columns == ["event_date"]
    schema = json.loads(dt.schema().to_json())
    assert [(f["name"], f["type"]) for f in schema["fields"]] == [("id", "long"), ("name", "string"), ("ts", "timestamp"), ("event_date", "date")]
    assert "timestamp_ntz" not in dt.schema().to_json()
    assert _partitions(dt) == ["2024-01-01", "2024-01-02"]
    assert not list(Path(tables.ref("events").location, "_delta_log").glob("*.checkpoint.parquet"))
    # Stats from the Parquet footers: exact counts, bounds that contain the data.
    stats = [json.loads(s) for s in _add_stats(dt)]
    assert sorted(s["numRecords"] for s in stats) == [1, 2]
    day1 = next(s for s in stats if s["numRecords"] == 2)
    assert day1["minValues"]["id"] == 1 and day1["maxValues"]["id"] == 2
    assert day1["minValues"]["ts"] == "2024-01-01T08:00:00.123Z" and day1["maxValues"]["ts"] == "2024-01-01T09:30:00.000Z"
    assert day1["nullCount"] == {"id": 0, "name": 0, "ts": 0}
    assertDataFrameEqual(tables.read("events"), df)
    assert tables.history("events")[0]["metadata"] == {"stage": "test"}


def _add_stats(dt: DeltaTable) -> list[str]:
    return [a["stats"] for a in _log_actions(dt, "add")]


def test_append_overwrite_partitions_and_time_travel(tables, df, spark):
    tables.append("events", df, partition_by=["event_date"])
    more = spark.createDataFrame([(4, "d", datetime(2024, 1, 3, 1, 0), date(2024, 1, 3))], SCHEMA)
    assert tables.append("events", more, partition_by=["event_date"]).version == 1
    assert _rows(tables.read("events")) == sorted(ROWS + [(4, "d", datetime(2024, 1, 3, 1, 0), date(2024, 1, 3))])
    # Replace only 2024-01-02: ids 1, 2 (01-01) and 4 (01-03) stay, id 3 is replaced by 30.
    repl = spark.createDataFrame([(30, "c2", datetime(2024, 1, 2, 5, 0), date(2024, 1, 2))], SCHEMA)
    commit = tables.overwrite_partitions("events", repl, partition_by=["event_date"])
    assert commit.version == 2
    assert [r.id for r in tables.read("events").orderBy("id").collect()] == [1, 2, 4, 30]
    assert _partitions(_dt(tables, "events")) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    removed = _log_actions(_dt(tables, "events"), "remove")
    assert {r["partitionValues"]["event_date"] for r in removed} == {"2024-01-02"}  # only the replaced partition
    # Time travel: by version and by timestamp.
    assert _rows(tables.read("events", version=0)) == sorted(ROWS)
    assert [r.id for r in tables.read("events", version=1).orderBy("id").collect()] == [1, 2, 3, 4]
    hist = tables.history("events")
    assert [h["version"] for h in hist] == [2, 1, 0]
    assert [h["operation"] for h in hist] == ["WRITE", "WRITE", "CREATE TABLE"]
    v1_time = hist[1]["timestamp"]
    assert [r.id for r in tables.read("events", timestamp=v1_time).orderBy("id").collect()] == [1, 2, 3, 4]


def test_overwrite_replaces_everything_and_keeps_history(tables, df, spark):
    tables.append("events", df, partition_by=["event_date"])
    new = spark.createDataFrame([(9, "z", datetime(2024, 2, 1), date(2024, 2, 1))], SCHEMA)
    assert tables.overwrite("events", new, partition_by=["event_date"]).version == 1
    assert _rows(tables.read("events")) == [(9, "z", datetime(2024, 2, 1), date(2024, 2, 1))]
    assert _partitions(_dt(tables, "events")) == ["2024-02-01"]
    assert tables.read("events", version=0).count() == 3


def test_idempotent_batch_write(tables, df):
    first = tables.write_batch("events", df, app_id="ingest", batch_version=1, partition_by=["event_date"])
    again = tables.write_batch("events", df, app_id="ingest", batch_version=1, partition_by=["event_date"])
    assert (first.version, first.skipped) == (0, False)
    assert (again.version, again.skipped) == (0, True)
    assert _dt(tables, "events").version() == 0
    assert _dt(tables, "events").transaction_version("ingest") == 1
    nxt = tables.write_batch("events", df.where("id = 1"), app_id="ingest", batch_version=2, partition_by=["event_date"])
    assert (nxt.version, nxt.num_rows) == (1, 1)
    assert tables.transaction_version("events", "ingest") == 2
    assert tables.read("events").count() == 4


def test_upsert_by_key(tables, df, spark):
    tables.upsert("latest", df.drop("event_date"), keys=["id"])  # creates the table
    changes = spark.createDataFrame([(2, "B", datetime(2024, 1, 5)), (5, "e", datetime(2024, 1, 6))], "id long, name string, ts timestamp")
    commit = tables.upsert("latest", changes, keys=["id"])
    assert (commit.version, commit.operation) == (1, "MERGE")
    assert _rows(tables.read("latest")) == [
        (1, "a", datetime(2024, 1, 1, 8, 0, 0, 123456)),
        (2, "B", datetime(2024, 1, 5)),
        (3, "c", datetime(2024, 1, 2, 23, 59, 59)),
        (5, "e", datetime(2024, 1, 6)),
    ]
    assert "timestamp_ntz" not in _dt(tables, "latest").schema().to_json()
    with pytest.raises(TableError, match="plain column names"):
        tables.upsert("latest", changes, keys=["id; drop"])


def test_failed_write_leaves_table_unchanged(tables, df, spark):
    tables.append("events", df, partition_by=["event_date"])
    root = Path(tables.ref("events").location)
    before_files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    # Files are written by Spark, then the commit is refused: `name` has the wrong type.
    bad = spark.createDataFrame([(7, 7, datetime(2024, 1, 1), date(2024, 1, 1))], "id long, name long, ts timestamp, event_date date")
    with pytest.raises(TableError, match=r"changed \['name: string -> bigint'\]"):
        tables.append("events", bad, partition_by=["event_date"])
    assert _dt(tables, "events").version() == 0
    assert _rows(tables.read("events")) == sorted(ROWS)
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == before_files  # staged files removed
    with pytest.raises(TableError, match="partitioned by"):
        tables.append("events", df, partition_by=[])


def test_refuses_deletion_vectors_and_column_mapping(tables, df):
    from deltalake import DeltaTable as DT
    from deltalake import TableFeatures

    tables.append("dv", df.drop("event_date"))
    DT(tables.ref("dv").location).alter.add_feature(TableFeatures.DeletionVectors, allow_protocol_versions_increase=True)
    with pytest.raises(TableError, match="deletion vectors"):
        tables.read("dv")
    # delta-rs cannot enable column mapping; commit what Databricks writes when it does (protocol 2/5 + mode).
    tables.append("cm", df.drop("event_date"))
    log_dir = Path(tables.ref("cm").location, "_delta_log")
    meta = next(a["metaData"] for a in map(json.loads, (log_dir / f"{0:020d}.json").read_text().splitlines()) if "metaData" in a)
    meta["configuration"] = {"delta.columnMapping.mode": "name", "delta.columnMapping.maxColumnId": "3"}
    schema = json.loads(meta["schemaString"])
    for i, field in enumerate(schema["fields"], start=1):
        field["metadata"] = {"delta.columnMapping.id": i, "delta.columnMapping.physicalName": f"col-{i}"}
    meta["schemaString"] = json.dumps(schema)
    commit = [{"protocol": {"minReaderVersion": 2, "minWriterVersion": 5}}, {"metaData": meta}]
    (log_dir / f"{1:020d}.json").write_text("\n".join(json.dumps(a) for a in commit) + "\n")
    with pytest.raises(TableError, match="column mapping"):
        tables.read("cm")


def test_catalog_names_need_delta_spark(spark, cfg_factory):
    io = TableIO(spark, cfg_factory("tables.catalog=main", "tables.schema=shop"))
    assert io.backend == "delta-rs"
    with pytest.raises(TableError, match="catalog tables need delta-spark"):
        io.exists("events")


def test_missing_table_is_a_clear_error(tables):
    with pytest.raises(TableError, match="does not exist"):
        tables.read("nope")
    assert tables.version("nope") is None
