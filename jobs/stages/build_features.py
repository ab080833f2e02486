"""`shopseq features`: silver_events -> vocab + gold_train / gold_val / gold_test + gold/schema.json.

Recipe: read ``silver_events`` (latest version v); find the data's time range
and the split boundaries (:mod:`shopseq.features.splits`); fit the vocabularies on the
train range and write them to ``vocab`` unless the table already holds the
same content (same ``vocab_version``, so a re-run adds no version); re-read
``vocab`` at its current version and build the point-in-time examples
(:func:`shopseq.features.sequences.build_examples`); write each split as its own
unpartitioned table (``gold_<split>``, overwritten, ``repartition`` into at
least ``train_ranks * row_groups_per_rank`` files, so every Petastorm shard
gets row groups); write the schema artifact to ``<app.artifact_root>/gold/schema.json``
and into each gold commit's metadata. When all three gold tables were last
written from this silver version with this config, nothing is written
(``--force`` recomputes anyway).

The schema artifact (format ``shopseq-gold/1``) is what training sizes its
embeddings from: ``columns`` (name, dtype, shape, role, embedding),
``embedding_sizes``, ``vocab_sizes``, ``max_len``, ``padding``,
``special_indexes``, ``ignore_label``, ``cutoff``, ``horizons_days``,
``split`` (method and boundaries), ``price_stats``, ``inputs`` (silver and
vocab table versions, vocab_version), ``stats`` per split, ``protocol``
(``features.protocol``, the preset's name), ``entity``, ``filter`` (the
iterative k-core: thresholds, rounds, and users, items, events before and
after) and, in the JSON file only, ``tables`` (name, location, Delta version,
rows, files per split).

Protocols (``--protocol NAME`` applies ``conf/protocols/NAME.yaml`` between
the dataset layer and ``--set``): before the vocabulary is fit, the events are
turned into the protocol's entities (:func:`shopseq.features.protocols.as_entity`)
and, when a threshold is above 1, filtered by :func:`shopseq.features.protocols.kcore_round`
round after round until a round removes nothing; each round is materialised
with ``localCheckpoint`` so the plan stays one round deep, and its removals
are logged.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shopseq.features.labels import label_stats
from shopseq.features.profiles import NUMERIC_PROFILES, profile_scale_stats
from shopseq.features.protocols import as_entity, data_counts, kcore_active, kcore_round
from shopseq.features.sequences import (
    HOURS,
    IGNORE_LABEL,
    WEEKDAYS,
    build_examples,
    gold_columns,
    prepare_events,
    price_stats,
    sample_users,
    to_gold,
    train_events,
)
from shopseq.features.splits import SPLITS, SplitBounds, split_bounds
from shopseq.features.vocab import OOV_INDEX, PAD_INDEX, fit_vocab, vocab_sizes, with_vocab_version
from shopseq.jobs.catalog import GOLD, SILVER_EVENTS, VOCAB, catalog
from shopseq.jobs.common import Context, InputError, add_protocol_flag, protocol_layer, run_with_layers, stage_parser
from shopseq.jobs.config import Config, FeaturesConfig, to_dict
from shopseq.jobs.tables import TableError, TableIO
from shopseq.training import storage

log = logging.getLogger(__name__)

SILVER = SILVER_EVENTS
SCHEMA_FORMAT = "shopseq-gold/1"


def build_parser():
    parser = stage_parser("features", "silver_events -> vocab + point-in-time sequence examples, labels and profiles (gold_train/val/test + gold/schema.json).")
    parser.add_argument("--force", action="store_true", help="recompute even when the gold tables already record this silver version and config")
    parser.add_argument(
        "--sample-fraction", type=float, default=None, metavar="F", help="quick mode: keep a deterministic fraction F of users (whole histories) (default: none: every user)"
    )
    add_protocol_flag(parser)
    return parser


def schema_path(cfg: Config) -> str:
    """Where the schema artifact is written: the catalog's ``<artifacts>/gold/schema.json`` (``app.artifact_root``, else ``app.data_root``)."""
    return catalog(cfg).schema_artifact


def _lineage(silver_version: int, cfg: Config, sample_fraction: float | None) -> dict[str, Any]:
    return {"silver_version": silver_version, "features": to_dict(cfg.features), "sample_fraction": sample_fraction}


def _up_to_date(tables: TableIO, cfg: Config, lineage: dict[str, Any]) -> dict[str, Any] | None:
    """The existing schema artifact when every gold table was last written with this lineage, else None."""
    for name in GOLD.values():
        if not tables.exists(name) or (tables.history(name)[0].get("metadata") or {}).get("lineage") != lineage:
            return None
    path = schema_path(cfg)
    if not storage.isfile(path):
        return None
    artifact = storage.read_json(path)
    # A kill between the last gold commit and this file leaves an older run's artifact: it must name these gold versions.
    if any((artifact.get("tables") or {}).get(split, {}).get("version") != tables.version(name) for split, name in GOLD.items()):
        log.warning("%s does not describe the current gold table versions (a run stopped before writing it): rebuilding", path)
        return None
    return artifact


def _write_vocab(tables: TableIO, vocab: DataFrame, lineage: dict[str, Any]) -> tuple[str, bool]:
    """Overwrite ``vocab`` unless it already holds this content; returns (vocab_version, written)."""
    row = vocab.select("vocab_version").head()
    version = row["vocab_version"] if row else "empty"
    if tables.exists(VOCAB):
        current = [r["vocab_version"] for r in tables.read(VOCAB).select("vocab_version").distinct().collect()]
        if current == [version] or (not current and version == "empty"):
            log.info("vocab: unchanged (vocab_version %s, table version %d); not written", version, tables.version(VOCAB))
            return version, False
    tables.overwrite(VOCAB, vocab, metadata={"vocab_version": version, "silver_version": lineage["silver_version"], "features": lineage["features"]})
    return version, True


def _counts(events: DataFrame) -> dict[str, int]:
    row = events.transform(data_counts).head()
    return {k: int(row[k]) for k in ("users", "items", "events")}


def filter_events(events: DataFrame, fc: FeaturesConfig) -> tuple[DataFrame, dict[str, Any]]:
    """The iterative k-core filter of ``fc`` (see :mod:`shopseq.features.protocols`); returns the events and the filter record.

    Runs :func:`shopseq.features.protocols.kcore_round` until a round removes nothing
    (that last round is counted in ``rounds``, as RecBole's loop does).
    Each round's output is materialised with ``localCheckpoint`` (the plan of
    round n would otherwise repeat rounds 1..n). The record: ``min_user_events``,
    ``min_item_events``, ``entity``, ``rounds``, ``removed`` (users, items, events
    per round) and ``before`` / ``after`` counts (users, items, events).
    """
    before = _counts(events)
    record: dict[str, Any] = {
        "entity": fc.entity, "min_user_events": fc.filter_min_user_events, "min_item_events": fc.filter_min_item_events,
        "rounds": 0, "removed": [], "before": before, "after": before,
    }  # fmt: skip
    if not kcore_active(fc.filter_min_user_events, fc.filter_min_item_events):
        return events, record
    current, counts = events, before
    while True:
        nxt = current.transform(kcore_round, fc.filter_min_user_events, fc.filter_min_item_events).localCheckpoint(eager=True)
        after = _counts(nxt)
        removed = {k: counts[k] - after[k] for k in counts}
        record["rounds"] += 1
        record["removed"].append(removed)
        log.info(
            "k-core round %d (%s >= %d events, items >= %d): removed %d %ss, %d items, %d events; %d %ss, %d items, %d events left",
            record["rounds"], fc.entity, fc.filter_min_user_events, fc.filter_min_item_events, removed["users"], fc.entity,
            removed["items"], removed["events"], after["users"], fc.entity, after["items"], after["events"],
        )  # fmt: skip
        current, counts = nxt, after
        if removed["events"] == 0:
            break
    record["after"] = counts
    return current, record


def _num_files(rows: int, cfg: Config) -> int:
    fc = cfg.features
    return max(fc.train_ranks * fc.row_groups_per_rank, math.ceil(rows / max(fc.rows_per_file, 1)))


def _artifact(
    cfg: Config,
    bounds: SplitBounds,
    lineage: dict[str, Any],
    sizes: dict[str, int],
    prices: dict[str, Any],
    inputs: dict[str, Any],
    stats: dict[str, Any],
    profile_scale: dict[str, dict[str, float]],
    filtered: dict[str, Any],
) -> dict[str, Any]:
    fc = cfg.features
    return {
        "format": SCHEMA_FORMAT,
        "protocol": fc.protocol,
        "entity": fc.entity,
        "filter": filtered,
        "columns": gold_columns(fc),
        "max_len": fc.max_len,
        "padding": "left",
        "special_indexes": {"pad": PAD_INDEX, "oov": OOV_INDEX},
        "ignore_label": IGNORE_LABEL,
        "vocab_sizes": sizes,
        "embedding_sizes": {**sizes, "dt_bucket": fc.time_buckets, "hour": HOURS, "dow": WEEKDAYS, "session_start": 2},
        "cutoff": {"rule": fc.cutoff, "stride": fc.stride if fc.cutoff == "stride" else None, "collapse_ties": fc.collapse_ties},
        "horizons_days": {"purchase": fc.purchase_horizon_days, "churn": fc.churn_horizon_days},
        "split": bounds.describe(fc.split),
        "price_stats": prices,
        "profile_scale": profile_scale,  # mean/std of sign(x)*log1p(|x|) per numeric profile, train split
        "inputs": inputs,
        "train_ranks": fc.train_ranks,
        "stats": stats,
        "lineage": lineage,
    }


def run_features(tables: TableIO, cfg: Config, force: bool = False, sample_fraction: float | None = None) -> dict[str, Any]:
    """Build vocab and the gold tables from the latest ``silver_events``; return the schema artifact.

    The returned dict is the artifact (see the module docstring) plus
    ``skipped`` (nothing written: already up to date), ``vocab_written`` and
    ``schema_path``.
    """
    fc = cfg.features
    silver_version = tables.version(SILVER)
    if silver_version is None:
        raise TableError(f"table {SILVER!r} does not exist; run 'shopseq sessionize' first")
    lineage = _lineage(silver_version, cfg, sample_fraction)
    previous = None if force else _up_to_date(tables, cfg, lineage)
    if previous is not None:
        log.info("gold tables already record silver_events version %d with this config; nothing to do", silver_version)
        return {**previous, "skipped": True, "vocab_written": False, "schema_path": schema_path(cfg)}

    silver = tables.read(SILVER, version=silver_version)
    span = silver.agg(F.min(F.unix_micros("event_time")).alias("lo"), F.max(F.unix_micros("event_time")).alias("hi")).head()
    if span is None or span["lo"] is None:
        raise InputError(f"{SILVER} version {silver_version} has no events")
    bounds = split_bounds(int(span["lo"]), int(span["hi"]), fc)
    log.info("data range and split: %s", bounds.describe(fc.split))
    # Persisted: read three times (vocabulary fit, price statistics, examples), scanned once.
    prepared = silver.transform(prepare_events, fc).transform(sample_users, sample_fraction).transform(as_entity, fc.entity).persist(StorageLevel.MEMORY_AND_DISK)
    examples = None
    try:
        events, filtered = filter_events(prepared, fc)  # the k-core's result is checkpointed: no second cache
        fit_on = events.transform(train_events, fc, bounds)
        new_vocab = fit_vocab(fit_on, fc).transform(with_vocab_version).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            vocab_version, vocab_written = _write_vocab(tables, new_vocab, lineage)
        finally:
            new_vocab.unpersist()
        vocab_table_version = tables.version(VOCAB)
        vocab = tables.read(VOCAB, version=vocab_table_version)
        sizes = {k: int(v) for k, v in vocab.transform(vocab_sizes).head().asDict().items()}
        ps = fit_on.transform(price_stats).head()
        prices = {"mean": ps["price_mean"], "std": ps["price_std"]}
        inputs = {"silver_events_version": silver_version, "vocab_version": vocab_version, "vocab_table_version": vocab_table_version}
        examples = events.transform(build_examples, vocab, fc, bounds, prices["mean"], prices["std"]).persist(StorageLevel.MEMORY_AND_DISK)
        stats = {r["split"]: r.asDict() for r in examples.transform(label_stats).collect()}
        stats = {s: stats.get(s, {"split": s, "examples": 0}) for s in SPLITS}
        scale = examples.where(F.col("split") == "train").transform(profile_scale_stats).head().asDict()
        profile_scale = {c: {"mean": scale[f"{c}_mean"] or 0.0, "std": scale[f"{c}_std"] or 1.0} for c in NUMERIC_PROFILES}
        artifact = _artifact(cfg, bounds, lineage, sizes, prices, inputs, stats, profile_scale, filtered)
        written = _write_gold(tables, examples, cfg, stats, {"lineage": lineage, "schema": artifact})
    finally:
        if examples is not None:
            examples.unpersist()
        prepared.unpersist()
    artifact["tables"] = written
    path = _write_schema(artifact, schema_path(cfg))
    for split in SPLITS:
        s = stats[split]
        log.info(
            "%s: %d examples of %s users; purchase rate %s over %s labeled, churn rate %s over %s labeled, %s next-event labels",
            GOLD[split],
            s["examples"],
            s.get("users"),
            s.get("purchase_rate"),
            s.get("purchase_labeled"),
            s.get("churn_rate"),
            s.get("churn_labeled"),
            s.get("next_labeled"),
        )
    return {**artifact, "skipped": False, "vocab_written": vocab_written, "schema_path": path}


def _write_gold(tables: TableIO, examples: DataFrame, cfg: Config, stats: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Overwrite ``gold_<split>`` for each split; returns name, location, version, rows and files per split."""
    fc = cfg.features
    written: dict[str, Any] = {}
    for split in SPLITS:
        rows = int(stats[split]["examples"])
        n_files = _num_files(rows, cfg)
        if rows < n_files:
            log.warning(
                "%s: %d examples for %d files: some of the %d ranks get fewer than %d row groups",
                GOLD[split], rows, n_files, fc.train_ranks, fc.row_groups_per_rank,
            )  # fmt: skip
        # Distribution only: enough files (row groups) that every training rank reads its own share.
        gold = examples.where(F.col("split") == split).transform(to_gold, fc).repartition(n_files)
        commit = tables.overwrite(GOLD[split], gold, metadata=metadata)
        location = tables.ref(GOLD[split]).location
        written[split] = {"name": GOLD[split], "location": location, "version": commit.version, "rows": commit.num_rows, "files": commit.num_files}
    return written


def _write_schema(artifact: dict[str, Any], path: str) -> str:
    """The schema artifact to ``path`` (a local path or a URI, :mod:`shopseq.training.storage`), atomically: readers never see half of it."""
    storage.write_json(path, artifact, indent=2, sort_keys=True, default=str)
    log.info("schema artifact written to %s", path)
    return path


def _run(ctx: Context) -> int:
    run_features(ctx.tables, ctx.cfg, force=ctx.args.force, sample_fraction=ctx.args.sample_fraction)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_with_layers(build_parser(), argv, _run, lambda known: [protocol_layer(known.conf_dir, known.protocol)])


if __name__ == "__main__":
    sys.exit(main())
