"""Raw sources: the only code that reads raw input files, and the per-format presets.

Every named format is a preset: a :class:`~shopseq.jobs.config.SourceConfig` value
(column names, separator, header, time unit, value mapping), not code. The
``generic`` format takes the same keys from ``source.*`` in config. Named
formats take only ``path`` from config (``--input`` overrides it).

| format | file | notes |
|---|---|---|
| ``taobao`` | CSV, no header: ``user_id,item_id,category_id,behavior_type,timestamp`` | unix seconds; pv/fav/cart/buy |
| ``rees46`` | CSV with header | ``2019-10-01 00:00:00 UTC`` times; ``user_session`` -> source_session_id; ``category_code`` is not kept |
| ``retailrocket`` | CSV with header: ``timestamp,visitorid,event,itemid,transactionid`` | unix ms; view/addtocart/transaction; no category, price or brand |
| ``diginetica`` | ``;``-separated with header: ``session_id;user_id;item_id;timeframe;eventdate`` | views only; time = eventdate (UTC midnight) + timeframe ms; user_id ``NA`` -> ``"s" + session_id`` (see below) |
| ``yoochoose_clicks`` | RecSys Challenge 2015 ``yoochoose-clicks.dat``, no header: ``session_id,timestamp,item_id,category`` | ISO times with ``Z``; every click is a view; the session is the user; category ``0`` (missing) -> null |
| ``yoochoose_buys`` | ``yoochoose-buys.dat``, no header: ``session_id,timestamp,item_id,price,quantity`` | every row a purchase; price ``0`` (unknown) -> null; quantity is not kept |
| ``otto`` | OTTO JSON lines: ``{"session": 1, "events": [{"aid": 2, "ts": 1661724000278, "type": "clicks"}, ...]}`` | one event per element of ``events`` (``source.explode``); unix ms; clicks/carts/orders; the session is the user |
| ``generated`` | Parquet from ``shopseq generate`` | ``<app.data_root>/raw/generated/events``; session_hint -> source_session_id |

Diginetica's ``user_id`` is ``NA`` for anonymous sessions (most of them). Such
an event gets ``user_id = "s" + session_id``: each anonymous session becomes
its own pseudo-user (with ``source_session_id`` = session_id), so per-user
histories of anonymous visitors are one session long.

CSV and JSON-lines inputs are read with ``spark.read.text``: one row per
physical line, the line itself kept as ``raw``, so every line is accounted for
(blank, malformed, undecodable lines are quarantined downstream, header lines
counted). Lines end at ``\n``, ``\r\n`` or a lone ``\r``. Files ending in ``.gz``
or ``.bz2`` (also ``.deflate``) are decompressed by Spark (Hadoop's codecs, chosen by the
extension); other compressed or archive files (:data:`UNSUPPORTED_SUFFIXES`)
are refused by name, as is a ``.gz``/``.bz2`` file whose first bytes are not
gzip/bzip2 (local files).

The YooChoose clicks and buys files are one dataset (:data:`DATASETS`): both
may be ingested into one data root; the formats of different datasets may not
(:func:`shopseq.jobs.stages.ingest.check_single_source`).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
from dataclasses import dataclass, fields, replace
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from shopseq.features.ingest import CANONICAL_KEYS, REQUIRED_KEYS, source_columns_needed
from shopseq.features.schema import EVENT_TYPES
from shopseq.jobs.catalog import Catalog
from shopseq.jobs.common import InputError
from shopseq.jobs.config import ConfigError, SourceConfig

log = logging.getLogger(__name__)

GENERIC = "generic"

PRESETS: dict[str, SourceConfig] = {
    "taobao": SourceConfig(
        format="taobao",
        reader="csv",
        options={"sep": ",", "header": "false"},
        columns=["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
        mapping={"user_id": "user_id", "item_id": "item_id", "category_id": "category_id", "event_type": "behavior_type", "event_time": "timestamp"},
        event_types={"pv": "view", "fav": "fav", "cart": "cart", "buy": "purchase"},
        time_format="unix_s",
    ),
    "rees46": SourceConfig(
        format="rees46",
        reader="csv",
        options={"sep": ",", "header": "true"},
        columns=["event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id", "user_session"],
        mapping={
            "event_time": "event_time",
            "event_type": "event_type",
            "item_id": "product_id",
            "category_id": "category_id",
            "brand": "brand",
            "price": "price",
            "user_id": "user_id",
            "source_session_id": "user_session",
        },
        event_types={"view": "view", "cart": "cart", "remove_from_cart": "remove_from_cart", "purchase": "purchase"},
        time_format="string",
        time_pattern="yyyy-MM-dd HH:mm:ss z",
    ),
    "retailrocket": SourceConfig(
        format="retailrocket",
        reader="csv",
        options={"sep": ",", "header": "true"},
        columns=["timestamp", "visitorid", "event", "itemid", "transactionid"],
        mapping={"event_time": "timestamp", "user_id": "visitorid", "event_type": "event", "item_id": "itemid"},
        event_types={"view": "view", "addtocart": "cart", "transaction": "purchase"},
        time_format="unix_ms",
    ),
    "diginetica": SourceConfig(
        format="diginetica",
        reader="csv",
        options={"sep": ";", "header": "true"},
        columns=["session_id", "user_id", "item_id", "timeframe", "eventdate"],
        mapping={"user_id": "user_id", "item_id": "item_id", "event_time": "eventdate", "source_session_id": "session_id"},
        constants={"event_type": "view"},  # the item-views file holds views only
        event_types={"view": "view"},
        time_format="string",
        time_pattern="yyyy-MM-dd",  # UTC midnight ...
        time_offset_column="timeframe",  # ... + these milliseconds
        null_values=["", "NA"],
        user_fallback_column="session_id",  # anonymous (NA) user -> "s<session_id>": one pseudo-user per session
        user_fallback_prefix="s",
    ),
    "yoochoose_clicks": SourceConfig(
        format="yoochoose_clicks",
        reader="csv",
        options={"sep": ",", "header": "false"},
        columns=["session_id", "timestamp", "item_id", "category"],
        mapping={"user_id": "session_id", "item_id": "item_id", "event_time": "timestamp", "category_id": "category", "source_session_id": "session_id"},
        constants={"event_type": "click"},  # the clicks file holds clicks only
        event_types={"click": "view"},
        time_format="timestamp",  # 2014-04-07T10:51:09.277Z
        null_values=["", "0"],  # category 0 = missing ("S" = special offer, 1-12 categories, other numbers brands: kept as they are)
    ),
    "yoochoose_buys": SourceConfig(
        format="yoochoose_buys",
        reader="csv",
        options={"sep": ",", "header": "false"},
        columns=["session_id", "timestamp", "item_id", "price", "quantity"],
        mapping={"user_id": "session_id", "item_id": "item_id", "event_time": "timestamp", "price": "price", "source_session_id": "session_id"},
        constants={"event_type": "buy"},  # the buys file holds purchases only
        event_types={"buy": "purchase"},
        time_format="timestamp",
        null_values=["", "0"],  # price 0 = unknown
    ),
    "otto": SourceConfig(
        format="otto",
        reader="json",
        columns=["session", "aid", "ts", "type"],
        explode="events",  # one line per session, its events in an array
        mapping={"user_id": "session", "item_id": "aid", "event_time": "ts", "event_type": "type", "source_session_id": "session"},
        event_types={"clicks": "view", "carts": "cart", "orders": "purchase"},
        time_format="unix_ms",
    ),
    "generated": SourceConfig(
        format="generated",
        reader="parquet",
        columns=["user_id", "item_id", "category_id", "event_type", "event_time", "price", "brand", "session_hint"],
        mapping={
            "user_id": "user_id",
            "item_id": "item_id",
            "category_id": "category_id",
            "event_type": "event_type",
            "event_time": "event_time",
            "price": "price",
            "brand": "brand",
            "source_session_id": "session_hint",
        },
        time_format="timestamp",
    ),
}
FORMATS: tuple[str, ...] = (*PRESETS, GENERIC)
# Formats that are files of one dataset: they may share a data root (every other format is its own dataset).
DATASETS: dict[str, str] = {"yoochoose_clicks": "yoochoose", "yoochoose_buys": "yoochoose"}
# Compressed or archive files Spark's text reader cannot decompress (it reads .gz, .bz2 and .deflate by extension).
UNSUPPORTED_SUFFIXES: tuple[str, ...] = (".zip", ".7z", ".rar", ".xz", ".zst", ".zstd", ".lz4", ".lzo", ".snappy", ".tar", ".tgz", ".z", ".br")
_MAGIC: dict[str, bytes] = {".gz": b"\x1f\x8b", ".bz2": b"BZh"}
_DEFAULT = SourceConfig()


def dataset_of(fmt: str) -> str:
    """The dataset a format's files belong to: :data:`DATASETS`, else the format itself."""
    return DATASETS.get(fmt, fmt)


@dataclass(frozen=True)
class RawInput:
    """What :func:`read_source` read: the lazy frame, the resolved source and the input listing."""

    frame: DataFrame  # csv/json: value, input_file; parquet: the file's columns + input_file
    source: SourceConfig  # with columns filled in
    location: str
    files: list[str]
    listing_hash: str  # short sha256 of the sorted file list (with sizes and mtimes for local files)


def resolve_source(cfg: SourceConfig, fmt: str | None = None, path: str | None = None) -> SourceConfig:
    """The effective source: the preset of ``fmt or cfg.format`` (with ``cfg.path``), or ``cfg`` for generic; ``path`` wins."""
    name = fmt or cfg.format
    if name == GENERIC:
        source = replace(cfg, format=GENERIC)
    elif name in PRESETS:
        ignored = [f.name for f in fields(SourceConfig) if f.name not in ("format", "path") and getattr(cfg, f.name) != getattr(_DEFAULT, f.name)]
        if ignored:
            log.warning("source format %r is a preset: ignoring source.%s (use format 'generic' to customise)", name, ", source.".join(ignored))
        source = replace(PRESETS[name], path=cfg.path)
    else:
        raise InputError(f"unknown source format {name!r}; choose one of {', '.join(FORMATS)}")
    if path:
        source = replace(source, path=path)
    validate_source(source)
    return source


def validate_source(source: SourceConfig) -> None:
    """Refuse a source description that cannot work, with one line naming the key."""
    unknown = sorted(set(source.mapping) - set(CANONICAL_KEYS))
    if unknown:
        raise ConfigError(f"'source.mapping' has unknown canonical columns {unknown}; expected some of {', '.join(CANONICAL_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in source.mapping and k not in source.constants]
    if missing:
        raise ConfigError(f"'source.mapping' must map {', '.join(missing)} (or set them in 'source.constants')")
    both = sorted(set(source.mapping) & set(source.constants))
    if both:
        raise ConfigError(f"'source.mapping' and 'source.constants' both set {both}; keep one")
    bad = sorted({v for v in source.event_types.values() if v not in EVENT_TYPES})
    if bad:
        raise ConfigError(f"'source.event_types' maps to unknown event types {bad}; expected some of {', '.join(EVENT_TYPES)}")
    if source.explode and source.reader != "json":
        raise ConfigError(f"'source.explode' needs 'source.reader: json' (got {source.reader!r})")
    if source.time_format == "string" and not source.time_pattern:
        raise ConfigError("'source.time_pattern' is required when 'source.time_format' is string")
    if source.columns:
        absent = sorted(set(source_columns_needed(source)) - set(source.columns))
        if absent:
            raise ConfigError(f"'source.mapping' reads columns {absent} that are not in 'source.columns' {source.columns}")


def default_path(source: SourceConfig, data_root: str) -> str:
    """``source.path``, else for ``generated`` the generator's landing folder; else InputError."""
    if source.path:
        return source.path
    if source.format == "generated":
        return Catalog(data_root).generated_events
    raise InputError(f"no input for source format {source.format!r}: pass --input PATH or set source.path")


def _is_local(path: str) -> bool:
    return urlparse(path).scheme in ("", "file")


def _local(path: str) -> str:
    return unquote(urlparse(path).path) if path.startswith("file:") else path


def read_source(spark: SparkSession, source: SourceConfig, data_root: str, limit: int | None = None) -> RawInput:
    """Read the raw input lazily: text lines for csv/json (``value``, ``input_file``), rows for Parquet.

    ``limit`` keeps the first N lines/rows (quick mode). Missing input raises
    :class:`~shopseq.jobs.common.InputError`.
    """
    location = default_path(source, data_root)
    if _is_local(location) and not glob.glob(_local(location)):
        hint = "; run 'shopseq generate' first or pass --input" if source.format == "generated" else ""
        raise InputError(f"input {location} does not exist{hint}")
    try:
        if source.reader == "parquet":
            frame = spark.read.parquet(location)
        else:
            frame = spark.read.option("recursiveFileLookup", "true").text(location)
        files = sorted(frame.inputFiles())
    except AnalysisException as exc:
        raise InputError(f"cannot read {source.format} input at {location}: {str(exc).splitlines()[0]}") from None
    if source.reader != "parquet":
        check_compression(files)
    frame = frame.withColumn("input_file", F.col("_metadata.file_path"))
    source = replace(source, columns=_columns(spark, source, frame, files, location))
    validate_source(source)
    if source.reader == "parquet":
        absent = sorted(set(source.columns) - set(frame.columns))
        if absent:
            raise InputError(f"{location} has no columns {absent} (it has {', '.join(frame.columns)})")
    if limit is not None:
        frame = frame.limit(limit)
    return RawInput(frame, source, location, files, listing_hash(files))


def _columns(spark: SparkSession, source: SourceConfig, frame: DataFrame, files: list[str], location: str) -> list[str]:
    """``source.columns``, else the CSV header of the first file, else the JSON mapping's columns, else all Parquet columns."""
    if source.columns:
        return list(source.columns)
    if source.reader == "parquet":
        return sorted(c for c in frame.columns if c != "input_file")
    if source.reader == "json":
        return source_columns_needed(source)
    if str(source.options.get("header", "false")).lower() != "true" or not files:
        raise ConfigError("'source.columns' is required for a CSV source without a header")
    first = spark.read.text(files[0]).head()
    if first is None:
        raise InputError(f"{files[0]}: empty file, no header to take the column names from")
    header = next(csv.reader([first[0].lstrip("\ufeff")], delimiter=source.options.get("sep", ",")))
    log.info("%s: columns from the header of %s: %s", location, files[0], header)
    return [h.strip() for h in header]


def check_compression(files: list[str]) -> None:
    """Refuse, by name, files the text reader cannot decompress, and local ``.gz``/``.bz2`` files that are not gzip/bzip2 data."""
    for f in files:
        name = f.lower()
        if name.endswith(UNSUPPORTED_SUFFIXES):
            raise InputError(f"{f}: {os.path.splitext(name)[1]} files are not read; decompress it first (gzip .gz and bzip2 .bz2 files are read as they are)")
        suffix = os.path.splitext(name)[1]
        if suffix in _MAGIC and _is_local(f):
            try:
                with open(_local(f), "rb") as fh:
                    head = fh.read(len(_MAGIC[suffix]))
            except OSError as exc:
                raise InputError(f"{f}: cannot be read: {exc.strerror}") from None
            if head and head != _MAGIC[suffix]:
                raise InputError(f"{f}: named {suffix} but not {'gzip' if suffix == '.gz' else 'bzip2'} data; rename or recompress it")


def listing_hash(files: list[str]) -> str:
    """First 8 hex digits of sha256 over the sorted file list (plus size and mtime where the file is local)."""
    parts = []
    for f in sorted(files):
        entry = f
        if _is_local(f):
            try:
                st = os.stat(_local(f))
                entry = f"{f}\t{st.st_size}\t{int(st.st_mtime)}"
            except OSError:
                pass
        parts.append(entry)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]
