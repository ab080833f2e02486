"""User profiles as of each event (RFM-style), read at the cutoff rows.

Every value uses only the user's events up to and including the row (a
growing ``rows unbounded preceding .. current row`` frame, incremental in
Spark: O(n) per user). At a cutoff row (the anchor, see
:mod:`shopseq.features.sequences`) that is exactly the cutoff's feature events.

* ``recency_s``: seconds from the last feature event to ``cutoff_time``. It is
  0 for ``session_end`` and ``stride`` cutoffs (the cutoff *is* the last
  event) and informative for ``daily`` snapshots. Null on non-cutoff rows.
* ``tenure_s``: seconds from the user's first event to ``cutoff_time``.
* ``frequency``: number of feature events.
* ``monetary``: sum of purchase prices (null prices count 0).
* ``conversion_rate``: purchases / views, 0.0 when there are no views (it can
  exceed 1 in sources that log purchases without a view).
* ``top_category_idx``: the category index seen most often (OOV, index 1,
  counts as a category; ties go to the category that reached the top count
  most recently).
* ``active_days``: distinct UTC days with an event.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

# name -> numpy dtype in the gold tables
PROFILE_DTYPES: dict[str, str] = {
    "recency_s": "float32",
    "tenure_s": "float32",
    "frequency": "int32",
    "monetary": "float32",
    "conversion_rate": "float32",
    "top_category_idx": "int32",
    "active_days": "int32",
}
PROFILE_COLUMNS: list[str] = list(PROFILE_DTYPES)


def add_profiles(events: DataFrame) -> DataFrame:
    """Add the profile columns (see the module docstring).

    Needs: user_id, user_pos, _us (epoch microseconds), _day (UTC day number),
    event_type, price, category_idx, cutoff_time.
    Adds: :data:`PROFILE_COLUMNS`.
    """
    order = Window.partitionBy("user_id").orderBy("user_pos")
    upto = order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    # Same partitioning as `order` plus the category: Spark reuses the shuffle by user_id.
    per_category = Window.partitionBy("user_id", "category_idx").orderBy("user_pos").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    is_purchase = (F.col("event_type") == "purchase").cast("long")
    is_view = (F.col("event_type") == "view").cast("long")
    prev_day = F.lag("_day").over(order)
    views = F.sum(is_view).over(upto)
    cutoff_us = F.unix_micros("cutoff_time")
    return (
        events.withColumn("_cat_n", F.count(F.lit(1)).over(per_category))
        .withColumns(
            {
                "recency_s": ((cutoff_us - F.col("_us")) / F.lit(1e6)).cast("double"),
                "tenure_s": ((cutoff_us - F.min("_us").over(upto)) / F.lit(1e6)).cast("double"),
                "frequency": F.count(F.lit(1)).over(upto).cast("int"),
                "monetary": F.sum(F.when(is_purchase == 1, F.coalesce(F.col("price"), F.lit(0.0))).otherwise(F.lit(0.0))).over(upto),
                "conversion_rate": F.when(views > 0, F.sum(is_purchase).over(upto) / views).otherwise(F.lit(0.0)),
                "top_category_idx": F.max(F.struct(F.col("_cat_n"), F.col("user_pos"), F.col("category_idx"))).over(upto)["category_idx"],
                "active_days": F.sum((prev_day.isNull() | (prev_day != F.col("_day"))).cast("int")).over(upto).cast("int"),
            }
        )
        .drop("_cat_n")
    )


# Profiles the model reads as numbers (the rest are embedded, e.g. top_category_idx).
NUMERIC_PROFILES: list[str] = [c for c in PROFILE_COLUMNS if c != "top_category_idx"]


def signed_log1p(col: str) -> Column:
    """``sign(x) * log1p(|x|)``: the scale the model and the baselines read profiles on."""
    return F.signum(F.col(col)) * F.log1p(F.abs(F.col(col)))


def profile_scale_stats(examples: DataFrame) -> DataFrame:
    """One row: mean and population std of ``signed_log1p`` of each numeric profile.

    Needs: :data:`NUMERIC_PROFILES`. Adds (one row): ``<col>_mean``, ``<col>_std``.
    Run on the training split only; the model standardises with these.
    """
    aggs = []
    for c in NUMERIC_PROFILES:
        aggs += [F.mean(signed_log1p(c)).alias(f"{c}_mean"), F.stddev_pop(signed_log1p(c)).alias(f"{c}_std")]
    return examples.agg(*aggs)
