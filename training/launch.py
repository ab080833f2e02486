"""One function starts training, whatever runs the ranks.

- ``spark`` (default): ``horovod.spark.run`` on the job's Spark session, one
  rank per Spark task (a barrier-like job of ``num_proc`` tasks);
- ``horovodrun``: ``horovod.run``, the programmatic ``horovodrun``, on this host
  (or ``hosts``), gloo;
- ``local``: ``train_fn`` in this process, without Horovod.

Databricks recommends TorchDistributor after 15.4 LTS ML: it would be one more
branch here with the same ``train_fn``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Literal

log = logging.getLogger(__name__)

Launcher = Literal["spark", "horovodrun", "local"]


def launch(fn: Callable[[Any], dict], params: Any, launcher: Launcher = "spark", num_proc: int = 2, start_timeout: int = 300) -> list[dict]:
    """Run ``fn(params)`` on ``num_proc`` ranks; returns each rank's result, rank 0 first."""
    if launcher == "local" or num_proc == 1 and launcher != "spark":
        return [fn(dataclasses.replace(params, distributed=False))]
    if launcher == "spark":
        import horovod.spark

        results = horovod.spark.run(fn, args=(params,), num_proc=num_proc, use_gloo=True, start_timeout=start_timeout, verbose=0)
    elif launcher == "horovodrun":
        import horovod

        results = horovod.run(fn, args=(params,), np=num_proc, use_gloo=True, start_timeout=start_timeout, verbose=0)
    else:
        raise ValueError(f"unknown launcher {launcher!r}; expected spark, horovodrun or local")
    return sorted(results, key=lambda r: r.get("rank", 0))
