"""Sessionization, bronze -> silver: pure DataFrame-in/DataFrame-out transforms.

Rules (the contract the tests pin down):

* **Order.** A user's events are ordered by ``(event_time, event_type rank,
  item_id, event_id)``; the rank follows the funnel, ``view < fav < cart <
  remove_from_cart < purchase`` (unknown types after ``purchase``). ``event_id``
  is unique, so the order is total and every run produces the same rows, even
  when timestamps tie (a view and a cart in the same second: view first).
* **Gap rule.** A new session starts at a user's first event and whenever the
  gap to the user's previous event is *strictly greater* than
  ``gap_minutes``; a gap of exactly ``gap_minutes`` stays in the session.
* **Source rule** (``use_source_session``). A new session starts whenever
  ``source_session_id`` differs from the previous event's. Where either id is
  null the gap rule decides. Sessions are contiguous runs: a source session
  that is interrupted by another one (A, B, A) gives three sessions.
* **Ids.** ``session_index`` is 0-based per user in time order;
  ``session_id = sha2-256(user_id || 0x1f || first event_id of the session)``
  as hex, so it does not move when later events arrive; ``event_index`` is
  0-based within the session, counting only the rows that are kept.
* **Consecutive repeats** (``drop_consecutive_repeats``): an event with the
  same item and event type as the previous event of the same session. They
  still count for the gap rule (a repeat is activity). They are not dropped
  here but flagged in ``is_removed_repeat`` (with a null ``event_index``);
  :func:`silver_events` leaves them out, and the job counts them on the way
  (:func:`removal_metrics`), logs the count and records it in the commit.
* **Bots.** More than ``max_events_per_user_day`` events of one user on one UTC
  day (counted before repeat removal) sets ``is_bot_suspect`` on every event
  of that user-day. Nothing is dropped.

Everything is one window specification per user (:func:`user_window`), lag +
running sums in native expressions: Spark shuffles and sorts the events once.
The per-user-day count reuses that sort, because the order starts with the UTC
day of ``event_time`` (implied by ordering on ``event_time``, so it changes
nothing in the order).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseq.features.schema import EVENT_COLUMNS, EVENT_SCHEMA, EVENT_TYPES
from shopseq.features.params import SessionizeConfig

FUNNEL_ORDER: tuple[str, ...] = EVENT_TYPES  # view < fav < cart < remove_from_cart < purchase
SESSION_COLUMNS: list[str] = ["session_id", "session_index", "event_index", "is_bot_suspect"]
SILVER_COLUMNS: list[str] = EVENT_COLUMNS + SESSION_COLUMNS
SILVER_SCHEMA = T.StructType(
    EVENT_SCHEMA.fields
    + [
        T.StructField("session_id", T.StringType()),
        T.StructField("session_index", T.IntegerType()),
        T.StructField("event_index", T.IntegerType()),
        T.StructField("is_bot_suspect", T.BooleanType()),
    ]
)
REMOVED_FLAG = "is_removed_repeat"
_DAY = "_ss_day"  # internal: UTC day of event_time
_RANK = "_ss_rank"  # internal: funnel rank of event_type
_NEW = "_ss_new_session"
_RN = "_ss_rn"  # internal: row number in the user window
_START_RN = "_ss_start_rn"
_REMOVED_SO_FAR = "_ss_removed_so_far"
_START_ID = "_ss_start_id"

SESSIONS_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("session_id", T.StringType()),
        T.StructField("session_index", T.IntegerType()),
        T.StructField("session_start", T.TimestampType()),
        T.StructField("session_end", T.TimestampType()),
        T.StructField("duration_s", T.DoubleType()),
        T.StructField("n_events", T.LongType()),
        *[T.StructField(f"n_{t}", T.LongType()) for t in FUNNEL_ORDER],
        T.StructField("converted", T.BooleanType()),
        T.StructField("is_bot_suspect", T.BooleanType()),
        T.StructField("session_date", T.DateType()),
    ]
)


def event_type_rank(col: Column | str = "event_type") -> Column:
    """The funnel rank of an event type (view=0 ... purchase=4; anything else 5)."""
    c = F.col(col) if isinstance(col, str) else col
    expr = F.lit(len(FUNNEL_ORDER))
    for rank, name in reversed(list(enumerate(FUNNEL_ORDER))):
        expr = F.when(c == name, F.lit(rank)).otherwise(expr)
    return expr


def user_window() -> WindowSpec:
    """The one window per user: partition by user, ordered by day, time and the tie-breakers.

    Needs the internal columns of :func:`add_order_keys`.
    """
    return Window.partitionBy("user_id").orderBy(_DAY, "event_time", _RANK, "item_id", "event_id")


def _running(w: WindowSpec) -> WindowSpec:
    return w.rowsBetween(Window.unboundedPreceding, Window.currentRow)


def add_order_keys(events: DataFrame) -> DataFrame:
    """Needs: event_time, event_type. Adds: the internal UTC-day and funnel-rank columns the user window orders by.

    Materialised once as columns so every window over the user shares one sort.
    """
    return events.withColumn(_DAY, F.to_date("event_time")).withColumn(_RANK, event_type_rank())


def flag_bot_suspects(events: DataFrame, max_events_per_user_day: int) -> DataFrame:
    """Flag every event of a user-day with more than ``max_events_per_user_day`` events.

    Needs: user_id and the day column of :func:`add_order_keys`. Adds:
    is_bot_suspect (boolean). Placed after the user window, the count reuses
    its partitioning and sort (the order starts with the day), so it costs no
    extra shuffle or sort.
    """
    per_day = Window.partitionBy("user_id", _DAY)
    return events.withColumn("is_bot_suspect", F.count(F.lit(1)).over(per_day) > F.lit(max_events_per_user_day))


def mark_session_starts(events: DataFrame, cfg: SessionizeConfig) -> DataFrame:
    """Mark the first event of each session and the consecutive repeats (lag over the user window).

    Needs: user_id, event_time, event_type, item_id, event_id (source_session_id
    when ``cfg.use_source_session``) and the columns of :func:`add_order_keys`.
    Adds: is_removed_repeat (always false unless ``cfg.drop_consecutive_repeats``)
    and internal columns: the new-session flag, the row number in the user
    window and the session id on session starts.
    """
    w = user_window()
    lagged = ["event_time", "item_id", "event_type"] + (["source_session_id"] if cfg.use_source_session else [])
    prev = {c: F.col(f"_ss_prev_{c}") for c in lagged}
    with_prev = events.select("*", F.row_number().over(w).alias(_RN), *[F.lag(c).over(w).alias(f"_ss_prev_{c}") for c in lagged])
    gap_us = int(round(cfg.gap_minutes * 60 * 1_000_000))
    over_gap = (F.unix_micros("event_time") - F.unix_micros(prev["event_time"])) > F.lit(gap_us)
    if cfg.use_source_session:
        sid = F.col("source_session_id")
        boundary = F.when(sid.isNotNull() & prev["source_session_id"].isNotNull(), sid != prev["source_session_id"]).otherwise(over_gap)
    else:
        boundary = over_gap
    new_session = prev["event_time"].isNull() | boundary
    repeat = ~new_session & (F.col("item_id") == prev["item_id"]) & (F.col("event_type") == prev["event_type"])
    flagged = with_prev.withColumn(_NEW, new_session).withColumn(REMOVED_FLAG, repeat if cfg.drop_consecutive_repeats else F.lit(False))
    # The session id is hashed on session starts only; number_sessions carries it forward.
    start_id = F.when(F.col(_NEW), F.sha2(F.concat_ws("\u001f", F.col("user_id"), F.col("event_id")), 256))
    return flagged.withColumn(_START_ID, start_id).drop(*[f"_ss_prev_{c}" for c in lagged])


def number_sessions(events: DataFrame, cfg: SessionizeConfig) -> DataFrame:
    """Running sums over the user window: session index, session id and the position within the session.

    Needs: user_id and the columns of :func:`mark_session_starts`. Adds:
    session_index (int), session_id (string), event_index (int, null for
    removed repeats). Drops the internal columns.

    ``event_index`` is the row number minus the session start's row number
    (running max of the starts' row numbers), less the repeats removed since
    the start: that last term needs the removed count at the start, one more
    window pass, so it is only computed when repeats can be removed.
    """
    w = _running(user_window())
    new = F.col(_NEW)
    staged = events.select(
        "*",
        (F.sum(new.cast("int")).over(w) - 1).cast("int").alias("session_index"),
        F.last(_START_ID, ignorenulls=True).over(w).alias("session_id"),
        F.max(F.when(new, F.col(_RN))).over(w).alias(_START_RN),
    )
    offset = F.col(_RN) - F.col(_START_RN)
    if cfg.drop_consecutive_repeats:
        staged = staged.withColumn(_REMOVED_SO_FAR, F.sum(F.col(REMOVED_FLAG).cast("int")).over(w))
        removed_at_start = F.max(F.when(new, F.col(_REMOVED_SO_FAR))).over(w)  # a start is never removed itself
        offset = offset - (F.col(_REMOVED_SO_FAR) - removed_at_start)
    event_index = F.when(~F.col(REMOVED_FLAG), offset.cast("int"))
    return staged.withColumn("event_index", event_index).drop(_RN, _START_RN, _REMOVED_SO_FAR, _NEW, _START_ID)


def sessionize(events: DataFrame, cfg: SessionizeConfig) -> DataFrame:
    """Bronze events -> events with sessions, bot flags and repeat flags (nothing dropped).

    Needs: the bronze columns (shopseq.features.schema.EVENT_SCHEMA); at least user_id,
    event_time, event_type, item_id, event_id (+ source_session_id in source
    mode). Adds: session_id, session_index, event_index, is_bot_suspect,
    is_removed_repeat. :func:`silver_events` keeps the rows that are not removed;
    count the removed ones on the way (the job does, with ``DataFrame.observe``
    and :func:`removal_metrics`).
    """
    return (
        events.transform(add_order_keys)
        .transform(mark_session_starts, cfg)
        .transform(number_sessions, cfg)
        .transform(flag_bot_suspects, cfg.max_events_per_user_day)
        .drop(_DAY, _RANK)
    )


def removal_metrics() -> list[Column]:
    """Aggregates over :func:`sessionize`'s output for ``DataFrame.observe``: input rows and repeats removed."""
    return [
        F.count(F.lit(1)).alias("input_events"),
        F.coalesce(F.sum(F.col(REMOVED_FLAG).cast("long")), F.lit(0)).alias("repeats_removed"),
        F.coalesce(F.sum(F.col("is_bot_suspect").cast("long")), F.lit(0)).alias("bot_suspect_events"),
    ]


def silver_events(sessionized: DataFrame) -> DataFrame:
    """The silver events table: kept rows only, bronze columns then the session columns.

    Needs: the output of :func:`sessionize`. Adds nothing; removes the rows
    flagged is_removed_repeat and that flag.
    """
    return sessionized.where(~F.col(REMOVED_FLAG)).select(*SILVER_COLUMNS)


def sessions_table(silver: DataFrame) -> DataFrame:
    """One row per session, with funnel counts.

    Needs: user_id, session_id, session_index, event_time, event_type,
    is_bot_suspect (silver events: :func:`silver_events`). Adds (one row per
    session): session_start, session_end, duration_s, n_events, n_<event_type>
    for each funnel type, converted (any purchase), is_bot_suspect (any event
    flagged), session_date (= UTC date of session_start, the partition column).
    """
    count_if = lambda cond: F.sum(F.when(cond, F.lit(1)).otherwise(F.lit(0))).cast("long")  # noqa: E731
    # session_id is a key although (user_id, session_index) determine it: first() on a string would force a sort aggregate.
    out = silver.groupBy("user_id", "session_id", "session_index").agg(
        F.min("event_time").alias("session_start"),
        F.max("event_time").alias("session_end"),
        F.count(F.lit(1)).alias("n_events"),
        *[count_if(F.col("event_type") == t).alias(f"n_{t}") for t in FUNNEL_ORDER],
        F.max(F.col("is_bot_suspect")).alias("is_bot_suspect"),
    )
    return out.select(
        "user_id",
        "session_id",
        "session_index",
        "session_start",
        "session_end",
        ((F.unix_micros("session_end") - F.unix_micros("session_start")) / F.lit(1_000_000.0)).alias("duration_s"),
        "n_events",
        *[f"n_{t}" for t in FUNNEL_ORDER],
        (F.col("n_purchase") > 0).alias("converted"),
        "is_bot_suspect",
        F.to_date("session_start").alias("session_date"),
    )


def session_stats(sessions: DataFrame) -> DataFrame:
    """One row of summary statistics over a sessions table.

    Needs: the columns of :func:`sessions_table`. Adds (one row): sessions,
    events, users, mean_events_per_session, conversion_rate, median_duration_s,
    bot_suspect_sessions.
    """
    return sessions.agg(
        F.count(F.lit(1)).alias("sessions"),
        F.coalesce(F.sum("n_events"), F.lit(0)).cast("long").alias("events"),
        F.countDistinct("user_id").alias("users"),
        F.avg("n_events").alias("mean_events_per_session"),
        F.avg(F.col("converted").cast("double")).alias("conversion_rate"),
        F.percentile_approx("duration_s", 0.5).alias("median_duration_s"),
        F.coalesce(F.sum(F.col("is_bot_suspect").cast("long")), F.lit(0)).alias("bot_suspect_sessions"),
    )


def session_histograms(sessions: DataFrame, max_events_bin: int = 50) -> DataFrame:
    """Small histograms for plotting, computed in Spark (nothing large reaches the driver).

    Needs: duration_s, n_events. Adds (rows metric, bin, n): metric
    ``n_events`` with bins 1..max_events_bin (the last bin holds everything
    above), and metric ``duration_min`` with bins of log2(1 + minutes), floored
    (0 holds single-event and sub-minute sessions).
    """
    bins = {
        "n_events": F.least(F.col("n_events"), F.lit(max_events_bin)).cast("double"),
        "duration_min": F.floor(F.log2(F.lit(1.0) + F.col("duration_s") / F.lit(60.0))).cast("double"),
    }
    parts = [sessions.groupBy(F.lit(name).alias("metric"), expr.alias("bin")).agg(F.count(F.lit(1)).alias("n")) for name, expr in bins.items()]
    return parts[0].unionByName(parts[1]).orderBy("metric", "bin")
