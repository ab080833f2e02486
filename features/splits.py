"""Train / validation / test splits of the examples (a ``split`` column: "train", "val", "test").

``features.split: temporal`` (the default): by ``cutoff_time``, never at random.
The data's time range ``[start, end]`` is the min and max ``event_time`` in
silver. Two boundaries ``b1 <= b2`` come from ``train_end``/``val_end`` (UTC
dates or timestamps) or else from ``start + train_fraction * (end - start)``
and ``start + (train_fraction + val_fraction) * (end - start)``. With ``g`` =
``gap_days`` (default and minimum ``max(H_p, H_c)``)::

    train:  cutoff_time + g <= b1
    val:    b1 < cutoff_time  and  cutoff_time + g <= b2
    test:   b2 < cutoff_time
    (dropped: cutoffs in the gaps (b1 - g, b1] and (b2 - g, b2])

so no purchase or churn window of a train (val) example reaches past ``b1``
(``b2``). The next-event label has no horizon; where a train (val) example's
next event falls after ``b1`` (``b2``) it is masked too (NULL,
``next_label_mask`` 0). Test label windows run up to the end of the data and
are censored there (:mod:`shopseq.features.labels`). The train time range, on which
vocabularies and price statistics are fit, is ``event_time <= b1``: every
event a train example sees, features and labels.

``features.split: leave_last_out`` (the SASRec / BERT4Rec protocol): per user,
among the examples that have a next event, ordered by ``cutoff_time``, the
last is test, the one before it validation, all earlier ones train (a user
with one such example only has a test example, with two a val and a test
one); the user's final cutoff, which has no next event, goes to test with its
labels masked. No gap: neighbouring examples of a
user overlap by construction, which is the protocol. The train range is, per
user, the events up to and including the anchor of the user's last train
example (the third-to-last cutoff that has a next event). With
``collapse_ties: false`` tied cutoffs are ordered by position (``frequency``,
the number of feature events), so each event is its own example.

``features.split: last_days`` (the temporal session protocol of the GRU4Rec
comparisons): each entity (a session under ``features.entity: session``)
belongs wholly to the split of its first event. With ``end`` the data's last
event time, ``b2 = end - test_days`` and ``b1 = b2 - val_days`` (days, as
microseconds)::

    train:  first event <= b1
    val:    b1 < first event <= b2
    test:   b2 < first event

No gap and no label masking: an entity's examples see only its own events,
and a train entity that runs past ``b1`` stays train. The train range is
every event of the train entities. ``train_end``, ``val_end`` and the
fractions play no part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from shopseq.features.labels import horizon_us
from shopseq.features.params import ConfigError, FeaturesConfig

SPLITS: tuple[str, ...] = ("train", "val", "test")
ENTITY_START = "_entity_start_us"  # last_days: helper column, each entity's first event time (epoch microseconds)


@dataclass(frozen=True)
class SplitBounds:
    """The data's time range and the split boundaries, in epoch microseconds (UTC)."""

    data_start_us: int
    data_end_us: int
    train_end_us: int
    val_end_us: int
    gap_us: int

    def describe(self, method: str = "temporal") -> dict[str, Any]:
        """ISO-8601 UTC strings (and the gap in days) for logs and the schema artifact; only the data range for leave_last_out."""
        out: dict[str, Any] = {k.replace("_us", ""): _iso(v) for k, v in asdict(self).items() if k != "gap_us"}
        out["gap_days"] = self.gap_us / 86_400e6
        if method == "leave_last_out":  # the boundaries play no part there
            return {"method": method, "data_start": out["data_start"], "data_end": out["data_end"]}
        if method == "last_days":  # no gap; the periods in days
            days = {"test_days": (self.data_end_us - self.val_end_us) / 86_400e6, "val_days": (self.val_end_us - self.train_end_us) / 86_400e6}
            return {"method": method, **{k: v for k, v in out.items() if k != "gap_days"}, **days}
        return {"method": method, **out}


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_utc(key: str, value: str) -> int:
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"features.{key}: expected a date or ISO timestamp, got {value!r}") from None
    ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    delta = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def split_bounds(data_start_us: int, data_end_us: int, cfg: FeaturesConfig) -> SplitBounds:
    """Boundaries from config and the data's time range; refuses a gap shorter than the horizons."""
    min_gap = max(horizon_us(cfg.purchase_horizon_days), horizon_us(cfg.churn_horizon_days))
    gap = min_gap if cfg.gap_days is None else horizon_us(cfg.gap_days)
    if gap < min_gap:
        raise ConfigError(f"features.gap_days: {cfg.gap_days} is shorter than the longest label horizon; label windows would cross a split boundary")
    if not (0.0 <= cfg.train_fraction and 0.0 <= cfg.val_fraction and cfg.train_fraction + cfg.val_fraction <= 1.0):
        raise ConfigError("features.train_fraction, features.val_fraction: must be >= 0 with a sum <= 1")
    if cfg.split == "last_days":
        val_end = data_end_us - horizon_us(cfg.test_days)
        return SplitBounds(data_start_us, data_end_us, val_end - horizon_us(cfg.val_days), val_end, 0)
    span = data_end_us - data_start_us
    train_end = _parse_utc("train_end", cfg.train_end) if cfg.train_end else data_start_us + int(round(cfg.train_fraction * span))
    val_end = _parse_utc("val_end", cfg.val_end) if cfg.val_end else data_start_us + int(round((cfg.train_fraction + cfg.val_fraction) * span))
    if val_end < train_end:
        raise ConfigError(f"features.val_end: the validation boundary {_iso(val_end)} is before the train boundary {_iso(train_end)}")
    return SplitBounds(data_start_us, data_end_us, train_end, val_end, gap)


def train_range(events: DataFrame, cfg: FeaturesConfig, bounds: SplitBounds) -> DataFrame:
    """The events of the train range (see the module docstring): what vocabularies and price stats are fit on.

    Needs: event_time; for ``leave_last_out`` also user_id, user_pos, is_cutoff
    (:func:`shopseq.features.sequences.mark_cutoffs`); for ``last_days``
    :data:`ENTITY_START` (:func:`add_split_keys`; dropped here). Returns the same columns, fewer rows.
    """
    if cfg.split == "temporal":
        return events.where(F.unix_micros("event_time") <= F.lit(bounds.train_end_us))
    if cfg.split == "last_days":
        return events.where(F.col(ENTITY_START) <= F.lit(bounds.train_end_us)).drop(ENTITY_START)
    # Cutoffs with a next event (not at the user's last event) at or after each event,
    # counted in a reversed growing frame (O(n) per user; one sort serves both windows).
    newest_first = Window.partitionBy("user_id").orderBy(F.col("user_pos").desc())
    later = newest_first.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    has_next = F.col("is_cutoff") & F.lag("user_pos").over(newest_first).isNotNull()
    counted = events.withColumn("_has_next", has_next.cast("int")).withColumn("_cutoffs_from_here", F.sum("_has_next").over(later))
    return counted.where(F.col("_cutoffs_from_here") >= 3).drop("_has_next", "_cutoffs_from_here")


def temporal_split(examples: DataFrame, bounds: SplitBounds) -> DataFrame:
    """Assign train/val/test by cutoff time; drop cutoffs in the gaps; mask next labels past a boundary.

    Needs: cutoff_time, next_event_time, next_item_idx, next_event_type_idx, next_label_mask.
    Adds: split.
    """
    cut = F.unix_micros("cutoff_time")
    gap, b1, b2 = F.lit(bounds.gap_us), F.lit(bounds.train_end_us), F.lit(bounds.val_end_us)
    split = (
        F.when(cut + gap <= b1, F.lit("train"))
        .when((cut > b1) & (cut + gap <= b2), F.lit("val"))
        .when(cut > b2, F.lit("test"))
    )
    boundary = F.when(F.col("split") == "train", b1).when(F.col("split") == "val", b2)
    crosses = boundary.isNotNull() & (F.unix_micros("next_event_time") > boundary)
    return (
        examples.withColumn("split", split)
        .where(F.col("split").isNotNull())
        .withColumns(
            {
                "next_item_idx": F.when(~crosses, F.col("next_item_idx")),
                "next_event_type_idx": F.when(~crosses, F.col("next_event_type_idx")),
                "next_label_mask": F.when(crosses, F.lit(0)).otherwise(F.col("next_label_mask")).cast("int"),
            }
        )
    )


def leave_last_out_split(examples: DataFrame, by_position: bool = False) -> DataFrame:
    """Per user, among the examples that have a next event: the last is test, the one before val, the rest train.

    The held-out example is the user's last observed interaction as the
    target (SASRec / BERT4Rec). A user's final cutoff has no next event (its
    labels are censored or empty, masked 0); it is kept in test, where every
    metric ignores it, rather than displacing the real held-out example.
    ``by_position`` (``collapse_ties: false``): examples with the same
    cutoff time are ordered by ``frequency`` (feature events, i.e. position).
    Needs: user_id, cutoff_time, next_event_time (frequency with ``by_position``). Adds: split.
    """
    has_next = F.col("next_event_time").isNotNull()
    order = [F.col("cutoff_time").desc()] + ([F.col("frequency").desc()] if by_position else [])
    newest_first = Window.partitionBy("user_id", has_next).orderBy(*order)
    rank = F.row_number().over(newest_first)
    split = F.when(~has_next | (rank == 1), F.lit("test")).when(rank == 2, F.lit("val")).otherwise(F.lit("train"))
    return examples.withColumn("split", split)


def add_entity_start(events: DataFrame) -> DataFrame:
    """Needs: user_id, event_time. Adds: :data:`ENTITY_START` (the entity's first event time, epoch microseconds)."""
    return events.withColumn(ENTITY_START, F.min(F.unix_micros("event_time")).over(Window.partitionBy("user_id")))


def add_split_keys(events: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """What :func:`assign_split` and :func:`train_range` need beyond the example columns: :data:`ENTITY_START` for ``last_days``.

    Needs: user_id, event_time. Adds: ENTITY_START for ``last_days``; nothing for the other splits.
    """
    return events.transform(add_entity_start) if cfg.split == "last_days" else events


def last_days_split(examples: DataFrame, bounds: SplitBounds) -> DataFrame:
    """Each example takes the split of its entity's first event (see the module docstring).

    Needs: :data:`ENTITY_START`. Adds: split; drops ENTITY_START.
    """
    start = F.col(ENTITY_START)
    split = F.when(start > F.lit(bounds.val_end_us), F.lit("test")).when(start > F.lit(bounds.train_end_us), F.lit("val")).otherwise(F.lit("train"))
    return examples.withColumn("split", split).drop(ENTITY_START)


def assign_split(examples: DataFrame, cfg: FeaturesConfig, bounds: SplitBounds) -> DataFrame:
    """The split ``cfg.split`` names. Needs: see :func:`temporal_split` / :func:`leave_last_out_split` / :func:`last_days_split`. Adds: split."""
    if cfg.split == "temporal":
        return temporal_split(examples, bounds)
    if cfg.split == "last_days":
        return last_days_split(examples, bounds)
    return leave_last_out_split(examples, by_position=not cfg.collapse_ties)
