"""Issue 17: hostile ids come out of `shopseq predict` exactly as they went into ingest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_ingest import HOSTILE

# Quotes, commas, SQL and shell metacharacters, 10,000 characters, CJK, Arabic, emoji (tests/test_ingest.py),
# and what only JSON can carry in one line: a newline, a tab, a quote with a backslash.
VALUES = [*HOSTILE, "two\nlines", "tab\there", 'quote " and backslash \\']
ORDINARY_USERS = [f"u{i}" for i in range(12)]
ORDINARY_ITEMS = [f"i{i}" for i in range(6)]
DAY0 = 1704067200  # 2024-01-01 00:00:00 UTC
OVERRIDES = [
    "ingest.now=2024-02-01T00:00:00", "tables.optimize=false", "spark.shuffle_partitions=2",
    "source.format=generic", "source.reader=json", "source.time_format=unix_s",
    "source.mapping={user_id: user, item_id: item, category_id: cat, event_time: ts, event_type: kind}",
    "features.purchase_horizon_days=1", "features.churn_horizon_days=1", "features.train_ranks=1", "features.row_groups_per_rank=2",
    "train.launcher=local", "train.num_proc=1", "train.epochs=1", "train.max_steps_per_epoch=3", "train.dim=16", "train.layers=1",
    "train.batch_size=64", "train.workers=1",
    "predict.top_k=50",  # more than the catalogue: every known item is in every user's list, so each hostile item certainly is
]  # fmt: skip


def events() -> list[dict]:
    """Every user (ordinary and hostile) has 4 sessions of 3 events, on days 0-3, 4-7, 8-11 and 12-13 of a 14-day window.

    The second and third events cycle through the ordinary and hostile items (each at least 5 times in the first
    8 days, so each is in the vocabulary); the first event of every session is the most popular item, a hostile
    one (the emoji).
    """
    items = [*ORDINARY_ITEMS, *VALUES]
    out = []
    for u, user in enumerate([*ORDINARY_USERS, *VALUES]):
        for s, day in enumerate((u % 4, 4 + u % 4, 8 + u % 4, 12 + u % 2)):
            start = DAY0 + day * 86_400 + 3_600 * (8 + u % 10)
            for e in range(3):
                item = HOSTILE[10] if e == 0 else items[(4 * u + 2 * s + e - 1) % len(items)]
                kind = "cart" if e == 2 and u % 3 == 0 else "view"
                out.append({"user": user, "item": item, "cat": f"c{(u + e) % 3}", "ts": start + 60 * e, "kind": kind})
    return out


@pytest.mark.e2e  # ingest, sessionize, features, a 3-step training and predict on 324 events: 43 s on 2 cores (load 9 falling to 1)
def test_hostile_ids_come_out_of_predict_unchanged(spark, tmp_path):
    from pyspark.sql import functions as F

    from shopseq.jobs.stages.build_features import run_features
    from shopseq.jobs.config import load_config
    from shopseq.jobs.stages.ingest import run_ingest
    from shopseq.jobs.stages.predict import main as predict_main
    from shopseq.jobs.stages.sessionize import run_sessionize
    from shopseq.jobs.tables import TableIO
    from shopseq.jobs.stages.train import run_train

    rows = events()
    folder = tmp_path / "input"
    folder.mkdir()
    # Half the lines with non-ASCII escaped (\uXXXX), half as raw UTF-8; newlines and tabs always escaped (JSON lines).
    (folder / "events.jsonl").write_text("".join(json.dumps(r, ensure_ascii=i % 2 == 0) + "\n" for i, r in enumerate(rows)), encoding="utf-8")
    root = tmp_path / "root"
    cfg = load_config("local", REPO / "conf", [f"app.data_root={root}", *OVERRIDES])
    tables = TableIO(spark, cfg)
    m = run_ingest(tables, cfg, input_path=str(folder), fmt="generic")
    assert (m["accepted"], m["quarantined"], m["duplicates"]) == (len(rows), 0, 0)
    run_sessionize(tables, cfg, plot=False)
    run_features(tables, cfg)
    run_train(tables, cfg)
    assert predict_main(["--conf-dir", str(REPO / "conf"), *[a for o in [f"app.data_root={root}", *OVERRIDES] for a in ("--set", o)]]) == 0

    users = {r["user"] for r in rows}
    ingested_items = {r["item"] for r in rows}
    known = {r["token"] for r in tables.read("vocab").where(F.col("kind") == "item").select("token").collect()}
    assert set(VALUES) <= known <= ingested_items  # every hostile item in the vocabulary (seen at least twice in the train range)
    for table in ("predictions", "predictions_latest"):  # the two tables predict writes
        got = tables.read(table).select("user_id", "top_items").collect()
        assert len(got) == len(users) and {r["user_id"] for r in got} == users, table  # every user once, hostile ids byte for byte
        for r in got:
            assert set(r["top_items"]) == known and len(r["top_items"]) == len(known), (table, r["user_id"][:40])
    # Predict writes nothing else: its tables' folders hold Parquet files (and their checksums) named by Spark, in
    # partition folders named by as_of and model version; no id appears in a path.
    files = [p for t in ("predictions", "predictions_latest") for p in Path(tables.ref(t).location).rglob("*") if p.is_file() and "_delta_log" not in p.parts]
    assert files and all(p.suffix == ".parquet" or p.name.endswith(".crc") for p in files)
    assert not any(v in str(p) for p in files for v in VALUES)
