"""A real Spark standalone cluster on 127.0.0.1 for tests: a master, two 1-core workers, spark-submit against it.

Every command the cluster test runs is built here (:func:`master_command`,
:func:`worker_command`, :func:`submit_command`), and the README's cluster
section is those same builders rendered with its own values (ports 7077 and
8080-8082, ``$SPARK``, ``$J``, ``$PY``), which ``tests/test_cluster.py``
checks without starting anything.

The executors (and the driver) run :func:`exec_python`, a throwaway venv that
sees the repo venv's packages (pyspark, torch, petastorm, Horovod) but not
shopseq's editable install: the code reaches them only through the
``--py-files`` zip of ``make dist``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"  # pyproject.toml's; the dist artifacts carry it in their names
PYFILES = f"dist/shopseq-{VERSION}-pyfiles.zip"  # relative to the submit folder, as in the README
ENTRY = "jobs/stages/run.py"  # relative to the submit folder: extracted from the zip by the test, the repo's own file in the README
ENV_PACK = REPO / "dist" / f"shopseq-{VERSION}-env.tar.gz"  # `make dist-env`: the packed environment for --archives
ENV_VENV = REPO / "build" / "dist-env"  # the venv it packed: a local Python with shopseq installed from the wheel
PACKED_PYTHON = "./environment/bin/python"  # the executors' Python inside the unpacked archive
DELTA = "3.2.1"
DELTA_JARS = (f"delta-spark_2.12-{DELTA}.jar", f"delta-storage-{DELTA}.jar")
DELTA_SQL = (
    "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog",
)
WORKERS = 2
WORKER_CORES = 1
WORKER_MEMORY = "2g"
ERROR_LINE = re.compile(r"Error|Exception|Traceback|<stderr>")  # executors' log lines shown when a submit fails
# The small generated dataset (tests/conftest.py's TRAINED_OVERRIDES without the one-process launcher), 1 epoch, 2 ranks.
PIPELINE_SETS = (
    "generate.users=200", "generate.days=42",
    "features.purchase_horizon_days=3", "features.churn_horizon_days=7", "features.train_fraction=0.5", "features.val_fraction=0.25",
    "spark.shuffle_partitions=2", "train.num_proc=2", "train.epochs=1", "train.dim=32", "train.layers=1", "train.batch_size=64", "train.lr=0.003",
)  # fmt: skip


def spark_bin() -> Path:
    """``bin/`` of the pyspark package (spark-class, spark-submit): no separate Spark install."""
    import pyspark

    return Path(pyspark.__file__).parent / "bin"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- commands (the README shows these)


def master_command(spark: str, port: int, webui: int) -> list[str]:
    """The standalone master on 127.0.0.1."""
    return [f"{spark}/spark-class", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui)]


def worker_command(spark: str, master_port: int, webui: int, work_dir: str) -> list[str]:
    """One worker with :data:`WORKER_CORES` core(s) and :data:`WORKER_MEMORY`, registered with the master."""
    return [
        f"{spark}/spark-class", "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{master_port}",
        "--host", "127.0.0.1", "--cores", str(WORKER_CORES), "--memory", WORKER_MEMORY, "--webui-port", str(webui), "--work-dir", work_dir,
    ]  # fmt: skip


def _submit(spark: str, master_port: int, jars: str, conf: list[str], ship: list[str], args: list[str]) -> list[str]:
    """spark-submit of :data:`ENTRY` in client mode: Delta's JARs, ``conf``, how the code travels (``ship``), one core per executor."""
    return [
        f"{spark}/spark-submit", "--master", f"spark://127.0.0.1:{master_port}",
        "--jars", ",".join(f"{jars}/{j}" for j in DELTA_JARS),
        *(a for c in conf for a in ("--conf", c)),
        *ship, "--total-executor-cores", str(WORKERS * WORKER_CORES), "--executor-cores", str(WORKER_CORES),
        ENTRY, *args,
    ]  # fmt: skip


def submit_command(spark: str, master_port: int, jars: str, python: str, ui_port: int, args: list[str]) -> list[str]:
    """spark-submit with ``python`` for driver and executors, the UI's port and the ``--py-files`` zip."""
    conf = [
        *DELTA_SQL, f"spark.pyspark.python={python}", f"spark.pyspark.driver.python={python}",
        # Horovod's ranks are processes of their own, started in the executor's working directory where Spark fetched the zip:
        # unlike Spark's Python workers they get no --py-files on sys.path, only PYTHONPATH (relative: the executor's folder).
        f"spark.executorEnv.PYTHONPATH={Path(PYFILES).name}",
        f"spark.ui.port={ui_port}",
    ]  # fmt: skip
    return _submit(spark, master_port, jars, conf, ["--py-files", PYFILES], args)


def submit_packed_command(spark: str, master_port: int, jars: str, driver_python: str, ui_port: int, archive: str, args: list[str]) -> list[str]:
    """spark-submit with ``make dist-env``'s packed environment instead of ``--py-files``.

    Spark unpacks ``archive`` as ``./environment`` in each executor's working
    directory; the executors' Python workers and Horovod's ranks run
    ``./environment/bin/python``, which has shopseq installed from the wheel.
    The driver (client mode) needs a local Python with shopseq: ``driver_python``.
    """
    conf = [*DELTA_SQL, f"spark.pyspark.python={PACKED_PYTHON}", f"spark.pyspark.driver.python={driver_python}", f"spark.ui.port={ui_port}"]
    return _submit(spark, master_port, jars, conf, ["--archives", f"{archive}#environment"], args)


def pipeline_args(data_root: str, env: str = "cluster") -> list[str]:
    """``shopseq run``'s arguments for the small dataset of :data:`PIPELINE_SETS` under ``data_root``."""
    return ["--env", env, *(a for s in (f"app.data_root={data_root}", *PIPELINE_SETS) for a in ("--set", s))]


# --------------------------------------------------------------------------- the executors' Python


def exec_python(dest: Path) -> Path:
    """A venv whose site-packages sees this venv's site-packages through one ``.pth`` line; returns its python.

    Paths listed in a ``.pth`` file are added to ``sys.path`` without their own
    ``.pth`` files being processed, so shopseq's editable-install finder
    (``__editable__.shopseq-0.1.0.pth`` there) is never loaded: ``import shopseq.jobs``
    fails unless the ``--py-files`` zip is on the path.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True, capture_output=True)
    site = dest / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site / "shopseq_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return dest / "bin" / "python"


def run_probe(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -c code`` in ``cwd`` with no PYTHON* variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYSPARK", "SPARK"))}
    return subprocess.run([str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


# --------------------------------------------------------------------------- the cluster


def tail(path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of a log file, headed by its name."""
    text = path.read_text(errors="replace") if path.is_file() else "(no log)"
    return f"--- {path.name} (last {chars} chars)\n{text[-chars:]}"


def cluster_env() -> dict[str, str]:
    """This environment without Python/Spark variables that would leak into the cluster, bound to 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYSPARK", "SPARK_"))}
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


@dataclass
class Standalone:
    """A running standalone master and its workers (processes started here, each in its own process group)."""

    root: Path
    port: int
    webui: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def state(self) -> dict:
        """The master's JSON (``/json/``): workers, applications."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui}/json/", timeout=5) as r:
            return json.load(r)

    def alive_workers(self) -> int:
        try:
            return sum(w["state"] == "ALIVE" for w in self.state()["workers"])
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            return 0

    def log_tails(self) -> str:
        """The master's and workers' log tails, then the executors' error lines (Horovod ranks print theirs as ``[rank]<stderr>:``)."""
        errors = []
        for path in sorted(self.root.glob("worker*/app-*/*/stderr")):
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ERROR_LINE.search(ln)]
            errors.append(f"--- {path.relative_to(self.root)} (error lines, last 40)\n" + "\n".join(lines[-40:]))
        return "\n".join([*(tail(p) for p in self.logs), *errors])

    def start(self, command: list[str], name: str) -> subprocess.Popen:
        """Start ``command`` in a new session (its own process group), output to ``<root>/<name>.log``."""
        path = self.root / f"{name}.log"
        self.logs.append(path)
        with open(path, "w") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=cluster_env(), cwd=self.root, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> list[str]:
        """Kill every process started here and all their descendants; returns those still alive after (should be none)."""
        return stop_processes(self.procs)


def descendants(procs: list[subprocess.Popen]) -> list[psutil.Process]:
    """The processes and everything they started that is still alive."""
    out = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def stop_processes(procs: list[subprocess.Popen], grace_s: float = 15.0) -> list[str]:
    """SIGTERM each process group (then SIGKILL after ``grace_s``), and any descendant that left its group; returns what survived."""
    family = descendants(procs)
    groups = set()
    for proc in family:
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgid(0))  # never this test process's own group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in groups:
            try:
                os.killpg(g, sig)
            except ProcessLookupError:
                pass
        for proc in family:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=grace_s if sig == signal.SIGTERM else 5)
        if not alive:
            break
    for p in procs:
        try:
            p.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    return [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def start_standalone(root: Path, timeout_s: float = 120) -> Standalone:
    """A master and :data:`WORKERS` workers on 127.0.0.1 (free ports); returns once the master lists them all ALIVE."""
    root.mkdir(parents=True, exist_ok=True)
    spark = str(spark_bin())
    cluster = Standalone(root, free_port(), free_port())
    cluster.start(master_command(spark, cluster.port, cluster.webui), "master")
    for i in range(1, WORKERS + 1):
        work = root / f"worker{i}"
        work.mkdir()
        cluster.start(worker_command(spark, cluster.port, free_port(), str(work)), f"worker{i}")
    deadline = time.monotonic() + timeout_s
    while cluster.alive_workers() < WORKERS:
        dead = [p.args[1] for p in cluster.procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            left = cluster.stop()
            raise AssertionError(f"standalone cluster not up ({cluster.alive_workers()} ALIVE workers; exited: {dead}; left running: {left})\n{cluster.log_tails()}")
        time.sleep(1)
    return cluster


# --------------------------------------------------------------------------- Spark's REST API: which executors ran tasks


class ExecutorWatch(threading.Thread):
    """Polls ``/api/v1/applications/<id>/executors`` of a driver's UI; keeps each executor's highest ``totalTasks``."""

    def __init__(self, ui_port: int, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
        self.interval_s = interval_s
        self.tasks: dict[str, int] = {}
        self.hosts: dict[str, str] = {}
        self.app_id: str | None = None
        self.errors = 0
        self._halt = threading.Event()

    def _get(self, url: str):
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)

    def poll(self) -> None:
        """One poll: the application's id (once), then every executor's totalTasks (active and dead ones)."""
        if self.app_id is None:
            apps = self._get(self.base)
            if not apps:
                return
            self.app_id = apps[0]["id"]
        for e in self._get(f"{self.base}/{self.app_id}/allexecutors"):
            self.tasks[e["id"]] = max(self.tasks.get(e["id"], 0), int(e["totalTasks"]))
            self.hosts[e["id"]] = e.get("hostPort", "")

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.poll()
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                self.errors += 1  # the UI is not up yet, or already gone
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def executors_with_tasks(self) -> dict[str, int]:
        """Non-driver executors that ran at least one task: id -> the highest totalTasks seen."""
        return {k: v for k, v in self.tasks.items() if k != "driver" and v > 0}


def make_dist(dest: Path) -> Path:
    """``make dist`` (the real recipe, setup not re-run) on a copy of the tree; returns the folder with the wheel and the zip."""
    src = dest / "src"
    for name in ("jobs", "features", "training", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "Makefile", "constraints.txt", "README.md"):
        shutil.copy2(REPO / name, src / name)
    venv = Path(sys.prefix)
    subprocess.run(
        ["make", "-s", "-C", str(src), "-o", str(venv / ".shopseq-setup"), f"VENV={venv}", f"DIST={dest / 'dist'}", "dist"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return dest / "dist"


# --------------------------------------------------------------------------- what is submitted


def build_dist(dest: Path) -> Path:
    """:func:`make_dist` into ``dest``; returns the ``--py-files`` zip."""
    return make_dist(dest) / Path(PYFILES).name


def submit_dir(dest: Path, pyfiles: Path) -> Path:
    """A folder holding only ``dist/<zip>`` and the entry script ``jobs/stages/run.py`` extracted from that zip (no ``conf/``, no code)."""
    import zipfile

    (dest / "dist").mkdir(parents=True)
    shutil.copy2(pyfiles, dest / PYFILES)
    entry = dest / ENTRY
    entry.parent.mkdir(parents=True)
    with zipfile.ZipFile(pyfiles) as z:
        entry.write_bytes(z.read(f"shopseq/{ENTRY}"))  # installed as shopseq/jobs/...; submitted as the checkout names it
    return dest


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """A standalone master and two 1-core workers on 127.0.0.1 for the session; at teardown every process it started is gone."""
    cluster = start_standalone(tmp_path_factory.mktemp("standalone"))
    try:
        yield cluster
    finally:
        left = cluster.stop()
        assert not left, f"processes of the standalone cluster still running: {left}\n{cluster.log_tails()}"
