"""Inline silver rows for the feature and scoring tests."""

from __future__ import annotations

from datetime import datetime, timezone

from pyspark.sql import DataFrame

from shopseq.features.sessionize import SILVER_SCHEMA


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def us(text: str) -> int:
    return int(ts(text).timestamp()) * 1_000_000


def silver(spark, spec: list[tuple]) -> DataFrame:
    """(user, time, event_type, item, category, price, session_index, event_index) -> silver rows."""
    rows = []
    for i, (user, when, etype, item, cat, price, s_idx, e_idx) in enumerate(spec):
        t = ts(when)
        rows.append((f"{user}-{i:03d}", user, t, etype, item, cat, price, None, None, t.date(), "test", f"{user}-s{s_idx}", s_idx, e_idx, False))
    return spark.createDataFrame(rows, SILVER_SCHEMA)
