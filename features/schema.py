"""Canonical schemas shared by every stage (the contract between ingest and everything after it)."""

from __future__ import annotations

from pyspark.sql import types as T

EVENT_TYPES: tuple[str, ...] = ("view", "fav", "cart", "remove_from_cart", "purchase")

# Bronze: one row per accepted source event. Nullable: category_id, price, brand, source_session_id.
EVENT_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType(), False),  # sha2 of the source row's identity: deterministic
        T.StructField("user_id", T.StringType(), False),
        T.StructField("event_time", T.TimestampType(), False),  # UTC
        T.StructField("event_type", T.StringType(), False),  # one of EVENT_TYPES
        T.StructField("item_id", T.StringType(), False),
        T.StructField("category_id", T.StringType(), True),
        T.StructField("price", T.DoubleType(), True),
        T.StructField("brand", T.StringType(), True),
        T.StructField("source_session_id", T.StringType(), True),
        T.StructField("event_date", T.DateType(), False),  # partition column, = to_date(event_time) in UTC
        T.StructField("ingest_batch", T.StringType(), False),  # lineage: which ingest run wrote the row
    ]
)
EVENT_COLUMNS: list[str] = [f.name for f in EVENT_SCHEMA.fields]

# Delta CHECK constraints of bronze_events (with EVENT_SCHEMA's NOT NULL columns): a write that breaks one is refused whole.
EVENT_CONSTRAINTS: dict[str, str] = {
    "known_event_type": "event_type IN (" + ", ".join(f"'{t}'" for t in EVENT_TYPES) + ")",
    "price_not_negative": "price IS NULL OR price >= 0",
    "event_date_is_utc_day": "event_date = CAST(event_time AS DATE)",
}
