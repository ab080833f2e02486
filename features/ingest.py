"""Ingest, raw -> bronze: pure DataFrame-in/DataFrame-out transforms (no session, no I/O, no actions).

The source reader (:mod:`shopseq.jobs.sources`) hands over either physical lines
(``value`` + ``input_file``, for CSV and JSON lines) or typed rows (Parquet).
A source is described by a :class:`~shopseq.jobs.config.SourceConfig` (a preset or a
``generic`` config); every step here is driven by that data.

Steps, chained with ``DataFrame.transform`` (:func:`classify_raw` runs them all):

1. :func:`to_records`: one record per physical line (or Parquet row; or, for a
   JSON source with ``source.explode``, per element of that array): ``raw``
   (the line's bytes as read, a UTF-8 byte-order mark removed; for Parquet the
   row as JSON with every value cast to string; for an exploded element the
   record's columns as JSON), ``input_file``, ``src`` (a struct of the source
   columns as strings), ``line_problem`` (the line-level reason, null when
   none) and ``is_header``. A line that is not valid UTF-8 or holds a control
   character (NUL, ...: binary data, UTF-16) is ``invalid_encoding`` and is not
   parsed further. CSV lines are split with ``from_csv`` (RFC 4180 quoting:
   ``""`` inside a quoted field is one ``"``, unless ``options.escape`` says
   otherwise) in PERMISSIVE mode with a corrupt-record column, so a line with
   the wrong number of fields is flagged, never dropped or silently padded.
   JSON mapping columns may be paths into nested objects (``user.id``).
2. :func:`to_canonical`: source columns -> canonical columns, per
   ``source.mapping`` / ``constants``: values are trimmed; empty values, the
   literals ``null`` (any case) and ``\\N`` and the ``null_values`` become
   null; times are parsed per ``time_format`` (+ ``time_offset_column``
   milliseconds), event types are mapped through ``event_types``, prices are
   parsed only when they look numeric, a missing user id is replaced by
   ``user_fallback_prefix + <user_fallback_column>`` when configured (Diginetica:
   ``"s" + session_id``, so an anonymous session becomes its own pseudo-user).
3. :func:`classify`: the quarantine ``reason``, null for valid rows. Rules in
   order, the first failing rule wins:

   ============================  ===================================================
   reason                        rule
   ============================  ===================================================
   ``invalid_encoding``          not UTF-8, or a control character other than tab
                                 (binary data, UTF-16, Latin-1); the quarantine row
                                 keeps the exact bytes in ``raw_base64``
   ``bad_quoting``               CSV: an odd number of quote characters (escaped
                                 ones aside): a quoted field left open (each line
                                 of a field spanning lines), or a stray quote
   ``unparseable_line``          blank line, wrong column count, not a JSON object
   ``missing_required``          user_id or item_id missing (after the fallback)
   ``unparseable_time``          event_time missing or not parseable in its format
   ``before_min_time``           event_time < ``ingest.min_event_time``
   ``future_time``               event_time > now + ``ingest.max_future_skew_hours``
   ``unknown_event_type``        event type missing or not in ``event_types``
   ``invalid_price``             price present but not a finite number, or negative
   ============================  ===================================================

4. :func:`add_lineage`: ``event_id = sha2-256(source_format || 0x1f || raw)``
   (hex, over raw's bytes), ``quarantine_id = sha2-256(source_format || 0x1f ||
   raw || 0x1f || reason)``, ``event_date`` (UTC) and ``ingest_batch``. The same
   line in the same format always gets the same id, so exact duplicates
   collapse; lines that differ only in undecodable bytes keep distinct ids.
5. :func:`mark_outcomes`: against the keys already stored (bronze event ids,
   quarantine ids) and within the batch, each record becomes ``header``,
   ``accepted``, ``quarantined`` or ``duplicate``; :func:`bronze_rows`,
   :func:`quarantine_rows` and :func:`outcome_counts` read that off.
   :func:`input_counts` counts lines and records on the raw lines, for the job's
   check that every record lands in exactly one bucket.

Header lines (only for sources with ``options.header: "true"``) are lines whose
fields all equal the column names, anywhere in a file; they are counted, not
ingested. Times without a zone are UTC. Lines end at ``\\n``, ``\\r\\n`` or a lone
``\\r``. A quoted CSV field spanning lines is not joined: its first and last
lines are quarantined as ``bad_quoting`` (a middle line without quotes is judged
on its own); a JSON object spanning lines is quarantined line by line as
``unparseable_line``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shopseq.features.schema import EVENT_COLUMNS, EVENT_TYPES
from shopseq.features.params import ConfigError, IngestConfig, SourceConfig

log = logging.getLogger(__name__)

REASONS: tuple[str, ...] = (
    "invalid_encoding",
    "bad_quoting",
    "unparseable_line",
    "missing_required",
    "unparseable_time",
    "before_min_time",
    "future_time",
    "unknown_event_type",
    "invalid_price",
)
LINE_REASONS: tuple[str, ...] = REASONS[:3]  # decided on the line itself, before any field is read
OUTCOMES: tuple[str, ...] = ("header", "accepted", "quarantined", "duplicate")
CANONICAL_KEYS: tuple[str, ...] = ("user_id", "item_id", "event_time", "event_type", "category_id", "price", "brand", "source_session_id")
REQUIRED_KEYS: tuple[str, ...] = ("user_id", "item_id", "event_time", "event_type")
RECORD_COLUMNS: list[str] = ["raw", "input_file", "src", "line_problem", "is_header"]
NULL_LITERALS: tuple[str, ...] = ("null", "\\n")  # lower-cased: NULL / null / Null and \N (database dumps) are missing values

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("quarantine_id", T.StringType(), False),  # sha2 of (source_format, raw bytes, reason): the idempotence key
        T.StructField("raw", T.StringType(), False),  # the physical line (Parquet: the row as JSON of strings); invalid_encoding: undecodable bytes as U+FFFD
        T.StructField("raw_base64", T.StringType(), True),  # invalid_encoding only: the line's exact bytes, base64
        T.StructField("reason", T.StringType(), False),  # one of REASONS
        T.StructField("source_format", T.StringType(), False),
        T.StructField("input_file", T.StringType(), True),
        T.StructField("ingest_batch", T.StringType(), False),
        T.StructField("quarantined_at", T.TimestampType(), False),
    ]
)
QUARANTINE_COLUMNS: list[str] = [f.name for f in QUARANTINE_SCHEMA.fields]

_SEP = "\u001f"  # unit separator between hashed parts
_CORRUPT = "_corrupt_record"
_CONTROL = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]"  # C0 controls but tab (line ends never reach a line) and DEL: binary data, UTF-16
_NUMBER = r"^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?$"
_UNIX_S = r"^[+-]?[0-9]{1,11}([.][0-9]{1,6})?$"  # up to year ~5000; longer is unparseable, not an overflow
_UNIX_MS = r"^[+-]?[0-9]{1,14}([.][0-9]{1,3})?$"
_OFFSET_MS = r"^[0-9]{1,12}$"
_PARSER_KEYS = ("header", "mode", "multiLine", "inferSchema", "columnNameOfCorruptRecord")  # options the line reader decides itself


@dataclass(frozen=True)
class TimeBounds:
    """The accepted event-time window, both ends inclusive (UTC)."""

    min_time: datetime
    max_time: datetime


def parse_utc(value: str, key: str) -> datetime:
    """An ISO-8601 date or timestamp as an aware UTC datetime (naive = UTC); ConfigError names ``key``."""
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(f"'{key}' expects an ISO-8601 timestamp such as 2024-01-01T00:00:00, got {value!r}") from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def time_bounds(cfg: IngestConfig, wall_clock: datetime) -> TimeBounds:
    """``[min_event_time, now + max_future_skew_hours]``; now is ``cfg.now`` when set, else ``wall_clock``."""
    now = parse_utc(cfg.now, "ingest.now") if cfg.now else wall_clock.astimezone(timezone.utc)
    return TimeBounds(parse_utc(cfg.min_event_time, "ingest.min_event_time"), now + timedelta(hours=cfg.max_future_skew_hours))


def source_columns_needed(source: SourceConfig) -> list[str]:
    """The source columns the canonical mapping reads (mapping values, offset and fallback columns)."""
    cols = list(source.mapping.values()) + [c for c in (source.time_offset_column, source.user_fallback_column) if c]
    return list(dict.fromkeys(cols))


def _is_header_source(source: SourceConfig) -> bool:
    return str(source.options.get("header", "false")).strip().lower() == "true"


# --------------------------------------------------------------------------- 1. records


def decode_line(value: Column) -> tuple[Column, Column, Column]:
    """A physical line as read (``value``: Spark keeps the bytes, valid UTF-8 or not) -> ``(raw, text, bad_encoding)``.

    ``raw``: the bytes without a leading UTF-8 byte-order mark, as a string
    (still the exact bytes: ids hash them). ``bad_encoding``: not valid UTF-8
    (Spark's decode-encode round trip changes the bytes) or a control
    character. ``text``: ``raw`` with undecodable bytes as U+FFFD, safe to
    parse and to store.
    """
    data = value.cast("binary")
    body = F.when(data.substr(1, 3) == F.unhex(F.lit("EFBBBF")), data.substr(F.lit(4), F.length(data))).otherwise(data)
    raw = body.cast("string")
    round_trip = F.encode(raw, "UTF-8")
    not_utf8 = round_trip != body
    return raw, F.when(not_utf8, F.decode(round_trip, "UTF-8")).otherwise(raw), not_utf8 | raw.rlike(_CONTROL)


def _reader_options(source: SourceConfig) -> dict[str, str]:
    """The source's CSV/JSON options for ``from_csv``/``from_json``: PERMISSIVE with a corrupt-record column; CSV escape = quote (RFC 4180)."""
    opts = {k: str(v) for k, v in source.options.items() if k not in _PARSER_KEYS}
    if source.reader == "csv" and opts.get("quote", '"') and "escape" not in opts:
        opts["escape"] = opts.get("quote", '"')  # "" inside a quoted field is one quote (Spark's own default escape is \)
    opts.update(mode="PERMISSIVE", columnNameOfCorruptRecord=_CORRUPT)
    return opts


def _odd_quotes(text: Column, opts: dict[str, str]) -> Column:
    """True where the line holds an odd number of quote characters, escaped ones (``escape`` + any character) aside."""
    quote, escape = opts.get("quote", '"'), opts.get("escape", "")
    if not quote:
        return F.lit(False)  # quoting turned off
    unescaped = text if escape in ("", quote) else F.regexp_replace(text, "(?s)\\Q" + escape + "\\E.", "")
    count = F.length(unescaped) - F.length(F.regexp_replace(unescaped, "\\Q" + quote + "\\E", ""))
    return F.when(F.instr(text, quote) > 0, count % 2 == 1).otherwise(F.lit(False))


def _json_path(struct: Column, column: str) -> Column:
    """``column`` of a parsed JSON object: a top-level key, or ``a.b.c`` = key ``b.c`` inside the object under ``a``."""
    top, _, rest = column.partition(".")
    value = struct.getField(top)
    return F.get_json_object(value, "$" + "".join(f"['{k}']" for k in rest.split("."))) if rest else value


def _json_schema(columns: list[str], explode: str | None) -> T.StructType:
    """Top-level keys as strings (nested objects arrive as their JSON text), ``explode`` as an array of JSON texts."""
    tops = [c for c in dict.fromkeys(col.partition(".")[0] for col in columns) if c != explode]
    fields = [T.StructField(c, T.StringType()) for c in tops]
    if explode:
        fields.append(T.StructField(explode, T.ArrayType(T.StringType())))
    return T.StructType(fields + [T.StructField(_CORRUPT, T.StringType())])


def _columns_of(source: SourceConfig) -> list[str]:
    columns = list(source.columns) or (source_columns_needed(source) if source.reader == "json" else [])
    if not columns:
        raise ConfigError("'source.columns' is required for a CSV source without a header")
    return columns


def _csv_records(lines: DataFrame, source: SourceConfig, raw: Column, text: Column, bad_encoding: Column) -> DataFrame:
    columns = _columns_of(source)
    opts = _reader_options(source)
    schema = T.StructType([T.StructField(c, T.StringType()) for c in columns] + [T.StructField(_CORRUPT, T.StringType())])
    ddl = ", ".join(f"`{f.name.replace('`', '``')}` STRING" for f in schema.fields)  # quoted: any column name
    parsed = F.from_csv(text, F.lit(ddl), opts)
    malformed = (F.trim(text) == "") | parsed.isNull() | parsed.getField(_CORRUPT).isNotNull()
    problem = F.when(bad_encoding, F.lit("invalid_encoding")).when(_odd_quotes(text, opts), F.lit("bad_quoting")).when(malformed, F.lit("unparseable_line"))
    if _is_header_source(source):
        header = F.lit(True)
        for c in columns:
            header = header & (F.lower(F.trim(parsed.getField(c))) == c.lower())
        header = F.coalesce(header & problem.isNull(), F.lit(False))
    else:
        header = F.lit(False)
    return lines.select(
        raw.alias("raw"),
        _input_file(lines),
        F.struct(*[parsed.getField(c).alias(c) for c in columns]).alias("src"),
        problem.alias("line_problem"),
        header.alias("is_header"),
    )


def _json_parsed(text: Column, bad_encoding: Column, source: SourceConfig) -> tuple[Column, Column]:
    """``(parsed line, line problem)`` of a JSON line; ``parsed`` is null where the line has a problem."""
    parsed = F.from_json(text, _json_schema(_columns_of(source), source.explode), _reader_options(source))
    malformed = (F.trim(text) == "") | parsed.isNull() | parsed.getField(_CORRUPT).isNotNull()
    problem = F.when(bad_encoding, F.lit("invalid_encoding")).when(malformed, F.lit("unparseable_line"))
    return F.when(problem.isNull(), parsed), problem


def _json_records(lines: DataFrame, source: SourceConfig, raw: Column, text: Column, bad_encoding: Column) -> DataFrame:
    columns = _columns_of(source)
    parsed, problem = _json_parsed(text, bad_encoding, source)
    if not source.explode:
        return lines.select(
            raw.alias("raw"),
            _input_file(lines),
            F.struct(*[_json_path(parsed, c).alias(c) for c in columns]).alias("src"),
            problem.alias("line_problem"),
            F.lit(False).alias("is_header"),
        )
    # One record per element of the array (one for a line without elements, so that every line is accounted for).
    exploded = lines.select(raw.alias("_line"), _input_file(lines), parsed.alias("_top"), problem.alias("_problem")).select(
        "*", F.explode_outer(F.col("_top").getField(source.explode)).alias("_elem")
    )
    element = F.from_json(F.col("_elem"), _json_schema(columns, None), _reader_options(source))
    bad_element = F.col("_elem").isNotNull() & (element.isNull() | element.getField(_CORRUPT).isNotNull())
    src = F.struct(*[F.coalesce(_json_path(element, c), _json_path(F.col("_top"), c)).alias(c) for c in columns])
    # raw: the element's columns as JSON; a bad element as the line's other columns with the element's text; no element: the line.
    tops = [f.name for f in _json_schema(columns, source.explode).fields if f.name not in (source.explode, _CORRUPT)]
    as_found = F.struct(*[F.col("_top").getField(c).alias(c) for c in tops], F.col("_elem").alias(source.explode))
    raw = (
        F.when(F.col("_elem").isNull(), F.col("_line"))
        .when(bad_element, F.to_json(as_found, {"ignoreNullFields": "true"}))  # only the keys the line has
        .otherwise(F.to_json(src, {"ignoreNullFields": "false"}))
    )
    return exploded.select(
        raw.alias("raw"),
        "input_file",
        src.alias("src"),
        F.coalesce(F.col("_problem"), F.when(bad_element, F.lit("unparseable_line"))).alias("line_problem"),
        F.lit(False).alias("is_header"),
    )


def lines_to_records(lines: DataFrame, source: SourceConfig) -> DataFrame:
    """Split physical lines into source fields (CSV via ``from_csv``, JSON lines via ``from_json``).

    Needs: ``value`` (one physical line), ``input_file`` (optional; null when
    absent). Returns: :data:`RECORD_COLUMNS`. CSV needs ``source.columns``;
    JSON defaults to the columns the mapping reads. A JSON source with
    ``source.explode`` yields one record per element of that array.
    """
    raw, text, bad_encoding = decode_line(F.col("value"))
    if source.reader == "json":
        return _json_records(lines, source, raw, text, bad_encoding)
    return _csv_records(lines, source, raw, text, bad_encoding)


def rows_to_records(rows: DataFrame, source: SourceConfig) -> DataFrame:
    """Typed rows (Parquet) as records: every value cast to string, ``raw`` = those strings as JSON.

    Needs: ``source.columns`` (or, when empty, all columns but ``input_file``,
    sorted by name so the identity does not depend on file column order),
    ``input_file`` (optional). Returns: :data:`RECORD_COLUMNS`.
    """
    cols = list(source.columns) or sorted(c for c in rows.columns if c != "input_file")
    strings = F.struct(*[F.col(c).cast("string").alias(c) for c in cols])
    return rows.select(
        F.to_json(strings, {"ignoreNullFields": "false"}).alias("raw"),
        _input_file(rows),
        strings.alias("src"),
        F.lit(None).cast("string").alias("line_problem"),
        F.lit(False).alias("is_header"),
    )


def _input_file(df: DataFrame) -> Column:
    return (F.col("input_file") if "input_file" in df.columns else F.lit(None)).cast("string").alias("input_file")


def to_records(raw: DataFrame, source: SourceConfig) -> DataFrame:
    """:func:`rows_to_records` for Parquet sources, :func:`lines_to_records` for CSV and JSON lines."""
    return rows_to_records(raw, source) if source.reader == "parquet" else lines_to_records(raw, source)


def input_counts(raw: DataFrame, source: SourceConfig) -> DataFrame:
    """One row: ``lines`` (physical lines or Parquet rows) and ``records`` (what :func:`to_records` yields from them).

    Needs: ``value`` (lines) or the Parquet columns. ``records`` equals
    ``lines`` except for a JSON source with ``source.explode``: there a line
    yields one record per array element, and one when it has none.
    """
    per_line = F.lit(1)
    if source.reader == "json" and source.explode:
        _, text, bad_encoding = decode_line(F.col("value"))
        parsed, _ = _json_parsed(text, bad_encoding, source)
        per_line = F.greatest(F.lit(1), F.coalesce(F.size(parsed.getField(source.explode)), F.lit(0)))
    return raw.agg(F.count(F.lit(1)).alias("lines"), F.coalesce(F.sum(per_line), F.lit(0)).cast("long").alias("records"))


# --------------------------------------------------------------------------- 2. canonical columns


def _clean(value: Column, source: SourceConfig) -> Column:
    """Trimmed; empty, ``null`` (any case), ``\\N`` and ``source.null_values`` -> null."""
    v = F.trim(value)
    missing = (v == "") | F.lower(v).isin(*NULL_LITERALS)
    if source.null_values:
        missing = missing | v.isin(*source.null_values)
    return F.when(~missing, v)


def _source_value(source: SourceConfig, key: str) -> Column:
    """The cleaned source string feeding canonical ``key`` (a constant, a mapped column, or null)."""
    if key in source.constants:
        return F.lit(source.constants[key]).cast("string")
    if key in source.mapping:
        return _clean(F.col("src").getField(source.mapping[key]), source)
    return F.lit(None).cast("string")


def parse_time(value: Column, source: SourceConfig) -> Column:
    """``value`` (a trimmed string) -> UTC timestamp per ``source.time_format``; null when it does not parse."""
    if source.time_format == "unix_s":
        micros = (value.cast("decimal(18,6)") * F.lit(1_000_000)).cast("long")
        return F.when(value.rlike(_UNIX_S), F.timestamp_micros(micros))
    if source.time_format == "unix_ms":
        micros = (value.cast("decimal(18,3)") * F.lit(1_000)).cast("long")
        return F.when(value.rlike(_UNIX_MS), F.timestamp_micros(micros))
    if source.time_format == "string":
        # try_to_timestamp: a non-matching value is null (under ANSI too); needs timeParserPolicy CORRECTED (jobs/stages/ingest.py).
        return F.try_to_timestamp(value, F.lit(source.time_pattern))
    return F.try_to_timestamp(value)


def _map_event_type(value: Column, source: SourceConfig) -> Column:
    mapping = source.event_types or {t: t for t in EVENT_TYPES}
    out: Column | None = None
    for src_value, canonical in mapping.items():
        out = (F.when if out is None else out.when)(value == src_value, F.lit(canonical))
    return out if out is not None else F.lit(None).cast("string")


def to_canonical(records: DataFrame, source: SourceConfig) -> DataFrame:
    """Map source fields to the canonical event columns (still unvalidated).

    Needs: :data:`RECORD_COLUMNS`. Adds: user_id, item_id, event_time (null
    when unparseable), event_type (null when unmapped), category_id, price
    (null when absent or not numeric), brand, source_session_id, and the
    helpers ``_time_raw``, ``_price_raw``. Drops ``src``.
    """
    user = _source_value(source, "user_id")
    if source.user_fallback_column:
        fallback = _clean(F.col("src").getField(source.user_fallback_column), source)
        user = F.coalesce(user, F.concat(F.lit(source.user_fallback_prefix), fallback))
    time_raw = _source_value(source, "event_time")
    event_time = parse_time(time_raw, source)
    if source.time_offset_column:
        offset = _clean(F.col("src").getField(source.time_offset_column), source)
        shifted = F.timestamp_micros(F.unix_micros(event_time) + offset.cast("long") * F.lit(1000))
        event_time = F.when(offset.rlike(_OFFSET_MS), shifted)
    price_raw = _source_value(source, "price")
    return records.select(
        "raw",
        "input_file",
        "line_problem",
        "is_header",
        user.alias("user_id"),
        _source_value(source, "item_id").alias("item_id"),
        event_time.alias("event_time"),
        _map_event_type(_source_value(source, "event_type"), source).alias("event_type"),
        _source_value(source, "category_id").alias("category_id"),
        F.when(price_raw.rlike(_NUMBER), price_raw.cast("double")).alias("price"),
        _source_value(source, "brand").alias("brand"),
        _source_value(source, "source_session_id").alias("source_session_id"),
        time_raw.alias("_time_raw"),
        price_raw.alias("_price_raw"),
    )


# --------------------------------------------------------------------------- 3. validation


def _ts(dt: datetime) -> Column:
    """A UTC timestamp literal independent of the session time zone."""
    micros = int((dt - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1))
    return F.timestamp_micros(F.lit(micros))


def classify(events: DataFrame, bounds: TimeBounds) -> DataFrame:
    """Add ``reason``: the first failing rule of :data:`REASONS`, or null for a valid event.

    Needs: the :func:`to_canonical` columns. Adds: reason. Drops the helpers.
    """
    price_bad = F.col("_price_raw").isNotNull() & (
        F.col("price").isNull() | F.isnan("price") | (F.abs("price") == float("inf")) | (F.col("price") < 0)
    )
    reason = (
        F.when(F.col("line_problem").isNotNull(), F.col("line_problem"))
        .when(F.col("user_id").isNull() | F.col("item_id").isNull(), F.lit("missing_required"))
        .when(F.col("event_time").isNull(), F.lit("unparseable_time"))
        .when(F.col("event_time") < _ts(bounds.min_time), F.lit("before_min_time"))
        .when(F.col("event_time") > _ts(bounds.max_time), F.lit("future_time"))
        .when(F.col("event_type").isNull(), F.lit("unknown_event_type"))
        .when(price_bad, F.lit("invalid_price"))
    )
    return events.withColumn("reason", F.when(~F.col("is_header"), reason)).drop("_time_raw", "_price_raw", "line_problem")


# --------------------------------------------------------------------------- 4. ids and lineage


def add_lineage(events: DataFrame, source_format: str, ingest_batch: str) -> DataFrame:
    """Add the deterministic ids and lineage columns.

    Needs: raw, reason, event_time. Adds: source_format, event_id (sha2-256 hex
    of format and raw line), quarantine_id (the same plus the reason; null for
    valid rows), event_date (UTC date of event_time, whatever the session time
    zone), ingest_batch, and ``_key``
    (event_id for valid rows, quarantine_id for quarantined ones).
    """
    fmt = F.lit(source_format)
    event_id = F.sha2(F.concat_ws(_SEP, fmt, F.col("raw")), 256)
    quarantine_id = F.when(F.col("reason").isNotNull(), F.sha2(F.concat_ws(_SEP, fmt, F.col("raw"), F.col("reason")), 256))
    return (
        events.withColumn("source_format", fmt)
        .withColumn("event_id", event_id)
        .withColumn("quarantine_id", quarantine_id)
        .withColumn("event_date", F.date_from_unix_date(F.floor(F.unix_micros("event_time") / F.lit(86_400_000_000)).cast("int")))
        .withColumn("ingest_batch", F.lit(ingest_batch))
        .withColumn("_key", F.coalesce("quarantine_id", "event_id"))
    )


def classify_raw(raw: DataFrame, source: SourceConfig, bounds: TimeBounds, ingest_batch: str) -> DataFrame:
    """Steps 1-4 in one chain: raw reader output -> canonical, classified, keyed records."""
    return (
        raw.transform(to_records, source)
        .transform(to_canonical, source)
        .transform(classify, bounds)
        .transform(add_lineage, source.format, ingest_batch)
    )


# --------------------------------------------------------------------------- 5. outcomes


def mark_outcomes(events: DataFrame, existing_keys: DataFrame) -> DataFrame:
    """Add ``outcome``: header, accepted, quarantined, or duplicate.

    Needs: ``_key``, reason, is_header, input_file (from :func:`add_lineage`);
    ``existing_keys`` has one column ``_key`` (bronze event ids and quarantine
    ids already stored). A record is a duplicate when its key is stored, or
    when an earlier record of the batch (by input_file) has the same key.
    Adds: outcome.
    """
    seen = existing_keys.select("_key").distinct().withColumn("_seen", F.lit(True))
    first = Window.partitionBy("_key").orderBy(F.col("input_file").asc_nulls_first())
    keyed = events.join(seen, "_key", "left").withColumn("_rank", F.row_number().over(first))
    outcome = (
        F.when(F.col("is_header"), F.lit("header"))
        .when(F.col("_seen").isNotNull() | (F.col("_rank") > 1), F.lit("duplicate"))
        .when(F.col("reason").isNull(), F.lit("accepted"))
        .otherwise(F.lit("quarantined"))
    )
    return keyed.withColumn("outcome", outcome).drop("_seen", "_rank")


def bronze_rows(marked: DataFrame) -> DataFrame:
    """The accepted events in :data:`shopseq.features.schema.EVENT_COLUMNS`. Needs: outcome + the event columns."""
    return marked.where(F.col("outcome") == "accepted").select(*EVENT_COLUMNS)


def quarantine_rows(marked: DataFrame, quarantined_at: datetime) -> DataFrame:
    """The newly quarantined records in :data:`QUARANTINE_COLUMNS`. Needs: outcome, quarantine_id, raw, reason, source_format, input_file, ingest_batch.

    An ``invalid_encoding`` line is stored as text with its undecodable bytes
    as U+FFFD (``raw``) and byte for byte in ``raw_base64``.
    """
    undecodable = F.col("reason") == "invalid_encoding"
    return marked.where(F.col("outcome") == "quarantined").select(
        "quarantine_id",
        F.when(undecodable, F.decode(F.encode("raw", "UTF-8"), "UTF-8")).otherwise(F.col("raw")).alias("raw"),
        F.when(undecodable, F.base64(F.col("raw").cast("binary"))).alias("raw_base64"),
        "reason",
        "source_format",
        "input_file",
        "ingest_batch",
        _ts(quarantined_at).alias("quarantined_at"),
    )


def outcome_counts(marked: DataFrame) -> DataFrame:
    """Rows per (outcome, reason): a handful of rows. Needs: outcome, reason. Returns: outcome, reason, n."""
    return marked.groupBy("outcome", "reason").agg(F.count(F.lit(1)).alias("n"))


# --------------------------------------------------------------------------- without tables


def to_bronze(raw: DataFrame, ingest: IngestConfig, source: SourceConfig, ingest_batch: str = "adhoc", wall_clock: datetime | None = None) -> DataFrame:
    """Raw reader output -> valid events in bronze columns, deduplicated within the input (no table look-ups).

    For callers without tables (the benchmark): ``source`` is the resolved
    source (:func:`shopseq.jobs.sources.resolve_source`), e.g. the ``generated`` preset
    with ``raw`` the generator's Parquet rows. Needs: the source's columns.
    Returns: EVENT_COLUMNS.
    """
    bounds = time_bounds(ingest, wall_clock or datetime.now(timezone.utc))
    events = raw.transform(classify_raw, source, bounds, ingest_batch)
    return events.where(F.col("reason").isNull() & ~F.col("is_header")).dropDuplicates(["event_id"]).select(*EVENT_COLUMNS)
