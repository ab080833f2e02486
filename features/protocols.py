"""The literature's evaluation protocols: the event filters that run before example building (pure transforms).

A protocol is a named config layer (``conf/protocols/<name>.yaml``, selected
with ``--protocol``) over ``features.*``; what it needs beyond the cutoff,
split and vocabulary keys is here:

* **Entity** (``features.entity``): whose sequences the examples follow.
  ``user`` (the default) keeps ``user_id``; ``session`` makes every session its
  own anonymous user (``user_id := session_id``) before anything else, so the
  filters, examples, splits and evaluation all see one session per "user"
  (the GRU4Rec session protocol).
* **Iterative k-core** (``features.filter_min_user_events``,
  ``features.filter_min_item_events``): :func:`kcore_round` drops, in one
  round, every event of an entity with fewer than ``k_u`` events and every
  event of an item with fewer than ``k_i`` events, both counted on the round's
  input (users and items at once, as RecBole's ``_filter_by_inter_num`` does).
  Dropping events can take other entities or items below their threshold, so
  the job repeats rounds until one removes nothing (the fixed point is the
  unique largest subset in which every entity and item keeps its threshold,
  whatever the order of removals). The loop needs an action per round, so it
  lives in ``jobs/stages/build_features.py``; one round is pure.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

ENTITIES: tuple[str, ...] = ("user", "session")


def as_entity(events: DataFrame, entity: str) -> DataFrame:
    """``entity`` ``session``: every session becomes its own user (``user_id := session_id``); ``user``: unchanged.

    Needs: user_id, session_id. Returns the same columns.
    """
    if entity not in ENTITIES:
        raise ValueError(f"entity: expected one of {', '.join(ENTITIES)}, got {entity!r}")
    return events.withColumn("user_id", F.col("session_id")) if entity == "session" else events


def kcore_active(min_user_events: int, min_item_events: int) -> bool:
    """Whether these thresholds filter anything at all (one above 1)."""
    return min_user_events > 1 or min_item_events > 1


def kcore_round(events: DataFrame, min_user_events: int, min_item_events: int) -> DataFrame:
    """One round of the k-core filter: keep the events whose user has >= ``min_user_events`` events
    and whose item has >= ``min_item_events`` events, both counted on ``events``.

    Needs: user_id, item_id. Returns the same columns, fewer rows (none fewer at the fixed point).
    """
    per_user, per_item = Window.partitionBy("user_id"), Window.partitionBy("item_id")
    counted = events.withColumns({"_kc_user_n": F.count(F.lit(1)).over(per_user), "_kc_item_n": F.count(F.lit(1)).over(per_item)})
    keep = (F.col("_kc_user_n") >= F.lit(min_user_events)) & (F.col("_kc_item_n") >= F.lit(min_item_events))
    return counted.where(keep).drop("_kc_user_n", "_kc_item_n")


def data_counts(events: DataFrame) -> DataFrame:
    """One row: users (distinct user_id, i.e. entities), items (distinct item_id) and events.

    Needs: user_id, item_id.
    """
    return events.agg(
        F.countDistinct("user_id").alias("users"), F.countDistinct("item_id").alias("items"), F.count(F.lit(1)).alias("events")
    )
