"""Point-in-time sequence examples, silver -> examples: pure DataFrame transforms.

Definitions (the contract tests/test_features.py pins down):

* **Order.** A user's events are ordered by ``(event_time, session_index,
  event_index, event_id)`` (the sessionizer's total order); ``user_pos`` is the
  0-based position in that order.
* **Cutoff.** An example is cut at an instant ``cutoff_time``. Its *features*
  are exactly the user's events with ``event_time <= cutoff_time``; its
  *labels* come only from events with ``event_time > cutoff_time``. Every
  cutoff is anchored at its last feature event (the *anchor*), so
  ``anchor.event_time <= cutoff_time < next_event.event_time``: the features
  are the events strictly before the first event after the cutoff. A cutoff
  never separates events with the same timestamp: when later events tie with
  the anchor, the anchor moves to the last of them (and duplicate cutoffs
  collapse into one). ``features.cutoff`` picks the anchors:

  - ``session_end``: the last event of every session; ``cutoff_time`` = that
    event's time (the end of the session).
  - ``stride``: every ``stride``-th event of the user (``user_pos + 1`` a
    multiple of ``stride``); ``cutoff_time`` = that event's time.
  - ``daily``: the end of every UTC day on which the user has events;
    ``cutoff_time = <day> 23:59:59.999999`` (Spark's resolution), i.e. the
    snapshot taken at 00:00 UTC of the next day, which sees exactly the events
    strictly before that midnight. Days without events give no example (the
    sequence would repeat the previous day's).

  ``features.collapse_ties: false`` (the leave-one-out and session protocols,
  where every event is a target, as in RecBole and GRU4Rec) drops the tie rule:
  every chosen event is its own anchor, ties keep the total order above, and
  "before / after the cutoff" means before / after the anchor *in that order*
  (features up to and including the anchor; labels from the events after it,
  which may share its timestamp, so ``next_event_time`` can equal
  ``cutoff_time``). ``example_id`` then also hashes the anchor's position, and
  the leave-last-out split orders a user's examples by position.

* **Arrays.** The last ``L = features.max_len`` feature events, as fixed-length
  arrays (exactly ``L`` long), **left-padded**: the most recent event is at
  index ``L - 1``, padding (value 0) at the front; ``seq_len`` = number of
  real events (``min(L, user_pos + 1)`` at the anchor). Integer columns use 0
  only for padding: ``item_idx_seq``, ``category_idx_seq``,
  ``event_type_idx_seq`` (vocabulary indexes, 1 = OOV, see
  :mod:`shopseq.features.vocab`), ``dt_bucket_seq`` (time since the user's previous
  event, before the window or not: 1 = no previous event, else
  ``2 + floor(log2(1 + whole seconds))`` capped at ``time_buckets - 1``),
  ``hour_seq`` (UTC hour + 1, 1..24), ``dow_seq`` (ISO weekday, 1 = Monday ..
  7 = Sunday), ``session_start_seq`` (1 at the first event of each session in
  the window, else 0); float ``price_seq`` = ``(log1p(price) - mean) / std``
  with the train range's mean and std, 0 for a null price and for padding.

* **Complexity.** Per user with ``n`` events: one shuffle by ``user_id``
  (every window here shares it; the vocabulary join comes before it), a local
  sort of ``n log n`` per distinct window ordering (a few), running aggregates
  in O(n) (growing frames are incremental in Spark), and the sliding
  ``collect_list`` frame of ``L`` rows in O(n * L). The arrays are built last,
  so the cutoff filter runs below their projections: sorting (``L log L``,
  pinning the order) and padding happen for cutoff rows only. Nothing is
  O(n^2): no unbounded-following frames, no self-joins. A user's events must
  fit one task's sort (it spills to disk when they are not in memory).

Labels are in :mod:`shopseq.features.labels`, profiles in :mod:`shopseq.features.profiles`,
splits in :mod:`shopseq.features.splits`; :func:`build_examples` chains them all.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as F

from shopseq.features.labels import LABEL_COLUMNS, add_labels
from shopseq.features.profiles import PROFILE_COLUMNS, PROFILE_DTYPES, add_profiles
from shopseq.features.splits import ENTITY_START, SplitBounds, add_split_keys, assign_split, train_range
from shopseq.features.vocab import PAD_INDEX, apply_vocab
from shopseq.features.params import FeaturesConfig

US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S
IGNORE_LABEL = -100  # gold tables: a censored/missing label (mask 0); PyTorch's default ignore_index
HOURS = 25  # hour_seq ids: 0 pad, 1..24
WEEKDAYS = 8  # dow_seq ids: 0 pad, 1..7

# Silver columns the features read.
INPUT_COLUMNS: list[str] = [
    "event_id", "user_id", "event_time", "event_type", "item_id", "category_id", "price",
    "session_id", "session_index", "event_index", "is_bot_suspect",
]  # fmt: skip
# (array column, per-event column, Spark type, embedding name or None)
SEQUENCE_COLUMNS: list[tuple[str, str, str, str | None]] = [
    ("item_idx_seq", "item_idx", "int", "item"),
    ("category_idx_seq", "category_idx", "int", "category"),
    ("event_type_idx_seq", "event_type_idx", "int", "event_type"),
    ("dt_bucket_seq", "dt_bucket", "int", "dt_bucket"),
    ("hour_seq", "hour_idx", "int", "hour"),
    ("dow_seq", "dow_idx", "int", "dow"),
    ("session_start_seq", "session_start", "int", "session_start"),
    ("price_seq", "price_norm", "float", None),
]
EXAMPLE_COLUMNS: list[str] = (
    ["example_id", "user_id", "cutoff_time", "split"]
    + [c for c, *_ in SEQUENCE_COLUMNS]
    + ["seq_len"]
    + PROFILE_COLUMNS
    + LABEL_COLUMNS
    + ["next_event_time", "next_purchase_time"]
)
DEBUG_TIMES = "event_time_seq"  # with_times=True: the feature events' times, oldest first, unpadded


def user_window() -> WindowSpec:
    """Each user's events in their total order (needs ``user_pos``)."""
    return Window.partitionBy("user_id").orderBy("user_pos")


def prepare_events(silver: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Keep the columns the features read; leave out bot-suspect events when configured.

    Needs: :data:`INPUT_COLUMNS`. Returns only those columns.
    """
    out = silver.select(*INPUT_COLUMNS)
    if cfg.drop_bot_suspects:
        out = out.where(~F.coalesce(F.col("is_bot_suspect"), F.lit(False)))
    return out


def sample_users(events: DataFrame, fraction: float | None) -> DataFrame:
    """Quick mode: keep a deterministic ``fraction`` of users (whole histories). Needs: user_id."""
    if fraction is None or fraction >= 1.0:
        return events
    return events.where(F.pmod(F.xxhash64("user_id"), F.lit(1_000_000)) < F.lit(int(fraction * 1_000_000)))


def order_events(events: DataFrame) -> DataFrame:
    """Number each user's events in time order.

    Needs: user_id, event_time, session_index, event_index, event_id.
    Adds: user_pos (int, 0-based), _us (event time in epoch microseconds), _day (UTC day number).
    """
    order = Window.partitionBy("user_id").orderBy("event_time", "session_index", "event_index", "event_id")
    us = F.unix_micros("event_time")
    return events.withColumns(
        {"user_pos": (F.row_number().over(order) - F.lit(1)).cast("int"), "_us": us, "_day": F.floor(us / F.lit(US_PER_DAY)).cast("long")}
    )


def mark_cutoffs(events: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Flag the anchor events of the cutoffs chosen by ``cfg.cutoff`` (see the module docstring).

    Needs: user_id, user_pos, event_time, _us, _day, session_id.
    Adds: is_cutoff (bool), cutoff_time (timestamp; null where not a cutoff).
    """
    w = user_window()
    nxt_us = F.lead("_us").over(w)
    if cfg.cutoff == "session_end":
        candidate = F.lead("session_id").over(w).isNull() | (F.lead("session_id").over(w) != F.col("session_id"))
    elif cfg.cutoff == "stride":
        candidate = F.pmod(F.col("user_pos") + F.lit(1), F.lit(cfg.stride)) == F.lit(0)
    else:  # daily
        candidate = nxt_us.isNull() | (F.floor(nxt_us / F.lit(US_PER_DAY)) != F.col("_day"))
    cutoff_time = F.when(F.col("is_cutoff"), F.timestamp_micros(anchor_cutoff_us(cfg))).alias("cutoff_time")
    if not cfg.collapse_ties:  # every chosen event is an anchor; ties stay in position order
        return events.withColumn("is_cutoff", candidate).select(*events.columns, "is_cutoff", cutoff_time)
    same_time = Window.partitionBy("user_id").orderBy("event_time").rangeBetween(Window.currentRow, Window.currentRow)
    last_at_time = nxt_us.isNull() | (nxt_us > F.col("_us"))
    return (
        events.withColumn("_cand", candidate.cast("int"))
        .withColumn("is_cutoff", (F.max("_cand").over(same_time) == F.lit(1)) & last_at_time)
        .select(*events.columns, "is_cutoff", cutoff_time)
    )


def anchor_cutoff_us(cfg: FeaturesConfig) -> Column:
    """The cutoff instant (epoch microseconds) of an anchor row under ``cfg.cutoff``.

    ``daily``: the end of the anchor's UTC day (``<day> 23:59:59.999999``); otherwise the anchor's own time.
    Needs: _us, _day.
    """
    return (F.col("_day") + F.lit(1)) * F.lit(US_PER_DAY) - F.lit(1) if cfg.cutoff == "daily" else F.col("_us")


def add_event_features(events: DataFrame, cfg: FeaturesConfig, price_mean: float, price_std: float) -> DataFrame:
    """Per-event inputs of the sequence arrays.

    Needs: user_id, user_pos, _us, price, session_id.
    Adds: dt_bucket, hour_idx, dow_idx, session_start (int), price_norm (float).
    """
    w = user_window()
    prev_us = F.lag("_us").over(w)
    gap_s = F.floor((F.col("_us") - prev_us) / F.lit(US_PER_S)).cast("long")
    # bit length of (gap_s + 1) == floor(log2(1 + gap_s)) + 1, in exact integer arithmetic
    log_bucket = F.least(F.lit(1) + F.length(F.bin(gap_s + F.lit(1))), F.lit(cfg.time_buckets - 1))
    prev_session = F.lag("session_id").over(w)
    std = price_std if price_std and price_std > 0 else 1.0
    return events.withColumns(
        {
            "dt_bucket": F.when(prev_us.isNull(), F.lit(1)).otherwise(log_bucket).cast("int"),
            "hour_idx": (F.pmod(F.floor(F.col("_us") / F.lit(3600 * US_PER_S)), F.lit(24)) + F.lit(1)).cast("int"),
            "dow_idx": (F.pmod(F.col("_day") + F.lit(3), F.lit(7)) + F.lit(1)).cast("int"),  # 1970-01-01 was a Thursday (4)
            "session_start": (prev_session.isNull() | (prev_session != F.col("session_id"))).cast("int"),
            "price_norm": F.when(F.col("price").isNull(), F.lit(0.0))
            .otherwise((F.log1p(F.greatest(F.col("price"), F.lit(0.0))) - F.lit(price_mean or 0.0)) / F.lit(std))
            .cast("float"),
        }
    )


def price_stats(events: DataFrame) -> DataFrame:
    """Mean and (population) standard deviation of ``log1p(price)`` over non-null prices.

    Needs: price. Returns one row: price_mean, price_std (null when there are no prices).
    """
    lp = F.log1p(F.greatest(F.col("price"), F.lit(0.0)))
    return events.where(F.col("price").isNotNull()).agg(F.mean(lp).alias("price_mean"), F.stddev_pop(lp).alias("price_std"))


def add_sequence_arrays(events: DataFrame, cfg: FeaturesConfig, with_times: bool = False) -> DataFrame:
    """The last ``L`` events up to and including each row, as left-padded fixed-length arrays.

    Needs: user_id, user_pos, and the per-event columns of :data:`SEQUENCE_COLUMNS`.
    Adds: the array columns of :data:`SEQUENCE_COLUMNS` (exactly ``L`` long), seq_len (int),
    and with ``with_times`` the debug array ``event_time_seq`` (unpadded, oldest first).
    """
    L = cfg.max_len
    frame = user_window().rowsBetween(-(L - 1), Window.currentRow)
    fields = [F.col("user_pos").alias("p")] + [F.col(src).cast(t).alias(src) for _, src, t, _ in SEQUENCE_COLUMNS]
    if with_times:
        fields.append(F.col("event_time").alias("t"))
    # One frame pass collects every field; array_sort on the leading user_pos pins the order.
    win = events.withColumn("_win", F.array_sort(F.collect_list(F.struct(*fields)).over(frame)))
    n_pad = F.lit(L) - F.size("_win")
    arrays = {name: F.concat(F.array_repeat(F.lit(PAD_INDEX).cast(t), n_pad), F.transform("_win", _field(src))) for name, src, t, _ in SEQUENCE_COLUMNS}
    arrays["seq_len"] = F.size("_win").cast("int")
    if with_times:
        arrays[DEBUG_TIMES] = F.transform("_win", _field("t"))
    return win.withColumns(arrays).drop("_win")


def _field(name: str) -> Any:
    """``x -> x[name]`` for ``F.transform`` (a one-argument lambda: two arguments would mean (element, index))."""
    return lambda x: x[name]


def examples_at_cutoffs(events: DataFrame, by_position: bool = False) -> DataFrame:
    """Keep the cutoff rows as examples, with a deterministic ``example_id``.

    ``example_id = xxhash64(user_id, cutoff_time)``; with ``by_position``
    (``collapse_ties: false``, where tied anchors share a cutoff time) also the
    anchor's ``user_pos``.
    Needs: is_cutoff, user_id, cutoff_time (user_pos with ``by_position``) and the example columns.
    Returns: :data:`EXAMPLE_COLUMNS` without ``split`` (plus ``event_time_seq`` and
    :data:`shopseq.features.splits.ENTITY_START` when present).
    """
    keep = [c for c in EXAMPLE_COLUMNS if c not in ("example_id", "split")]
    keep += [c for c in (DEBUG_TIMES, ENTITY_START) if c in events.columns]
    key = ["user_id", "cutoff_time", "user_pos"] if by_position else ["user_id", "cutoff_time"]
    return events.where(F.col("is_cutoff")).select(F.xxhash64(*key).alias("example_id"), *keep)


def train_events(events: DataFrame, cfg: FeaturesConfig, bounds: SplitBounds) -> DataFrame:
    """The train-range events that vocabularies and price statistics are fit on (:func:`shopseq.features.splits.train_range`).

    Needs: :data:`INPUT_COLUMNS`. Returns the train-range rows (plus helper columns for ``leave_last_out``).
    """
    if cfg.split == "leave_last_out":  # needs each user's cutoffs; temporal needs only event_time
        events = events.transform(order_events).transform(mark_cutoffs, cfg)
    return events.transform(add_split_keys, cfg).transform(train_range, cfg, bounds)


def build_examples(
    events: DataFrame,
    vocab: DataFrame,
    cfg: FeaturesConfig,
    bounds: SplitBounds,
    price_mean: float | None,
    price_std: float | None,
    with_times: bool = False,
) -> DataFrame:
    """Silver events -> one row per (user, cutoff): arrays, profiles, labels and split.

    Needs: :data:`INPUT_COLUMNS` (see :func:`prepare_events`); ``vocab`` as
    written by the job (kind, token, index). Returns :data:`EXAMPLE_COLUMNS`.
    The vocabulary is joined first so that every window below shares one
    shuffle by ``user_id``.
    """
    examples = (
        events.transform(apply_vocab, vocab)
        .transform(order_events)
        .transform(add_split_keys, cfg)
        .transform(mark_cutoffs, cfg)
        .transform(add_event_features, cfg, price_mean or 0.0, price_std or 1.0)
        .transform(add_profiles)
        .transform(add_labels, cfg, bounds.data_end_us)
        # Arrays last: the cutoff filter then moves below their projections (sort, pad), which run on cutoff rows only.
        .transform(add_sequence_arrays, cfg, with_times)
        .transform(examples_at_cutoffs, not cfg.collapse_ties)
        .transform(assign_split, cfg, bounds)
    )
    return examples.select(*EXAMPLE_COLUMNS, *([DEBUG_TIMES] if with_times else []))


# ----------------------------------------------------------------------------- gold layout


def gold_columns(cfg: FeaturesConfig) -> list[dict[str, Any]]:
    """The gold tables' columns: name, dtype (numpy name), shape (``[]`` scalar, ``[L]`` sequence), role, embedding.

    All numeric: Petastorm's PyTorch loader refuses string columns, so the
    user is ``user_key = xxhash64(user_id)`` (join back with the same
    expression) and the split is the table (``gold_<split>``).
    """
    L = cfg.max_len
    cols: list[dict[str, Any]] = [
        {"name": "example_id", "dtype": "int64", "shape": [], "role": "id"},  # xxhash64(user_id, cutoff_time)
        {"name": "user_key", "dtype": "int64", "shape": [], "role": "id"},  # xxhash64(user_id)
        {"name": "cutoff_time_us", "dtype": "int64", "shape": [], "role": "id"},
    ]
    for name, _, t, emb in SEQUENCE_COLUMNS:
        cols.append({"name": name, "dtype": "int32" if t == "int" else "float32", "shape": [L], "role": "sequence", "embedding": emb})
    cols.append({"name": "seq_len", "dtype": "int32", "shape": [], "role": "sequence"})
    for name, kind in PROFILE_DTYPES.items():
        col = {"name": name, "dtype": kind, "shape": [], "role": "profile"}
        if name == "top_category_idx":
            col["embedding"] = "category"
        cols.append(col)
    for name in LABEL_COLUMNS:
        cols.append({"name": name, "dtype": "int32", "shape": [], "role": "mask" if name.endswith("_mask") else "label"})
    return cols


def to_gold(examples: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Examples -> the gold (Petastorm) layout of :func:`gold_columns`.

    Needs: :data:`EXAMPLE_COLUMNS`. Timestamps become epoch microseconds
    (``cutoff_time_us``), ``user_id`` becomes ``user_key``, ``split`` is
    dropped; every number is int32/float32 (ids int64); a null
    label (censored or no next event; its mask is 0) becomes
    :data:`IGNORE_LABEL`, because Petastorm batches cannot hold nulls.
    """
    return examples.select(*[gold_expr(col) for col in gold_columns(cfg)])


def gold_expr(col: dict[str, Any]) -> Column:
    """The gold value of one :func:`gold_columns` entry, computed from the example columns."""
    spark_type = {"int64": "long", "int32": "int", "float32": "float"}
    name, dtype = col["name"], col["dtype"]
    if name == "cutoff_time_us":
        return F.unix_micros("cutoff_time").alias(name)
    if name == "user_key":
        return F.xxhash64("user_id").alias(name)
    if col["shape"]:
        return F.col(name).cast(f"array<{spark_type[dtype]}>").alias(name)
    if col["role"] == "label":
        return F.coalesce(F.col(name), F.lit(IGNORE_LABEL)).cast(spark_type[dtype]).alias(name)
    return F.col(name).cast(spark_type[dtype]).alias(name)
