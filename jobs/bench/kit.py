"""Shared helpers of the ``shopseq bench`` benchmarks: wall time, CPU time and peak memory of a call, Spark's stage profile."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from pyspark.sql import SparkSession

from shopseq.training import storage


class PeakRss:
    """Peak resident memory and CPU time of this process (with ``children``: plus its JVM and Python workers), sampled in a thread."""

    def __init__(self, children: bool, interval_s: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self._children = children
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self.peak = 0
        self.peak_jvm = 0
        self.peak_self = 0
        self.others: dict[str, int] = {}  # peak RSS of other descendants, by process name
        self.cpu_s = 0.0  # CPU seconds (user + system) used between enter and exit
        self._cpu: dict[int, float] = {}

    def sample(self) -> int:
        import psutil

        total = own = self._proc.memory_info().rss
        jvm = 0
        if self._children:
            for child in self._proc.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    name = child.name() or ""
                except psutil.Error:
                    continue
                if "java" in name:
                    jvm += rss
                elif not name.startswith("python"):
                    # Short-lived helpers the JVM forks (jspawnhelper, chmod) briefly report the JVM's pages: not counted.
                    self.others[name] = max(self.others.get(name, 0), rss)
                    continue
                total += rss
        self.peak = max(self.peak, total)
        self.peak_jvm = max(self.peak_jvm, jvm)
        self.peak_self = max(self.peak_self, own)
        return total

    def _cpu_now(self) -> dict[int, float]:
        """CPU seconds so far of this process (and live descendants), by pid."""
        import psutil

        procs = [self._proc] + (self._proc.children(recursive=True) if self._children else [])
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            out[p.pid] = t.user + t.system
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakRss":
        self.sample()
        self._cpu = self._cpu_now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        end = self._cpu_now()
        # Processes started during the run (Python workers) count from zero; ended ones are missed (none expected).
        self.cpu_s = sum(v - self._cpu.get(pid, 0.0) for pid, v in end.items())


@dataclass
class Timing:
    engine: str
    events: int
    cores: int
    seconds: float
    cpu_s: float
    peak_rss_bytes: int
    peak_jvm_rss_bytes: int | None = None
    outputs: dict[str, int] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events_per_s_per_core(self) -> float:
        return self.events / self.seconds / self.cores

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / self.cpu_s if self.cpu_s else float("nan")


def timed(engine: str, events: int, cores: int, children: bool, fn: Callable[[], None]) -> Timing:
    with PeakRss(children=children) as rss:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return Timing(engine, events, cores, seconds, rss.cpu_s, rss.peak, rss.peak_jvm if children else None)


def stage_profile(spark: SparkSession, group: str) -> list[dict[str, Any]]:
    """Per-stage timings of a job group from Spark's status store (no UI or event log needed)."""
    sc = spark.sparkContext
    store = sc._jsc.sc().statusStore()  # noqa: SLF001 - the status store has the per-stage metrics
    out = []
    for job_id in sorted(sc.statusTracker().getJobIdsForGroup(group)):
        info = sc.statusTracker().getJobInfo(job_id)
        for stage_id in sorted(info.stageIds if info else []):
            try:
                sd = store.lastStageAttempt(stage_id)
            except Exception:  # noqa: BLE001 - stage evicted from the store
                continue
            status = sd.status().toString()
            if status == "SKIPPED":
                continue
            sub, done = sd.submissionTime(), sd.completionTime()
            wall = (done.get().getTime() - sub.get().getTime()) / 1000 if sub.isDefined() and done.isDefined() else None
            out.append(
                {
                    "job": job_id,
                    "stage": stage_id,
                    "name": sd.name(),
                    "status": status,
                    "tasks": sd.numTasks(),
                    "wall_s": wall,
                    "executor_run_s": sd.executorRunTime() / 1000,
                    "executor_cpu_s": sd.executorCpuTime() / 1e9,
                    "gc_s": sd.jvmGcTime() / 1000,
                    "input_mb": sd.inputBytes() / 2**20,
                    "shuffle_read_mb": sd.shuffleReadBytes() / 2**20,
                    "shuffle_write_mb": sd.shuffleWriteBytes() / 2**20,
                    "spill_disk_mb": sd.diskBytesSpilled() / 2**20,
                }
            )
    return out


def as_dict(t: Timing) -> dict[str, Any]:
    return asdict(t) | {"events_per_s_per_core": t.events_per_s_per_core, "events_per_cpu_s": t.events_per_cpu_s}


def version() -> tuple[str, str | None]:
    """The installed shopseq version and the short git commit of this checkout (None outside a git checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        v = dist_version("shopseq")
    except PackageNotFoundError:
        v = "unknown"
    try:
        here = Path(__file__).parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here, check=False).stdout.strip() or None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=here.parent, check=False, capture_output=True).returncode == 1
        commit = f"{commit}+uncommitted changes" if commit and dirty else commit
    except OSError:
        commit = None
    return v, commit


def provenance(spark: Any = None) -> dict[str, Any]:
    """What a published figure needs beside it: the version and commit it was measured on, when, on what machine, under what load.

    With a ``spark`` config (:class:`shopseq.jobs.config.SparkConfig`), also its master, shuffle partitions and driver memory.
    """
    import psutil

    v, commit = version()
    settings = {"spark": {"master": spark.master, "shuffle_partitions": spark.shuffle_partitions, "driver_memory": spark.driver_memory}} if spark else {}
    return settings | {
        "version": v,
        "commit": commit,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.machine()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def provenance_line(report: dict[str, Any], name: str, report_name: str | None = None) -> str:
    """The line every generated page starts with: where its numbers come from, and how to regenerate it.

    ``name``: the benchmark (``shopseq bench <name>``); ``report_name``: its report's name when it differs (``bench_<report_name>.json``).
    """
    load = " ".join(f"{x:.1f}" for x in report.get("load_average", []))
    return (
        f"Measured on shopseq {report.get('version')} (commit {report.get('commit')}), {report.get('created')}, {report.get('machine')}; "
        f"load average at the end {load}."
        + (f" Spark {sp['master']}, {sp['shuffle_partitions']} shuffle partitions, driver memory {sp['driver_memory']}." if (sp := report.get("spark")) else "")
        + f" Generated from `bench_{report_name or name}.json` by `shopseq bench {name} ... --docs DIR` "
        "(or `shopseq bench render --docs DIR`): do not edit by hand."
    )


def write_report(name: str, report: dict[str, Any], render: Callable[[dict[str, Any]], str], out_dirs: Iterable[Path | str]) -> str:
    """``bench_<name>.json`` and the Markdown rendered from it into each folder (the catalog's reports, and ``--docs``); returns the Markdown.

    A folder may be a local path or a URI given as a string (``s3://...``, :mod:`shopseq.training.storage`); each file is written atomically.
    """
    md = render(report)
    for out in out_dirs:
        folder = str(out)
        storage.makedirs(folder)
        storage.write_text(storage.join(folder, f"bench_{name}.json"), json.dumps(report, indent=1, default=str) + "\n")
        storage.write_text(storage.join(folder, f"bench_{name}.md"), md)
    return md
