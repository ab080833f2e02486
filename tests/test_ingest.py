"""Ingest: every quarantine reason, duplicates, late events, idempotent re-runs, metrics, and the shared samples."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from features.ingest import TimeBounds, classify_raw, to_bronze
from features.schema import EVENT_COLUMNS, EVENT_CONSTRAINTS, EVENT_SCHEMA
from jobs.common import InputError
from jobs.ingest import IngestIntegrityError, _check, main, run_ingest
from jobs.sources import PRESETS, resolve_source

REPO = Path(__file__).resolve().parent.parent
NOW = ["ingest.min_event_time=2024-01-01T00:00:00", "ingest.now=2024-01-10T00:00:00", "ingest.max_future_skew_hours=24"]
BOUNDS = TimeBounds(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 11, tzinfo=timezone.utc))
LINES = "value string, input_file string"
COUNTS = ("input_rows", "accepted", "quarantined", "duplicates")
REES46_HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"


def eid(fmt: str, raw: str) -> str:
    """The documented event id: sha2-256 hex of format, 0x1f, raw line."""
    return hashlib.sha256(f"{fmt}\x1f{raw}".encode()).hexdigest()


def write_lines(tmp_path: Path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def counts(m: dict) -> tuple[int, ...]:
    return tuple(m[k] for k in COUNTS)


def classified(spark, fmt: str, lines: list[str], bounds: TimeBounds = BOUNDS):
    """Lines through the source's preset -> classified records (no tables)."""
    source = resolve_source(PRESETS[fmt], fmt)
    return spark.createDataFrame([(v, "f.csv") for v in lines], LINES).transform(classify_raw, source, bounds, "b1")


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


# --------------------------------------------------------------------------- rules (transforms only)


def test_each_reason_first_failing_rule_and_boundaries(spark):
    lines = [
        "u1,i1,c1,pv,1704931200",  # exactly now + skew: inside (inclusive)
        "u1,i1,c1,pv,1704067200",  # exactly min_event_time: inside
        "u1,i1,c1,pv",  # 4 fields
        "",  # blank line
        "u1,i1,c1,pv,1704067200,x",  # 6 fields
        ",i2,c1,pv,1704196800",
        "u2,,c1,pv,1704196800",
        ",i4,c1,click,garbage",  # missing user AND bad time AND bad type: the first rule wins
        "u3,i3,c1,pv,yesterday",
        "u3,i3,c1,pv,1704067199",  # one second before min
        "u3,i3,c1,pv,1704931201",  # one second after now + skew
        "u3,i3,c1,click,1704196800",
    ]
    got = classified(spark, "taobao", lines).select("raw", "reason")
    reasons = [None, None, "unparseable_line", "unparseable_line", "unparseable_line", "missing_required", "missing_required",
               "missing_required", "unparseable_time", "before_min_time", "future_time", "unknown_event_type"]
    assertDataFrameEqual(got, spark.createDataFrame(list(zip(lines, reasons)), "raw string, reason string"))


def test_price_rules_header_and_time_pattern(spark):
    lines = [
        REES46_HEADER,
        "2024-01-02 10:00:00 UTC,view,p1,c1,,acme,9.99,u1,s1",
        "2024-01-02 10:00:00 UTC,view,p1,c1,,,,u1,s1",  # no price, no brand: fine
        "2024-01-02 10:00:00 UTC,purchase,p1,c1,,acme,-1.50,u1,s1",
        "2024-01-02 10:00:00 UTC,purchase,p1,c1,,acme,abc,u1,s1",
        "2024-01-02 10:00:00 UTC,purchase,p1,c1,,acme,Infinity,u1,s1",
        "2024-01-02 10:00:00 UTC,purchase,p1,c1,,acme,12,5,u1,s1",  # a decimal comma: one field too many
        "2024-01-02T10:00:00,view,p1,c1,,acme,1.0,u1,s1",  # not the preset's pattern
    ]
    t = ts("2024-01-02 10:00:00")
    want = [
        (lines[0], True, None, None, None, None),
        (lines[1], False, None, 9.99, "acme", t),
        (lines[2], False, None, None, None, t),
        (lines[3], False, "invalid_price", -1.5, "acme", t),
        (lines[4], False, "invalid_price", None, "acme", t),
        (lines[5], False, "invalid_price", None, "acme", t),
        (lines[6], False, "unparseable_line", None, None, None),
        (lines[7], False, "unparseable_time", 1.0, "acme", None),
    ]
    got = classified(spark, "rees46", lines).select(
        "raw", "is_header", "reason", *[F.when(~F.col("is_header") & ~F.col("reason").eqNullSafe("unparseable_line"), F.col(c)).alias(c) for c in ("price", "brand", "event_time")]
    )
    schema = "raw string, is_header boolean, reason string, price double, brand string, event_time timestamp"
    assertDataFrameEqual(got, spark.createDataFrame(want, schema))


def test_presets_map_values_and_times(spark):
    bounds = TimeBounds(datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2030, 1, 1, tzinfo=timezone.utc))
    cols = ["user_id", "item_id", "event_time", "event_type", "source_session_id", "event_id"]
    digi = ["session_id;user_id;item_id;timeframe;eventdate", "7;NA;81766;526309;2016-05-09", "8;42;31331;1031018;2016-05-09"]
    got = classified(spark, "diginetica", digi, bounds).where(~F.col("is_header")).select(*cols, "reason")
    want = [
        ("s7", "81766", ts("2016-05-09 00:08:46.309"), "view", "7", eid("diginetica", digi[1]), None),  # NA user -> "s<session>"
        ("42", "31331", ts("2016-05-09 00:17:11.018"), "view", "8", eid("diginetica", digi[2]), None),
    ]
    assertDataFrameEqual(got, spark.createDataFrame(want, "user_id string, item_id string, event_time timestamp, event_type string, "
                                                          "source_session_id string, event_id string, reason string"))
    rr = ["timestamp,visitorid,event,itemid,transactionid", "1433221332117,257597,view,355908,", "1433224214164,992329,addtocart,248676,",
          "1433223236124,599528,transaction,356475,4000"]
    got = classified(spark, "retailrocket", rr, bounds).where(~F.col("is_header")).select("user_id", "event_time", "event_type")
    want = [("257597", ts("2015-06-02 05:02:12.117"), "view"), ("992329", ts("2015-06-02 05:50:14.164"), "cart"),
            ("599528", ts("2015-06-02 05:33:56.124"), "purchase")]
    assertDataFrameEqual(got, spark.createDataFrame(want, "user_id string, event_time timestamp, event_type string"))


def test_generic_json_lines_from_config(spark, cfg_factory):
    cfg = cfg_factory(
        "source.format=generic", "source.reader=json", "source.time_format=unix_ms",
        "source.mapping={user_id: uid, item_id: sku, event_time: ts, event_type: kind, price: amount}",
        "source.event_types={pageview: view, buy_click: purchase}",
    )
    source = resolve_source(cfg.source)
    lines = ['{"uid": "u1", "sku": 5, "ts": 1704196800000, "kind": "buy_click", "amount": 3.5}',
             '{"uid": "u2", "sku": "i2", "ts": "1704196800123", "kind": "pageview", "extra": [1]}',
             '{"uid": null, "sku": "i2", "ts": 1704196800000, "kind": "pageview"}',
             '{"uid": "u3", "sku": "i3", "ts": 1704196800000, "kind": "pageview", "amount": "n/a"}',
             '{"uid": "u3", "sku": ']
    got = spark.createDataFrame([(v, "f.json") for v in lines], LINES).transform(classify_raw, source, BOUNDS, "b1")
    want = [("u1", "5", ts("2024-01-02 12:00:00"), "purchase", 3.5, None), ("u2", "i2", ts("2024-01-02 12:00:00.123"), "view", None, None),
            (None, "i2", ts("2024-01-02 12:00:00"), "view", None, "missing_required"),
            ("u3", "i3", ts("2024-01-02 12:00:00"), "view", None, "invalid_price"), (None, None, None, None, None, "unparseable_line")]
    assertDataFrameEqual(got.select("user_id", "item_id", "event_time", "event_type", "price", "reason"),
                         spark.createDataFrame(want, "user_id string, item_id string, event_time timestamp, event_type string, price double, reason string"))


def test_to_bronze_on_generated_rows(spark, cfg_factory):
    schema = "user_id string, item_id string, category_id string, event_type string, event_time timestamp, price double, brand string, session_hint string"
    t = ts("2024-01-05 08:00:00.000001")
    raw = spark.createDataFrame([("u1", "i1", "c1", "view", t, 2.5, None, "u1-s0"), ("u1", "i1", "c1", "view", t, 2.5, None, "u1-s0"),
                                 ("u2", "i2", "c2", "buy", t, 1.0, "b", "u2-s0")], schema)
    cfg = cfg_factory(*NOW)
    got = to_bronze(raw, cfg.ingest, resolve_source(cfg.source, "generated"), ingest_batch="bench")
    ident = '{"user_id":"u1","item_id":"i1","category_id":"c1","event_type":"view","event_time":"2024-01-05 08:00:00.000001","price":"2.5","brand":null,"session_hint":"u1-s0"}'
    want = [(eid("generated", ident), "u1", t, "view", "i1", "c1", 2.5, None, "u1-s0", date(2024, 1, 5), "bench")]  # dup collapsed, "buy" unknown
    assertDataFrameEqual(got, spark.createDataFrame(want, EVENT_SCHEMA))


def test_accounting_mismatch_raises():
    with pytest.raises(IngestIntegrityError, match="does not add up"):
        _check({"input_rows": 5, "accepted": 3, "quarantined": 1, "duplicates": 0})


# --------------------------------------------------------------------------- the job on tables


def test_every_reason_lands_in_quarantine(spark, tables, cfg_factory, tmp_path):
    good = "2024-01-02 10:00:00 UTC,view,p1,c1,,acme,9.99,u1,s1"
    bad = {
        "2024-01-02 10:00:00 UTC,view,p1": "unparseable_line",
        "2024-01-02 10:00:00 UTC,view,,c1,,acme,9.99,u1,s1": "missing_required",
        "soon,view,p1,c1,,acme,9.99,u1,s1": "unparseable_time",
        "1999-12-31 23:59:59 UTC,view,p1,c1,,acme,9.99,u1,s1": "before_min_time",
        "2024-01-11 00:00:01 UTC,view,p1,c1,,acme,9.99,u1,s1": "future_time",
        "2024-01-02 10:00:00 UTC,click,p1,c1,,acme,9.99,u1,s1": "unknown_event_type",
        "2024-01-02 10:00:00 UTC,view,p1,c1,,acme,-3,u1,s1": "invalid_price",
    }
    path = write_lines(tmp_path, "rees.csv", [REES46_HEADER, good, *bad])
    m = run_ingest(tables, cfg_factory(*NOW), input_path=path, fmt="rees46")
    assert counts(m) == (8, 1, 7, 0) and m["header_lines"] == 1
    assert m["by_reason"] == {r: 1 for r in bad.values()}
    q = tables.read("quarantine")
    assertDataFrameEqual(q.select("raw", "reason", "source_format", "input_file"),
                         spark.createDataFrame([(raw, r, "rees46", f"file:{path}") for raw, r in bad.items()], "raw string, reason string, source_format string, input_file string"))
    assert q.select("ingest_batch").distinct().collect()[0][0] == m["ingest_batch"]
    bronze = tables.read("bronze_events").select(*EVENT_COLUMNS)
    want = [(eid("rees46", good), "u1", ts("2024-01-02 10:00:00"), "view", "p1", "c1", 9.99, "acme", "s1", date(2024, 1, 2), m["ingest_batch"])]
    assertDataFrameEqual(bronze, spark.createDataFrame(want, EVENT_SCHEMA))


def test_duplicates_late_events_and_idempotent_reruns(spark, tables, cfg_factory, tmp_path):
    cfg = cfg_factory(*NOW)
    first = ["u1,i1,c1,pv,1704196800", "u1,i1,c1,pv,1704196800", "u1,i2,c1,cart,1704200400", "u2,i3,c2,buy,1704283200",
             "u2,i3,c2,buy,oops", "u2,i3,c2,buy,oops"]
    a = write_lines(tmp_path, "a.csv", first)
    m1 = run_ingest(tables, cfg, input_path=a, fmt="taobao")
    assert counts(m1) == (6, 3, 1, 2) and (m1["duplicate_events"], m1["duplicate_quarantined"]) == (1, 1)
    # Bronze: 0 CREATE TABLE (NOT NULL columns, CHECK constraints, change data feed), 1 the MERGE; quarantine the same.
    assert (m1["bronze_version"], m1["quarantine_version"]) == (1, 1)
    props = tables.properties("bronze_events")
    assert {k for k in props if k.startswith("delta.constraints.")} == {f"delta.constraints.{k}" for k in EVENT_CONSTRAINTS} and len(EVENT_CONSTRAINTS) == 3
    assert props["delta.enableChangeDataFeed"] == "true"
    rows = lambda b: [(eid("taobao", first[0]), "u1", ts("2024-01-02 12:00:00"), "view", "i1", "c1", None, None, None, date(2024, 1, 2), b),
                      (eid("taobao", first[2]), "u1", ts("2024-01-02 13:00:00"), "cart", "i2", "c1", None, None, None, date(2024, 1, 2), b),
                      (eid("taobao", first[3]), "u2", ts("2024-01-03 12:00:00"), "purchase", "i3", "c2", None, None, None, date(2024, 1, 3), b)]
    bronze_rows = rows(m1["ingest_batch"])
    assertDataFrameEqual(tables.read("bronze_events").select(*EVENT_COLUMNS), spark.createDataFrame(bronze_rows, EVENT_SCHEMA))
    q_before = sorted(tuple(r) for r in tables.read("quarantine").collect())
    assert [(r[1], r[2]) for r in q_before] == [("u2,i3,c2,buy,oops", "unparseable_time")]

    # The same input again: all duplicates, no commit to bronze or quarantine.
    m2 = run_ingest(tables, cfg, input_path=a, fmt="taobao")
    assert counts(m2) == (6, 0, 0, 6)
    assert (tables.version("bronze_events"), tables.version("quarantine")) == (1, 1)
    assertDataFrameEqual(tables.read("bronze_events").select(*EVENT_COLUMNS), spark.createDataFrame(bronze_rows, EVENT_SCHEMA))
    assert sorted(tuple(r) for r in tables.read("quarantine").collect()) == q_before

    # A new batch: one stored event again, one stored reject again, one late event (2024-01-01).
    late = "u3,i9,c3,pv,1704067200"
    b = write_lines(tmp_path, "b.csv", [first[0], late, first[4]])
    m3 = run_ingest(tables, cfg, input_path=b, fmt="taobao")
    assert counts(m3) == (3, 1, 0, 2) and (m3["bronze_version"], m3["quarantine_version"]) == (2, 1)
    added = set(tables.files("bronze_events", 2)) - set(tables.files("bronze_events", 1))
    assert added and all("/event_date=2024-01-01/" in f for f in added)
    got = tables.read("bronze_events").where(F.col("ingest_batch") == m3["ingest_batch"]).select("event_id", "event_date")
    assertDataFrameEqual(got, spark.createDataFrame([(eid("taobao", late), date(2024, 1, 1))], "event_id string, event_date date"))

    metrics = tables.read("run_metrics").orderBy("started_at").collect()
    assert [(r["stage"], r["ingest_batch"]) + tuple(r[k] for k in COUNTS) for r in metrics] == [
        ("ingest", m["ingest_batch"], *counts(m)) for m in (m1, m2, m3)
    ]
    for r in metrics:
        assert r["input_rows"] == r["accepted"] + r["quarantined"] + r["duplicates"] and r["finished_at"] >= r["started_at"]
    assert json.loads(metrics[0]["by_reason"]) == {"unparseable_time": 1} and json.loads(metrics[1]["by_reason"]) == {}


def test_two_concurrent_ingests_of_one_batch_write_each_event_once(spark, cfg_factory, tmp_path):
    """Both runs classify against an empty root and commit; the later MERGE conflicts, retries and finds the rows stored."""
    import threading

    from jobs.tables import TableIO

    cfg = cfg_factory(*NOW)
    lines = [f"u{i % 7},i{i % 11},c1,pv,{1704196800 + 60 * i}" for i in range(300)] + ["u1,i1,c1,pv,oops"]
    path = write_lines(tmp_path, "same.csv", lines)
    runs: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def ingest(k: int) -> None:
        io = TableIO(spark.newSession(), cfg)  # a session each, as two processes would have
        barrier.wait()
        try:
            runs[k] = run_ingest(io, cfg, input_path=path, fmt="taobao")
        except Exception as exc:  # noqa: BLE001 - reported below
            runs[k] = exc

    threads = [threading.Thread(target=ingest, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not any(isinstance(m, Exception) for m in runs.values()), runs
    a, b = runs[0], runs[1]
    tables = TableIO(spark, cfg)
    bronze = tables.read("bronze_events")
    assert bronze.count() == 300 and bronze.select("event_id").distinct().count() == 300  # none doubled, none lost
    assert tables.read("quarantine").count() == 1
    assert a["accepted"] + b["accepted"] == 300 and a["quarantined"] + b["quarantined"] == 1
    for m in (a, b):  # each run's own accounting still adds up: what the other committed first is its duplicates
        assert m["input_rows"] == 301 == m["accepted"] + m["quarantined"] + m["duplicates"]
    assert sorted(r["accepted"] for r in tables.read("run_metrics").collect()) == sorted([a["accepted"], b["accepted"]])


def test_main_quick_mode_and_input_errors(spark, tmp_path, capsys):
    path = write_lines(tmp_path, "t.csv", ["u1,i1,c1,pv,1704196800", "u1,i2,c1,pv,1704196801", "u1,i3,c1,pv,1704196802"])
    common = ["--conf-dir", str(REPO / "conf"), "--set", f"app.data_root={tmp_path}", *[x for kv in NOW for x in ("--set", kv)]]
    assert main(["--format", "taobao", "--input", path, "--limit", "2", *common]) == 0
    from jobs.config import load_config
    from jobs.tables import TableIO

    tables = TableIO(spark, load_config("local", REPO / "conf", [f"app.data_root={tmp_path}"]))
    assert tables.read("bronze_events").count() == 2
    capsys.readouterr()
    assert main(["--format", "taobao", "--input", str(tmp_path / "missing.csv"), *common]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: input {tmp_path / 'missing.csv'} does not exist")
    assert main(["--format", "tabao", "--input", path, *common]) == 2
    assert "unknown source format 'tabao'" in capsys.readouterr().err
    with pytest.raises(InputError, match="no input for source format 'rees46'"):
        run_ingest(tables, load_config("local", REPO / "conf", [f"app.data_root={tmp_path}"]), fmt="rees46")


# --------------------------------------------------------------------------- shared samples


@pytest.mark.shared_data
def test_taobao_sample_all_rows_accounted(shared_data, tables, cfg_factory):
    # Taobao's window 2017-11-25..2017-12-03 is Beijing time (UTC+8): the sample's last event is 2017-12-03 15:59:23 UTC.
    # Bounds in UTC (2017-11-25T00:00Z) would quarantine 1,355 in-window events of 2017-11-25 00:00-08:00 local time.
    cfg = cfg_factory("ingest.min_event_time=2017-11-25T00:00:00+08:00", "ingest.now=2017-12-04T00:00:00+08:00", "ingest.max_future_skew_hours=0")
    m = run_ingest(tables, cfg, input_path=str(shared_data / "taobao_head.csv"), fmt="taobao")
    assert (m["input_lines"], *counts(m)) == (84475, 84475, 84440, 35, 0)
    assert m["by_reason"] == {"before_min_time": 35}
    q = tables.read("quarantine")
    assert q.where(F.col("reason") != "before_min_time").count() == 0
    ts_max = q.select(F.max(F.split("raw", ",").getItem(4).cast("long"))).head()[0]
    assert ts_max < 1511539200  # all before 2017-11-25 00:00 +08:00


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "name, fmt, expected",
    [
        ("rees46_head.csv", "rees46", {"input_lines": 17435, "header_lines": 1, "input_rows": 17434, "accepted": 17429, "quarantined": 0, "duplicates": 5}),
        ("diginetica_sample.csv", "diginetica", {"input_lines": 12392, "header_lines": 1, "input_rows": 12391, "accepted": 12391, "quarantined": 0, "duplicates": 0}),
    ],
)
def test_rees46_and_diginetica_samples(shared_data, tables, cfg_factory, name, fmt, expected):
    m = run_ingest(tables, cfg_factory("ingest.now=2026-01-01T00:00:00"), input_path=str(shared_data / name), fmt=fmt)
    assert {k: m[k] for k in expected} == expected
