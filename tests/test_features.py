"""Point-in-time sequence features, labels, profiles, vocabularies, splits and the gold tables (issue 4)."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from shopseq.features.sequences import build_examples
from shopseq.features.splits import SplitBounds, leave_last_out_split, split_bounds, temporal_split, train_range
from shopseq.features.vocab import OOV_INDEX, apply_vocab, fit_vocab, with_vocab_version
from shopseq.jobs.config import ConfigError, FeaturesConfig
from tests.rows import SILVER_SCHEMA, silver, ts, us

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000




def bounds_for(cfg: FeaturesConfig, start: str, end: str) -> SplitBounds:
    return split_bounds(us(start), us(end), cfg)


def local_vocab(events: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """The fitted vocabulary as a small local relation (as the job re-reads it from its table), so joins do not refit it."""
    return events.sparkSession.createDataFrame(fit_vocab(events, cfg).collect(), "kind string, token string, index int, count long")


def naive(t: datetime) -> datetime:
    return t.replace(tzinfo=None)


# Three users. a: sessions of 3, 2 and 1 events over two days; b: a session of one event, then two
# events with the same timestamp; c: a single event.
THREE_USERS = [
    ("a", "2024-01-01 10:00:00", "view", "i1", "c1", 10.0, 0, 0),
    ("a", "2024-01-01 10:00:30", "view", "i2", "c1", 20.0, 0, 1),
    ("a", "2024-01-01 10:05:00", "cart", "i2", "c1", 20.0, 0, 2),
    ("a", "2024-01-01 12:00:00", "view", "i3", "c2", None, 1, 0),
    ("a", "2024-01-01 12:01:00", "purchase", "i2", "c1", 20.0, 1, 1),
    ("a", "2024-01-03 09:00:00", "view", "i1", "c1", 10.0, 2, 0),
    ("b", "2024-01-02 08:00:00", "view", "i1", "c1", None, 0, 0),
    ("b", "2024-01-02 20:00:00", "view", "i4", "c2", 5.0, 1, 0),
    ("b", "2024-01-02 20:00:00", "fav", "i4", "c2", 5.0, 1, 1),
    ("c", "2024-01-01 00:00:00", "view", "i5", "c3", None, 0, 0),
]


def test_exact_left_padded_arrays_profiles_and_labels_for_three_users(spark):
    cfg = FeaturesConfig(max_len=4, min_item_count=1, split="leave_last_out", purchase_horizon_days=1.0, churn_horizon_days=1.0)
    events = silver(spark, THREE_USERS)
    vocab = local_vocab(events, cfg)
    # indexes: descending count, then token; 0 pad, 1 OOV
    assert sorted((r["kind"], r["token"], r["index"]) for r in vocab.collect()) == [
        ("category", "c1", 2), ("category", "c2", 3), ("category", "c3", 4),
        ("event_type", "cart", 3), ("event_type", "fav", 4), ("event_type", "purchase", 5), ("event_type", "view", 2),
        ("item", "i1", 2), ("item", "i2", 3), ("item", "i3", 5), ("item", "i4", 4), ("item", "i5", 6),
    ]  # fmt: skip
    bounds = bounds_for(cfg, "2024-01-01 00:00:00", "2024-01-03 09:00:00")
    got = build_examples(events, vocab, cfg, bounds, price_mean=0.0, price_std=1.0).orderBy("user_id", "cutoff_time").collect()
    seq_cols = ["item_idx_seq", "category_idx_seq", "event_type_idx_seq", "dt_bucket_seq", "hour_seq", "dow_seq", "session_start_seq", "seq_len"]
    # dt buckets: 1 first event; 2 + floor(log2(1 + s)): 30 s -> 6, 270 s -> 10, 6900 s -> 14, 60 s -> 7, 161940 s -> 19, 43200 s -> 17, 0 s -> 2.
    # hour = UTC hour + 1; dow = ISO weekday (2024-01-01 was a Monday).
    expected = {
        ("a", datetime(2024, 1, 1, 10, 5)): ([0, 2, 3, 3], [0, 2, 2, 2], [0, 2, 2, 3], [0, 1, 6, 10], [0, 11, 11, 11], [0, 1, 1, 1], [0, 1, 0, 0], 3),
        ("a", datetime(2024, 1, 1, 12, 1)): ([3, 3, 5, 3], [2, 2, 3, 2], [2, 3, 2, 5], [6, 10, 14, 7], [11, 11, 13, 13], [1, 1, 1, 1], [0, 0, 1, 0], 4),
        ("a", datetime(2024, 1, 3, 9, 0)): ([3, 5, 3, 2], [2, 3, 2, 2], [3, 2, 5, 2], [10, 14, 7, 19], [11, 13, 13, 10], [1, 1, 1, 3], [0, 1, 0, 1], 4),
        ("b", datetime(2024, 1, 2, 8, 0)): ([0, 0, 0, 2], [0, 0, 0, 2], [0, 0, 0, 2], [0, 0, 0, 1], [0, 0, 0, 9], [0, 0, 0, 2], [0, 0, 0, 1], 1),
        # the two events at 20:00 end one session: the cutoff is after both of them
        ("b", datetime(2024, 1, 2, 20, 0)): ([0, 2, 4, 4], [0, 2, 3, 3], [0, 2, 2, 4], [0, 1, 17, 2], [0, 9, 21, 21], [0, 2, 2, 2], [0, 1, 1, 0], 3),
        ("c", datetime(2024, 1, 1, 0, 0)): ([0, 0, 0, 6], [0, 0, 0, 4], [0, 0, 0, 2], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1], 1),
    }
    assert {(r["user_id"], r["cutoff_time"]): tuple(r[c] for c in seq_cols) for r in got} == expected
    prices = {(r["user_id"], r["cutoff_time"]): r["price_seq"] for r in got}
    l10, l20, l5 = math.log1p(10.0), math.log1p(20.0), math.log1p(5.0)
    assert prices[("a", datetime(2024, 1, 1, 12, 1))] == pytest.approx([l20, l20, 0.0, l20])  # null price -> 0
    assert prices[("b", datetime(2024, 1, 2, 20, 0))] == pytest.approx([0.0, 0.0, l5, l5])
    assert prices[("a", datetime(2024, 1, 1, 10, 5))] == pytest.approx([0.0, l10, l20, l20])
    profiles = ["recency_s", "tenure_s", "frequency", "monetary", "conversion_rate", "top_category_idx", "active_days"]
    a2 = next(r for r in got if r["user_id"] == "a" and r["cutoff_time"] == datetime(2024, 1, 3, 9, 0))
    assert [a2[c] for c in profiles] == [0.0, 169200.0, 6, 20.0, pytest.approx(0.25), 2, 2]
    b1 = next(r for r in got if r["user_id"] == "b" and r["cutoff_time"] == datetime(2024, 1, 2, 20, 0))
    assert [b1[c] for c in profiles] == [0.0, 43200.0, 3, 0.0, 0.0, 3, 1]  # c2 seen twice, c1 once
    labels = ["next_item_idx", "next_event_type_idx", "next_label_mask", "purchase_label", "purchase_label_mask", "churn_label", "churn_label_mask", "split"]
    assert {(r["user_id"], r["cutoff_time"]): tuple(r[c] for c in labels) for r in got} == {
        ("a", datetime(2024, 1, 1, 10, 5)): (5, 2, 1, 1, 1, 0, 1, "val"),
        ("a", datetime(2024, 1, 1, 12, 1)): (2, 2, 1, 0, 1, 1, 1, "test"),  # a's last cutoff with a next event
        ("a", datetime(2024, 1, 3, 9, 0)): (None, None, 0, None, 0, None, 0, "test"),
        ("b", datetime(2024, 1, 2, 8, 0)): (4, 2, 1, 0, 1, 0, 1, "test"),
        ("b", datetime(2024, 1, 2, 20, 0)): (None, None, 0, None, 0, None, 0, "test"),
        ("c", datetime(2024, 1, 1, 0, 0)): (None, None, 0, 0, 1, 1, 1, "test"),
    }


# Three users, 6-10 events each, with ties, sessions and a purchase at a cutoff's timestamp.
LEAKAGE_USERS = [
    ("u1", "2024-02-01 09:00:00", "view", "i1", "c1", 5.0, 0, 0),
    ("u1", "2024-02-01 09:10:00", "cart", "i1", "c1", 5.0, 0, 1),
    ("u1", "2024-02-01 09:10:00", "purchase", "i1", "c1", 5.0, 0, 2),
    ("u1", "2024-02-01 18:00:00", "view", "i2", "c1", 7.0, 1, 0),
    ("u1", "2024-02-02 07:00:00", "view", "i3", "c2", None, 2, 0),
    ("u1", "2024-02-02 07:20:00", "view", "i2", "c1", 7.0, 2, 1),
    ("u1", "2024-02-03 23:59:59", "view", "i4", "c2", 3.0, 3, 0),
    ("u1", "2024-02-04 00:00:00", "purchase", "i4", "c2", 3.0, 3, 1),
    ("u2", "2024-02-01 00:00:00", "view", "i2", "c1", 7.0, 0, 0),
    ("u2", "2024-02-01 00:00:00", "fav", "i2", "c1", 7.0, 0, 1),
    ("u2", "2024-02-01 00:20:00", "view", "i5", "c3", 1.0, 0, 2),
    ("u2", "2024-02-02 12:00:00", "view", "i1", "c1", 5.0, 1, 0),
    ("u2", "2024-02-02 12:05:00", "purchase", "i1", "c1", 5.0, 1, 1),
    ("u2", "2024-02-05 12:00:00", "view", "i6", "c3", 2.0, 2, 0),
    ("u3", "2024-02-03 10:00:00", "view", "i3", "c2", None, 0, 0),
    ("u3", "2024-02-03 10:01:00", "view", "i3", "c2", None, 0, 1),
    ("u3", "2024-02-03 10:02:00", "cart", "i3", "c2", None, 0, 2),
    ("u3", "2024-02-03 10:03:00", "purchase", "i3", "c2", 9.0, 0, 3),
    ("u3", "2024-02-04 10:00:00", "view", "i7", "c3", 4.0, 1, 0),
    ("u3", "2024-02-04 10:00:00", "view", "i1", "c1", 5.0, 1, 1),
]


EOD = timedelta(hours=23, minutes=59, seconds=59, microseconds=999999)  # daily cutoffs: the last microsecond of the day
EXPECTED_CUTOFFS = {
    "session_end": {
        "u1": ["2024-02-01 09:10:00", "2024-02-01 18:00:00", "2024-02-02 07:20:00", "2024-02-04 00:00:00"],
        "u2": ["2024-02-01 00:20:00", "2024-02-02 12:05:00", "2024-02-05 12:00:00"],
        "u3": ["2024-02-03 10:03:00", "2024-02-04 10:00:00"],
    },
    # every 2nd event; where it ties with the next event (u1 09:10, u2 00:00, u3's last two) the cutoff includes both
    "stride": {
        "u1": ["2024-02-01 09:10:00", "2024-02-01 18:00:00", "2024-02-02 07:20:00", "2024-02-04 00:00:00"],
        "u2": ["2024-02-01 00:00:00", "2024-02-02 12:00:00", "2024-02-05 12:00:00"],
        "u3": ["2024-02-03 10:01:00", "2024-02-03 10:03:00", "2024-02-04 10:00:00"],
    },
    # end of each active UTC day: u1's 23:59:59 event is in the 02-03 snapshot, its 00:00 event in 02-04's
    "daily": {
        "u1": ["2024-02-01", "2024-02-02", "2024-02-03", "2024-02-04"],
        "u2": ["2024-02-01", "2024-02-02", "2024-02-05"],
        "u3": ["2024-02-03", "2024-02-04"],
    },
}


@pytest.mark.parametrize("rule", ["session_end", "stride", "daily"])
def test_no_leakage_features_strictly_before_labels_for_every_example(spark, rule):
    """Every example, every cutoff rule: features = the last L events at or before the cutoff, labels only after it."""
    cfg = FeaturesConfig(max_len=3, min_item_count=1, cutoff=rule, stride=2, split="leave_last_out", purchase_horizon_days=1.0, churn_horizon_days=2.0)
    events = silver(spark, LEAKAGE_USERS)
    data_end = max(ts(t) for _, t, *_ in LEAKAGE_USERS)
    bounds = bounds_for(cfg, "2024-02-01 00:00:00", "2024-02-05 12:00:00")
    got = build_examples(events, local_vocab(events, cfg), cfg, bounds, 0.0, 1.0, with_times=True).collect()
    history: dict[str, list[tuple[datetime, str]]] = {}
    for user, t, etype, *_ in LEAKAGE_USERS:
        history.setdefault(user, []).append((naive(ts(t)), etype))
    cutoffs: dict[str, list[datetime]] = {}
    for r in sorted(got, key=lambda r: r["cutoff_time"]):
        cutoffs.setdefault(r["user_id"], []).append(r["cutoff_time"])
    shift = EOD if rule == "daily" else timedelta(0)
    assert cutoffs == {u: [naive(ts(t)) + shift for t in times] for u, times in EXPECTED_CUTOFFS[rule].items()}
    hp, hc = timedelta(days=1), timedelta(days=2)
    for r in got:
        cut, times = r["cutoff_time"], r["event_time_seq"]
        past = [t for t, _ in history[r["user_id"]] if t <= cut]
        future = [(t, e) for t, e in history[r["user_id"]] if t > cut]
        # features: exactly the last L events at or before the cutoff, and nothing after it
        assert all(t <= cut for t in times) and times == past[-cfg.max_len :] and r["seq_len"] == len(times) > 0
        # labels: only from events strictly after the cutoff (and strictly after every feature event)
        if r["next_event_time"] is not None:
            assert r["next_event_time"] > cut and r["next_event_time"] > max(times) and r["next_event_time"] == future[0][0]
        else:
            assert not future and r["next_label_mask"] == 0
        buys = [t for t, e in future if e == "purchase"]
        assert r["next_purchase_time"] == (buys[0] if buys else None)
        if cut + hp <= naive(data_end):
            assert r["purchase_label_mask"] == 1 and r["purchase_label"] == int(any(t <= cut + hp for t in buys))
        else:
            assert r["purchase_label_mask"] == 0 and r["purchase_label"] is None
        if cut + hc <= naive(data_end):
            assert r["churn_label_mask"] == 1 and r["churn_label"] == int(not any(t <= cut + hc for t, _ in future))
        else:
            assert r["churn_label_mask"] == 0 and r["churn_label"] is None
        assert r["frequency"] == len(past) and r["recency_s"] == (cut - past[-1]).total_seconds()


def test_censoring_at_the_end_of_the_data(spark):
    # H_p = 2 days, H_c = 3 days; the end of the data is 03-05 00:00 (user v's only event).
    spec = [
        ("u", "2024-03-01 00:00:00", "view", "i1", "c1", 1.0, 0, 0),
        ("u", "2024-03-02 00:00:00", "purchase", "i1", "c1", 1.0, 1, 0),
        ("u", "2024-03-04 00:00:00", "purchase", "i2", "c1", 1.0, 2, 0),  # exactly 2 days after the previous cutoff: inside
        ("u", "2024-03-04 12:00:00", "purchase", "i2", "c1", 1.0, 3, 0),  # inside a censored window: still censored
        ("v", "2024-03-05 00:00:00", "view", "i1", "c1", 1.0, 0, 0),
    ]
    cfg = FeaturesConfig(max_len=2, min_item_count=1, split="leave_last_out", purchase_horizon_days=2.0, churn_horizon_days=3.0)
    events = silver(spark, spec)
    bounds = bounds_for(cfg, "2024-03-01 00:00:00", "2024-03-05 00:00:00")
    got = build_examples(events, local_vocab(events, cfg), cfg, bounds, 0.0, 1.0)
    cols = ["user_id", "cutoff_time", "purchase_label", "purchase_label_mask", "churn_label", "churn_label_mask", "next_label_mask"]
    assert sorted(tuple(r) for r in got.select(*cols).collect()) == [
        ("u", datetime(2024, 3, 1), 1, 1, 0, 1, 1),
        ("u", datetime(2024, 3, 2), 1, 1, 0, 1, 1),  # churn window ends exactly at the end of the data: observed
        ("u", datetime(2024, 3, 4), None, 0, None, 0, 1),  # a purchase 12 h later, but the 2-day window is cut off
        ("u", datetime(2024, 3, 4, 12), None, 0, None, 0, 0),
        ("v", datetime(2024, 3, 5), None, 0, None, 0, 0),
    ]


EXAMPLES_SCHEMA = "user_id string, cutoff_time timestamp, next_event_time timestamp, next_item_idx int, next_event_type_idx int, next_label_mask int"


def test_temporal_split_boundaries_gap_and_next_label_masking(spark):
    cfg = FeaturesConfig(purchase_horizon_days=1.0, churn_horizon_days=2.0, train_end="2024-01-10", val_end="2024-01-20")
    b = split_bounds(us("2024-01-01 00:00:00"), us("2024-01-31 00:00:00"), cfg)
    assert (b.train_end_us, b.val_end_us, b.gap_us) == (us("2024-01-10 00:00:00"), us("2024-01-20 00:00:00"), 2 * DAY_US)
    rows = [
        ("a", ts("2024-01-08 00:00:00"), ts("2024-01-09 00:00:00"), 5, 2, 1),  # cutoff + gap == b1: train
        ("b", ts("2024-01-08 00:00:01"), ts("2024-01-09 00:00:00"), 5, 2, 1),  # in the gap: dropped
        ("c", ts("2024-01-10 00:00:00"), ts("2024-01-11 00:00:00"), 5, 2, 1),  # == b1: in the gap, dropped
        ("d", ts("2024-01-10 00:00:01"), ts("2024-01-11 00:00:00"), 5, 2, 1),  # val
        ("e", ts("2024-01-18 00:00:00"), ts("2024-01-25 00:00:00"), 5, 2, 1),  # val; its next event is after b2: masked
        ("f", ts("2024-01-19 00:00:00"), None, None, None, 0),  # gap before b2: dropped
        ("g", ts("2024-01-20 00:00:01"), ts("2024-01-30 00:00:00"), 5, 2, 1),  # test (no boundary after it)
        ("h", ts("2024-01-07 00:00:00"), ts("2024-01-12 00:00:00"), 5, 2, 1),  # train; next event past b1: masked
    ]
    got = temporal_split(spark.createDataFrame(rows, EXAMPLES_SCHEMA), b).select("user_id", "split", "next_item_idx", "next_event_type_idx", "next_label_mask")
    assert sorted(tuple(r) for r in got.collect()) == [
        ("a", "train", 5, 2, 1), ("d", "val", 5, 2, 1), ("e", "val", None, None, 0), ("g", "test", 5, 2, 1), ("h", "train", None, None, 0),
    ]  # fmt: skip
    # fractions of the data's time range; the default gap is the longest horizon, a shorter one is refused
    f = split_bounds(us("2024-01-01 00:00:00"), us("2024-01-11 00:00:00"), FeaturesConfig(train_fraction=0.6, val_fraction=0.2))
    assert (f.train_end_us, f.val_end_us, f.gap_us) == (us("2024-01-07 00:00:00"), us("2024-01-09 00:00:00"), 14 * DAY_US)
    with pytest.raises(ConfigError, match="gap_days"):
        split_bounds(0, DAY_US, FeaturesConfig(gap_days=3.0))


def test_leave_last_out_exact_assignment(spark):
    # Each user's final cutoff has no next event (None); the held-out example is the last one with a next event.
    days = {"a": [1, 2, 3, 4, 5], "b": [5, 6], "c": [2, 7, 8], "d": [9]}
    rows = [
        (u, ts(f"2024-01-0{d} 00:00:00"), ts(f"2024-01-0{d} 12:00:00") if d != ds[-1] else None, None, None, int(d != ds[-1]))
        for u, ds in days.items() for d in ds
    ]  # fmt: skip
    got = leave_last_out_split(spark.createDataFrame(rows, EXAMPLES_SCHEMA)).select("user_id", "cutoff_time", "split").collect()
    assert sorted((r[0], r[1].day, r[2]) for r in got) == [
        ("a", 1, "train"), ("a", 2, "train"), ("a", 3, "val"), ("a", 4, "test"), ("a", 5, "test"),
        ("b", 5, "test"), ("b", 6, "test"), ("c", 2, "val"), ("c", 7, "test"), ("c", 8, "test"), ("d", 9, "test"),
    ]  # fmt: skip


def test_leave_last_out_train_range_ends_at_last_train_anchor(spark):
    # One user, positions 0..7, cutoffs at 1, 3, 5, 6, 7 (7 is the last event: no next event).
    # With-next cutoffs 1, 3, 5, 6: test 6, val 5, train 1 and 3 -> the train range is positions 0..3.
    rows = [("u", p, p in (1, 3, 5, 6, 7)) for p in range(8)] + [("v", 0, True)]  # v: one cutoff, no next -> no train events
    events = spark.createDataFrame(rows, "user_id string, user_pos int, is_cutoff boolean").withColumn("event_time", F.lit(None).cast("timestamp"))
    cfg = FeaturesConfig(split="leave_last_out")
    got = train_range(events, cfg, split_bounds(0, 1, cfg)).select("user_id", "user_pos").collect()
    assert sorted(tuple(r) for r in got) == [("u", 0), ("u", 1), ("u", 2), ("u", 3)]


def test_vocab_cutoff_oov_and_stable_across_reruns(spark):
    spec = [("u", f"2024-01-01 00:0{i}:00", t, item, cat, None, 0, i) for i, (t, item, cat) in enumerate(
        [("view", "x", "k1"), ("view", "y", "k1"), ("cart", "x", None), ("view", "z", "k2"), ("view", "y", "k1"), ("purchase", "w", "k2")]
    )]  # fmt: skip
    events = silver(spark, spec)
    cfg = FeaturesConfig(min_item_count=2, min_category_count=2)
    vocab = fit_vocab(events, cfg).transform(with_vocab_version)
    rows = sorted((r["kind"], r["token"], r["index"], r["count"]) for r in vocab.collect())
    # x and y (2 each; tie broken by token), z and w below the cut-off; k2 = 2 (null category not counted)
    assert rows == [
        ("category", "k1", 2, 3), ("category", "k2", 3, 2),
        ("event_type", "cart", 3, 1), ("event_type", "purchase", 4, 1), ("event_type", "view", 2, 4),
        ("item", "x", 2, 2), ("item", "y", 3, 2),
    ]  # fmt: skip
    # re-run on the same rows in another order and partitioning: identical indexes and version
    again = fit_vocab(events.repartition(3).orderBy(F.rand(seed=1)), cfg).transform(with_vocab_version)
    assert sorted(tuple(r) for r in again.collect()) == sorted(tuple(r) for r in vocab.collect())
    assert len({r["vocab_version"] for r in vocab.collect()}) == 1
    # scoring: unseen item, below-cut-off item, null category and an unknown event type -> OOV
    score = silver(
        spark, [("s", "2024-02-01 00:00:00", "view", "never-seen", None, None, 0, 0), ("s", "2024-02-01 00:01:00", "remove_from_cart", "z", "k2", None, 0, 1)]
    )
    mapped = score.transform(apply_vocab, vocab).select("item_id", "item_idx", "category_idx", "event_type_idx").orderBy("item_id").collect()
    assert [tuple(r) for r in mapped] == [("never-seen", OOV_INDEX, OOV_INDEX, 2), ("z", OOV_INDEX, 3, OOV_INDEX)]


# ----------------------------------------------------------------------------- the job and Petastorm


def _synthetic_silver(spark, users: int = 12, per_user: int = 40) -> DataFrame:
    """users x per_user events, 2 h apart (a session each), cycling items/types; a late item only in the test period."""
    start = us("2024-05-01 00:00:00") // 1_000_000
    df = spark.range(users * per_user).select(
        (F.col("id") % users).cast("string").alias("u"), (F.col("id") / users).cast("int").alias("k")
    )
    etype = F.when(F.col("k") % 10 == 9, "purchase").when(F.col("k") % 5 == 3, "cart").otherwise("view")
    t = F.timestamp_seconds(F.lit(start) + F.col("k") * 7200 + F.col("u").cast("int") * 60)
    item = F.when(F.col("k") == per_user - 1, F.lit("late")).otherwise(F.concat(F.lit("i"), (F.col("k") % 7).cast("string")))
    out = df.select(
        F.concat_ws("-", "u", "k").alias("event_id"), F.concat(F.lit("user"), "u").alias("user_id"), t.alias("event_time"), etype.alias("event_type"),
        item.alias("item_id"), F.concat(F.lit("c"), (F.col("k") % 3).cast("string")).alias("category_id"), (F.col("k") % 4 * 2.5).alias("price"),
        F.lit(None).cast("string").alias("brand"), F.lit(None).cast("string").alias("source_session_id"), F.to_date(t).alias("event_date"),
        F.lit("test").alias("ingest_batch"), F.concat_ws("-", "u", "k").alias("session_id"), F.col("k").alias("session_index"),
        F.lit(0).alias("event_index"), F.lit(False).alias("is_bot_suspect"),
    )  # fmt: skip
    return out.select([F.col(f.name).cast(f.dataType) for f in SILVER_SCHEMA.fields])


def test_job_writes_gold_tables_that_petastorm_shards_across_two_ranks(spark, tables, cfg_factory):
    import torch
    from petastorm import make_batch_reader
    from petastorm.pytorch import DataLoader

    from shopseq.jobs.stages.build_features import run_features

    L = 6
    cfg = cfg_factory(
        f"features.max_len={L}", "features.cutoff=stride", "features.stride=2", "features.purchase_horizon_days=0.25",
        "features.churn_horizon_days=0.25", "features.min_item_count=1", "features.train_fraction=0.5", "features.val_fraction=0.3",
    )  # fmt: skip
    tables.append("silver_events", _synthetic_silver(spark), partition_by=["event_date"])
    out = run_features(tables, cfg)
    assert not out["skipped"] and out["vocab_written"]
    stats = {s: out["stats"][s]["examples"] for s in ("train", "val", "test")}
    assert stats == {s: out["tables"][s]["rows"] for s in stats} and all(n > 0 for n in stats.values())
    assert all(out["tables"][s]["files"] >= 8 for s in stats)  # >= 4 row groups per rank, 2 ranks
    # the item that only appears after the train boundary is not in the vocabulary
    vocab = tables.read("vocab").collect()
    assert "late" not in {r["token"] for r in vocab if r["kind"] == "item"} and {r["vocab_version"] for r in vocab} == {out["inputs"]["vocab_version"]}

    schema = json.loads(Path(out["schema_path"]).read_text())
    assert schema["format"] == "shopseq-gold/1" and schema["max_len"] == L and schema["padding"] == "left"
    assert schema["vocab_sizes"] == {"item": 9, "category": 5, "event_type": 5}  # 7 items / 3 categories / 3 types + pad + OOV
    assert schema["inputs"] == {"silver_events_version": 0, "vocab_version": out["inputs"]["vocab_version"], "vocab_table_version": 0}
    cols = {c["name"]: c for c in schema["columns"]}
    assert cols["item_idx_seq"]["shape"] == [L] and cols["item_idx_seq"]["dtype"] == "int32" and cols["price_seq"]["dtype"] == "float32"
    assert tables.history("gold_train")[0]["metadata"]["schema"]["vocab_sizes"] == schema["vocab_sizes"]

    gold = tables.read("gold_train")
    assert [f["name"] for f in schema["columns"]] == gold.columns
    assert {f.name: f.dataType.simpleString() for f in gold.schema.fields}["item_idx_seq"] == "array<int>"
    all_ids = sorted(r[0] for r in gold.select("example_id").collect())
    files = tables.files("gold_train")
    seen: list[np.ndarray] = []
    for rank in range(2):
        with make_batch_reader(files, cur_shard=rank, shard_count=2, num_epochs=1, shuffle_row_groups=False, workers_count=1) as reader:
            ids = []
            for batch in DataLoader(reader, batch_size=8):
                n = batch["example_id"].shape[0]
                for name in ("item_idx_seq", "category_idx_seq", "event_type_idx_seq", "dt_bucket_seq", "hour_seq", "session_start_seq"):
                    assert batch[name].shape == (n, L) and batch[name].dtype == torch.int32
                assert batch["price_seq"].shape == (n, L) and batch["price_seq"].dtype == torch.float32
                assert batch["seq_len"].shape == (n,) and bool((batch["item_idx_seq"] > 0).sum(1).eq(batch["seq_len"]).all())
                assert batch["churn_label"].dtype == torch.int32
                ids.append(batch["example_id"].numpy())
            seen.append(np.concatenate(ids))
    assert len(seen[0]) > 0 and len(seen[1]) > 0
    assert not set(seen[0].tolist()) & set(seen[1].tolist())  # disjoint shards
    assert sorted(np.concatenate(seen).tolist()) == all_ids  # together: every row exactly once

    # Re-runs: up to date -> nothing written; forced -> recomputed, the unchanged vocabulary is not rewritten.
    versions = {n: tables.version(n) for n in ("vocab", "gold_train", "gold_val", "gold_test")}
    assert run_features(tables, cfg)["skipped"] and {n: tables.version(n) for n in versions} == versions
    forced = run_features(tables, cfg, force=True)
    assert not forced["vocab_written"] and tables.version("vocab") == versions["vocab"] and tables.version("gold_train") == versions["gold_train"] + 1
    assert forced["inputs"] == out["inputs"] and forced["stats"] == out["stats"]


# ----------------------------------------------------------------------------- real data


def _taobao_silver(spark, path: Path) -> DataFrame:
    """The Taobao sample -> silver columns with plain Spark (30-minute gap sessions), independent of ingest/sessionize."""
    raw = spark.read.csv(str(path), schema="user_id string, item_id string, category_id string, behavior string, ts long")
    kinds = {"pv": "view", "fav": "fav", "cart": "cart", "buy": "purchase"}
    etype = F.coalesce(*[F.when(F.col("behavior") == k, F.lit(v)) for k, v in kinds.items()])
    t = F.timestamp_seconds("ts")
    ev = (
        raw.where(etype.isNotNull())
        .select("user_id", "item_id", "category_id", etype.alias("event_type"), t.alias("event_time"))
        .where((F.col("event_time") >= F.lit("2017-11-25 00:00:00").cast("timestamp")) & (F.col("event_time") < F.lit("2017-12-04 00:00:00").cast("timestamp")))
        .withColumn("event_id", F.sha2(F.concat_ws("|", "user_id", "item_id", "category_id", "event_type", F.unix_seconds("event_time").cast("string")), 256))
        .dropDuplicates(["event_id"])
    )
    rank = F.when(F.col("event_type") == "view", 0).when(F.col("event_type") == "fav", 1).when(F.col("event_type") == "cart", 2).otherwise(4)
    w = Window.partitionBy("user_id").orderBy("event_time", rank, "item_id", "event_id")
    gap = F.unix_seconds("event_time") - F.lag(F.unix_seconds("event_time")).over(w)
    ev = ev.withColumn("_new", F.when(gap.isNull() | (gap > 1800), 1).otherwise(0)).withColumn("session_index", (F.sum("_new").over(w) - 1).cast("int"))
    in_session = Window.partitionBy("user_id", "session_index").orderBy("event_time", rank, "item_id", "event_id")
    ev = ev.withColumn("event_index", (F.row_number().over(in_session) - 1).cast("int"))
    out = ev.select(
        "event_id", "user_id", "event_time", "event_type", "item_id", "category_id", F.lit(None).cast("double").alias("price"),
        F.lit(None).cast("string").alias("brand"), F.lit(None).cast("string").alias("source_session_id"), F.to_date("event_time").alias("event_date"),
        F.lit("taobao-test").alias("ingest_batch"), F.concat_ws("-", "user_id", F.col("session_index").cast("string")).alias("session_id"),
        "session_index", "event_index", F.lit(False).alias("is_bot_suspect"),
    )  # fmt: skip
    return out.select([F.col(f.name).cast(f.dataType) for f in SILVER_SCHEMA.fields])


@pytest.mark.shared_data
def test_taobao_sample_builds_gold_tables(spark, tables, cfg_factory, shared_data):
    from shopseq.jobs.stages.build_features import run_features

    path = shared_data / "taobao_head.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    cfg = cfg_factory(
        "features.cutoff=session_end", "features.purchase_horizon_days=1.0", "features.churn_horizon_days=1.0",
        "features.train_end=2017-11-30", "features.val_end=2017-12-02",
    )  # fmt: skip
    tables.append("silver_events", _taobao_silver(spark, path), partition_by=["event_date"])
    out = run_features(tables, cfg)
    s = out["stats"]
    keys = ("examples", "users", "purchase_rate", "churn_rate", "purchase_labeled", "churn_labeled", "next_labeled")
    summary = {k: tuple(round(s[k][c], 4) if c.endswith("rate") else s[k][c] for c in keys) for k in s}
    log.info("taobao gold: %s; vocab sizes %s; split %s", summary, out["vocab_sizes"], out["split"])
    assert summary == TAOBAO_EXPECTED
    assert out["vocab_sizes"] == TAOBAO_VOCAB
    assert all(out["tables"][k]["files"] >= 8 for k in s)


# (examples, users, purchase rate, churn rate, purchase-labeled, churn-labeled, next-labeled) per split
TAOBAO_EXPECTED: dict = {
    "train": (5828, 792, 0.2111, 0.1369, 5828, 5828, 5613),
    "val": (1485, 603, 0.1946, 0.136, 1485, 1485, 1367),
    "test": (3550, 815, 0.1727, 0.0872, 1662, 1662, 2735),
}
TAOBAO_VOCAB: dict = {"item": 6648, "category": 2235, "event_type": 6}  # min_item_count 2; taobao has no remove_from_cart
