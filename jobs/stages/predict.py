"""`shopseq predict`: each user's latest window scored by the trained model, written to Delta.

Recipe: open the checkpoint on the driver (:func:`shopseq.jobs.stages.train.open_checkpoint`,
shared with ``shopseq evaluate``: it refuses a model trained on another
vocabulary than the gold tables' current one; its schema artifact, features
config and lineage are what scoring must match); read ``silver_events``
(latest version) and ``vocab`` at the version the model was trained with;
build every user's latest window before ``as_of``
(:func:`shopseq.features.scoring.latest_windows`); score the windows with
``mapInPandas``: the checkpoint travels to the executors as a broadcast and
each Python worker loads the model once (:func:`_cached_model`), then runs
no-grad forward passes of ``predict.batch_size`` rows; overwrite this run's
partition of ``predictions``; upsert ``predictions_latest``.

``predictions`` (partitioned by ``as_of_key``, ``model_version``): one row
per user with an event before ``as_of``: user_id, as_of, cutoff_time (the
window's cutoff, see :mod:`shopseq.features.scoring`), model_version,
silver_version, gold_train_version, vocab_version, top_items (the
``predict.top_k`` most probable next items, original ids, never padding or
OOV), top_scores (their probabilities: softmax over the known items),
next_action_probs (event type -> probability, over the known types; sums to
1), purchase_prob, churn_prob, scored_at (the run's start, the same on every
row). ``as_of_key`` is as_of as ``YYYYMMDDTHHMMSS.ffffffZ`` (exact to the
microsecond, safe in a folder name), so a re-run for the same as_of and model
version replaces exactly its own partition and no other.

``predictions_latest`` (unpartitioned, keyed by user_id): the same columns,
one row per user: this run's rows are merged in where the user has no row yet
or the stored row's as_of is not later (newer-or-equal wins; scoring an old
as_of never replaces a newer prediction).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Iterator

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseq.features.scoring import KEY_COLUMNS, events_before, latest_windows
from shopseq.features.sequences import prepare_events
from shopseq.features.vocab import FIRST_INDEX
from shopseq.jobs.catalog import PREDICTIONS, PREDICTIONS_LATEST, SILVER_EVENTS, VOCAB
from shopseq.jobs.common import Context, InputError, run_stage, stage_parser
from shopseq.jobs.config import Config, FeaturesConfig
from shopseq.jobs.tables import TableIO
from shopseq.jobs.stages.train import Checkpoint, open_checkpoint, read_checkpoint  # noqa: F401 - read_checkpoint: the benchmark opens a checkpoint by path

log = logging.getLogger(__name__)

SILVER, LATEST = SILVER_EVENTS, PREDICTIONS_LATEST
PARTITION_COLUMNS = ["as_of_key", "model_version"]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_WINDOW_KEYS = ("max_len", "cutoff", "time_buckets", "drop_bot_suspects")  # the features.* keys a latest window depends on

# What mapInPandas returns; the run's constants (as_of, versions) are added after it, in Spark.
SCORE_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("cutoff_time", T.TimestampType()),
        T.StructField("top_items", T.ArrayType(T.StringType())),
        T.StructField("top_scores", T.ArrayType(T.FloatType())),
        T.StructField("next_action_probs", T.MapType(T.StringType(), T.FloatType())),
        T.StructField("purchase_prob", T.FloatType()),
        T.StructField("churn_prob", T.FloatType()),
    ]
)
PREDICTION_COLUMNS: list[str] = [
    "user_id", "as_of", "cutoff_time", "model_version", "silver_version", "gold_train_version", "vocab_version",
    "top_items", "top_scores", "next_action_probs", "purchase_prob", "churn_prob", "scored_at", "as_of_key",
]  # fmt: skip


def build_parser():
    parser = stage_parser("predict", "Score each user's latest window with the trained model into predictions (+ predictions_latest).")
    parser.add_argument("--as-of", default=None, help="UTC time the windows are cut at, e.g. 2024-03-01 or 2024-03-01T12:00:00 (default: predict.as_of, else just after the latest silver event)")
    parser.add_argument("--checkpoint", default=None, help="best | last | path to a .pt checkpoint (default: predict.checkpoint)")
    return parser


# --------------------------------------------------------------------------- the checkpoint


def model_features(ckpt: Checkpoint, cfg: Config) -> FeaturesConfig:
    """The features config the model's gold tables were built with (windows must be built the same way)."""
    saved = (ckpt.schema.get("lineage") or {}).get("features")
    if not saved:
        log.warning("%s: the schema artifact records no features config; using features.* from config", ckpt.path)
        return cfg.features
    known = {f.name for f in dataclasses.fields(FeaturesConfig)}
    fc = FeaturesConfig(**{k: v for k, v in saved.items() if k in known})
    changed = [k for k in _WINDOW_KEYS if getattr(fc, k) != getattr(cfg.features, k)]
    if changed:
        log.warning("features.%s differ(s) from the model's gold tables: windows are built with the model's", ", features.".join(changed))
    return fc


# --------------------------------------------------------------------------- time


def parse_as_of(text: str) -> int:
    """An ISO date or timestamp (naive = UTC) as epoch microseconds."""
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--as-of: expected an ISO date or timestamp (UTC), got {text!r}") from None
    ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def as_of_key(as_of_us: int) -> str:
    """The partition value of an as-of time: ``YYYYMMDDTHHMMSS.ffffffZ`` (exact, sortable, no ':')."""
    return (_EPOCH + timedelta(microseconds=as_of_us)).strftime("%Y%m%dT%H%M%S.%fZ")


def _datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# --------------------------------------------------------------------------- scoring (driver or executor)


def frame_to_tensors(pdf: Any, columns: list[dict[str, Any]]) -> dict[str, Any]:
    """A pandas batch of windows -> the model's input tensors (``[N, L]`` sequences, ``[N]`` scalars)."""
    import torch

    out = {}
    for col in columns:
        values = pdf[col["name"]]
        arr = np.stack(values.to_numpy()) if col["shape"] else values.to_numpy()
        out[col["name"]] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.dtype(col["dtype"])))
    return out


def score_tensors(model: Any, data: dict[str, Any], top_k: int, batch_size: int) -> dict[str, np.ndarray]:
    """No-grad batched scores of windows given as tensors (:func:`shopseq.training.checkpoint.predict_tensors` + next items).

    Returns numpy arrays: ``top_idx`` ``[N, k]`` item indexes (most probable
    first, known items only), ``top_scores`` ``[N, k]`` (softmax over the known
    items), ``action`` ``[N, E - 2]`` (next event type over the known types,
    index ``FIRST_INDEX + j``), ``purchase`` and ``churn`` ``[N]``.
    """
    import torch

    from shopseq.training.checkpoint import predict_tensors
    from shopseq.training.model import ITEM_FEATURE

    with torch.no_grad():
        out = predict_tensors(model, data, batch_size)
        hidden = out["hidden_last"]
        n_items = model.encoder.item_table.num_embeddings
        k = max(0, min(top_k, n_items - FIRST_INDEX))
        idx_parts, score_parts = [], []
        for start in range(0, len(hidden), batch_size):
            rows = slice(start, start + batch_size)
            logits = model.item_scores(hidden[rows], data[ITEM_FEATURE][rows], out["repeat_last"][rows])  # + the window's repeat bias
            logits[:, :FIRST_INDEX] = float("-inf")  # padding and OOV are never predicted
            scores, idx = torch.softmax(logits, dim=-1).topk(k, dim=-1)
            idx_parts.append(idx)
            score_parts.append(scores)
        action = out["action"][:, FIRST_INDEX:]
        action = action / action.sum(dim=-1, keepdim=True).clamp_min(1e-30)  # = softmax over the known event types
    empty = np.zeros((0, k))
    return {
        "top_idx": torch.cat(idx_parts).numpy() if idx_parts else empty.astype(np.int64),
        "top_scores": torch.cat(score_parts).numpy() if score_parts else empty.astype(np.float32),
        "action": action.numpy(),
        "purchase": out["purchase"].numpy(),
        "churn": out["churn"].numpy(),
    }


# Per Python worker: the loaded model, keyed by the checkpoint's digest. Spark reuses Python workers
# across tasks (spark.python.worker.reuse, on by default), so each worker process loads it once.
_MODEL_CACHE: dict[str, Any] = {}


def _cached_model(digest: str, payload: Any, threads: int) -> tuple[Any, np.ndarray, list[str]]:
    """The model for ``digest``, loaded from ``payload`` (a broadcast or its dict value) on the worker's first call."""
    if digest not in _MODEL_CACHE:
        import torch

        from shopseq.training.checkpoint import load_model

        # Distribution only: each concurrent task has spark.task.cpus cores; torch's default (all cores)
        # in every worker would oversubscribe them (local[2]: two workers x two threads on two cores).
        torch.set_num_threads(threads)
        value = payload.value if hasattr(payload, "value") else payload  # reading a broadcast's value loads it here, once
        model, _ = load_model(io.BytesIO(value["checkpoint"]))  # type: ignore[arg-type]  # torch.load takes a file object
        _MODEL_CACHE.clear()  # one model per worker: a new checkpoint replaces the previous one
        _MODEL_CACHE[digest] = (model, np.asarray(value["items"], dtype=object), list(value["event_types"]))
        log.info("worker %d: loaded model %s", os.getpid(), digest[:12])
    return _MODEL_CACHE[digest]


def score_partition(
    batches: Iterator[Any], digest: str, payload: Any, columns: list[dict[str, Any]], top_k: int, batch_size: int, threads: int
) -> Iterator[Any]:
    """The ``mapInPandas`` function: pandas batches of windows -> pandas batches of :data:`SCORE_SCHEMA`."""
    import pandas as pd

    model, items, event_types = _cached_model(digest, payload, threads)
    for pdf in batches:
        if len(pdf) == 0:
            continue
        s = score_tensors(model, frame_to_tensors(pdf, columns), top_k, batch_size)
        actions = s["action"].astype(np.float32)
        yield pd.DataFrame(
            {
                "user_id": pdf["user_id"].to_numpy(),
                "cutoff_time": pdf["cutoff_time"],
                "top_items": list(items[s["top_idx"]]),
                "top_scores": list(s["top_scores"].astype(np.float32)),
                "next_action_probs": [dict(zip(event_types, row.tolist())) for row in actions],
                "purchase_prob": s["purchase"].astype(np.float32),
                "churn_prob": s["churn"].astype(np.float32),
            }
        )


def model_inputs(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The gold columns the model reads (sequences, seq_len, profiles), from its schema artifact."""
    return [c for c in schema["columns"] if c["role"] in ("sequence", "profile")]


def vocab_tokens(vocab: DataFrame, kind: str, size: int) -> list[str]:
    """Tokens by index for one vocabulary kind (``size`` = embedding size; padding and OOV slots are empty strings)."""
    tokens = [""] * size
    for r in vocab.where(F.col("kind") == kind).select("token", "index").collect():
        if 0 <= int(r["index"]) < size:
            tokens[int(r["index"])] = r["token"]
    return tokens


def score_windows(spark: SparkSession, windows: DataFrame, ckpt: Checkpoint, vocab: DataFrame, top_k: int, batch_size: int) -> DataFrame:
    """Windows (:mod:`shopseq.features.scoring` columns) -> one scored row per window (:data:`SCORE_SCHEMA`)."""
    sizes = ckpt.schema["embedding_sizes"]
    event_types = vocab_tokens(vocab, "event_type", sizes["event_type"])[FIRST_INDEX:]
    payload = {"checkpoint": ckpt.data, "items": vocab_tokens(vocab, "item", sizes["item"]), "event_types": event_types}
    # Distribution only: the checkpoint reaches every executor as a broadcast (no shared file system needed).
    bc = spark.sparkContext.broadcast(payload)
    threads = int(spark.conf.get("spark.task.cpus", "1") or 1)
    columns = model_inputs(ckpt.schema)
    fn = partial(score_partition, digest=ckpt.digest, payload=bc, columns=columns, top_k=top_k, batch_size=batch_size, threads=threads)
    return windows.select(*KEY_COLUMNS, *[c["name"] for c in columns]).mapInPandas(fn, SCORE_SCHEMA)


# --------------------------------------------------------------------------- the job


def build_windows(tables: TableIO, cfg: Config, ckpt: Checkpoint, as_of: str | None) -> tuple[DataFrame, DataFrame, dict[str, Any]]:
    """Latest windows of every user as of ``as_of``, the model's vocabulary, and the run's lineage."""
    schema = ckpt.schema
    silver_version = tables.version(SILVER)
    if silver_version is None:
        raise InputError(f"table {SILVER!r} does not exist; run 'shopseq sessionize' first")
    silver = tables.read(SILVER, version=silver_version)
    text = as_of or cfg.predict.as_of
    if text is None:
        row = silver.agg(F.max(F.unix_micros("event_time")).alias("hi")).head()
        if row is None or row["hi"] is None:
            raise InputError(f"{SILVER} version {silver_version} has no events")
        as_of_us = int(row["hi"]) + 1  # just after the latest event: every event is before it
    else:
        as_of_us = parse_as_of(text)
    inputs = schema.get("inputs") or {}
    vocab_version = inputs.get("vocab_version")
    vocab = tables.read(VOCAB, version=inputs.get("vocab_table_version"))
    found = [r["vocab_version"] for r in vocab.select("vocab_version").distinct().collect()]
    if vocab_version is not None and found and found != [vocab_version]:
        raise InputError(f"{VOCAB} version {inputs.get('vocab_table_version')} holds vocab_version {found}, the model was trained with {vocab_version!r}")
    fc = model_features(ckpt, cfg)
    events = silver.transform(prepare_events, fc)
    if not events.transform(events_before, as_of_us).limit(1).count():  # cheap: stops at the first event found
        raise InputError(f"{SILVER} version {silver_version} has no event before as_of {_datetime(as_of_us).isoformat()}: nothing to score")
    prices = schema.get("price_stats") or {}
    windows = events.transform(latest_windows, vocab, fc, as_of_us, prices.get("mean"), prices.get("std"))
    lineage = {
        "as_of_us": as_of_us,
        "as_of_key": as_of_key(as_of_us),
        "silver_version": silver_version,
        "gold_train_version": (ckpt.state.get("lineage") or {}).get("gold_train_version"),
        "vocab_version": vocab_version,
        "vocab_table_version": inputs.get("vocab_table_version"),
    }
    return windows, vocab, lineage


def with_run_columns(scored: DataFrame, lineage: dict[str, Any], version: str, scored_at: datetime) -> DataFrame:
    """Add the run's constants (as_of, versions, scored_at, the partition key) in :data:`PREDICTION_COLUMNS` order."""
    consts = {
        "as_of": F.lit(_datetime(lineage["as_of_us"])).cast("timestamp"),
        "model_version": F.lit(version),
        "silver_version": F.lit(lineage["silver_version"]).cast("long"),
        "gold_train_version": F.lit(lineage["gold_train_version"]).cast("long"),
        "vocab_version": F.lit(lineage["vocab_version"]).cast("string"),
        "scored_at": F.lit(scored_at).cast("timestamp"),
        "as_of_key": F.lit(lineage["as_of_key"]),
    }
    return scored.withColumns(consts).select(*PREDICTION_COLUMNS)


def run_predict(tables: TableIO, cfg: Config, as_of: str | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """Score every user's latest window before ``as_of``; write ``predictions`` and upsert ``predictions_latest``.

    Returns the lineage plus model_version, rows, the commits' table
    versions, seconds and rows/s of the scoring write.
    """
    pc = cfg.predict
    if pc.top_k < 1 or pc.batch_size < 1:
        raise InputError(f"predict.top_k and predict.batch_size must be >= 1, got {pc.top_k} and {pc.batch_size}")
    scored_at = datetime.now(timezone.utc).replace(microsecond=0)
    ckpt, version = open_checkpoint(cfg, checkpoint or pc.checkpoint, "predict", pc.model_version)  # refuses a checkpoint of another vocabulary
    windows, vocab, lineage = build_windows(tables, cfg, ckpt, as_of)
    log.info("scoring as of %s with model %s (%s): silver_events v%s, vocab %s", _datetime(lineage["as_of_us"]).isoformat(), version, ckpt.path, lineage["silver_version"], lineage["vocab_version"])
    scored = score_windows(tables.spark, windows, ckpt, vocab, pc.top_k, pc.batch_size).transform(with_run_columns, lineage, version, scored_at)
    meta = {**lineage, "model_version": version, "checkpoint": ckpt.path, "checkpoint_sha256": ckpt.digest}
    start = time.perf_counter()
    commit = tables.overwrite_partitions(PREDICTIONS, scored, PARTITION_COLUMNS, metadata=meta, values=[{"as_of_key": lineage["as_of_key"], "model_version": version}])
    seconds = time.perf_counter() - start
    rows = int(commit.num_rows) if commit.num_rows is not None else tables.read(PREDICTIONS, version=commit.version).where(_partition(lineage, version)).count()
    # Read back what was committed (no second scoring pass); one MERGE keeps each user's newest as_of (ties: this run).
    written = tables.read(PREDICTIONS, version=commit.version).where(_partition(lineage, version))
    latest = tables.upsert(LATEST, written, keys=["user_id"], metadata=meta, update_when="s.as_of >= t.as_of")
    log.info(
        "%s: %d rows in partition as_of_key=%s/model_version=%s (table version %d) in %.1f s (%.0f rows/s, windows included); %s version %d",
        PREDICTIONS, rows, lineage["as_of_key"], version, commit.version, seconds, rows / seconds if seconds else float("nan"), LATEST, latest.version,
    )  # fmt: skip
    return {
        **lineage,
        "as_of": _datetime(lineage["as_of_us"]).isoformat().replace("+00:00", "Z"),
        "skipped": False,
        "model_version": version,
        "checkpoint": ckpt.path,
        "rows": rows,
        "predictions_version": commit.version,
        "latest_version": latest.version,
        "seconds": seconds,
        "rows_per_s": rows / seconds if seconds else None,
    }


def _partition(lineage: dict[str, Any], version: str) -> Any:
    return (F.col("as_of_key") == F.lit(lineage["as_of_key"])) & (F.col("model_version") == F.lit(version))


def _run(ctx: Context) -> int:
    run_predict(ctx.tables, ctx.cfg, as_of=ctx.args.as_of, checkpoint=ctx.args.checkpoint)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
