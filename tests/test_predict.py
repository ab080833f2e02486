"""Batch predictions (issue 6): latest windows, `shopseq predict` into Delta, re-runs replace only their own partition."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from pyspark.sql import functions as F

from shopseq.features.scoring import latest_windows, window_columns
from shopseq.features.sequences import build_examples, prepare_events, to_gold
from shopseq.features.splits import SplitBounds
from shopseq.features.vocab import OOV_INDEX, fit_vocab
from shopseq.jobs.config import FeaturesConfig
from tests.rows import silver, ts, us

AS_OF = "2024-01-03 00:00:00"




# a: two sessions before as_of, then one event exactly at as_of and one after (both excluded).
# b: sessions on 01-02 with equal timestamps and an item the vocabulary never saw (OOV), one event after as_of.
# c: only an event after as_of: no window.
EVENTS = [
    ("a", "2024-01-01 10:00:00", "view", "i1", "c1", 10.0, 0, 0),
    ("a", "2024-01-01 10:00:30", "view", "i2", "c1", 20.0, 0, 1),
    ("a", "2024-01-01 10:05:00", "cart", "i2", "c1", 20.0, 0, 2),
    ("a", "2024-01-02 12:00:00", "view", "i3", "c2", None, 1, 0),
    ("a", "2024-01-02 12:01:00", "purchase", "i2", "c1", 20.0, 1, 1),
    ("a", "2024-01-03 00:00:00", "view", "i1", "c1", 10.0, 2, 0),
    ("a", "2024-01-03 09:00:00", "view", "i3", "c2", 30.0, 3, 0),
    ("b", "2024-01-02 08:00:00", "view", "i1", "c1", None, 0, 0),
    ("b", "2024-01-02 20:00:00", "view", "i4", "c2", 5.0, 1, 0),
    ("b", "2024-01-02 20:00:00", "fav", "i4", "c2", 5.0, 1, 1),
    ("b", "2024-01-02 20:10:00", "view", "new-item", "c9", 7.0, 1, 2),
    ("b", "2024-01-04 08:00:00", "purchase", "i4", "c2", 5.0, 2, 0),
    ("c", "2024-01-05 00:00:00", "view", "i5", "c3", None, 0, 0),
]


@pytest.mark.parametrize("rule", ["session_end", "daily"])
def test_latest_windows_equal_the_gold_example_at_the_same_cutoff(spark, rule):
    cfg = FeaturesConfig(max_len=4, cutoff=rule, split="leave_last_out", min_item_count=1)
    events = silver(spark, EVENTS).transform(prepare_events, cfg)
    # Vocabulary fit on 01-01 only (as a training range would be): i3, i4 and new-item are then unseen -> OOV.
    vocab = spark.createDataFrame(fit_vocab(events.where(F.col("event_time") < ts("2024-01-02 00:00:00")), cfg).collect(), "kind string, token string, index int, count long")
    as_of_us = us(AS_OF)
    got = events.transform(latest_windows, vocab, cfg, as_of_us, 2.0, 0.5).withColumn("user_key", F.xxhash64("user_id")).collect()
    names = [c["name"] for c in window_columns(cfg)]
    assert sorted(r["user_id"] for r in got) == ["a", "b"]  # c has no event before as_of

    # The gold builder on the full data, at each user's last cutoff before as_of (a and b end a session,
    # and a day, just before as_of: session_end and daily cut there too).
    bounds = SplitBounds(us("2024-01-01 00:00:00"), us("2024-01-05 00:00:00"), us("2024-01-05 00:00:00"), us("2024-01-05 00:00:00"), 0)
    examples = events.transform(build_examples, vocab, cfg, bounds, 2.0, 0.5).where(F.unix_micros("cutoff_time") < F.lit(as_of_us))
    last: dict = {}
    for r in sorted(to_gold(examples, cfg).collect(), key=lambda r: r["cutoff_time_us"]):
        last[r["user_key"]] = r  # the user's last gold example before as_of
    assert len(last) == 2
    for row in got:
        expected = last[row["user_key"]]
        assert int(row["cutoff_time"].replace(tzinfo=timezone.utc).timestamp() * 1e6) == expected["cutoff_time_us"]
        assert {n: row[n] for n in names} == {n: expected[n] for n in names}, row["user_id"]

    a = next(r for r in got if r["user_id"] == "a")
    b = next(r for r in got if r["user_id"] == "b")
    items = {r["token"]: r["index"] for r in vocab.where("kind = 'item'").collect()}
    # a: the 4 most recent of its 5 events before as_of; the event at as_of (i1) is not the last one.
    assert a["seq_len"] == 4 and a["frequency"] == 5
    assert a["item_idx_seq"] == [items["i2"], items["i2"], OOV_INDEX, items["i2"]]
    # b: 4 events, the newest is an item the vocabulary does not know.
    assert b["seq_len"] == 4 and b["item_idx_seq"] == [items["i1"], OOV_INDEX, OOV_INDEX, OOV_INDEX]
    end_of_day = datetime(2024, 1, 2, 23, 59, 59, 999999)
    assert a["cutoff_time"] == (end_of_day if rule == "daily" else datetime(2024, 1, 2, 12, 1))
    assert a["recency_s"] == pytest.approx((end_of_day - datetime(2024, 1, 2, 12, 1)).total_seconds() if rule == "daily" else 0.0)


def test_latest_windows_daily_cutoff_is_capped_at_as_of(spark):
    cfg = FeaturesConfig(max_len=3, cutoff="daily", min_item_count=1)
    events = silver(spark, EVENTS).transform(prepare_events, cfg)
    vocab = spark.createDataFrame(fit_vocab(events, cfg).collect(), "kind string, token string, index int, count long")
    rows = {r["user_id"]: r for r in events.transform(latest_windows, vocab, cfg, us("2024-01-02 20:05:00"), None, None).collect()}
    # b's last event before 20:05 is at 20:00; the day ends later than as_of, so the snapshot is as_of - 1us.
    assert rows["b"]["cutoff_time"] == datetime(2024, 1, 2, 20, 4, 59, 999999)
    assert rows["b"]["seq_len"] == 3 and rows["b"]["recency_s"] == pytest.approx(299.999999)
    assert rows["a"]["cutoff_time"] == datetime(2024, 1, 2, 20, 4, 59, 999999)  # a's last event (12:01) is earlier the same day


# --------------------------------------------------------------------------- the job (shared trained fixture)


def _rows(tables, name: str, where=None) -> list[tuple]:
    """A table's rows as sorted tuples (scored_at left out: it is the run's wall-clock start)."""
    df = tables.read(name)
    if where is not None:
        df = df.where(where)
    cols = [c for c in df.columns if c != "scored_at"]
    out = []
    for r in df.select(*cols).collect():
        d = r.asDict()
        d["next_action_probs"] = sorted(d["next_action_probs"].items())
        out.append(tuple(d[c] for c in cols))
    return sorted(out)


@pytest.mark.e2e
def test_predict_rerun_replaces_only_its_partition_and_matches_in_process_scores(trained):
    import torch

    from shopseq.features.vocab import FIRST_INDEX
    from shopseq.jobs.stages.predict import PREDICTIONS, LATEST, as_of_key, build_windows, frame_to_tensors, model_inputs, run_predict
    from shopseq.jobs.stages.train import open_checkpoint
    from shopseq.training.checkpoint import load_model, predict_tensors

    tables, cfg = trained.tables, trained.cfg
    silver = tables.read("silver_events")
    lo, hi = silver.agg(F.min("event_time"), F.max("event_time")).head()
    early, late = "2024-01-22T00:00:00", "2024-02-05T12:00:00"
    late_dt = datetime(2024, 2, 5, 12)  # naive UTC, as collect() returns timestamps here
    assert lo < datetime(2024, 1, 22) < late_dt < hi

    first = run_predict(tables, cfg, as_of=late)
    other = run_predict(tables, cfg, as_of=early)  # a second partition, written in between
    key_late, key_early = as_of_key(us(late)), as_of_key(us(early))
    assert (first["as_of_key"], other["as_of_key"]) == (key_late, key_early) == ("20240205T120000.000000Z", "20240122T000000.000000Z")
    in_late = F.col("as_of_key") == key_late
    before_late, before_early = _rows(tables, PREDICTIONS, in_late), _rows(tables, PREDICTIONS, ~in_late)
    early_files = sorted(f for f in tables.files(PREDICTIONS) if key_early in f)

    again = run_predict(tables, cfg, as_of=late)
    assert again["predictions_version"] == other["predictions_version"] + 1 and again["model_version"] == first["model_version"]
    assert _rows(tables, PREDICTIONS, in_late) == before_late  # the re-run's rows are unchanged
    assert _rows(tables, PREDICTIONS, ~in_late) == before_early  # the other partition is untouched ...
    assert sorted(f for f in tables.files(PREDICTIONS) if key_early in f) == early_files  # ... down to its files

    # One row per user with an event before as_of.
    users_before = silver.where((F.col("event_time") < F.lit(late_dt)) & ~F.coalesce("is_bot_suspect", F.lit(False))).select("user_id").distinct().count()
    preds = tables.read(PREDICTIONS).where(in_late).collect()
    assert len(preds) == users_before == first["rows"] and len({r["user_id"] for r in preds}) == len(preds)
    known_items = {r["token"] for r in tables.read("vocab").where("kind = 'item'").collect()}
    event_types = {r["token"] for r in tables.read("vocab").where("kind = 'event_type'").collect()}
    k = cfg.predict.top_k
    for r in preds:
        assert len(r["top_items"]) == k == len(set(r["top_items"])) and set(r["top_items"]) <= known_items
        assert list(r["top_scores"]) == sorted(r["top_scores"], reverse=True) and all(0.0 <= s <= 1.0 for s in r["top_scores"])
        assert set(r["next_action_probs"]) == event_types and sum(r["next_action_probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert 0.0 <= r["purchase_prob"] <= 1.0 and 0.0 <= r["churn_prob"] <= 1.0
        assert r["model_version"] == first["model_version"] and r["silver_version"] == tables.version("silver_events")
        assert r["gold_train_version"] == trained.train["lineage"]["gold_train_version"] and r["vocab_version"] == first["vocab_version"]
        assert r["cutoff_time"] < r["as_of"] == late_dt

    # predictions_latest: one row per user, from the newest as_of scored for that user in any partition
    # (the early run never replaced a late row; other tests sharing the fixture may have scored a later as_of).
    latest = tables.read(LATEST).collect()
    newest: dict[str, str] = {}
    for r in tables.read(PREDICTIONS).select("user_id", "as_of_key").collect():
        newest[r["user_id"]] = max(newest.get(r["user_id"], ""), r["as_of_key"])  # the keys sort as times
    assert len(latest) == len({r["user_id"] for r in latest}) and {r["user_id"]: r["as_of_key"] for r in latest} == newest
    assert all(newest[r["user_id"]] >= key_late for r in preds)

    # The Spark path equals in-process inference on the same windows as tensors (float32; tolerance 1e-5).
    ckpt, version = open_checkpoint(cfg, cfg.predict.checkpoint, "predict")  # the one way evaluate and predict open a model
    assert (ckpt.path, version) == (first["checkpoint"], first["model_version"])
    windows, _, _ = build_windows(tables, cfg, ckpt, late)
    pdf = windows.toPandas().sort_values("user_id").reset_index(drop=True)
    model, _ = load_model(ckpt.path)
    data = frame_to_tensors(pdf, model_inputs(ckpt.schema))
    out = predict_tensors(model, data, batch_size=64)
    by_user = {r["user_id"]: r for r in preds}
    spark_purchase = np.array([by_user[u]["purchase_prob"] for u in pdf["user_id"]])
    spark_churn = np.array([by_user[u]["churn_prob"] for u in pdf["user_id"]])
    np.testing.assert_allclose(spark_purchase, out["purchase"].numpy(), atol=1e-5)
    np.testing.assert_allclose(spark_churn, out["churn"].numpy(), atol=1e-5)
    with torch.no_grad():
        logits = model.item_scores(out["hidden_last"], data["item_idx_seq"], out["repeat_last"])  # with the window's repeat mixture
    logits[:, :FIRST_INDEX] = float("-inf")
    probs, idx = torch.softmax(logits, dim=-1).topk(k)
    tokens = {r["index"]: r["token"] for r in tables.read("vocab").where("kind = 'item'").collect()}
    spark_scores = np.array([by_user[u]["top_scores"] for u in pdf["user_id"]])
    np.testing.assert_allclose(spark_scores, probs.numpy(), atol=1e-5)
    agree = np.mean([[tokens[int(i)] for i in row] == list(by_user[u]["top_items"]) for u, row in zip(pdf["user_id"], idx)])
    assert agree >= 0.99, agree  # the same ranking, up to float ties at the k-th place
