"""The synthetic generator: determinism, schema, and the structure it plants (features/generate.py docstring).

One small build (200 users, 14 days = two full weeks from Monday 2024-01-01,
about 20k events) is made once for the module with Spark and brought to the
driver as pandas, so each structural check is a few lines of pandas instead
of another Spark query plan to compile. Rates are random draws, so most checks
are a stated tolerance around the configured value, each saying why it is
what it is. The build is seeded: a result never changes between runs, so a
tolerance guards against a change of the generator, not against flakiness.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyspark.sql.functions as F
import pytest
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from shopseq.features.generate import EVENT_COLUMNS, TRUTH_COLUMNS, synth_events, synth_users, user_truth, window_seconds
from shopseq.jobs.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent

EVENT_TYPES = [
    T.StringType(),  # user_id
    T.StringType(),  # item_id
    T.StringType(),  # category_id
    T.StringType(),  # event_type
    T.TimestampType(),  # event_time (UTC)
    T.DoubleType(),  # price
    T.StringType(),  # brand
    T.StringType(),  # session_hint
]


def small_cfg(*overrides: str):
    """conf/base.yaml's generate section, shrunk: 200 users over two weeks."""
    return load_config("local", REPO / "conf", ["generate.users=200", "generate.days=14", "generate.partitions=2", *overrides]).generate


def build(spark, cfg) -> tuple[DataFrame, DataFrame]:
    users = synth_users(spark.range(0, cfg.users, 1, cfg.partitions), cfg)
    return users, synth_events(users, cfg)


def checksum(df: DataFrame) -> tuple[int, int]:
    """(rows, order-independent sum of a hash over all columns)."""
    row = df.agg(F.count("*").alias("n"), F.sum(F.xxhash64(*df.columns).cast("decimal(38,0)")).alias("h")).head()
    return row["n"], int(row["h"])


@pytest.fixture(scope="module")
def gen(spark):
    """(cfg, users Spark frame, events Spark frame (cached), users pandas, events pandas)."""
    cfg = small_cfg()
    users, events = build(spark, cfg)
    events = events.cache()
    ev = events.toPandas()
    us = users.toPandas()
    ev["t"] = (ev["event_time"] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)  # epoch seconds (times are UTC)
    us["churn_s"] = (us["churn_time"] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)  # NaN where not churned
    assert len(ev) > 15_000  # about 20k: enough for the rate checks below
    yield cfg, users, events, us, ev
    events.unpersist()


# --------------------------------------------------------------------------- contract and determinism


def test_columns_types_and_nulls(gen):
    cfg, users, events, us, ev = gen
    assert events.columns == EVENT_COLUMNS and [f.dataType for f in events.schema] == EVENT_TYPES
    required = [c for c in EVENT_COLUMNS if c != "brand"]
    assert not ev[required].isna().any().any()
    assert set(ev["event_type"]) == {"view", "fav", "cart", "purchase"}
    start, end = window_seconds(cfg)
    assert ev["t"].min() >= start and ev["t"].max() < end
    assert (ev["price"] > 0).all()
    assert (ev["session_hint"].str.split("-s").str[0] == ev["user_id"]).all()
    # Items are fixed: item i is in category i mod categories, with one price and one brand.
    items = ev.groupby("item_id").agg(
        n_cat=("category_id", "nunique"), n_price=("price", "nunique"), n_brand=("brand", lambda b: b.nunique(dropna=False)),
        category_id=("category_id", "first"), no_brand=("brand", lambda b: b.isna().all()),
    )
    assert (items[["n_cat", "n_price", "n_brand"]] == 1).all().all()
    assert (items["category_id"] == "c" + (items.index.str[1:].astype(int) % cfg.categories).astype(str)).all()
    # brand_missing_rate = 0.1 of items; about 800 distinct items are seen, so +-0.05 is over 4 sd.
    assert items["no_brand"].mean() == pytest.approx(cfg.brand_missing_rate, abs=0.05)
    # Truth: one row per user u0..u199; churn_time exactly when churned.
    truth = user_truth(users)
    assert truth.columns == TRUTH_COLUMNS
    assert [f.dataType for f in truth.schema] == [T.StringType(), T.BooleanType(), T.TimestampType(), T.StringType()]
    assert sorted(us["user_id"]) == sorted(f"u{i}" for i in range(cfg.users))
    assert (us["churn_time"].notna() == us["churned"]).all() and us["top_category"].str.match(r"^c\d+$").all()
    # churn_rate 0.4 of 200 users: binomial sd 0.035, so +-0.1 is about 3 sd.
    assert us["churned"].mean() == pytest.approx(cfg.churn_rate, abs=0.1)


def test_same_rows_on_any_partitioning_and_user_count(spark, gen):
    """Rebuilt on 3 partitions instead of 2 and with only the first 50 users: exactly the same rows for them.

    Randomness is hashed from ids, never rand(), so neither the layout nor the number of users moves a row.
    """
    cfg, users, events, _, _ = gen
    _, rebuilt = build(spark, replace(cfg, partitions=3, users=50))
    expected = checksum(events.where(F.expr("cast(substring(user_id, 2) as int) < 50")))
    assert expected[0] > 1000 and checksum(rebuilt) == expected
    truth = checksum(user_truth(users))
    assert checksum(user_truth(synth_users(spark.range(0, cfg.users, 1, 1), cfg))) == truth
    assert checksum(user_truth(synth_users(spark.range(0, cfg.users, 1, 1), replace(cfg, seed=cfg.seed + 1)))) != truth


def test_bad_config_is_one_line_config_error():
    with pytest.raises(ConfigError, match=r"^generate.items must be >= generate.categories \(20\)$"):
        synth_users(None, small_cfg("generate.items=10"))  # validated before the DataFrame is touched


# --------------------------------------------------------------------------- funnel


def in_session(ev: pd.DataFrame, later: str, earlier: str) -> pd.Series:
    """For each ``later`` event (indexed as in ``ev``): is there an earlier ``earlier`` event of the same user, session and item?"""
    key = ["user_id", "session_hint", "item_id"]
    after = ev.loc[ev["event_type"] == later, [*key, "t"]].reset_index()
    before = ev.loc[ev["event_type"] == earlier, [*key, "t"]]
    pairs = after.merge(before, on=key, how="left", suffixes=("", "_before"))
    return (pairs["t_before"] < pairs["t"]).groupby(pairs["index"]).any()


def session_order(ev: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, session_hint): its first event time and the user's session before it (None for the first)."""
    sessions = ev.groupby(["user_id", "session_hint"])["t"].min().rename("start").reset_index().sort_values(["user_id", "start"])
    sessions["previous"] = sessions.groupby("user_id")["session_hint"].shift()
    return sessions


def test_funnel_rates(gen):
    cfg, _, _, _, ev = gen
    n = ev["event_type"].value_counts()
    # About 17k views and 2.1k carts. cart/view: binomial sd 0.0025, plus the per-user buyer
    # multiplier (sd 0.53 over ~180 active users: about 4% relative, 0.005) -> +-0.02.
    assert n["cart"] / n["view"] == pytest.approx(cfg.cart_rate, abs=0.02)
    # In-session purchase/cart: binomial sd sqrt(.35 * .65 / 2100) = 0.010 -> +-0.04 (4 sd).
    checkout = in_session(ev, "purchase", "cart")
    assert checkout.sum() / n["cart"] == pytest.approx(cfg.purchase_rate, abs=0.04)
    # Returning checkouts over the carts not bought in a session that has a next session (about 1.2k;
    # the user's last session has none): binomial sd sqrt(.6 * .4 / 1200) = 0.014 -> +-0.05.
    with_next = set(session_order(ev)["previous"].dropna())
    in_with_next = ev["session_hint"].isin(with_next)
    abandoned = (in_with_next & (ev["event_type"] == "cart")).sum() - (checkout & in_with_next.loc[checkout.index]).sum()
    assert (~checkout).sum() / abandoned == pytest.approx(cfg.return_rate, abs=0.05)
    # fav/view: binomial sd 0.0015 -> +-0.01.
    assert n["fav"] / n["view"] == pytest.approx(cfg.fav_rate, abs=0.01)


@pytest.mark.parametrize(("later", "earlier"), [("cart", "view"), ("fav", "view")])
def test_funnel_order_within_session(gen, later, earlier):
    """Every cart and fav has an earlier view: same user, session and item."""
    has_earlier = in_session(gen[4], later, earlier)
    assert len(has_earlier) > 100 and has_earlier.all()


def test_every_purchase_follows_a_cart_in_its_session_or_opens_the_next_one(gen):
    """A purchase without a cart in its session is a returning checkout: the item was carted, not bought,
    in the user's previous session, and the purchase comes before the session's first view."""
    cfg, _, _, _, ev = gen
    checkout = in_session(ev, "purchase", "cart")
    returning = ev.loc[checkout.index[~checkout]]
    assert len(returning) > 100
    ret = returning.merge(session_order(ev), on=["user_id", "session_hint"])
    assert len(ret) == len(returning) and ret["previous"].notna().all()
    carts = ev.loc[ev["event_type"] == "cart", ["user_id", "session_hint", "item_id"]].drop_duplicates()
    found = ret.merge(carts, left_on=["user_id", "previous", "item_id"], right_on=["user_id", "session_hint", "item_id"], how="left", suffixes=("", "_c"))
    assert found["session_hint_c"].notna().all()
    first_view = ev[ev["event_type"] == "view"].groupby(["user_id", "session_hint"])["t"].min().rename("first_view").reset_index()
    timing = ret.merge(first_view, on=["user_id", "session_hint"])
    assert ((timing["first_view"] - timing["t"] >= 1) & (timing["first_view"] - timing["t"] <= cfg.max_views_per_session)).all()


# --------------------------------------------------------------------------- sessions, churn


def test_session_hint_matches_gap_rule(gen):
    """Inside a session events are at most max(view_gap_max_s, checkout tail) apart; sessions min_session_gap_minutes (less a returning checkout)."""
    cfg, _, _, _, ev = gen
    ev = ev.sort_values(["user_id", "t", "session_hint"])
    same_user = ev["user_id"] == ev["user_id"].shift()
    same_session = ev["session_hint"] == ev["session_hint"].shift()
    gap = ev["t"] - ev["t"].shift()
    inside_bound = max(cfg.view_gap_max_s, cfg.action_delay_max_s + cfg.checkout_delay_max_s + cfg.max_views_per_session)
    assert gap[same_session].max() <= inside_bound < 30 * 60
    assert gap[same_user & ~same_session].min() >= cfg.min_session_gap_minutes * 60 - cfg.max_views_per_session  # a returning checkout
    # So a new session wherever the gap exceeds 30 minutes gives exactly the generator's sessions.
    assert (~same_user | (gap > 30 * 60)).sum() == ev["session_hint"].nunique()


def test_churned_users_stop_and_others_stay(gen):
    cfg, _, _, us, ev = gen
    start, end = window_seconds(cfg)
    last = us.merge(ev.groupby("user_id")["t"].max().rename("last"), on="user_id", how="left")
    churned = last[last["churned"]]
    assert churned["last"].isna().sum() < len(churned)
    assert not (churned["last"] >= churned["churn_s"]).any()
    # churn_time <= churn_latest of the window, so churners are silent for its last (1 - churn_latest) share.
    assert not (churned["last"] >= start + cfg.churn_latest * (end - start)).any()
    # Non-churned: P(no session in a week) = E[exp(-5 a)] over the activity multiplier a, a few %
    # (about 3% of some 120 non-churners here): >= 85% leaves room for a few more light users.
    stayed = last[~last["churned"]]
    assert (stayed["last"] >= end - 7 * 86400).mean() >= 0.85


@pytest.fixture(scope="module")
def fading(spark):
    """Every user churns (churn_rate 1) in a six-week window, so most have a full churn_decline_days before churn_time.

    Returns (cfg, one row per session: user, start ``t``, ``views``, ``carts``, ``days_before`` churn_time).
    """
    cfg = small_cfg("generate.days=42", "generate.churn_rate=1.0")
    users, events = build(spark, cfg)
    ev, us = events.toPandas(), users.toPandas()
    ev["t"] = (ev["event_time"] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    us["churn_s"] = (us["churn_time"] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    ev["view"], ev["cart"] = ev["event_type"] == "view", ev["event_type"] == "cart"
    sessions = ev.groupby(["user_id", "session_hint"]).agg(t=("t", "min"), views=("view", "sum"), carts=("cart", "sum")).reset_index()
    start, _ = window_seconds(cfg)
    full = us[us["churn_s"] >= start + cfg.churn_decline_days * 86400]  # a whole decline inside the window
    sessions = sessions.merge(full[["user_id", "churn_s"]], on="user_id")
    sessions["days_before"] = (sessions["churn_s"] - sessions["t"]) / 86400
    return cfg, sessions


def test_churners_fade_before_churn(fading):
    """Over the churn_decline_days (14) before churn_time the session rate falls linearly to 0 and sessions shrink.

    Rate factor d = time left / 14 days: the last 7 days average d = 1/4, the 7 before 3/4, so about 1/3 as many
    sessions. Engagement 1 - 0.8 (1 - d) scales views per session and carts per view; over sessions (which occur at
    rate d) it averages 0.47 in the last 7 days, 0.82 in the 7 before and 1 earlier.
    """
    cfg, s = fading
    assert cfg.churn_decline_days == 14 and cfg.churn_engagement_fade == 0.8
    last, before, earlier = s[s["days_before"] < 7], s[s["days_before"].between(7, 14, inclusive="left")], s[s["days_before"] >= 14]
    assert len(before) >= 100 and len(last) < 0.6 * len(before)
    views = {k: g["views"].mean() for k, g in (("last", last), ("before", before), ("earlier", earlier))}
    carts = {k: g["carts"].sum() / g["views"].sum() for k, g in (("last", last), ("before", before), ("earlier", earlier))}
    # Views per session: geometric with mean 10 x engagement, so the ratios are the engagement ratios, 0.47 and 0.82.
    assert views["last"] / views["earlier"] == pytest.approx(0.47, abs=0.12)
    assert views["before"] / views["earlier"] == pytest.approx(0.82, abs=0.12)
    # Carts per view fall with engagement too (a view-weighted mean of it, lower still than per session).
    assert carts["last"] < 0.7 * carts["earlier"] and carts["before"] < carts["earlier"]


# --------------------------------------------------------------------------- interests, popularity, rhythm


def test_events_concentrate_in_user_interests(gen):
    cfg, _, _, us, ev = gen
    joined = ev.merge(us[["user_id", "top_category", "interests"]], on="user_id")
    in_top = joined["category_id"] == joined["top_category"]
    in_interests = [c in {f"c{i}" for i in interests} for c, interests in zip(joined["category_id"], joined["interests"])]
    # Exact expectations (docstring): top 0.8 * 6/11 + 0.2/20 = 0.446, interests 0.8 + 0.2 * 3/20 = 0.83.
    # Categories cluster within a session (focus 0.7), about 1.7k sessions: +-0.05 is several sd.
    assert in_top.mean() == pytest.approx(0.8 * 6 / 11 + 0.2 / 20, abs=0.05)
    assert pd.Series(in_interests).mean() == pytest.approx(0.8 + 0.2 * 3 / 20, abs=0.05)
    # Per user: the most frequent category is the true top category for most users with >= 30 events
    # (measured 0.65; a random one of the 3 interests would give about 0.33, a random category 0.05).
    per_user = joined.groupby(["user_id", "top_category"])["category_id"].agg(lambda c: (c.value_counts().idxmax(), len(c)))
    hits = [mode == top for (_, top), (mode, n) in per_user.items() if n >= 30]
    assert len(hits) > 100 and sum(hits) / len(hits) >= 0.5


def test_item_popularity_is_zipf_like(gen):
    cfg, _, _, _, ev = gen
    views = ev.loc[ev["event_type"] == "view", "item_id"]
    counts = views.value_counts()
    # Uniform popularity would give the top 10% of items 0.10 of views; Zipf(1.1) over 50 items per category about 0.6.
    assert counts.iloc[: cfg.items // 10].sum() / len(views) >= 0.4
    # Exact: P(rank 0) = F(2) for the density x^-s on [1, n + 1), n = 50 items per category; rank 0 = items 0..19.
    s, n = cfg.zipf_exponent, cfg.items // cfg.categories
    p_rank0 = (2 ** (1 - s) - 1) / ((n + 1) ** (1 - s) - 1)
    # About 17k views, the rank drawn independently per view: binomial sd 0.003 -> +-0.02.
    assert (views.str[1:].astype(int) < cfg.categories).mean() == pytest.approx(p_rank0, abs=0.02)


def test_daily_and_weekly_rhythm(gen):
    ev = gen[4]
    by_hour = ev["event_time"].dt.hour.value_counts()
    evening = by_hour.reindex([19, 20, 21, 22], fill_value=0).mean()
    night = by_hour.reindex([3, 4, 5], fill_value=0).mean()
    # hour_weights: 19-22 h about 11x 3-5 h (docstring); 3x leaves room for sessions crossing hours.
    assert evening > 3 * night
    # Session starts per day, weekend (4 days) vs weekday (10 days); weekend_boost 1.3 -> require 1.1
    # (about 120 sessions a day: sd about 9% per day, 5% for the weekend mean).
    starts = ev.groupby("session_hint")["event_time"].min().dt.dayofweek  # Monday = 0
    weekend = starts.isin([5, 6]).sum() / 4
    weekday = (~starts.isin([5, 6])).sum() / 10
    assert weekend > 1.1 * weekday


# --------------------------------------------------------------------------- the job


def test_job_writes_parquet(spark, tmp_path):
    from shopseq.jobs.stages import generate as job

    landing = tmp_path / "raw" / "generated"
    spark.range(3).write.parquet(str(landing / "events"))  # a stale earlier output: must be replaced, not appended to
    assert job.main(["--set", f"app.data_root={tmp_path}", "--users", "50", "--days", "7"]) == 0
    events = spark.read.parquet(str(landing / "events"))
    truth = spark.read.parquet(str(landing / "users"))
    assert events.columns == EVENT_COLUMNS and [f.dataType for f in events.schema] == EVENT_TYPES
    assert truth.columns == TRUTH_COLUMNS and truth.count() == 50
    span = events.agg(F.count("*").alias("n"), (F.max(F.unix_timestamp("event_time")) - F.min(F.unix_timestamp("event_time"))).alias("s")).head()
    assert span["n"] > 500 and span["s"] < 7 * 86400  # 50 users x 1 week x 5 sessions x ~12 events, less churn
    assert job.main(["--set", f"app.data_root={tmp_path}", "--users", "0"]) == 2  # one-line config error


def test_write_generated_reaches_target_events(spark, tmp_path):
    from shopseq.jobs.stages.generate import write_generated

    out = write_generated(spark, small_cfg("generate.days=7"), str(tmp_path / "gen"), target_events=20_000)
    assert out["events"] == str(tmp_path / "gen" / "events") and out["users"] == str(tmp_path / "gen" / "users")
    assert spark.read.parquet(out["events"]).count() == out["rows"]
    # Users are scaled from a 1000-user pilot; about 400 users, per-user counts with CV ~1: sd ~5% -> +-20%.
    assert out["rows"] == pytest.approx(20_000, rel=0.2)
