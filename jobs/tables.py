"""Table I/O: the only code in shopseq that reads or writes tables.

A table is named by a logical name (``silver_events``) that config resolves to a
:class:`TableRef`: a path (local disk, cloud storage) or a catalog name
(``catalog.schema.table``, Unity Catalog style). Two backends sit behind the
same :class:`TableIO` methods:

* **delta-spark**, when the session has the Delta extension (clusters,
  Databricks) or config forces it: plain ``format("delta")`` reads and writes.
* **delta-rs** (``deltalake``), the embedded engine for local mode and CI where
  delta-spark's JARs cannot load: Spark writes Parquet into a fresh folder
  inside the table root, and the driver commits those files to ``_delta_log``
  in one transaction. A failure before the commit leaves the table exactly as
  it was (the staged folder is removed; a crash can only leave orphan files
  that ``VACUUM`` removes).

Tables written by delta-rs stay readable by delta-spark/Databricks: protocol
(1,2), UTC ``timestamp`` (never ``timestamp_ntz``), no delta-rs checkpoints, and
per-file statistics from the Parquet footers. On the delta-rs path, tables
with deletion vectors or column mapping are refused (a raw Parquet read would
return deleted rows or wrong column names).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import Config, TablesConfig

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAGING_PREFIX = "_shopseq_staging"  # "_"-prefixed: ignored by Delta and Spark readers


class TableError(RuntimeError):
    """A table operation that cannot be done, with the reason in one sentence."""


@dataclass(frozen=True)
class TableRef:
    """Where a logical table lives: a path/URI, or a ``catalog.schema.table`` name."""

    name: str
    location: str
    is_catalog: bool = False

    def __str__(self) -> str:
        return self.location


@dataclass(frozen=True)
class Commit:
    """What a write did: the table version it produced (or found, when skipped)."""

    table: str
    version: int
    operation: str
    num_files: int | None = None
    num_rows: int | None = None
    skipped: bool = False


def table_ref(cfg: TablesConfig, name: str, data_root: str) -> TableRef:
    """Resolve a logical table name from config.

    ``tables.locations[name]`` wins (a path, or a three-part catalog name); else
    ``tables.catalog``/``tables.schema`` give ``catalog.schema.name``; else
    ``<tables.root or data_root/tables>/name`` as an absolute path.
    """
    loc = cfg.locations.get(name)
    if loc:
        is_catalog = "/" not in loc and ":" not in loc and loc.count(".") == 2
        return TableRef(name, loc if is_catalog or "://" in loc else os.path.abspath(loc), is_catalog)
    if cfg.catalog and cfg.schema:
        return TableRef(name, f"{cfg.catalog}.{cfg.schema}.{name}", True)
    root = cfg.root or os.path.join(data_root, "tables")
    location = f"{root.rstrip('/')}/{name}" if "://" in root else os.path.abspath(os.path.join(root, name))
    return TableRef(name, location, False)


class TableIO:
    """Read and write the project's tables on whichever Delta backend runs.

    >>> io = TableIO(spark, cfg)
    >>> io.append("bronze_events", df, partition_by=["event_date"]).version
    """

    def __init__(self, spark: SparkSession, cfg: Config) -> None:
        self.spark = spark
        self.cfg = cfg
        self.backend = resolve_backend(spark, cfg.tables)
        self._impl: _DeltaSpark | _DeltaRs = _DeltaSpark(spark) if self.backend == "delta-spark" else _DeltaRs(spark)
        log.debug("table backend: %s", self.backend)

    def ref(self, name: str | TableRef) -> TableRef:
        """The :class:`TableRef` for a logical name (a ref passes through)."""
        if isinstance(name, TableRef):
            return name
        return table_ref(self.cfg.tables, name, self.cfg.app.data_root)

    # ------------------------------------------------------------------ reads
    def exists(self, name: str | TableRef) -> bool:
        """Whether the table exists (has a Delta log / is in the catalog)."""
        return self._impl.exists(self.ref(name))

    def version(self, name: str | TableRef) -> int | None:
        """The latest version, or None when the table does not exist."""
        ref = self.ref(name)
        return self._impl.version(ref) if self._impl.exists(ref) else None

    def read(self, name: str | TableRef, version: int | None = None, timestamp: datetime | str | None = None) -> DataFrame:
        """The table at its latest version, at ``version``, or as of ``timestamp`` (UTC)."""
        if version is not None and timestamp is not None:
            raise TableError("read: give a version or a timestamp, not both")
        ref = self.ref(name)
        if not self._impl.exists(ref):
            raise TableError(f"table {ref.name!r} does not exist at {ref.location}")
        return self._impl.read(ref, version, timestamp)

    def files(self, name: str | TableRef, version: int | None = None) -> list[str]:
        """URIs of the Parquet files of the table's snapshot (latest or ``version``).

        For readers outside Spark (Petastorm, DuckDB): they must see exactly the
        files of one snapshot, never a directory listing that includes orphans.
        Partition values are not inside the files, so feed such readers
        unpartitioned tables.
        """
        ref = self.ref(name)
        if not self._impl.exists(ref):
            raise TableError(f"table {ref.name!r} does not exist at {ref.location}")
        return self._impl.files(ref, version)

    def history(self, name: str | TableRef) -> list[dict[str, Any]]:
        """Commits newest first: ``version``, ``timestamp`` (UTC datetime), ``operation``, ``metadata``."""
        return self._impl.history(self.ref(name))

    def transaction_version(self, name: str | TableRef, app_id: str) -> int | None:
        """The last batch version committed by ``app_id`` (idempotent writes), or None."""
        ref = self.ref(name)
        return self._impl.transaction_version(ref, app_id) if self._impl.exists(ref) else None

    # ------------------------------------------------------------------ writes
    def append(self, name: str | TableRef, df: DataFrame, partition_by: Sequence[str] = (), metadata: dict[str, Any] | None = None) -> Commit:
        """Append ``df`` in one commit."""
        return self._impl.write(self.ref(name), df, "append", list(partition_by), metadata, None)

    def overwrite(self, name: str | TableRef, df: DataFrame, partition_by: Sequence[str] = (), metadata: dict[str, Any] | None = None) -> Commit:
        """Replace the whole table with ``df`` in one commit (history is kept)."""
        return self._impl.write(self.ref(name), df, "overwrite", list(partition_by), metadata, None)

    def overwrite_partitions(self, name: str | TableRef, df: DataFrame, partition_by: Sequence[str], metadata: dict[str, Any] | None = None) -> Commit:
        """Replace only the partitions present in ``df``; all others stay untouched."""
        if not partition_by:
            raise TableError("overwrite_partitions needs partition columns")
        return self._impl.write(self.ref(name), df, "overwrite_partitions", list(partition_by), metadata, None)

    def write_batch(
        self,
        name: str | TableRef,
        df: DataFrame,
        app_id: str,
        batch_version: int,
        mode: Literal["append", "overwrite", "overwrite_partitions"] = "append",
        partition_by: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
    ) -> Commit:
        """Idempotent write keyed by (``app_id``, ``batch_version``), as Delta's txnAppId/txnVersion.

        If the table already records ``batch_version`` (or a later one) for
        ``app_id``, nothing is written and the returned commit has ``skipped``.
        """
        ref = self.ref(name)
        done = self.transaction_version(ref, app_id)
        if done is not None and done >= batch_version:
            log.info("%s: batch %s/%d already committed; skipping", ref.name, app_id, batch_version)
            return Commit(ref.name, self._impl.version(ref), "WRITE", 0, 0, skipped=True)
        return self._impl.write(ref, df, mode, list(partition_by), metadata, (app_id, batch_version))

    def upsert(self, name: str | TableRef, df: DataFrame, keys: Sequence[str], partition_by: Sequence[str] = (), metadata: dict[str, Any] | None = None) -> Commit:
        """Merge ``df`` into the table by ``keys``: matched rows updated, new rows inserted.

        On delta-rs the merge runs on the driver (Arrow), which suits small
        tables such as latest-per-user predictions and vocabularies.
        """
        bad = [k for k in keys if not _IDENT.match(k)]
        if not keys or bad:
            raise TableError(f"upsert keys must be plain column names, got {list(keys)!r}")
        ref = self.ref(name)
        if not self._impl.exists(ref):
            return self._impl.write(ref, df, "append", list(partition_by), metadata, None)
        return self._impl.upsert(ref, df, list(keys), metadata)


def resolve_backend(spark: SparkSession, cfg: TablesConfig) -> str:
    """``delta-spark`` when forced or when the session has Delta (extension or Databricks); else ``delta-rs``."""
    if cfg.backend != "auto":
        return cfg.backend
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    on_databricks = "DATABRICKS_RUNTIME_VERSION" in os.environ
    return "delta-spark" if on_databricks or DELTA_EXTENSION in extensions else "delta-rs"


# ============================================================================ delta-spark


class _DeltaSpark:
    """Native Delta through the session (clusters, Databricks)."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _table(self, ref: TableRef) -> Any:
        from delta.tables import DeltaTable  # delta-spark, present where this backend runs

        return DeltaTable.forName(self.spark, ref.location) if ref.is_catalog else DeltaTable.forPath(self.spark, ref.location)

    def exists(self, ref: TableRef) -> bool:
        if ref.is_catalog:
            return bool(self.spark.catalog.tableExists(ref.location))
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, ref.location))

    def version(self, ref: TableRef) -> int:
        return int(self._table(ref).history(1).select("version").head()[0])

    def read(self, ref: TableRef, version: int | None, timestamp: datetime | str | None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if timestamp is not None:
            reader = reader.option("timestampAsOf", _ts_string(timestamp))
        return reader.table(ref.location) if ref.is_catalog else reader.load(ref.location)

    def files(self, ref: TableRef, version: int | None) -> list[str]:
        return sorted(self.read(ref, version, None).inputFiles())

    def history(self, ref: TableRef) -> list[dict[str, Any]]:
        rows = self._table(ref).history().select("version", "timestamp", "operation", "userMetadata", "operationMetrics").collect()
        return [
            {
                "version": int(r["version"]),
                "timestamp": r["timestamp"].replace(tzinfo=timezone.utc) if r["timestamp"].tzinfo is None else r["timestamp"],
                "operation": r["operation"],
                "metadata": json.loads(r["userMetadata"]) if r["userMetadata"] else {},
                "metrics": dict(r["operationMetrics"] or {}),
            }
            for r in rows
        ]

    def transaction_version(self, ref: TableRef, app_id: str) -> int | None:
        # Delta records txn actions in the log; delta-spark exposes them only via the snapshot.
        # Reading the log's txn actions through Spark SQL keeps this backend-native.
        path = ref.location if not ref.is_catalog else self.spark.sql(f"DESCRIBE DETAIL {_quote_name(ref.location)}").head()["location"]
        try:
            log_df = self.spark.read.json(f"{path.rstrip('/')}/_delta_log/*.json")
        except Exception:  # noqa: BLE001 - no JSON commits readable
            return None
        if "txn" not in log_df.columns:
            return None
        row = log_df.where(F.col("txn.appId") == app_id).agg(F.max("txn.version")).head()
        return int(row[0]) if row and row[0] is not None else None

    def write(self, ref: TableRef, df: DataFrame, mode: str, partition_by: list[str], metadata: dict[str, Any] | None, txn: tuple[str, int] | None) -> Commit:
        writer = df.write.format("delta").mode("append" if mode == "append" else "overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if mode == "overwrite_partitions":
            writer = writer.option("partitionOverwriteMode", "dynamic")
        if metadata:
            writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True, default=str))
        if txn:
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
        if ref.is_catalog:
            writer.saveAsTable(ref.location)
        else:
            writer.save(ref.location)
        last = self.history(ref)[0]
        metrics = last.get("metrics", {})
        rows = metrics.get("numOutputRows")
        files = metrics.get("numFiles") or metrics.get("numAddedFiles")
        return Commit(ref.name, last["version"], last["operation"], int(files) if files else None, int(rows) if rows else None)

    def upsert(self, ref: TableRef, df: DataFrame, keys: list[str], metadata: dict[str, Any] | None) -> Commit:
        cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        self._table(ref).alias("t").merge(df.alias("s"), cond).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
        last = self.history(ref)[0]
        return Commit(ref.name, last["version"], last["operation"])


def _quote_name(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


# ============================================================================ delta-rs


class _DeltaRs:
    """Spark computes and writes Parquet; delta-rs owns the Delta log."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _path(ref: TableRef) -> str:
        if ref.is_catalog:
            raise TableError(
                f"table {ref.location!r} is a catalog name; catalog tables need delta-spark "
                "(Databricks or a cluster with Delta). Locally, address tables by path (tables.root)."
            )
        parsed = urlparse(ref.location)
        if parsed.scheme not in ("", "file"):
            raise TableError(f"{ref.location}: the delta-rs backend handles local paths only; use delta-spark for {parsed.scheme}://")
        return unquote(parsed.path) if parsed.scheme == "file" else ref.location

    def _open(self, ref: TableRef, version: int | None = None) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        try:
            return DeltaTable(self._path(ref), version=version)
        except DeltaError as exc:
            raise TableError(f"{ref.location}: cannot open the Delta table{'' if version is None else f' at version {version}'}: {exc}") from exc

    def exists(self, ref: TableRef) -> bool:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(self._path(ref)))

    def version(self, ref: TableRef) -> int:
        return int(self._open(ref).version())

    def transaction_version(self, ref: TableRef, app_id: str) -> int | None:
        return self._open(ref).transaction_version(app_id)

    def history(self, ref: TableRef) -> list[dict[str, Any]]:
        out = []
        for entry in self._open(ref).history():
            meta = {k: v for k, v in entry.items() if k not in _HISTORY_KEYS}
            out.append(
                {
                    "version": int(entry["version"]),
                    "timestamp": datetime.fromtimestamp(entry["timestamp"] / 1000, tz=timezone.utc),
                    "operation": entry.get("operation"),
                    "metadata": meta.get("shopseq", meta),
                    "metrics": entry.get("operationMetrics", {}),
                }
            )
        return sorted(out, key=lambda e: -e["version"])

    @staticmethod
    def refuse_unsupported(dt: Any, location: str) -> None:
        """Refuse tables a plain Parquet read would get wrong."""
        proto = dt.protocol()
        features = set(proto.reader_features or []) | set(proto.writer_features or [])
        conf = dt.metadata().configuration or {}
        if "deletionVectors" in features or conf.get("delta.enableDeletionVectors", "false").lower() == "true":
            raise TableError(
                f"{location}: the table uses deletion vectors, which the local delta-rs reader cannot apply; "
                "read it with delta-spark, or run REORG TABLE ... APPLY (PURGE) and disable deletion vectors"
            )
        if "columnMapping" in features or conf.get("delta.columnMapping.mode", "none") != "none":
            raise TableError(
                f"{location}: the table uses column mapping, which the local delta-rs reader does not support; read it with delta-spark"
            )

    # ----------------------------------------------------------------- reads
    def files(self, ref: TableRef, version: int | None) -> list[str]:
        path = self._path(ref)
        dt = self._open(ref, version)
        self.refuse_unsupported(dt, path)
        return ["file://" + os.path.join(path, unquote(f["path"])) for f in _add_action_rows(dt)]

    def read(self, ref: TableRef, version: int | None, timestamp: datetime | str | None) -> DataFrame:
        path = self._path(ref)
        dt = self._open(ref, version)
        if timestamp is not None:
            dt.load_as_version(_as_utc(timestamp))
        self.refuse_unsupported(dt, path)
        schema = T.StructType.fromJson(json.loads(dt.schema().to_json()))
        part_cols = list(dt.metadata().partition_columns)
        files = _add_action_rows(dt)
        data_schema = T.StructType([f for f in schema.fields if f.name not in part_cols])
        if not files:
            return self.spark.createDataFrame([], schema)
        uris = [os.path.join(path, unquote(f["path"])) for f in files]
        df = self.spark.read.schema(data_schema).parquet(*uris)
        if not part_cols:
            return df
        # Partition values live in the log, not in the files: join them back by file.
        lookup = self.spark.createDataFrame(
            [(_norm_file(u), *[f["partition"].get(c) for c in part_cols]) for u, f in zip(uris, files)],
            T.StructType([T.StructField("_shopseq_file", T.StringType())] + [T.StructField(c, T.StringType()) for c in part_cols]),
        )
        df = df.withColumn("_shopseq_file", _spark_norm_file(F.col("_metadata.file_path")))
        joined = df.join(F.broadcast(lookup), "_shopseq_file", "inner")
        return joined.select(*[F.col(f.name).cast(f.dataType).alias(f.name) if f.name in part_cols else F.col(f.name) for f in schema.fields])

    # ----------------------------------------------------------------- writes
    def write(self, ref: TableRef, df: DataFrame, mode: str, partition_by: list[str], metadata: dict[str, Any] | None, txn: tuple[str, int] | None) -> Commit:
        from deltalake import Schema
        from deltalake.transaction import CommitProperties, PostCommitHookProperties, Transaction, create_table_with_add_actions

        path = self._path(ref)
        for col in partition_by:
            if col not in df.columns:
                raise TableError(f"{ref.name}: partition column {col!r} is not in the data ({', '.join(df.columns)})")
        exists = self.exists(ref)
        table_schema: T.StructType | None = None
        if exists:
            dt = self._open(ref)
            self.refuse_unsupported(dt, path)
            table_parts = list(dt.metadata().partition_columns)
            if mode != "overwrite" and table_parts != partition_by:
                raise TableError(f"{ref.name}: table is partitioned by {table_parts}, the write by {partition_by}")
            if mode != "overwrite":
                table_schema = T.StructType.fromJson(json.loads(dt.schema().to_json()))
        staging = f"{_STAGING_PREFIX}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        staging_dir = os.path.join(path, staging)
        writer = df.write.mode("error")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(staging_dir)
        try:
            actions = _add_actions(path, staging, partition_by, df.schema)
            if table_schema is not None:
                _check_compatible(ref.name, table_schema, df.schema)  # after staging: a refused write leaves no trace
            schema = Schema.from_json(_delta_schema_json(_nullable(table_schema or df.schema)))
            props = CommitProperties(
                custom_metadata={"shopseq": metadata or {}, "engineInfo.shopseq": "spark+delta-rs"} if metadata else None,
                app_transactions=[Transaction(app_id=txn[0], version=txn[1], last_updated=int(time.time() * 1000))] if txn else None,
            )
            # No delta-rs checkpoints on shared tables: some readers (Photon, Fabric) have failed on them.
            hooks = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)
            if not exists:
                create_table_with_add_actions(
                    path, schema, actions, mode="error", partition_by=partition_by or None, commit_properties=props, post_commithook_properties=hooks
                )
            else:
                filters = None
                if mode == "overwrite_partitions":
                    filters = _partition_filters(ref.name, partition_by, [a.partition_values for a in actions])
                self._open(ref).create_write_transaction(
                    actions,
                    mode="append" if mode == "append" else "overwrite",
                    schema=schema,
                    partition_by=partition_by or None,
                    partition_filters=filters,
                    commit_properties=props,
                    post_commithook_properties=hooks,
                )
        except BaseException:
            shutil.rmtree(staging_dir, ignore_errors=True)  # nothing was committed: leave no trace
            raise
        rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
        last = self.history(ref)[0]
        log.info("%s: committed version %d (%s, %d files, %d rows)", ref.name, last["version"], mode, len(actions), rows)
        return Commit(ref.name, last["version"], last["operation"], len(actions), rows)

    def upsert(self, ref: TableRef, df: DataFrame, keys: list[str], metadata: dict[str, Any] | None) -> Commit:
        import pyarrow as pa
        import pyarrow.dataset as ds
        from deltalake.transaction import CommitProperties, PostCommitHookProperties

        path = self._path(ref)
        dt = self._open(ref)
        self.refuse_unsupported(dt, path)
        tmp = os.path.join(path, f"{_STAGING_PREFIX}-merge-{uuid.uuid4().hex[:12]}")
        try:
            df.write.mode("error").parquet(tmp)
            source = ds.dataset(tmp, format="parquet").to_table()
            if source.num_rows == 0:
                return Commit(ref.name, self.version(ref), "MERGE", 0, 0, skipped=True)
            reader = pa.RecordBatchReader.from_batches(source.schema, source.to_batches())
            pred = " AND ".join(f't."{k}" = s."{k}"' for k in keys)
            dt.merge(
                reader,
                pred,
                source_alias="s",
                target_alias="t",
                commit_properties=CommitProperties(custom_metadata={"shopseq": metadata} if metadata else None),
                post_commithook_properties=PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False),
            ).when_matched_update_all().when_not_matched_insert_all().execute()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        version = self.version(ref)
        log.info("%s: merged version %d (%d source rows)", ref.name, version, source.num_rows)
        return Commit(ref.name, version, "MERGE", None, source.num_rows)


_HISTORY_KEYS = {"version", "timestamp", "operation", "operationParameters", "operationMetrics", "clientVersion", "readVersion", "isBlindAppend", "engineInfo"}


def _partition_filters(name: str, partition_by: list[str], values: list[Mapping[str, str | None]]) -> list[tuple[str, str, Any]]:
    """delta-rs filters (a conjunction) that select exactly the partitions present in the new files.

    delta-rs takes one AND-ed filter list per commit, so several partition
    columns can be replaced together only when their value combinations form a
    full cross product; anything else is refused rather than over-deleting.
    """
    combos = {tuple(v[c] for c in partition_by) for v in values}
    if not combos:
        raise TableError(f"{name}: overwrite_partitions with no rows would replace nothing; refusing an empty write")
    if any(x is None for combo in combos for x in combo):
        raise TableError(f"{name}: overwrite_partitions cannot target a null partition value")
    per_col = [sorted({combo[i] for combo in combos}) for i in range(len(partition_by))]
    size = 1
    for vals in per_col:
        size *= len(vals)
    if size != len(combos):
        raise TableError(f"{name}: the partitions to replace {sorted(combos)} are not a cross product of {partition_by}; write them in separate commits")
    return [(c, "=", vals[0]) if len(vals) == 1 else (c, "in", vals) for c, vals in zip(partition_by, per_col)]


def _nullable(schema: T.StructType) -> T.StructType:
    """All top-level fields nullable, as Spark itself writes Parquet (Delta would enforce NOT NULL otherwise)."""
    return T.StructType([T.StructField(f.name, f.dataType, True, f.metadata) for f in schema.fields])


def _check_compatible(name: str, table: T.StructType, data: T.StructType) -> None:
    """The write's columns and types must equal the table's (names, order-insensitive; nullability ignored)."""
    want = {f.name: f.dataType.simpleString() for f in table.fields}
    got = {f.name: f.dataType.simpleString() for f in data.fields}
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        changed = sorted(f"{c}: {want[c]} -> {got[c]}" for c in set(want) & set(got) if want[c] != got[c])
        raise TableError(f"{name}: write does not match the table schema (missing {missing}, extra {extra}, changed {changed})")


def _delta_schema_json(schema: T.StructType) -> str:
    """Spark StructType JSON is Delta's schema format; ``timestamp_ntz`` is refused to keep tables Databricks-readable."""
    text = schema.json()
    if '"timestamp_ntz"' in text:
        raise TableError("timestamp_ntz columns are not written (delta-spark rejects delta-rs' protocol for them); cast to timestamp (UTC)")
    return text


def _add_action_rows(dt: Any) -> list[dict[str, Any]]:
    """The snapshot's files as ``{"path", "partition": {col: str|None}}`` dicts."""
    import pyarrow as pa

    table = dt.get_add_actions(flatten=True)
    batches = [pa.record_batch(b) for b in table.to_batches()] if hasattr(table, "to_batches") else []
    rows: list[dict[str, Any]] = []
    for batch in batches:
        for rec in batch.to_pylist():
            part = {k[len("partition.") :]: (None if v is None else _partition_str(v)) for k, v in rec.items() if k.startswith("partition.")}
            rows.append({"path": rec["path"], "partition": part})
    return rows


def _partition_str(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _norm_file(path: str) -> str:
    """A file location as one comparable string: no scheme, no percent-encoding."""
    p = re.sub(r"^file:(//)?", "", path)
    return unquote(p)


def _spark_norm_file(col: Any) -> Any:
    # Spark reports _metadata.file_path as a URI (file:/... or file:///..., percent-encoded).
    return F.expr("reflect('java.net.URLDecoder', 'decode', regexp_replace(regexp_replace(_metadata.file_path, '^file:(//)?', ''), '\\\\+', '%2B'), 'UTF-8')")


def _add_actions(root: str, staging: str, partition_by: list[str], schema: T.StructType) -> list[Any]:
    """One AddAction per Parquet file Spark wrote under ``root/staging``, with footer stats."""
    from deltalake.transaction import AddAction

    actions = []
    base = Path(root)
    for file in sorted(Path(root, staging).rglob("*.parquet")):
        rel = file.relative_to(base)
        parts: dict[str, str | None] = {}
        for seg in rel.parts[1:-1]:
            key, _, value = seg.partition("=")
            if key in partition_by:
                value = unquote(value)
                parts[key] = None if value == "__HIVE_DEFAULT_PARTITION__" else value
        missing = set(partition_by) - set(parts)
        if missing:
            raise TableError(f"{file}: no partition folder for {sorted(missing)}")
        st = file.stat()
        actions.append(
            AddAction(
                path=str(rel),
                size=st.st_size,
                partition_values=parts,
                modification_time=int(st.st_mtime * 1000),
                data_change=True,
                stats=_file_stats(file, schema, partition_by),
            )
        )
    return actions


_MINMAX_TYPES = (T.IntegerType, T.LongType, T.ShortType, T.ByteType, T.DateType, T.TimestampType, T.StringType)


def _file_stats(file: Path, schema: T.StructType, partition_by: list[str]) -> str:
    """Delta file statistics from the Parquet footer.

    Exact, conservative bounds only: integers, dates, timestamps (min floored,
    max ceiled to the millisecond Delta stores) and strings up to 32 chars get
    min/max; floats (NaN ordering differs) and nested columns get null counts
    or nothing. Data skipping on Databricks relies on these being right.
    """
    import pyarrow.parquet as pq

    md = pq.ParquetFile(file).metadata
    fields = {f.name: f for f in schema.fields if f.name not in partition_by}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for ci in range(md.num_columns):
        col_path = md.schema.column(ci).path
        if col_path not in fields:
            continue  # nested leaf (arrays, structs): no stats
        field = fields[col_path]
        lo = hi = None
        null_count = 0
        complete = True
        for rg in range(md.num_row_groups):
            st = md.row_group(rg).column(ci).statistics
            if st is None or not st.has_null_count:
                complete = False
                break
            null_count += st.null_count
            if st.has_min_max:
                lo = st.min if lo is None else min(lo, st.min)
                hi = st.max if hi is None else max(hi, st.max)
        if not complete:
            continue
        nulls[col_path] = null_count
        if lo is None or not isinstance(field.dataType, _MINMAX_TYPES):
            continue
        lo_s, hi_s = _stat_value(lo, field.dataType, floor=True), _stat_value(hi, field.dataType, floor=False)
        if lo_s is not None and hi_s is not None:
            mins[col_path], maxs[col_path] = lo_s, hi_s
    return json.dumps({"numRecords": md.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def _stat_value(value: Any, dtype: T.DataType, floor: bool) -> Any:
    if isinstance(dtype, T.TimestampType):
        ts = value if isinstance(value, datetime) else datetime.fromtimestamp(int(value) / 1e6, tz=timezone.utc)
        ts = ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        ms = ts.replace(microsecond=(ts.microsecond // 1000) * 1000)
        if not floor and ms != ts:
            ms += timedelta(milliseconds=1)
        return ms.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms.microsecond // 1000:03d}Z"
    if isinstance(dtype, T.DateType):
        return value.isoformat() if isinstance(value, date) else (date(1970, 1, 1) + timedelta(days=int(value))).isoformat()
    if isinstance(dtype, T.StringType):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return text if len(text) <= 32 else None
    return int(value)


def _as_utc(value: datetime | str) -> datetime:
    ts = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _ts_string(value: datetime | str) -> str:
    return _as_utc(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
