"""Labels at each cutoff: next item and event type, purchase within H_p, churn within H_c.

Labels use only events strictly after ``cutoff_time`` (see
:mod:`shopseq.features.sequences`: every event after a cutoff's anchor is later than
the cutoff).

* ``next_item_idx``, ``next_event_type_idx``: the first event after the cutoff
  (vocabulary indexes; an item unseen in training is OOV = 1).
  ``next_label_mask`` = 1 when there is such an event; when there is none
  both labels are NULL and the mask 0.
* ``purchase_label``: 1 when a purchase happens in ``(cutoff_time,
  cutoff_time + H_p]``, else 0 (``H_p = purchase_horizon_days``).
* ``churn_label``: 1 when *no* event happens in ``(cutoff_time, cutoff_time +
  H_c]``, else 0 (``H_c = churn_horizon_days``).
* **Censoring.** "End of data" is the largest ``event_time`` in silver (all
  users; passed in as ``data_end_us``). A horizon window is observed when
  ``cutoff_time + H <= end of data``. Otherwise that label is NULL and its
  ``*_label_mask`` is 0, even when a purchase was already seen inside the
  partial window: keeping only the early positives would bias the rate. A
  masked label is left out of training and evaluation, never a negative.

Complexity: ``lead`` and a reversed growing frame (``rows unbounded preceding
.. 1 preceding`` in descending order, incremental), O(n) per user after the
sort: no unbounded-following frame (which Spark recomputes per row).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from shopseq.features.params import FeaturesConfig

LABEL_COLUMNS: list[str] = [
    "next_item_idx",
    "next_event_type_idx",
    "next_label_mask",
    "purchase_label",
    "purchase_label_mask",
    "churn_label",
    "churn_label_mask",
]
US_PER_DAY = 86_400 * 1_000_000


def horizon_us(days: float) -> int:
    """A horizon in days as whole microseconds."""
    return int(round(days * US_PER_DAY))


def add_labels(events: DataFrame, cfg: FeaturesConfig, data_end_us: int) -> DataFrame:
    """Add the labels and masks (see the module docstring); meaningful on cutoff rows.

    Needs: user_id, user_pos, _us (epoch microseconds), event_type, item_idx,
    event_type_idx, cutoff_time.
    Adds: :data:`LABEL_COLUMNS`, next_event_time and next_purchase_time (timestamps, null when none).
    """
    order = Window.partitionBy("user_id").orderBy("user_pos")
    later = Window.partitionBy("user_id").orderBy(F.col("user_pos").desc()).rowsBetween(Window.unboundedPreceding, -1)
    cutoff_us = F.unix_micros("cutoff_time")
    hp, hc = horizon_us(cfg.purchase_horizon_days), horizon_us(cfg.churn_horizon_days)
    next_us, next_buy_us = F.col("_next_us"), F.col("_next_buy_us")
    purchase_seen = cutoff_us + F.lit(hp) <= F.lit(data_end_us)
    churn_seen = cutoff_us + F.lit(hc) <= F.lit(data_end_us)
    return (
        events.withColumns(
            {
                "_next_us": F.lead("_us").over(order),
                "_next_buy_us": F.min(F.when(F.col("event_type") == "purchase", F.col("_us"))).over(later),
                "next_item_idx": F.lead("item_idx").over(order).cast("int"),
                "next_event_type_idx": F.lead("event_type_idx").over(order).cast("int"),
            }
        )
        .withColumns(
            {
                "next_label_mask": next_us.isNotNull().cast("int"),
                "purchase_label": F.when(purchase_seen, (next_buy_us.isNotNull() & (next_buy_us <= cutoff_us + F.lit(hp))).cast("int")),
                "purchase_label_mask": F.coalesce(purchase_seen, F.lit(False)).cast("int"),
                "churn_label": F.when(churn_seen, (next_us.isNull() | (next_us > cutoff_us + F.lit(hc))).cast("int")),
                "churn_label_mask": F.coalesce(churn_seen, F.lit(False)).cast("int"),
                "next_event_time": F.timestamp_micros(next_us),
                "next_purchase_time": F.timestamp_micros(next_buy_us),
            }
        )
        .drop("_next_us", "_next_buy_us")
    )


def label_stats(examples: DataFrame) -> DataFrame:
    """Example counts and label rates per split, over unmasked labels only.

    Needs: split and :data:`LABEL_COLUMNS`. Returns one row per split: split,
    examples, users, purchase_labeled, purchase_rate, churn_labeled, churn_rate,
    next_labeled (null rates when nothing is labeled).
    """
    return examples.groupBy("split").agg(
        F.count(F.lit(1)).alias("examples"),
        F.countDistinct("user_id").alias("users"),
        F.sum("purchase_label_mask").alias("purchase_labeled"),
        F.avg(F.when(F.col("purchase_label_mask") == 1, F.col("purchase_label"))).alias("purchase_rate"),
        F.sum("churn_label_mask").alias("churn_labeled"),
        F.avg(F.when(F.col("churn_label_mask") == 1, F.col("churn_label"))).alias("churn_rate"),
        F.sum("next_label_mask").alias("next_labeled"),
    )
