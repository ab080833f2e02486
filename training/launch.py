"""One function starts training, whatever runs the ranks.

- ``spark`` (default): ``horovod.spark.run`` on the job's Spark session, one
  rank per Spark task (a barrier-like job of ``num_proc`` tasks);
- ``horovodrun``: ``horovod.run``, the programmatic ``horovodrun``, on this host
  (or ``hosts``), gloo;
- ``local``: ``train_fn`` in this process, without Horovod.

Databricks recommends TorchDistributor after 15.4 LTS ML: it would be one more
branch here with the same ``train_fn``.

A rank that dies ends the job: its peers' next collective fails at once when
its sockets close, or after ``rank_timeout_s`` (``HOROVOD_GLOO_TIMEOUT_SECONDS``,
gloo's wait for a peer) when its host stops answering; the surviving ranks then
exit, and :func:`launch` raises :class:`TrainingFailed` with one line naming the
first rank that exited and the checkpoint a re-run resumes from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from typing import Any, Callable, Iterator, Literal

log = logging.getLogger(__name__)

Launcher = Literal["spark", "horovodrun", "local"]
FAULT_ENV = "SHOPSEQ_FAULT"  # test hook (training.loop): forwarded to the ranks when set
# Horovod's RuntimeError when a rank's process exits non-zero (horovod/runner/gloo_run.py, 0.28.1).
_HOROVOD_EXIT = re.compile(r"Process name: (\S+)\s+Exit code: (-?\d+)")


class TrainingFailed(RuntimeError):
    """Distributed training stopped because a rank failed; the message says which and where to resume."""


def launch(
    fn: Callable[[Any], dict], params: Any, launcher: Launcher = "spark", num_proc: int = 2, start_timeout: int = 300, rank_timeout_s: int = 120
) -> list[dict]:
    """Run ``fn(params)`` on ``num_proc`` ranks; returns each rank's result, rank 0 first.

    ``rank_timeout_s``: how long a rank waits for an unresponsive peer in a
    collective before failing (gloo's timeout; also its rendezvous at start).
    A failed rank raises :class:`TrainingFailed`.
    """
    if launcher == "local" or num_proc == 1 and launcher != "spark":
        return [fn(dataclasses.replace(params, distributed=False))]
    if launcher not in ("spark", "horovodrun"):
        raise ValueError(f"unknown launcher {launcher!r}; expected spark, horovodrun or local")
    if rank_timeout_s < 1:
        raise ValueError(f"train.rank_timeout_s: must be >= 1 second, got {rank_timeout_s!r}")
    # Distributed only: the ranks' environment (gloo's peer timeout; the fault hook when a test sets it).
    env = {"HOROVOD_GLOO_TIMEOUT_SECONDS": str(int(rank_timeout_s))}
    if os.environ.get(FAULT_ENV):
        env[FAULT_ENV] = os.environ[FAULT_ENV]
    try:
        if launcher == "spark":
            import horovod.spark

            # env is added to the Spark task's environment of each rank's process.
            results = horovod.spark.run(fn, args=(params,), num_proc=num_proc, use_gloo=True, start_timeout=start_timeout, verbose=0, env=env)
        else:  # horovodrun
            import horovod

            with _environ(env):  # horovod.run hands the ranks a copy of this process's environment
                results = horovod.run(fn, args=(params,), np=num_proc, use_gloo=True, start_timeout=start_timeout, verbose=0)
    except Exception as exc:  # noqa: BLE001 - Horovod reports a failed rank as RuntimeError, a failed Spark job as Exception
        raise TrainingFailed(failure_message(exc, getattr(params, "checkpoint_dir", None), num_proc)) from exc
    return sorted(results, key=lambda r: r.get("rank", 0))


def failure_message(exc: BaseException, checkpoint_dir: str | None, num_proc: int) -> str:
    """One line: which rank exited first and how, and the checkpoint a re-run resumes from (or that none exists)."""
    m = _HOROVOD_EXIT.search(str(exc))
    if m:
        code = int(m[2])
        how = f"exited with status {code}" + (" (killed: SIGKILL or out of memory)" if code in (137, -9) else "")
        what = f"rank {m[1]} of {num_proc} {how}"
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        what = f"a rank of {num_proc} failed ({lines[0] if lines else type(exc).__name__})"
    return f"training stopped: {what}; {resume_hint(checkpoint_dir)}"


def resume_hint(checkpoint_dir: str | None) -> str:
    """Where a re-run with ``train.resume: true`` continues: ``last.pt`` and its epoch, or from scratch."""
    path = os.path.join(checkpoint_dir, "last.pt") if checkpoint_dir else None
    if not path or not os.path.isfile(path):
        return "no epoch was checkpointed, so a re-run trains from scratch"
    import torch

    epoch = torch.load(path, map_location="cpu", weights_only=False)["epoch"]
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
