"""Table I/O: the only code in shopseq that reads or writes tables.

One engine: Delta Lake through delta-spark, locally as on clusters and on
Databricks. Local mode loads the Delta JARs that ``make setup`` fetched
(:mod:`shopseq.jobs.spark`); ``spark-submit`` passes them with ``--packages``;
Databricks has them built in. A table is named by a logical name
(``silver_events``) that config resolves to a :class:`TableRef`: a path (local
disk, cloud storage) or a catalog name (``catalog.schema.table``, Unity
Catalog).

Every write is one Delta commit through Spark, so Delta's guarantees are the
project's: a write killed before its commit leaves the table at its previous
version (its half-written files are orphans that ``VACUUM`` reclaims);
concurrent writers are serialised by Delta's optimistic concurrency, and
:meth:`TableIO.merge_insert` retries a conflicting insert-only MERGE, which then
finds its keys already present and inserts nothing twice. Tables listed in
:data:`CHANGE_DATA_FEED` are created with Change Data Feed on (the incremental
and deletion stages read their changes); :meth:`TableIO.create` adds CHECK
constraints. :meth:`TableIO.files` lists a snapshot's files from Delta's own
log, so readers outside Spark (Petastorm, DuckDB) see exactly one version.
:meth:`TableIO.vacuum` deletes the files no current snapshot references
(superseded by later commits, or orphans of writes that never committed).

Test hook: :func:`fault_point` makes a process die at a named point (as a
SIGKILL would) when ``$SHOPSEQ_FAULT`` names it; every write passes
``before_write:<table>``, ``during_write:<table>`` (inside the Spark tasks
that write the data) and ``after_commit:<table>``. Unset, it costs one
environment lookup. See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
import uuid
from urllib.parse import unquote, urlparse
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from shopseq.jobs.config import Config, TablesConfig

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WRITE_ID = "shopseq_write_id"  # in each commit's userMetadata: finds this write's commit among concurrent ones
# Created with Change Data Feed on: the raw and cleaned events, whose changes the incremental stages read.
CHANGE_DATA_FEED: frozenset[str] = frozenset({"bronze_events", "silver_events"})
MERGE_ATTEMPTS = 5  # insert-only MERGE retries on a concurrent commit
FAULT_ENV = "SHOPSEQ_FAULT"  # test hook: the fault point at which this process dies (docs/reliability.md)
FAULT_EXIT = 137  # the exit status of a process killed by SIGKILL (128 + 9)
DEFAULT_RETAIN_HOURS = 168.0  # VACUUM's default retention (7 days), below which Delta's retention check refuses


def fault_point(point: str) -> None:
    """Test hook: die here, as a SIGKILL would, when ``$SHOPSEQ_FAULT`` equals ``point``.

    ``os._exit`` skips ``finally`` blocks, atexit handlers and buffered
    writes, like a kill. Only the driver's Python process exits (its JVM and
    Python workers then stop with it); zero cost when the variable is unset.
    """
    if os.environ.get(FAULT_ENV) == point:
        log.warning("fault injection: %s=%s: this process exits now with status %d", FAULT_ENV, point, FAULT_EXIT)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(FAULT_EXIT)


def _during_write_fault(name: str, df: DataFrame) -> DataFrame:
    """``df`` unchanged, or (``$SHOPSEQ_FAULT`` = ``during_write:<name>``) wrapped so the job is SIGKILLed mid-write.

    The first Spark task to hand a batch of rows to the writer then kills the
    driver, its JVM and every Python worker: the files already opened are
    left half-written and nothing is committed, as when a machine dies.
    """
    if os.environ.get(FAULT_ENV) != f"during_write:{name}":
        return df
    gateway = getattr(df.sparkSession.sparkContext, "_gateway", None)
    proc = getattr(gateway, "proc", None)
    pids = [os.getpid()] + ([proc.pid] if proc is not None else [])  # the driver and the JVM it launched
    log.warning("fault injection: %s=during_write:%s: the write's first task kills this job", FAULT_ENV, name)

    def die_mid_write(batches: Any) -> Any:
        for batch in batches:
            yield batch  # the writer takes these rows and asks for more: die before the task can end
            time.sleep(1.0)  # let the JVM open the output file and write them
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            os.killpg(os.getpgid(0), signal.SIGKILL)  # this worker, its daemon and the other workers

    return df.mapInArrow(die_mid_write, df.schema)


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


def has_delta(spark: SparkSession) -> bool:
    """Whether the session can run Delta: the SQL extension is configured, or it is Databricks."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    return "DATABRICKS_RUNTIME_VERSION" in os.environ or DELTA_EXTENSION in extensions


class TableIO:
    """Read and write the project's Delta tables through the session's delta-spark.

    >>> io = TableIO(spark, cfg)
    >>> io.append("bronze_events", df, partition_by=["event_date"]).version
    """

    def __init__(self, spark: SparkSession, cfg: Config) -> None:
        if not has_delta(spark):
            raise TableError(
                "this Spark session has no Delta Lake (spark.sql.extensions lacks io.delta.sql.DeltaSparkSessionExtension): "
                "locally run `make setup` (it fetches the Delta JARs) and start Spark through shopseq.jobs.spark.get_spark; "
                "with spark-submit pass --packages io.delta:delta-spark_2.12:3.2.1 and the Delta extension and catalog confs"
            )
        self.spark = spark
        self.cfg = cfg

    def ref(self, name: str | TableRef) -> TableRef:
        """The :class:`TableRef` for a logical name (a ref passes through)."""
        if isinstance(name, TableRef):
            return name
        return table_ref(self.cfg.tables, name, self.cfg.app.data_root)

    def _table(self, ref: TableRef) -> Any:
        from delta.tables import DeltaTable

        return DeltaTable.forName(self.spark, ref.location) if ref.is_catalog else DeltaTable.forPath(self.spark, ref.location)

    def _sql_name(self, ref: TableRef) -> str:
        """The table in SQL: a quoted catalog name, or ``delta.`path```."""
        if ref.is_catalog:
            return ".".join(f"`{part}`" for part in ref.location.split("."))
        return "delta.`" + ref.location.replace("`", "``") + "`"

    # ------------------------------------------------------------------ reads
    def exists(self, name: str | TableRef) -> bool:
        """Whether the table exists (has a Delta log / is in the catalog), also when another process created it
        after this session last looked."""
        ref = self.ref(name)
        if ref.is_catalog:
            return bool(self.spark.catalog.tableExists(ref.location))
        from delta.tables import DeltaTable

        if DeltaTable.isDeltaTable(self.spark, ref.location):
            return True
        # Delta caches a path's log per session: one first seen without a table keeps answering "no table" after
        # another job (a re-run in its own process, a concurrent ingest) creates it. Drop it and look again.
        jvm = self.spark.sparkContext._jvm
        jvm.org.apache.spark.sql.delta.DeltaLog.invalidateCache(self.spark._jsparkSession, jvm.org.apache.hadoop.fs.Path(ref.location))
        return bool(DeltaTable.isDeltaTable(self.spark, ref.location))

    def version(self, name: str | TableRef) -> int | None:
        """The latest version, or None when the table does not exist."""
        ref = self.ref(name)
        if not self.exists(ref):
            return None
        return int(self._table(ref).history(1).select("version").head()[0])

    def _require(self, ref: TableRef) -> None:
        if not self.exists(ref):
            raise TableError(f"table {ref.name!r} does not exist at {ref.location}")

    def read(self, name: str | TableRef, version: int | None = None, timestamp: datetime | str | None = None) -> DataFrame:
        """The table at its latest version, at ``version``, or as of ``timestamp`` (UTC)."""
        if version is not None and timestamp is not None:
            raise TableError("read: give a version or a timestamp, not both")
        ref = self.ref(name)
        self._require(ref)
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if timestamp is not None:
            reader = reader.option("timestampAsOf", _ts_string(timestamp))
        return reader.table(ref.location) if ref.is_catalog else reader.load(ref.location)

    def files(self, name: str | TableRef, version: int | None = None) -> list[str]:
        """URIs of the Parquet files of the table's snapshot (latest or ``version``), sorted.

        Delta's own file list for that version (the log, never a directory
        listing that could include orphans), for readers outside Spark
        (Petastorm, DuckDB). Partition values are not inside the files, so
        feed such readers unpartitioned tables.
        """
        return sorted(_file_uri(f) for f in self.read(name, version).inputFiles())

    def history(self, name: str | TableRef) -> list[dict[str, Any]]:
        """Commits newest first: ``version``, ``timestamp`` (UTC datetime), ``operation``, ``metadata``, ``metrics``."""
        ref = self.ref(name)
        self._require(ref)
        rows = self._table(ref).history().select("version", "timestamp", "operation", "userMetadata", "operationMetrics").collect()
        out = []
        for r in rows:
            meta = json.loads(r["userMetadata"]) if r["userMetadata"] else {}
            write_id = meta.pop(_WRITE_ID, None) if isinstance(meta, dict) else None
            ts = r["timestamp"]
            out.append(
                {
                    "version": int(r["version"]),
                    "timestamp": ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts,
                    "operation": r["operation"],
                    "metadata": meta,
                    "metrics": dict(r["operationMetrics"] or {}),
                    "write_id": write_id,
                }
            )
        return out

    def changes(self, name: str | TableRef, start_version: int, end_version: int | None = None) -> DataFrame:
        """Change Data Feed rows between two versions (``_change_type``, ``_commit_version``, ``_commit_timestamp``)."""
        ref = self.ref(name)
        self._require(ref)
        reader = self.spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", start_version)
        if end_version is not None:
            reader = reader.option("endingVersion", end_version)
        return reader.table(ref.location) if ref.is_catalog else reader.load(ref.location)

    def properties(self, name: str | TableRef) -> dict[str, str]:
        """The table's properties (``delta.enableChangeDataFeed``, ``delta.constraints.*``, ...)."""
        ref = self.ref(name)
        self._require(ref)
        return {r["key"]: r["value"] for r in self.spark.sql(f"SHOW TBLPROPERTIES {self._sql_name(ref)}").collect()}

    def detail(self, name: str | TableRef) -> dict[str, Any]:
        """``DESCRIBE DETAIL``: ``numFiles``, ``sizeInBytes``, ``partitionColumns``, ``location``, ..."""
        ref = self.ref(name)
        self._require(ref)
        return self._table(ref).detail().head().asDict()

    # ------------------------------------------------------------------ writes
    def create(
        self,
        name: str | TableRef,
        schema: T.StructType,
        partition_by: Sequence[str] = (),
        constraints: Mapping[str, str] | None = None,
        not_null: Sequence[str] = (),
    ) -> bool:
        """Create the empty table if it does not exist; True when this call created it.

        Columns in ``not_null`` are NOT NULL; ``constraints`` are CHECK
        constraints (name -> SQL expression) that every later write must pass;
        all in the one CREATE commit (version 0).
        Tables in :data:`CHANGE_DATA_FEED` get Change Data Feed. Safe under
        concurrent creators: the loser of the race finds the table and returns False.
        """
        from delta.tables import DeltaTable

        ref = self.ref(name)
        if self.exists(ref):
            return False
        builder = DeltaTable.createIfNotExists(self.spark)
        builder = builder.tableName(ref.location) if ref.is_catalog else builder.location(ref.location)
        for f in schema.fields:
            builder = builder.addColumn(f.name, f.dataType, nullable=f.name not in not_null)
        if partition_by:
            builder = builder.partitionedBy(*partition_by)
        if ref.name in CHANGE_DATA_FEED:
            builder = builder.property("delta.enableChangeDataFeed", "true")
        for cname, expr in (constraints or {}).items():  # in the CREATE commit itself (what ADD CONSTRAINT records)
            builder = builder.property(f"delta.constraints.{cname.lower()}", expr)
        try:
            builder.execute()
        except Exception as exc:  # noqa: BLE001 - a concurrent creator won the race
            if not self.exists(ref):
                raise TableError(f"{ref.name}: cannot create the table at {ref.location}: {_first_line(exc)}") from exc
            return False
        log.info("%s: created at %s%s", ref.name, ref.location, " (change data feed)" if ref.name in CHANGE_DATA_FEED else "")
        return True

    def append(self, name: str | TableRef, df: DataFrame, partition_by: Sequence[str] = (), metadata: dict[str, Any] | None = None) -> Commit:
        """Append ``df`` in one commit."""
        return self._write(self.ref(name), df, "append", list(partition_by), metadata)

    def overwrite(self, name: str | TableRef, df: DataFrame, partition_by: Sequence[str] = (), metadata: dict[str, Any] | None = None) -> Commit:
        """Replace the whole table with ``df`` in one commit (history is kept)."""
        return self._write(self.ref(name), df, "overwrite", list(partition_by), metadata)

    def overwrite_partitions(
        self, name: str | TableRef, df: DataFrame, partition_by: Sequence[str], metadata: dict[str, Any] | None = None, values: Sequence[Mapping[str, Any]] | None = None
    ) -> Commit:
        """Replace only the partitions present in ``df`` (Delta ``replaceWhere``); all others stay untouched.

        ``values`` (one ``{column: value}`` per partition) names them when the
        caller knows them, so ``df`` is computed once, by the write; else they
        are collected from ``df``. Delta refuses the commit if a row falls outside them.
        """
        if not partition_by:
            raise TableError("overwrite_partitions needs partition columns")
        values = [dict(v) for v in values] if values is not None else [r.asDict() for r in df.select(*partition_by).distinct().collect()]
        if not values:
            raise TableError(f"{self.ref(name).name}: overwrite_partitions with no rows would replace nothing; refusing an empty write")
        if any(v is None for row in values for v in row.values()):
            raise TableError(f"{self.ref(name).name}: overwrite_partitions cannot target a null partition value")
        predicate = " OR ".join("(" + " AND ".join(f"`{c}` = {_sql_literal(row[c])}" for c in partition_by) + ")" for row in values)
        return self._write(self.ref(name), df, "overwrite", list(partition_by), metadata, replace_where=predicate)

    def _write(self, ref: TableRef, df: DataFrame, mode: str, partition_by: list[str], metadata: dict[str, Any] | None, replace_where: str | None = None) -> Commit:
        for col in partition_by:
            if col not in df.columns:
                raise TableError(f"{ref.name}: partition column {col!r} is not in the data ({', '.join(df.columns)})")
        _refuse_ntz(ref.name, df.schema)
        fault_point(f"before_write:{ref.name}")
        df = _during_write_fault(ref.name, df)
        if self.exists(ref) and (mode == "append" or replace_where is not None):
            table_parts = list(self.detail(ref)["partitionColumns"])
            if table_parts != partition_by:
                raise TableError(f"{ref.name}: table is partitioned by {table_parts}, the write by {partition_by}")
            _check_compatible(ref.name, self.read(ref).schema, df.schema)
        write_id = uuid.uuid4().hex
        writer = df.write.format("delta").mode(mode).option("userMetadata", _user_metadata(metadata, write_id))
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if replace_where is not None:
            writer = writer.option("replaceWhere", replace_where)
        elif mode == "overwrite":  # the whole table, whatever spark.sql.sources.partitionOverwriteMode says
            writer = writer.option("partitionOverwriteMode", "static").option("overwriteSchema", "true")
        # A table this write creates gets Change Data Feed from its version 0 (Delta's defaults for new tables).
        cdf = _session_conf(self.spark, "spark.databricks.delta.properties.defaults.enableChangeDataFeed", "true") if ref.name in CHANGE_DATA_FEED else contextlib.nullcontext()
        try:
            with cdf:
                writer.saveAsTable(ref.location) if ref.is_catalog else writer.save(ref.location)
        except Exception as exc:  # noqa: BLE001 - Delta's own message, in one line
            raise TableError(f"{ref.name}: the {mode} was not committed: {_first_line(exc)}") from exc
        return self._commit_of(ref, write_id, "rows")

    def merge_insert(self, name: str | TableRef, df: DataFrame, keys: Sequence[str], metadata: dict[str, Any] | None = None, target_filter: str | None = None) -> Commit:
        """Insert the rows of ``df`` whose ``keys`` the table does not hold yet: an insert-only MERGE.

        The table must exist (:meth:`create`). A concurrent commit that
        conflicts with this MERGE makes Delta refuse it; it is then retried
        (up to :data:`MERGE_ATTEMPTS` times) against the new snapshot, where
        the other writer's rows already count as present: no key is inserted
        twice and none is lost. ``target_filter`` (SQL over ``t``, e.g. a
        partition range) limits what the MERGE reads, and so what it conflicts
        with; every key of ``df`` must lie inside it. ``num_rows`` of the
        result is the rows inserted.
        """
        ref = self.ref(name)
        _check_keys(keys)
        self._require(ref)
        cond = " AND ".join([f"t.`{k}` = s.`{k}`" for k in keys] + ([f"({target_filter})"] if target_filter else []))
        fault_point(f"before_write:{ref.name}")
        df = _during_write_fault(ref.name, df)
        return self._merge_with_retries(ref, lambda m: m.whenNotMatchedInsertAll(), df, cond, metadata, "inserted", "the insert-only MERGE")

    def upsert(self, name: str | TableRef, df: DataFrame, keys: Sequence[str], partition_by: Sequence[str] = (), metadata: dict[str, Any] | None = None, update_when: str | None = None) -> Commit:
        """Merge ``df`` into the table by ``keys``: matched rows updated (where ``update_when`` holds, an SQL
        condition over ``t`` = table and ``s`` = ``df``), new rows inserted; one MERGE commit.

        A MERGE that a concurrent commit conflicts with is retried against the
        new snapshot (up to :data:`MERGE_ATTEMPTS` times): merging by key again
        gives the same table, so two runs recording side by side both land."""
        _check_keys(keys)
        ref = self.ref(name)
        if not self.exists(ref):
            return self._write(ref, df, "append", list(partition_by), metadata)
        cond = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        fault_point(f"before_write:{ref.name}")
        df = _during_write_fault(ref.name, df)
        return self._merge_with_retries(ref, lambda m: m.whenMatchedUpdateAll(condition=update_when).whenNotMatchedInsertAll(), df, cond, metadata, "merged", "the MERGE")

    def _merge_with_retries(self, ref: TableRef, clauses: Callable[[Any], Any], df: DataFrame, cond: str, metadata: dict[str, Any] | None, metric: str, what: str) -> Commit:
        """Run ``clauses(merge builder)`` as one MERGE of ``df`` on ``cond``, retried (up to :data:`MERGE_ATTEMPTS`) when a concurrent commit conflicts."""
        for attempt in range(1, MERGE_ATTEMPTS + 1):
            write_id = uuid.uuid4().hex
            try:
                with _session_conf(self.spark, "spark.databricks.delta.commitInfo.userMetadata", _user_metadata(metadata, write_id)):
                    clauses(self._table(ref).alias("t").merge(df.alias("s"), cond)).execute()
                return self._commit_of(ref, write_id, metric)
            except Exception as exc:  # noqa: BLE001 - only Delta's concurrency conflicts are retried
                if not _is_conflict(exc) or attempt == MERGE_ATTEMPTS:
                    raise TableError(f"{ref.name}: {what} was not committed{' after ' + str(attempt) + ' attempts' if attempt > 1 else ''}: {_first_line(exc)}") from exc
                log.warning("%s: a concurrent commit conflicted with the MERGE (attempt %d of %d); retrying on the new snapshot", ref.name, attempt, MERGE_ATTEMPTS)
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def optimize(self, name: str | TableRef, zorder_by: Sequence[str] = (), max_file_mb: int = 128) -> Commit | None:
        """Compact small files (``OPTIMIZE``) towards ``max_file_mb``, clustering by ``zorder_by`` (Z-ORDER).

        The OPTIMIZE commit repeats the metadata of the write it compacts (stages
        read their lineage from the newest commit). None when there was nothing to do.
        """
        ref = self.ref(name)
        self._require(ref)
        previous = self.history(ref)[0]
        builder = self._table(ref).optimize()
        meta = _user_metadata(previous["metadata"], uuid.uuid4().hex)
        with _session_conf(self.spark, "spark.databricks.delta.commitInfo.userMetadata", meta), _session_conf(self.spark, "spark.databricks.delta.optimize.maxFileSize", str(max_file_mb * 1024 * 1024)):
            builder.executeZOrderBy(*zorder_by) if zorder_by else builder.executeCompaction()
        before = previous["version"]
        last = self.history(ref)[0]
        if last["version"] == before:
            return None
        m = last["metrics"]
        log.info("%s: optimized to version %d (%s files removed, %s added)", ref.name, last["version"], m.get("numRemovedFiles"), m.get("numAddedFiles"))
        fault_point(f"after_commit:{ref.name}")
        return Commit(ref.name, last["version"], last["operation"], _int(m.get("numAddedFiles")), None)

    def vacuum(self, name: str | TableRef, retain_hours: float = DEFAULT_RETAIN_HOURS, dry_run: bool = False) -> list[str]:
        """``VACUUM``: delete the table folder's data files that the current snapshot does not reference and
        that are older than ``retain_hours``. Returns the deleted files' URIs, sorted (found by listing a
        local folder before and after; empty for other locations), or with ``dry_run`` those it would delete.

        Those are files superseded by later commits (an overwrite, OPTIMIZE, a
        MERGE) once the retention has passed since they were removed, and
        orphans of writes that never committed (a killed job). Time travel to
        versions older than the retention is lost. Below Delta's 7-day default
        Delta refuses unless its retention check is off; here it is turned off
        for this call only (``spark.databricks.delta.retentionDurationCheck.enabled``),
        so a short retention is a deliberate argument: only when no job reads
        or writes the table meanwhile (an in-flight write's files look like orphans).

        The call commits nothing (Delta's VACUUM START/END log entries are
        off for it): the table keeps its version, so the stages whose lineage
        names that version do not recompute. The listing runs with the
        session's default parallelism (Delta would use
        ``spark.sql.sources.parallelPartitionDiscovery.parallelism``, 10,000
        tasks: minutes on a small local session).
        """
        if retain_hours < 0:
            raise TableError(f"vacuum: retain_hours must be >= 0, got {retain_hours!r}")
        ref = self.ref(name)
        self._require(ref)
        confs = {
            "spark.databricks.delta.vacuum.logging.enabled": "false",
            "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(max(1, self.spark.sparkContext.defaultParallelism)),
        }
        if retain_hours < DEFAULT_RETAIN_HOURS:
            confs["spark.databricks.delta.retentionDurationCheck.enabled"] = "false"
        sql = f"VACUUM {self._sql_name(ref)} RETAIN {float(retain_hours)!r} HOURS"
        before = set(self._file_listing(ref)) if not dry_run and not ref.is_catalog and "://" not in ref.location else None
        with contextlib.ExitStack() as stack:
            for key, value in confs.items():
                stack.enter_context(_session_conf(self.spark, key, value))
            if dry_run:
                return sorted(_file_uri(r[0]) for r in self.spark.sql(sql + " DRY RUN").collect())
            self.spark.sql(sql).collect()
        deleted = sorted(before - set(self._file_listing(ref))) if before is not None else []
        log.info("%s: vacuumed %s unreferenced file(s) older than %s hours", ref.name, len(deleted) if before is not None else "its", retain_hours)
        return deleted

    @staticmethod
    def _file_listing(ref: TableRef) -> list[str]:
        """``file://`` URIs of the data files under a local table folder (the log and hidden files aside)."""
        out = []
        for folder, dirs, names in os.walk(ref.location):
            dirs[:] = [d for d in dirs if not d.startswith(("_delta_log", "."))]
            out += ["file://" + os.path.join(folder, n) for n in names if not n.startswith((".", "_"))]
        return out

    def _commit_of(self, ref: TableRef, write_id: str, rows: str) -> Commit:
        """This write's commit, found by its write id among the newest commits (others may have committed since)."""
        for entry in self._table(ref).history(20).select("version", "operation", "userMetadata", "operationMetrics").collect():
            meta = json.loads(entry["userMetadata"]) if entry["userMetadata"] else {}
            if isinstance(meta, dict) and meta.get(_WRITE_ID) == write_id:
                m = dict(entry["operationMetrics"] or {})
                n_rows = {
                    "inserted": _int(m.get("numTargetRowsInserted")),
                    "merged": (_int(m.get("numTargetRowsInserted")) or 0) + (_int(m.get("numTargetRowsUpdated")) or 0),
                }.get(rows, _int(m.get("numOutputRows")))
                n_files = _int(m.get("numFiles") or m.get("numAddedFiles") or m.get("numTargetFilesAdded"))
                version = int(entry["version"])
                log.info("%s: committed version %d (%s, %s files, %s rows)", ref.name, version, entry["operation"], n_files, n_rows)
                fault_point(f"after_commit:{ref.name}")
                return Commit(ref.name, version, entry["operation"], n_files, n_rows)
        if rows in ("inserted", "merged"):  # a MERGE with nothing to change commits nothing: the table stays where it was
            version = int(self.version(ref) or 0)
            log.info("%s: nothing to insert; stays at version %d", ref.name, version)
            return Commit(ref.name, version, "MERGE", 0, 0, skipped=True)
        raise TableError(f"{ref.name}: the write committed, but its commit is not among the last 20 versions")


def _check_keys(keys: Sequence[str]) -> None:
    bad = [k for k in keys if not _IDENT.match(k)]
    if not keys or bad:
        raise TableError(f"upsert keys must be plain column names, got {list(keys)!r}")


def _user_metadata(metadata: dict[str, Any] | None, write_id: str) -> str:
    return json.dumps({**(metadata or {}), _WRITE_ID: write_id}, sort_keys=True, default=str)


class _session_conf:
    """Set one session conf for the duration of a block (MERGE takes its commit's userMetadata from the session)."""

    def __init__(self, spark: SparkSession, key: str, value: str) -> None:
        self.spark, self.key, self.value = spark, key, value
        self.old: str | None = None

    def __enter__(self) -> None:
        self.old = self.spark.conf.get(self.key, None)
        self.spark.conf.set(self.key, self.value)

    def __exit__(self, *exc: object) -> None:
        if self.old is None:
            self.spark.conf.unset(self.key)
        else:
            self.spark.conf.set(self.key, self.old)


def _is_conflict(exc: BaseException) -> bool:
    """Delta's optimistic-concurrency failures (io.delta.exceptions.Concurrent*, ProtocolChanged, MetadataChanged)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(k in text for k in ("ConcurrentAppend", "ConcurrentDeleteRead", "ConcurrentDeleteDelete", "ConcurrentTransaction", "ConcurrentWrite", "MetadataChanged", "ProtocolChanged", "DELTA_CONCURRENT"))


def _first_line(exc: BaseException) -> str:
    """One line that says what Delta refused: a ``[DELTA_...]`` message from the Java cause chain when there is one."""
    messages: list[str] = []
    cause = getattr(exc, "java_exception", None)  # py4j: walk the JVM exception's causes
    while cause is not None and len(messages) < 20:
        messages.append(str(cause.getMessage() or ""))
        cause = cause.getCause()
    messages.append(str(getattr(exc, "desc", None) or exc))
    lines = [m.strip().splitlines()[0] for m in messages if m and m.strip()]
    return next((m for m in lines if "[DELTA_" in m), next((m for m in lines if not m.startswith("An error occurred while calling")), type(exc).__name__))


def _file_uri(uri: str) -> str:
    """Hadoop's ``file:/a/b`` as ``file:///a/b`` (what pyarrow and Petastorm expect); other schemes unchanged."""
    return "file://" + uri[len("file:"):] if uri.startswith("file:/") and not uri.startswith("file://") else uri


def local_path(uri: str) -> str:
    """The local path of a ``file:`` URI as :meth:`TableIO.files` gives it (percent-decoded); other URIs unchanged."""
    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return f"TIMESTAMP '{_ts_string(value)}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_compatible(name: str, table: T.StructType, data: T.StructType) -> None:
    """The write's columns and types must equal the table's (names, order-insensitive; nullability ignored)."""
    want = {f.name: f.dataType.simpleString() for f in table.fields}
    got = {f.name: f.dataType.simpleString() for f in data.fields}
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        changed = sorted(f"{c}: {want[c]} -> {got[c]}" for c in set(want) & set(got) if want[c] != got[c])
        raise TableError(f"{name}: write does not match the table schema (missing {missing}, extra {extra}, changed {changed})")


def _refuse_ntz(name: str, schema: T.StructType) -> None:
    """``timestamp_ntz`` needs a newer Delta table feature: every timestamp is written as UTC ``timestamp``."""
    if '"timestamp_ntz"' in schema.json():
        raise TableError(f"{name}: timestamp_ntz columns are not written (they need a Delta table feature older readers lack); cast to timestamp (UTC)")


def _as_utc(value: datetime | str) -> datetime:
    ts = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _ts_string(value: datetime | str) -> str:
    return _as_utc(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
