"""One function starts training, whatever runs the ranks.

- ``spark`` (default): ``horovod.spark.run`` on the job's Spark session, one
  rank per Spark task (a barrier-like job of ``num_proc`` tasks), started with
  the executors' Python (``spark.pyspark.python``, else ``$PYSPARK_PYTHON``),
  on ``train.nics`` (null: Horovod probes the interfaces), waiting
  ``train.start_timeout_s`` for the tasks to start;
- ``torch_distributor``: ``pyspark.ml.torch.distributor.TorchDistributor`` on
  the job's Spark session (``local_mode=False``): a barrier stage of
  ``num_proc`` tasks, each running ``torchrun`` with one rank that joins the
  others through ``torch.distributed`` (gloo on CPU; NCCL when Spark gives
  each task a GPU, ``spark.task.resource.gpu.amount``). Databricks recommends
  it over Horovod after Runtime 15.4 LTS ML;
- ``horovodrun``: ``horovod.run``, the programmatic ``horovodrun``, on this host
  (or ``hosts``), gloo;
- ``local``: ``train_fn`` in this process, without Horovod.

Every launcher runs the same ``train_fn`` (:mod:`shopseq.training.loop`), whose
distributed calls go through :mod:`shopseq.training.dist`.

A rank that dies ends the job: its peers' next collective fails at once when
its sockets close, or after ``rank_timeout_s`` (Horovod's
``HOROVOD_GLOO_TIMEOUT_SECONDS``, gloo's wait for a peer; torch.distributed's
process-group timeout) when its host stops answering; the surviving ranks then
exit, and :func:`launch` raises :class:`TrainingFailed` with one line naming the
first rank that failed and the checkpoint a re-run resumes from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
from typing import Any, Callable, Iterator, Literal, Mapping

log = logging.getLogger(__name__)

Launcher = Literal["spark", "torch_distributor", "horovodrun", "local"]
LAUNCHERS: tuple[str, ...] = ("spark", "torch_distributor", "horovodrun", "local")
FAULT_ENV = "SHOPSEQ_FAULT"  # test hook (shopseq.training.loop): forwarded to the ranks when set
# Horovod's RuntimeError when a rank's process exits non-zero (horovod/runner/gloo_run.py, 0.28.1).
_HOROVOD_EXIT = re.compile(r"Process name: (\S+)\s+Exit code: (-?\d+)")
# Spark's abort of TorchDistributor's barrier stage: the first task that failed, ResultTask(stage, partition); partition = rank.
_BARRIER_TASK = re.compile(r"barrier task ResultTask\((\d+), (\d+)\) finished unsuccessfully")
_PYTHON_ERROR = re.compile(r"^(\w+(?:Error|Exception)): (.+)$", re.M)


class TrainingFailed(RuntimeError):
    """Distributed training stopped because a rank failed; the message says which and where to resume."""


def launch(
    fn: Callable[[Any], dict],
    params: Any,
    launcher: Launcher = "spark",
    num_proc: int = 2,
    start_timeout: int = 300,
    rank_timeout_s: int = 120,
    nics: list[str] | None = None,
) -> list[dict]:
    """Run ``fn(params)`` on ``num_proc`` ranks; returns the ranks' results, rank 0 first.

    Every rank's result with Horovod; rank 0's alone with ``torch_distributor``
    (``TorchDistributor.run`` passes back rank 0's return value only).
    ``start_timeout``: seconds Horovod waits for its Spark tasks to start and
    register; ``rank_timeout_s``: how long a rank waits for an unresponsive
    peer in a collective before failing; ``nics``: the interfaces Horovod's
    ranks talk over (None: it probes them). A failed rank raises
    :class:`TrainingFailed`.
    """
    if launcher == "local" or num_proc == 1 and launcher not in ("spark", "torch_distributor"):
        return [fn(dataclasses.replace(params, distributed=False))]
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; expected {', '.join(LAUNCHERS[:-1])} or {LAUNCHERS[-1]}")
    if rank_timeout_s < 1:
        raise ValueError(f"train.rank_timeout_s: must be >= 1 second, got {rank_timeout_s!r}")
    if start_timeout < 1:
        raise ValueError(f"train.start_timeout_s: must be >= 1 second, got {start_timeout!r}")
    # Distributed only: the fault hook reaches the ranks when a test sets it.
    fault = {FAULT_ENV: os.environ[FAULT_ENV]} if os.environ.get(FAULT_ENV) else {}
    spark = _active_spark(launcher) if launcher == "torch_distributor" else None
    try:
        if launcher == "torch_distributor":
            torch_params = dataclasses.replace(params, distributed=True, backend="torch", rank_timeout_s=rank_timeout_s)
            return [_run_torch_distributor(spark, fn, torch_params, num_proc, fault)]
        # Distributed only: gloo's peer timeout in the ranks' environment.
        env = {"HOROVOD_GLOO_TIMEOUT_SECONDS": str(int(rank_timeout_s)), **fault}
        if launcher == "spark":
            import horovod.spark

            kwargs = horovod_spark_kwargs(num_proc, start_timeout, env, nics, executor_python(_pyspark_python_conf()))
            results = horovod.spark.run(fn, args=(params,), **kwargs)
        else:  # horovodrun
            import horovod

            with _environ(env):  # horovod.run hands the ranks a copy of this process's environment
                results = horovod.run(fn, args=(params,), np=num_proc, use_gloo=True, start_timeout=start_timeout, network_interfaces=nics, verbose=0)
    except Exception as exc:  # noqa: BLE001 - Horovod reports a failed rank as RuntimeError, a failed Spark job as Exception
        raise TrainingFailed(failure_message(exc, getattr(params, "checkpoint_dir", None), num_proc)) from exc
    return sorted(results, key=lambda r: r.get("rank", 0))


def horovod_spark_kwargs(num_proc: int, start_timeout: int, env: dict[str, str], nics: list[str] | None, executable: str) -> dict[str, Any]:
    """The keyword arguments of ``horovod.spark.run`` (0.28.1) besides ``fn`` and ``args``.

    ``env`` is added to the environment of each rank's process; ``executable``
    is the Python the ranks start with on the executors; ``nics`` None lets
    Horovod probe every interface the tasks share.
    """
    return {
        "num_proc": num_proc, "start_timeout": start_timeout, "use_gloo": True, "verbose": 0, "env": env,
        "nics": set(nics) if nics else None, "executable": executable,
    }  # fmt: skip


def executor_python(conf: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The executors' Python: ``conf`` (the session's ``spark.pyspark.python``), else ``$PYSPARK_PYTHON``, else this interpreter (local mode)."""
    return conf or environ.get("PYSPARK_PYTHON") or sys.executable


def _pyspark_python_conf() -> str | None:
    """``spark.pyspark.python`` of the active Spark session's context, or None (not set, or no session)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    return spark.sparkContext.getConf().get("spark.pyspark.python") if spark is not None else None


def _active_spark(launcher: str) -> Any:
    """The job's active Spark session, which ``launcher`` runs its ranks on (ValueError without one)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is None:
        raise ValueError(f"train.launcher {launcher} needs an active Spark session (its ranks run as Spark tasks)")
    return spark


def _run_torch_distributor(spark: Any, fn: Callable[[Any], dict], params: Any, num_proc: int, env: dict[str, str]) -> dict:
    """``fn(params)`` on ``num_proc`` TorchDistributor ranks (``local_mode=False``: on executors); rank 0's result."""
    from pyspark import SparkFiles, cloudpickle
    from pyspark.ml.torch.distributor import TorchDistributor

    sc = spark.sparkContext
    # NCCL when Spark hands each task a GPU (what TorchDistributor needs to pin one per rank); else CPU ranks with gloo.
    use_gpu = float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
    py_files = sorted({os.path.basename(p) for p in getattr(sc, "_python_includes", None) or []})
    entry = rank_entry(cloudpickle.dumps((fn, params)), env, py_files, SparkFiles.getRootDirectory())
    log.info("TorchDistributor: %d rank(s) on executors, %s", num_proc, "NCCL on GPUs" if use_gpu else "gloo on CPUs")
    return TorchDistributor(num_processes=num_proc, local_mode=False, use_gpu=use_gpu).run(entry)


def rank_entry(payload: bytes, env: dict[str, str], py_files: list[str], driver_files_root: str) -> Callable[[], dict]:
    """The function each ``torchrun`` rank calls: set ``env``, find the job's ``--py-files``, then unpickle and run ``payload``.

    A rank is a fresh interpreter started by ``torchrun``, not a Spark Python
    worker: it has the worker's environment, but not the ``--py-files`` the
    worker put on its ``sys.path`` (``<SparkFiles root>/<name>``: the executor's
    working directory on a cluster, which the rank inherits; the driver's
    ``userFiles`` folder in local mode). So this function is pickled by value
    (a closure: nothing to import), adds them, and only then unpickles
    ``payload`` (``train_fn`` and its params), which imports ``training``.
    """

    def entry() -> dict:
        import os
        import sys

        os.environ.update(env)
        for name in py_files:
            for root in (os.getcwd(), driver_files_root):
                path = os.path.join(root, name)
                if os.path.exists(path):
                    if path not in sys.path:
                        sys.path.insert(1, path)
                    break
        from pyspark import cloudpickle

        fn, params = cloudpickle.loads(payload)
        return fn(params)

    return entry


def failure_message(exc: BaseException, checkpoint_dir: str | None, num_proc: int) -> str:
    """One line: which rank exited first and how, and the checkpoint a re-run resumes from (or that none exists).

    Horovod names the rank and its exit status; TorchDistributor only the
    first Spark task that failed (its partition is the rank) and its Python
    error: the rank's exit status is in that executor's log.
    """
    text = str(exc)
    m = _HOROVOD_EXIT.search(text)
    barrier = _BARRIER_TASK.search(text)
    if m:
        code = int(m[2])
        how = f"exited with status {code}" + (" (killed: SIGKILL or out of memory)" if code in (137, -9) else "")
        what = f"rank {m[1]} of {num_proc} {how}"
    elif barrier:
        error = _PYTHON_ERROR.search(text, barrier.end())
        cause = error[0].strip() if error else "its Spark task failed"
        if "TorchDistributor failed during training" in cause:
            cause = "its process exited without a result (killed, out of memory or an error): its exit status and output are in the executor's log"
        what = f"rank {barrier[2]} of {num_proc} failed: {cause}"
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        what = f"a rank of {num_proc} failed ({lines[0] if lines else type(exc).__name__})"
    return f"training stopped: {what}; {resume_hint(checkpoint_dir)}"


def resume_hint(checkpoint_dir: str | None) -> str:
    """Where a re-run with ``train.resume: true`` continues: ``last.pt`` and its epoch, or from scratch.

    ``checkpoint_dir`` may be a local folder or a URI (:mod:`shopseq.training.storage`).
    """
    from shopseq.training import storage

    path = storage.join(checkpoint_dir, "last.pt") if checkpoint_dir else None
    if not path or not storage.isfile(path):
        return "no epoch was checkpointed, so a re-run trains from scratch"
    epoch = storage.load_torch(path)["epoch"]
    return f"a re-run resumes from {path} (epoch {epoch} complete, continues with epoch {epoch + 1})"


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` set for the block, then restored."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
