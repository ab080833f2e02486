"""Ingest: every quarantine reason, duplicates, late events, idempotent re-runs, metrics, the bad-input battery
(one folder of 29 kinds, one ingest), JSON lines and hostile ids into silver, the OTTO and YooChoose presets,
refusals as one line, and the shared samples."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shopseq.features.ingest import TimeBounds, classify_raw, to_bronze
from shopseq.features.schema import EVENT_COLUMNS, EVENT_CONSTRAINTS, EVENT_SCHEMA
from shopseq.jobs.common import InputError
from shopseq.jobs.stages.ingest import IngestIntegrityError, _check, main, run_ingest
from shopseq.jobs.sources import PRESETS, resolve_source

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
    q_before = sorted(tables.read("quarantine").collect(), key=tuple)
    assert [(r["raw"], r["reason"], r["raw_base64"]) for r in q_before] == [("u2,i3,c2,buy,oops", "unparseable_time", None)]

    # The same input again: all duplicates, no commit to bronze or quarantine.
    m2 = run_ingest(tables, cfg, input_path=a, fmt="taobao")
    assert counts(m2) == (6, 0, 0, 6)
    assert (tables.version("bronze_events"), tables.version("quarantine")) == (1, 1)
    assertDataFrameEqual(tables.read("bronze_events").select(*EVENT_COLUMNS), spark.createDataFrame(bronze_rows, EVENT_SCHEMA))
    assert sorted(tables.read("quarantine").collect(), key=tuple) == q_before

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

    from shopseq.jobs.tables import TableIO

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
    from shopseq.jobs.config import load_config
    from shopseq.jobs.tables import TableIO

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


# --------------------------------------------------------------------------- the battery: every kind of bad input, one ingest per format

T0 = "2024-01-02 10:00:00 UTC"
# Ids that must come through ingest and sessionize byte for byte: quotes, commas, SQL and shell metacharacters,
# 10,000 characters, non-Latin scripts and emoji (a ZWJ sequence).
HOSTILE = [
    'a "quoted" id', "a,b,c", "'; DROP TABLE x;--", "Robert'); DROP TABLE students;--", "$(rm -rf /)", "`rm -rf /`",
    "back\\slash", "ab" * 5000, "中文用户", "مستخدم عربي", "🛒👩‍💻🇩🇪", "%s %d {0} ${HOME}",
]


def rees(item: str, user: str = "u1", t: str = T0, etype: str = "view", cat: str = "c1", brand: str = "acme", price: str = "9.99") -> str:
    """One REES46 line (fields as given: quote them yourself)."""
    return f"{t},{etype},{item},{cat},,{brand},{price},{user},s1"


def csv_field(v: str) -> str:
    """RFC 4180: quoted (with "" for ") when the value holds a separator, a quote or a line end."""
    return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\r\n') else v


def text_bytes(lines: list[str], end: str = "\n", encoding: str = "utf-8") -> bytes:
    return "".join(line + end for line in lines).encode(encoding)


def battery_cases() -> list[dict]:
    """One file per kind of bad (or awkward) input with its expected accounting: the raw lines accepted,
    quarantined rows by reason, header lines and duplicates; they sum to the file's physical lines."""
    import bz2
    import gzip

    h = REES46_HEADER
    hostile = [rees(csv_field(HOSTILE[(i + 1) % len(HOSTILE)]), user=csv_field(v), cat=csv_field(HOSTILE[(i + 2) % len(HOSTILE)]),
                    t=f"2024-01-03 10:{i:02d}:00 UTC") for i, v in enumerate(HOSTILE)]
    multiline = [f'{T0},view,p_ml,c1,,"Acme', 'Inc",9.99,u1,s1']  # a quoted field spanning two lines
    prices_bad = ["abc", "-1.50", "NaN", "Infinity", "1e400", '"12,5"']
    times = {"1969-12-31 23:59:59 UTC": "before_min_time", "2024-01-11 00:00:01 UTC": "future_time", "9999-12-31 23:59:59 UTC": "future_time",
             "2024-02-30 10:00:00 UTC": "unparseable_time", "yesterday": "unparseable_time", "": "unparseable_time",
             "2024-01-02T10:00:00": "unparseable_time"}
    c = lambda name, data, accepted=(), quarantined=None, headers=0, duplicates=0: dict(  # noqa: E731
        name=name, data=data, accepted=list(accepted), quarantined=quarantined or {}, headers=headers, duplicates=duplicates)
    return [
        c("bom.csv", b"\xef\xbb\xbf" + text_bytes([h, rees("p_bom")]), [rees("p_bom")], headers=1),
        c("crlf.csv", text_bytes([h, rees("p_crlf1"), rees("p_crlf2")], end="\r\n"), [rees("p_crlf1"), rees("p_crlf2")], headers=1),
        c("lone_cr.csv", text_bytes([rees("p_cr1"), rees("p_cr2")], end="\r"), [rees("p_cr1"), rees("p_cr2")]),
        c("no_final_newline.csv", rees("p_nonl").encode(), [rees("p_nonl")]),
        # UTF-16 (BOM FF FE): split at 0x0A, so the 2 text lines are 3 physical lines, each with NULs or the BOM.
        c("utf16.csv", (h + "\n" + rees("p_utf16") + "\n").encode("utf-16"), quarantined={"invalid_encoding": 3}),
        c("latin1.csv", text_bytes([rees("p_lat", brand="café"), rees("p_lat", brand="cafè")], encoding="latin-1"), quarantined={"invalid_encoding": 2}),
        c("garbage.bin", bytes(range(256)), quarantined={"invalid_encoding": 3}),  # lines end at 0x0A and the lone 0x0D
        c("control_chars.csv", text_bytes([rees("p_ctl", brand="a\x00b"), rees("p_ctl", brand="a\x01b")]), quarantined={"invalid_encoding": 2}),
        c("multiline_field.csv", text_bytes(multiline), quarantined={"bad_quoting": 2}),
        c("stray_quote.csv", text_bytes([rees("p_sq", brand='12" TV')]), quarantined={"bad_quoting": 1}),
        c("quote_escapes.csv", text_bytes([rees("p_esc", brand='"The ""Best"" Co"')]), [rees("p_esc", brand='"The ""Best"" Co"')]),
        c("json_in_field.csv", text_bytes([rees("p_nj", brand='"{""a"": 1, ""b"": [1, 2]}"')]), [rees("p_nj", brand='"{""a"": 1, ""b"": [1, 2]}"')]),
        c("null_ids.csv", text_bytes([rees("p_null", user="NULL"), rees("p_null", user="null"), rees("NULL", user="u_null"), rees("p_null", user="\\N")]),
          quarantined={"missing_required": 4}),
        c("empty_ids.csv", text_bytes([rees("p_empty", user=""), rees("", user="u_empty")]), quarantined={"missing_required": 2}),
        c("blank_ids.csv", text_bytes([rees("p_blank", user="   "), rees("p_blank2", user='"  "')]), quarantined={"missing_required": 2}),
        c("column_count.csv", text_bytes([rees("p_extra") + ",x", f"{T0},view,p_few,c1,,acme,9.99,u1"]), quarantined={"unparseable_line": 2}),
        c("blank_lines.csv", b"\n   \n\t\n", quarantined={"unparseable_line": 3}),
        c("tab_separated.csv", text_bytes([rees("p_tsv").replace(",", "\t")]), quarantined={"unparseable_line": 1}),
        c("prices.csv", text_bytes([rees(f"p_pr{i}", price=p) for i, p in enumerate(prices_bad)] + [rees("p_pr_zero", price="0")]),
          [rees("p_pr_zero", price="0")], quarantined={"invalid_price": 6}),
        c("times.csv", text_bytes([rees(f"p_t{i}", t=t) for i, t in enumerate(times)]),
          quarantined={"before_min_time": 1, "future_time": 2, "unparseable_time": 4}),
        c("event_types.csv", text_bytes([rees("p_et1", etype="click"), rees("p_et2", etype=""), rees("p_et3", etype="VIEW")]),
          quarantined={"unknown_event_type": 3}),
        c("duplicate_line.csv", text_bytes([rees("p_dup"), rees("p_dup")]), [rees("p_dup")], duplicates=1),
        c("same_event_other_payload.csv", text_bytes([rees("p_dp", price="1.00"), rees("p_dp", price="2.00")]),
          [rees("p_dp", price="1.00"), rees("p_dp", price="2.00")]),
        c("header_mid_file.csv", text_bytes([h, rees("p_hm1"), h, rees("p_hm2")]), [rees("p_hm1"), rees("p_hm2")], headers=2),
        c("empty.csv", b""),
        c("gzip.csv.gz", gzip.compress(text_bytes([h, rees("p_gz1"), rees("p_gz2")]), mtime=0), [rees("p_gz1"), rees("p_gz2")], headers=1),
        c("bzip2.csv.bz2", bz2.compress(text_bytes([h, rees("p_bz1"), rees("p_bz2")])), [rees("p_bz1"), rees("p_bz2")], headers=1),
        c("long_line.csv", text_bytes([rees("x" * 1_000_000)]), [rees("x" * 1_000_000)]),
        c("hostile_ids.csv", text_bytes(hostile), hostile),
    ]


def test_csv_battery_every_line_accounted_and_hostile_ids_kept(spark, tables, cfg_factory, tmp_path):
    """29 kinds of bad or awkward CSV input in one folder, one ingest: per file, the accepted events and the
    quarantine rows by reason (every reason code among them); in all, accepted + quarantined + duplicates +
    header lines = physical lines."""
    import base64
    from collections import Counter

    cases = battery_cases()
    folder = tmp_path / "battery"
    folder.mkdir()
    physical = 0
    for case in cases:
        (folder / case["name"]).write_bytes(case["data"])
        n = len(case["accepted"]) + sum(case["quarantined"].values()) + case["headers"] + case["duplicates"]
        physical += n
    m = run_ingest(tables, cfg_factory(*NOW), input_path=str(folder), fmt="rees46")

    want_q = Counter({(case["name"], r): n for case in cases for r, n in case["quarantined"].items()})
    want_ids = {eid("rees46", line) for case in cases for line in case["accepted"]}
    assert m["input_files"] == len(cases) and m["input_lines"] == m["input_records"] == physical == 81
    assert (m["header_lines"], m["duplicates"]) == (6, 1)
    assert counts(m) == (75, len(want_ids), sum(want_q.values()), 1) == (75, 31, 43, 1)
    assert m["by_reason"] == {"invalid_encoding": 10, "bad_quoting": 3, "unparseable_line": 6, "missing_required": 8, "unparseable_time": 4,
                              "before_min_time": 1, "future_time": 2, "unknown_event_type": 3, "invalid_price": 6}
    q = tables.read("quarantine")
    got_q = Counter({(r["input_file"].rsplit("/", 1)[-1], r["reason"]): r["count"] for r in q.groupBy("input_file", "reason").count().collect()})
    assert got_q == want_q
    assert [tuple(r) for r in q.select("source_format", "ingest_batch").distinct().collect()] == [("rees46", m["ingest_batch"])]
    bronze = tables.read("bronze_events")
    assert {r[0] for r in bronze.select("event_id").collect()} == want_ids and bronze.count() == 31
    one = rees("p_bom")  # a whole bronze row: the line (its BOM dropped), parsed
    want_row = [(eid("rees46", one), "u1", ts("2024-01-02 10:00:00"), "view", "p_bom", "c1", 9.99, "acme", "s1", date(2024, 1, 2), m["ingest_batch"])]
    assertDataFrameEqual(bronze.where(F.col("item_id") == "p_bom").select(*EVENT_COLUMNS), spark.createDataFrame(want_row, EVENT_SCHEMA))

    # Undecodable bytes: distinct lines stay distinct, kept byte for byte in raw_base64; raw is text with U+FFFD.
    latin = text_bytes([rees("p_lat", brand="café"), rees("p_lat", brand="cafè")], encoding="latin-1").split(b"\n")[:2]
    got = q.where(F.col("input_file").endswith("/latin1.csv")).select("raw", "raw_base64").collect()
    assert sorted((r["raw"], r["raw_base64"]) for r in got) == sorted(
        (b.decode("utf-8", "replace"), base64.b64encode(b).decode()) for b in latin)
    assert q.where(F.col("reason") != "invalid_encoding").where(F.col("raw_base64").isNotNull()).count() == 0

    # Values: "" unescaped, JSON kept as text, a 1 MB id whole, the BOM and line ends not in the data.
    want = {"p_esc": 'The "Best" Co', "p_nj": '{"a": 1, "b": [1, 2]}', "p_bom": "acme", "p_crlf2": "acme", "p_cr2": "acme"}
    got = {r["item_id"]: r["brand"] for r in bronze.where(F.col("item_id").isin(list(want))).select("item_id", "brand").collect()}
    assert got == want
    assert bronze.where(F.length("item_id") == 1_000_000).select(F.md5("item_id")).head()[0] == hashlib.md5(b"x" * 1_000_000).hexdigest()
    assert bronze.where(F.col("item_id") == "p_pr_zero").select("price").head()[0] == 0.0

    # Hostile ids, CSV-quoted where needed, unchanged in bronze (silver: the JSON test below, with the same ids and more).
    n = len(HOSTILE)
    want_rows = [(HOSTILE[i], HOSTILE[(i + 1) % n], HOSTILE[(i + 2) % n]) for i in range(n)]
    hostile_ids = [eid("rees46", line) for line in cases[-1]["accepted"]]
    got = bronze.where(F.col("event_id").isin(hostile_ids)).select("user_id", "item_id", "category_id").collect()
    assert sorted(tuple(r) for r in got) == sorted(want_rows)


@pytest.mark.e2e  # an ingest and a sessionize: about 45 s on 2 busy cores
def test_json_lines_nested_paths_bad_lines_and_hostile_ids(spark, tables, cfg_factory, tmp_path):
    """Generic JSON lines, one ingest: a mapping into nested objects (user.id), every bad line with its reason,
    and hostile ids (newlines and tabs too, escaped or not) unchanged in bronze and silver."""
    from shopseq.jobs.stages.sessionize import run_sessionize

    cfg = cfg_factory(*NOW, "tables.optimize=false", "source.format=generic", "source.reader=json", "source.time_format=unix_s",
                      "source.mapping={user_id: user.id, item_id: item, category_id: cat, event_time: ts, event_type: kind}")
    values = [*HOSTILE, "two\nlines", "tab\there", 'quote " and backslash \\']
    n, t = len(values), 1704196800
    good = [json.dumps({"user": {"id": v}, "item": values[(i + 1) % n], "cat": values[(i + 2) % n], "ts": t + i, "kind": "view"}, ensure_ascii=i % 2 == 0)
            for i, v in enumerate(values)]
    numeric = json.dumps({"user": {"id": 42}, "item": 7, "cat": None, "ts": t, "kind": "cart"})
    bad = {
        json.dumps({"uid": "u1", "item": "i1", "ts": t, "kind": "view"}): "missing_required",  # flat: the mapping reads user.id
        json.dumps({"user": "u-flat", "item": "i1", "ts": t, "kind": "view"}): "missing_required",
        json.dumps({"user": {"id": "NULL"}, "item": "i1", "ts": t, "kind": "view"}): "missing_required",
        "[1, 2]": "unparseable_line",
        '{"user": {"id": "u9"}, "item": ': "unparseable_line",
        json.dumps({"user": {"id": "u9"}, "item": "i9", "ts": t, "kind": "click"}): "unknown_event_type",
    }
    pretty = ["{", '  "item": "i1"', "}"]  # one object over three lines: three unparseable lines
    bom_line = json.dumps({"user": {"id": "u-bom"}, "item": "i-bom", "ts": t, "kind": "view"})
    folder = tmp_path / "json"
    folder.mkdir()
    (folder / "events.jsonl").write_text("\n".join([*good, numeric, *bad, *pretty]) + "\n")
    (folder / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + bom_line.encode() + b"\n")
    (folder / "latin1.jsonl").write_bytes(json.dumps({"user": {"id": "é"}, "item": "i1", "ts": t, "kind": "view"}, ensure_ascii=False).encode("latin-1") + b"\n")
    m = run_ingest(tables, cfg, input_path=str(folder), fmt="generic")
    assert (m["input_lines"], m["header_lines"], *counts(m)) == (27, 0, 27, 17, 10, 0)
    assert m["by_reason"] == {"invalid_encoding": 1, "unparseable_line": 5, "missing_required": 3, "unknown_event_type": 1}
    got = tables.read("quarantine").where(F.col("input_file").endswith("/events.jsonl")).select("raw", "reason").collect()
    assert sorted(tuple(r) for r in got) == sorted([*bad.items(), *[(p, "unparseable_line") for p in pretty]])
    assert tables.read("bronze_events").where(F.col("event_id") == eid("generic", bom_line)).select("user_id").head()[0] == "u-bom"

    want = [(values[i], values[(i + 1) % n], values[(i + 2) % n]) for i in range(n)] + [("42", "7", None), ("u-bom", "i-bom", None)]
    run_sessionize(tables, cfg, plot=False)
    for table in ("bronze_events", "silver_events"):
        got = tables.read(table).select("user_id", "item_id", "category_id").collect()
        assert sorted(tuple(r) for r in got) == sorted(want), table


OTTO = [
    '{"session": 12899779, "events": [{"aid": 59625, "ts": 1661724000278, "type": "clicks"}, {"aid": 59625, "ts": 1661724026000, "type": "carts"}, '
    '{"aid": 1142000, "ts": 1661724058352, "type": "orders"}]}',
    '{"session": 12899780, "events": [{"aid": 1142000, "ts": 1661724000378, "type": "clicks"}, {"aid": 1142000, "ts": 1661724000378, "type": "clicks"}, '
    '{"aid": 7, "ts": 1661724000378, "type": "wishlist"}]}',
    '{"session": 12899781, "events": []}',
    '{"session": 12899782, "events": [{"aid": 5, "ts": "soon", "type": "clicks"}, 42]}',
    "not json",
]


def test_otto_sessions_explode_into_events(spark, tables, cfg_factory, tmp_path):
    """OTTO JSON lines: one record per element of events (one for a line without any), every record accounted for."""
    path = write_lines(tmp_path, "train.jsonl", OTTO)
    m = run_ingest(tables, cfg_factory("ingest.now=2022-09-05T00:00:00"), input_path=path, fmt="otto")
    assert (m["input_lines"], m["input_records"], m["header_lines"]) == (5, 10, 0)
    assert counts(m) == (10, 4, 5, 1) and m["duplicate_events"] == 1  # the repeated click of session 12899780
    assert m["by_reason"] == {"unparseable_line": 2, "missing_required": 1, "unparseable_time": 1, "unknown_event_type": 1}
    ident = lambda s, a, ts, ty: f'{{"session":"{s}","aid":"{a}","ts":"{ts}","type":"{ty}"}}'  # noqa: E731 - an element's raw identity
    b = m["ingest_batch"]
    want = [
        (eid("otto", ident(12899779, 59625, 1661724000278, "clicks")), "12899779", ts("2022-08-28 22:00:00.278"), "view", "59625", None, None, None, "12899779", date(2022, 8, 28), b),
        (eid("otto", ident(12899779, 59625, 1661724026000, "carts")), "12899779", ts("2022-08-28 22:00:26"), "cart", "59625", None, None, None, "12899779", date(2022, 8, 28), b),
        (eid("otto", ident(12899779, 1142000, 1661724058352, "orders")), "12899779", ts("2022-08-28 22:00:58.352"), "purchase", "1142000", None, None, None, "12899779", date(2022, 8, 28), b),
        (eid("otto", ident(12899780, 1142000, 1661724000378, "clicks")), "12899780", ts("2022-08-28 22:00:00.378"), "view", "1142000", None, None, None, "12899780", date(2022, 8, 28), b),
    ]
    assertDataFrameEqual(tables.read("bronze_events").select(*EVENT_COLUMNS), spark.createDataFrame(want, EVENT_SCHEMA))
    q = {(r["raw"], r["reason"]) for r in tables.read("quarantine").collect()}
    assert q == {(OTTO[4], "unparseable_line"), ('{"session":"12899782","events":"42"}', "unparseable_line"),
                 (ident(12899782, 5, "soon", "clicks"), "unparseable_time"), (OTTO[2], "missing_required"),
                 (ident(12899780, 7, 1661724000378, "wishlist"), "unknown_event_type")}


def test_yoochoose_clicks_and_buys_share_one_root(spark, tables, cfg_factory, tmp_path):
    """YooChoose: the session is the user, clicks are views, buys purchases; category 0 and price 0 are missing.
    Both files go into one data root; another dataset's format is refused there with one line."""
    cfg = cfg_factory("ingest.now=2014-10-01T00:00:00")
    clicks = ["1,2014-04-07T10:51:09.277Z,214536502,0", "1,2014-04-07T10:54:09.868Z,214536500,S", "2,2014-04-07T13:56:37.614Z,214662742,2053513485"]
    buys = ["420374,2014-04-06T18:44:58.314Z,214537888,12462,1", "420374,2014-04-06T18:44:58.325Z,214537850,0,0"]
    m1 = run_ingest(tables, cfg, input_path=write_lines(tmp_path, "yoochoose-clicks.dat", clicks), fmt="yoochoose_clicks")
    m2 = run_ingest(tables, cfg, input_path=write_lines(tmp_path, "yoochoose-buys.dat", buys), fmt="yoochoose_buys")
    assert counts(m1) == (3, 3, 0, 0) and counts(m2) == (2, 2, 0, 0)
    b1, b2 = m1["ingest_batch"], m2["ingest_batch"]
    want = [
        (eid("yoochoose_clicks", clicks[0]), "1", ts("2014-04-07 10:51:09.277"), "view", "214536502", None, None, None, "1", date(2014, 4, 7), b1),
        (eid("yoochoose_clicks", clicks[1]), "1", ts("2014-04-07 10:54:09.868"), "view", "214536500", "S", None, None, "1", date(2014, 4, 7), b1),
        (eid("yoochoose_clicks", clicks[2]), "2", ts("2014-04-07 13:56:37.614"), "view", "214662742", "2053513485", None, None, "2", date(2014, 4, 7), b1),
        (eid("yoochoose_buys", buys[0]), "420374", ts("2014-04-06 18:44:58.314"), "purchase", "214537888", None, 12462.0, None, "420374", date(2014, 4, 6), b2),
        (eid("yoochoose_buys", buys[1]), "420374", ts("2014-04-06 18:44:58.325"), "purchase", "214537850", None, None, None, "420374", date(2014, 4, 6), b2),
    ]
    assertDataFrameEqual(tables.read("bronze_events").select(*EVENT_COLUMNS), spark.createDataFrame(want, EVENT_SCHEMA))
    with pytest.raises(InputError) as err:
        run_ingest(tables, cfg, input_path=write_lines(tmp_path, "t.csv", ["u1,i1,c1,pv,1396867869"]), fmt="taobao")
    assert str(err.value) == (f"the tables under {tmp_path} already hold yoochoose_buys, yoochoose_clicks events; "
                              "run 'taobao' data into its own root with --set app.data_root=DIR")


def test_refusals_are_one_line_and_exit_2(spark, tmp_path, capsys):
    """Input and locations ingest cannot use end in one line on stderr and exit 2, never a Python traceback (nor, for a
    truncated .gz, Spark's Java stack trace); an ingest that accepts nothing says why (top reasons) after committing
    its rejects, and `shopseq run` stops there."""
    import gzip
    import re

    from shopseq.jobs.config import load_config
    from shopseq.jobs.stages.run import main as run_main
    from shopseq.jobs.tables import TableIO

    root, conf = tmp_path / "root", ["--conf-dir", str(REPO / "conf"), *[x for kv in NOW for x in ("--set", kv)]]

    def cli(stage, *args: str, data_root: Path = root) -> tuple[int, str]:
        capsys.readouterr()
        rc = stage([*args, *conf, "--set", f"app.data_root={data_root}"])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return rc, (err.strip().splitlines() or [""])[-1]

    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"u1,i1,c1,pv\n\xff\xfe\n\nu2,i2\x00,c1,pv,1704196800\n")
    rc, line = cli(main, "--format", "taobao", "--input", str(bad))
    assert rc == 2 and re.fullmatch(
        rf"shopseq ingest: error: no event of {re.escape(str(bad))} was accepted as taobao: 4 lines, 4 quarantined "
        r"\(invalid_encoding 2, unparseable_line 2\); the rejects are in the quarantine table \(ingest_batch ingest-[0-9TZ.]+-[0-9a-f]{8}-[0-9a-f]{4}\)", line), line
    tables = TableIO(spark, load_config("local", REPO / "conf", [f"app.data_root={root}"]))
    assert tables.read("quarantine").count() == 4 and tables.read("run_metrics").count() == 1  # committed before the refusal

    # shopseq run: the ingest's refusal (here: only rejects already stored) ends the run before sessionize.
    rc, line = cli(run_main, "--format", "taobao", "--input", str(bad))
    assert rc == 2 and line.startswith(f"shopseq run: error: no event of {bad} was accepted as taobao: 4 lines, 4 rejects already in the quarantine table;"), line
    assert not tables.exists("silver_events") and tables.read("run_metrics").count() == 2

    good = write_lines(tmp_path, "good.csv", ["u1,i1,c1,pv,1704196800"])
    generic = ["--set", "source.columns=[a, b, c, d, e]", "--set", "source.mapping={user_id: a, item_id: b, event_type: d, event_time: e}",
               "--set", "source.time_format=unix_s", "--set", "source.event_types={pv: view}"]
    assert cli(main, "--format", "generic", "--input", good, *generic) == (
        2, f"shopseq ingest: error: the tables under {root} already hold taobao events; run 'generic' data into its own root with --set app.data_root=DIR")

    (tmp_path / "events.zip").write_bytes(b"PK\x03\x04")
    rc, line = cli(main, "--format", "taobao", "--input", str(tmp_path / "events.zip"))
    assert rc == 2 and line.endswith("events.zip: .zip files are not read; decompress it first (gzip .gz and bzip2 .bz2 files are read as they are)")
    (tmp_path / "plain.csv.gz").write_text("u1,i1,c1,pv,1704196800\n")
    rc, line = cli(main, "--format", "taobao", "--input", str(tmp_path / "plain.csv.gz"))
    assert rc == 2 and line.endswith("plain.csv.gz: named .gz but not gzip data; rename or recompress it")
    lines = "".join(f"u{i},i{i},c1,pv,{1704196800 + i}\n" for i in range(1000)).encode()
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(lines, mtime=0)[:200])  # a truncated download
    rc, line = cli(main, "--format", "taobao", "--input", str(tmp_path / "cut.csv.gz"))
    assert (rc, line) == (2, f"shopseq ingest: error: cannot read {tmp_path / 'cut.csv.gz'} as taobao: EOFException: Unexpected end of input stream")
    # What a user's terminal shows: the whole stderr of a `shopseq ingest` process, Spark's JVM included. Spark logs a failed
    # task with its Java stack trace (by the Executor, again by the TaskSetManager) unless jobs/spark.py quiets them.
    # A process of its own: this test session's JVM writes to the stderr it was started with, which capsys and capfd never see.
    proc = subprocess.run(
        [sys.executable, "-m", "shopseq.jobs.stages.ingest", "--format", "taobao", "--input", str(tmp_path / "cut.csv.gz"), *conf, "--set", f"app.data_root={tmp_path / 'gz_root'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == line
    assert not [x for x in proc.stderr.splitlines() if "at org.apache" in x or "Exception" in x and x != line], proc.stderr

    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    assert cli(main, "--format", "taobao", "--input", good, data_root=a_file) == (
        2, f"shopseq ingest: error: app.data_root {a_file}: {a_file} is a file, not a folder; point app.data_root at a folder (--set app.data_root=DIR)")
    assert cli(main, "--format", "taobao", "--input", good, "--set", f"tables.root={a_file}/tables") == (
        2, f"shopseq ingest: error: tables.root {a_file}/tables: {a_file} is a file, not a folder; point tables.root at a folder (--set tables.root=DIR)")
    if os.path.isdir("/proc/1"):  # Linux: a folder no user may write in, root included
        assert cli(main, "--format", "taobao", "--input", good, "--set", "tables.root=/proc/1/shopseq") == (
            2, "shopseq ingest: error: tables.root /proc/1/shopseq: the folder /proc/1 is not writable by this user; "
               "point tables.root at a writable folder (--set tables.root=DIR)")
    assert tables.read("run_metrics").count() == 2  # none of the refusals recorded a run
