"""The literature's evaluation protocols as presets (issue 14, part 3): k-core filter, leave-one-out, session protocol."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseq.features.protocols import as_entity, kcore_round
from shopseq.features.sequences import build_examples, train_events
from shopseq.features.splits import split_bounds
from shopseq.features.vocab import fit_vocab
from shopseq.jobs.config import ConfigError, FeaturesConfig, load_config
from tests.conftest import REPO
from tests.rows import silver, us

CONF = REPO / "conf"


def preset(name: str, *overrides: str, dataset: str | None = None) -> FeaturesConfig:
    """The features config of ``conf/protocols/<name>.yaml`` (over a dataset layer when given), as the CLI loads it."""
    layers = ([CONF / "datasets" / f"{dataset}.yaml"] if dataset else []) + [CONF / "protocols" / f"{name}.yaml"]
    return load_config("local", CONF, overrides, layers).features


def vocab_of(events: DataFrame, cfg: FeaturesConfig) -> tuple[DataFrame, dict[int, str]]:
    """A vocabulary fit on ``events`` as a small local relation, and item/event-type index -> token."""
    rows = fit_vocab(events, cfg).collect()
    vocab = events.sparkSession.createDataFrame(rows, "kind string, token string, index int, count long")
    return vocab, {r["index"]: r["token"] for r in rows if r["kind"] == "item"} | {-r["index"]: r["token"] for r in rows if r["kind"] == "event_type"}


# ----------------------------------------------------------------------------- k-core


def test_kcore_rounds_until_nothing_changes(spark):
    # k = 2 for users and items. Round 1: item z has 1 event -> c:z goes, c is left with 1 event.
    # Round 2: user c (1 event) goes -> y is left with a's event only. Round 3: item y (1 event) goes.
    # Round 4 removes nothing. a keeps 2 events and b 2: both stay.
    rows = [("a", "p"), ("a", "q"), ("a", "y"), ("b", "p"), ("b", "q"), ("c", "y"), ("c", "z")]
    events = spark.createDataFrame(rows, "user_id string, item_id string")
    r1 = events.transform(kcore_round, 2, 2)
    assert sorted(map(tuple, r1.collect())) == [("a", "p"), ("a", "q"), ("a", "y"), ("b", "p"), ("b", "q"), ("c", "y")]
    r2 = r1.transform(kcore_round, 2, 2)
    assert sorted(map(tuple, r2.collect())) == [("a", "p"), ("a", "q"), ("a", "y"), ("b", "p"), ("b", "q")]
    r3 = r2.transform(kcore_round, 2, 2)
    assert sorted(map(tuple, r3.collect())) == [("a", "p"), ("a", "q"), ("b", "p"), ("b", "q")]
    assert sorted(map(tuple, r3.transform(kcore_round, 2, 2).collect())) == sorted(map(tuple, r3.collect()))
    # A threshold of 1 on both sides keeps everything.
    assert events.transform(kcore_round, 1, 1).count() == len(rows)


def test_filter_events_records_rounds_and_counts(spark):
    from shopseq.jobs.stages.build_features import filter_events

    rows = [("a", "p"), ("a", "q"), ("a", "y"), ("b", "p"), ("b", "q"), ("c", "y"), ("c", "z")]
    events = spark.createDataFrame(rows, "user_id string, item_id string")
    kept, record = filter_events(events, FeaturesConfig(filter_min_user_events=2, filter_min_item_events=2))
    assert sorted(map(tuple, kept.collect())) == [("a", "p"), ("a", "q"), ("b", "p"), ("b", "q")]
    assert record == {
        "entity": "user", "min_user_events": 2, "min_item_events": 2, "rounds": 4,
        "removed": [{"users": 0, "items": 1, "events": 1}, {"users": 1, "items": 0, "events": 1},
                    {"users": 0, "items": 1, "events": 1}, {"users": 0, "items": 0, "events": 0}],
        "before": {"users": 3, "items": 4, "events": 7}, "after": {"users": 2, "items": 2, "events": 4},
    }  # fmt: skip
    same, off = filter_events(events, FeaturesConfig())  # the default: no filter, counts only
    assert same is events and off["rounds"] == 0 and off["before"] == off["after"] == {"users": 3, "items": 4, "events": 7}


# ----------------------------------------------------------------------------- RecBole leave-one-out

# a: its last two events tie (view then cart of i4 at 10:03); b: a tie in the middle (view and fav of i1 at 09:00).
LOO_USERS = [
    ("a", "2024-01-01 10:00:00", "view", "i1", "c1", None, 0, 0),
    ("a", "2024-01-01 10:01:00", "view", "i2", "c1", None, 0, 1),
    ("a", "2024-01-01 10:02:00", "view", "i3", "c1", None, 0, 2),
    ("a", "2024-01-01 10:03:00", "view", "i4", "c1", None, 0, 3),
    ("a", "2024-01-01 10:03:00", "cart", "i4", "c1", None, 0, 4),
    ("b", "2024-01-01 09:00:00", "view", "i1", "c1", None, 0, 0),
    ("b", "2024-01-01 09:00:00", "fav", "i1", "c1", None, 0, 1),
    ("b", "2024-01-01 09:05:00", "view", "i2", "c1", None, 0, 2),
    ("b", "2024-01-01 09:06:00", "view", "i3", "c1", None, 0, 3),
]


def _loo_rows(spark, cfg: FeaturesConfig) -> list[tuple]:
    events = silver(spark, LOO_USERS)
    vocab, token = vocab_of(events, cfg)
    bounds = split_bounds(us("2024-01-01 09:00:00"), us("2024-01-01 10:03:00"), cfg)
    got = build_examples(events, vocab, cfg, bounds, 0.0, 1.0).collect()
    assert len({r["example_id"] for r in got}) == len(got)  # ids stay unique where cutoffs tie
    out = [
        (r["user_id"], r["frequency"], r["cutoff_time"].strftime("%H:%M"), token.get(r["next_item_idx"]), token.get(-(r["next_event_type_idx"] or 0)), r["split"])
        for r in got
    ]  # fmt: skip
    return sorted(out)


def test_recbole_loo_preset_one_example_per_event_last_is_test(spark):
    cfg = preset("recbole_loo")
    assert (cfg.protocol, cfg.cutoff, cfg.stride, cfg.collapse_ties, cfg.split, cfg.min_item_count) == ("recbole_loo", "stride", 1, False, "leave_last_out", 1)
    assert (cfg.filter_min_user_events, cfg.filter_min_item_events) == (5, 5)
    # (user, feature events, cutoff, next item, next event type, split): one example per event; the last
    # event is the test target, the one before it the validation target, even where they tie.
    assert _loo_rows(spark, cfg) == [
        ("a", 1, "10:00", "i2", "view", "train"),
        ("a", 2, "10:01", "i3", "view", "train"),
        ("a", 3, "10:02", "i4", "view", "val"),
        ("a", 4, "10:03", "i4", "cart", "test"),
        ("a", 5, "10:03", None, None, "test"),  # the final event: no next event, masked
        ("b", 1, "09:00", "i1", "fav", "train"),
        ("b", 2, "09:00", "i2", "view", "val"),
        ("b", 3, "09:05", "i3", "view", "test"),
        ("b", 4, "09:06", None, None, "test"),
    ]
    # Why the preset needs collapse_ties: false. With the cutoff contract's tie rule, a's tied last two
    # events make one cutoff, and the held-out target becomes the second-to-last event.
    collapsed = _loo_rows(spark, dataclasses.replace(cfg, collapse_ties=True))
    assert [r for r in collapsed if r[0] == "a"] == [
        ("a", 1, "10:00", "i2", "view", "train"),
        ("a", 2, "10:01", "i3", "view", "val"),
        ("a", 3, "10:02", "i4", "view", "test"),
        ("a", 5, "10:03", None, None, "test"),
    ]


# ----------------------------------------------------------------------------- session protocol

# Sessions (silver session_id = "<user>-s<index>"): u-s0 starts on day 1 (train); u-s1 starts 23:50 on day 2 and
# runs past midnight (val: its first event decides); v-s0 starts exactly at the val/test boundary (val);
# w-s0 starts on day 3 (test). Data end 2024-01-04 00:00: test = first event after 01-03 00:00, val after 01-02 00:00.
SESSION_EVENTS = [
    ("u", "2024-01-01 10:00:00", "view", "i1", "c1", None, 0, 0),
    ("u", "2024-01-01 10:01:00", "view", "i2", "c1", None, 0, 1),
    ("u", "2024-01-01 10:02:00", "view", "i3", "c1", None, 0, 2),
    ("u", "2024-01-02 23:50:00", "view", "i2", "c1", None, 1, 0),
    ("u", "2024-01-03 00:10:00", "view", "i1", "c1", None, 1, 1),
    ("v", "2024-01-03 00:00:00", "view", "i3", "c1", None, 0, 0),
    ("v", "2024-01-03 00:05:00", "view", "i4", "c1", None, 0, 1),
    ("w", "2024-01-03 23:00:00", "view", "i1", "c1", None, 0, 0),
    ("w", "2024-01-04 00:00:00", "view", "i2", "c1", None, 0, 1),
]


def test_last_days_bounds():
    cfg = FeaturesConfig(split="last_days", test_days=1.0, val_days=2.0)
    b = split_bounds(us("2024-01-01 00:00:00"), us("2024-01-10 06:00:00"), cfg)
    assert (b.train_end_us, b.val_end_us, b.gap_us) == (us("2024-01-07 06:00:00"), us("2024-01-09 06:00:00"), 0)
    assert b.describe("last_days") == {
        "method": "last_days", "data_start": "2024-01-01T00:00:00Z", "data_end": "2024-01-10T06:00:00Z",
        "train_end": "2024-01-07T06:00:00Z", "val_end": "2024-01-09T06:00:00Z", "test_days": 1.0, "val_days": 2.0,
    }  # fmt: skip


def test_session_preset_sessions_are_users_split_by_their_first_event(spark):
    cfg = preset("session")
    assert (cfg.protocol, cfg.entity, cfg.split, cfg.cutoff, cfg.stride, cfg.collapse_ties) == ("session", "session", "last_days", "stride", 1, False)
    assert (cfg.filter_min_user_events, cfg.filter_min_item_events, cfg.test_days, cfg.val_days) == (2, 5, 1.0, 1.0)
    events = silver(spark, SESSION_EVENTS).transform(as_entity, cfg.entity)
    bounds = split_bounds(us("2024-01-01 10:00:00"), us("2024-01-04 00:00:00"), cfg)
    # The train range (vocabulary, price statistics) is every event of the train sessions: u-s0 only.
    assert sorted(r["item_id"] for r in events.transform(train_events, cfg, bounds).collect()) == ["i1", "i2", "i3"]
    vocab, token = vocab_of(events, cfg)
    got = build_examples(events, vocab, cfg, bounds, 0.0, 1.0).collect()
    # (session as user, events in the window, cutoff, next item, split): a session's sequence never reaches
    # into the user's other session, and every event but the first is a target.
    assert sorted((r["user_id"], r["seq_len"], r["cutoff_time"], token.get(r["next_item_idx"]), r["split"]) for r in got) == [
        ("u-s0", 1, datetime(2024, 1, 1, 10, 0), "i2", "train"),
        ("u-s0", 2, datetime(2024, 1, 1, 10, 1), "i3", "train"),
        ("u-s0", 3, datetime(2024, 1, 1, 10, 2), None, "train"),
        ("u-s1", 1, datetime(2024, 1, 2, 23, 50), "i1", "val"),
        ("u-s1", 2, datetime(2024, 1, 3, 0, 10), None, "val"),  # after the boundary, in its session's split
        ("v-s0", 1, datetime(2024, 1, 3, 0, 0), "i4", "val"),  # starts exactly at the boundary: not test
        ("v-s0", 2, datetime(2024, 1, 3, 0, 5), None, "val"),
        ("w-s0", 1, datetime(2024, 1, 3, 23, 0), "i2", "test"),
        ("w-s0", 2, datetime(2024, 1, 4, 0, 0), None, "test"),
    ]


# ----------------------------------------------------------------------------- presets and flags


def test_presets_layer_between_dataset_and_set():
    loo = preset("recbole_loo", "features.stride=2", dataset="taobao")
    assert (loo.split, loo.stride, loo.purchase_horizon_days, loo.train_end) == ("leave_last_out", 2, 1.0, "2017-11-30")  # --set wins; the dataset's horizons stay
    assert preset("cutoff", dataset="taobao") == load_config("local", CONF, [], [CONF / "datasets" / "taobao.yaml"]).features  # changes nothing
    session = preset("session", dataset="rees46")
    assert (session.test_days, session.val_days, session.split) == (0.006944444444, 0.006944444444, "last_days")  # 10 minutes each


def test_unknown_protocol_is_one_line(tmp_path, capsys):
    from shopseq.jobs.stages.build_features import main
    from shopseq.jobs.common import protocol_layer

    assert protocol_layer(str(CONF), "session") == CONF / "protocols" / "session.yaml" and protocol_layer(None, None) is None
    assert main(["--protocol", "nope", "--set", f"app.data_root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shopseq features: error: --protocol: unknown protocol 'nope'; expected one of cutoff, recbole_loo, session") and "\n" not in err
    with pytest.raises(ConfigError, match="features.filter_min_item_events"):
        FeaturesConfig(filter_min_item_events=0)
    with pytest.raises(ConfigError, match="features.test_days"):
        FeaturesConfig(test_days=0.0)


# ----------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_taobao_recbole_5core_counts(spark, shared_data: Path):
    """RecBole's 5-core filter on the raw Taobao sample: 477 users, 1,656 items, 11,892 events in 8 rounds.

    Through ingest (whose window quarantines 35 rows) the same filter keeps 1,655 items and 11,887 events: the
    Taobao leave-one-out run checks that and the splits it gives (tests/test_quality_taobao.py), so no second
    pipeline runs here.
    """
    from shopseq.jobs.stages.build_features import filter_events

    path = shared_data / "taobao_head.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    cfg = load_config("local", CONF, [], [CONF / "datasets" / "taobao.yaml", CONF / "protocols" / "recbole_loo.yaml"])
    raw = spark.read.csv(str(path), schema="user_id string, item_id string, category_id string, behavior string, ts long")
    _, record = filter_events(raw.select("user_id", "item_id"), cfg.features)
    assert (record["before"], record["after"], record["rounds"]) == (
        {"users": 815, "items": 55368, "events": 84475}, {"users": 477, "items": 1656, "events": 11892}, 8
    )
