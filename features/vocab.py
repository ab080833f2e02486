"""Vocabularies: item, category and event-type ids -> dense integer indexes.

Rules (pinned by tests/test_features.py):

* **Reserved indexes.** ``0`` is padding (:data:`PAD_INDEX`), ``1`` is
  out-of-vocabulary (:data:`OOV_INDEX`); real tokens get ``2, 3, ...``.
* **Order.** Within a kind, tokens are ranked by descending count, then by
  token (string order) so that ties are broken the same way on every run: the
  same input always gives the same indexes.
* **Frequency cut-off.** A token seen fewer than ``min_<kind>_count`` times in
  the fitting events is not indexed and maps to OOV.
* **Fitting range.** Fit on the train time range only (see
  :func:`shopseq.features.splits.train_range`); ids first seen later (validation, test,
  scoring) map to OOV. A null ``category_id`` maps to OOV too.
* **Version.** ``vocab_version`` is a content fingerprint (16 hex chars of
  SHA-256 over the row count and an order-independent sum of per-row
  ``xxhash64(kind, token, index, count)``): the same vocabulary always gets the
  same version string, so a job can tell that a re-run changed nothing.

The table is one row per token: ``kind, token, index, count, vocab_version``.
Vocabulary size for an embedding (``num_embeddings``) is ``max(index) + 1``,
pad and OOV included (:func:`vocab_sizes`).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseq.features.params import FeaturesConfig

PAD_INDEX = 0
OOV_INDEX = 1
FIRST_INDEX = 2
# kind -> (source column, index column added by apply_vocab)
KINDS: dict[str, tuple[str, str]] = {
    "item": ("item_id", "item_idx"),
    "category": ("category_id", "category_idx"),
    "event_type": ("event_type", "event_type_idx"),
}
VOCAB_SCHEMA = T.StructType(
    [
        T.StructField("kind", T.StringType()),
        T.StructField("token", T.StringType()),
        T.StructField("index", T.IntegerType()),
        T.StructField("count", T.LongType()),
        T.StructField("vocab_version", T.StringType()),
    ]
)


def _min_counts(cfg: FeaturesConfig) -> dict[str, int]:
    return {"item": cfg.min_item_count, "category": cfg.min_category_count, "event_type": cfg.min_event_type_count}


def fit_vocab(events: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Count tokens and index those at or above the cut-off.

    Needs: item_id, category_id, event_type (the train-range events only).
    Returns: kind, token, index (int, from 2), count (long); no version yet.
    """
    mins = _min_counts(cfg)
    counted = None
    for kind, (col, _) in KINDS.items():
        part = (
            events.where(F.col(col).isNotNull())
            .groupBy(F.col(col).cast("string").alias("token"))
            .agg(F.count(F.lit(1)).alias("count"))
            .where(F.col("count") >= F.lit(mins[kind]))
            .select(F.lit(kind).alias("kind"), "token", "count")
        )
        counted = part if counted is None else counted.unionByName(part)
    rank = Window.partitionBy("kind").orderBy(F.col("count").desc(), F.col("token").asc())
    return counted.select(
        "kind",
        "token",
        (F.row_number().over(rank) + F.lit(FIRST_INDEX - 1)).cast("int").alias("index"),
        F.col("count").cast("long").alias("count"),
    )


def with_vocab_version(vocab: DataFrame) -> DataFrame:
    """Add the content fingerprint.

    Needs: kind, token, index, count. Adds: vocab_version (string, the same on
    every row; ``"empty"`` for an empty vocabulary, which then has no rows).
    """
    row_hash = F.xxhash64("kind", "token", "index", "count").cast("decimal(38,0)")
    fp = vocab.agg(F.count(F.lit(1)).alias("_n"), F.coalesce(F.sum(row_hash), F.lit(0).cast("decimal(38,0)")).alias("_s")).select(
        F.substring(F.sha2(F.concat_ws(":", F.col("_n").cast("string"), F.col("_s").cast("string")), 256), 1, 16).alias("vocab_version")
    )
    return vocab.select("kind", "token", "index", "count").crossJoin(fp)


def apply_vocab(events: DataFrame, vocab: DataFrame) -> DataFrame:
    """Map ids to indexes; unseen and null ids get :data:`OOV_INDEX`.

    Needs: item_id, category_id, event_type; ``vocab`` with kind, token, index.
    Adds: item_idx, category_idx, event_type_idx (int, never null).
    """
    out = events
    for kind, (col, idx_col) in KINDS.items():
        mapping = vocab.where(F.col("kind") == kind).select(F.col("token").alias("_tok"), F.col("index").alias("_idx"))
        if kind != "item":
            mapping = F.broadcast(mapping)  # categories and event types: always small
        joined = out.join(mapping, F.col(col).cast("string") == F.col("_tok"), "left")
        out = joined.select(*[F.col(c) for c in out.columns], F.coalesce(F.col("_idx"), F.lit(OOV_INDEX)).cast("int").alias(idx_col))
    return out


def vocab_sizes(vocab: DataFrame) -> DataFrame:
    """Embedding sizes: ``max(index) + 1`` per kind (pad and OOV included; 2 for a kind with no tokens).

    Needs: kind, index. Returns one row with one int column per kind in :data:`KINDS`.
    """
    return vocab.agg(
        *[F.coalesce(F.max(F.when(F.col("kind") == k, F.col("index"))) + F.lit(1), F.lit(FIRST_INDEX)).cast("int").alias(k) for k in KINDS]
    )
