"""Each user's latest window as of a time: the model inputs of batch predictions (silver -> windows).

The latest window of a user as of ``as_of`` is the example the gold builder
(:func:`shopseq.features.sequences.build_examples`) would cut at the user's last event
strictly before ``as_of``, computed with the same functions (vocabulary join,
event order, per-event features, profiles, arrays), so scoring sees exactly
what training saw:

* **Events.** Only events with ``event_time < as_of``; events at or after it
  do not exist for the window (nor for its profiles or time gaps).
* **Anchor.** The user's last such event (in the sessionizer's total order).
  Users without an event before ``as_of`` get no row.
* **Cutoff time.** As ``features.cutoff`` defines it for an anchor
  (:func:`shopseq.features.sequences.anchor_cutoff_us`): the anchor's own time for
  ``session_end`` and ``stride`` (so ``recency_s`` is 0, as in training), the
  end of the anchor's UTC day for ``daily``, capped at ``as_of - 1us`` (a
  snapshot never looks past ``as_of``).
* **Indexes.** Ids missing from the vocabulary table (first seen after its
  fitting range, or never frequent enough) map to OOV; prices are normalised
  with the training range's mean and std. Both come from the model's schema
  artifact, not recomputed, so a later ``shopseq features`` cannot shift them.

The output columns are ``user_id``, ``cutoff_time`` and the gold model inputs
(:func:`window_columns`): the same names, dtypes and shapes as the gold
tables, so the same tensors code reads both.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseq.features.profiles import add_profiles
from shopseq.features.sequences import add_event_features, add_sequence_arrays, anchor_cutoff_us, gold_columns, gold_expr, order_events, user_window
from shopseq.features.vocab import apply_vocab
from shopseq.features.params import FeaturesConfig

KEY_COLUMNS: list[str] = ["user_id", "cutoff_time"]


def window_columns(cfg: FeaturesConfig) -> list[dict[str, Any]]:
    """The gold columns a model reads for one window (sequences, seq_len, profiles), as in :func:`shopseq.features.sequences.gold_columns`."""
    return [c for c in gold_columns(cfg) if c["role"] in ("sequence", "profile")]


def events_before(events: DataFrame, as_of_us: int) -> DataFrame:
    """Events strictly before ``as_of`` (epoch microseconds). Needs: event_time."""
    return events.where(F.col("event_time") < F.timestamp_micros(F.lit(as_of_us)))


def mark_latest(events: DataFrame, cfg: FeaturesConfig, as_of_us: int) -> DataFrame:
    """Flag each user's last event as the anchor of the latest window (see the module docstring).

    Needs: user_id, user_pos, _us, _day. Adds: is_cutoff (bool), cutoff_time (timestamp; null where not the anchor).
    """
    is_last = F.lead("user_pos").over(user_window()).isNull()
    cutoff_us = F.least(anchor_cutoff_us(cfg), F.lit(as_of_us - 1))
    return events.withColumn("is_cutoff", is_last).withColumn("cutoff_time", F.when(F.col("is_cutoff"), F.timestamp_micros(cutoff_us)))


def latest_windows(events: DataFrame, vocab: DataFrame, cfg: FeaturesConfig, as_of_us: int, price_mean: float | None, price_std: float | None) -> DataFrame:
    """Silver events -> one row per user: the window ending at the user's last event before ``as_of``.

    Needs: the columns of :func:`shopseq.features.sequences.prepare_events` (apply it
    first); ``vocab`` with kind, token, index (the model's vocabulary).
    Returns: :data:`KEY_COLUMNS` + :func:`window_columns` (gold dtypes).
    """
    windows = (
        events.transform(events_before, as_of_us)
        .transform(apply_vocab, vocab)
        .transform(order_events)
        .transform(mark_latest, cfg, as_of_us)
        .transform(add_event_features, cfg, price_mean or 0.0, price_std or 1.0)
        .transform(add_profiles)
        # Arrays last, as in build_examples: the anchor filter runs below their projections.
        .transform(add_sequence_arrays, cfg)
        .where(F.col("is_cutoff"))
    )
    return windows.select(*KEY_COLUMNS, *[gold_expr(c) for c in window_columns(cfg)])
