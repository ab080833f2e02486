"""What a training rank does with its peers, behind one small interface with two backends.

:func:`train_fn <shopseq.training.loop.train_fn>` calls these and nothing else for
distribution, so the same loop runs under every launcher:

- :class:`HorovodDist`: Horovod's collectives (``horovod.spark.run``,
  ``horovodrun``); gradients are averaged by ``hvd.DistributedOptimizer``.
- :class:`TorchDist`: ``torch.distributed`` (gloo on CPU, NCCL on GPU) in the
  ranks ``torchrun`` starts under ``TorchDistributor``; gradients are averaged
  by :meth:`TorchDist.average_gradients`, an explicit allreduce after
  ``backward()`` (no ``DistributedDataParallel``: see that method).
- ``None`` (one process): the loop skips every call.

Both average a gradient as Horovod does (every parameter joins, a missing
gradient counts as zeros; sum, then times ``1 / size``), so on 2 ranks, where a
sum of two floats and a halving are exact, both backends train bit-identically.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from typing import Any, Callable, ContextManager, Literal, Protocol, TypeVar

log = logging.getLogger(__name__)

Backend = Literal["horovod", "torch"]
ReduceOp = Literal["mean", "sum"]
T = TypeVar("T")

# A rank whose collective fails because a peer died waits this long before it exits, so that the peer's failure,
# not this consequence of it, is the first failed Spark task the driver hears of (TorchDistributor reports only that one).
PEER_FAILURE_GRACE_S = 3.0


class Dist(Protocol):
    """A rank's view of its peers: who it is, and the collectives the training loop needs.

    ``local_rank``: the index of this rank's GPU among the devices it sees;
    ``local_size``: the ranks on this host (they share its cores).
    """

    rank: int
    size: int
    local_rank: int
    local_size: int

    def distributed_optimizer(self, optimizer: Any, model: Any) -> Any:
        """The optimizer the loop steps (before any state is loaded into it)."""

    def average_gradients(self, optimizer: Any) -> None:
        """Replace every parameter's gradient by its mean over the ranks (after ``backward()``, before unscaling or stepping)."""

    def stepping(self, optimizer: Any) -> ContextManager[Any]:
        """The context of ``optimizer.step()`` once the gradients are averaged."""

    def broadcast_state(self, state: dict[str, Any]) -> None:
        """Overwrite each tensor of ``state`` (a model's ``state_dict()``) in place with rank 0's."""

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` (any picklable value) on every rank."""

    def allreduce(self, tensor: Any, op: ReduceOp, name: str) -> Any:
        """A new tensor: the mean or sum of ``tensor`` over the ranks (on the device of ``tensor``)."""

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        """Every rank's ``obj``, in rank order."""

    def close(self) -> None:
        """Leave the group at the end of training."""


def init_dist(distributed: bool, backend: Backend, timeout_s: int | None = None) -> Dist | None:
    """This rank's :class:`Dist` (None for one process); ``timeout_s``: torch.distributed's wait for a peer (Horovod reads its own from the environment)."""
    if not distributed:
        return None
    if backend == "horovod":
        return HorovodDist()
    if backend == "torch":
        return TorchDist(timeout_s)
    raise ValueError(f"unknown distributed backend {backend!r}; expected horovod or torch")


class HorovodDist:
    """Horovod's collectives; gradients are averaged by ``hvd.DistributedOptimizer`` (gloo on CPU here, NCCL when built with it)."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()

    def distributed_optimizer(self, optimizer: Any, model: Any) -> Any:
        # DistributedOptimizer builds a new optimizer from the param groups, without their state: wrap before loading any.
        return self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def average_gradients(self, optimizer: Any) -> None:
        optimizer.synchronize()  # waits for the allreduces backward() started (zeros for a parameter without a gradient)

    def stepping(self, optimizer: Any) -> ContextManager[Any]:
        return optimizer.skip_synchronize()  # averaged already: step() must not allreduce again

    def broadcast_state(self, state: dict[str, Any]) -> None:
        self.hvd.broadcast_parameters(state, root_rank=0)

    def broadcast_object(self, obj: T) -> T:
        return self.hvd.broadcast_object(obj, root_rank=0)

    def allreduce(self, tensor: Any, op: ReduceOp, name: str) -> Any:
        return self.hvd.allreduce(tensor, op=self.hvd.Sum if op == "sum" else self.hvd.Average, name=name)

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        return self.hvd.allgather_object(obj, name=name)

    def close(self) -> None:
        pass  # Horovod shuts down at the process's exit


class TorchDist:
    """``torch.distributed`` in a rank started by ``torchrun`` (``env://``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).

    NCCL when this rank sees a GPU, else gloo. ``timeout_s`` bounds every
    collective's wait for a peer (``train.rank_timeout_s``); None keeps
    torch's default. A collective that fails (a peer died or stopped
    answering) waits :data:`PEER_FAILURE_GRACE_S`, then raises.
    """

    def __init__(self, timeout_s: int | None) -> None:
        import torch
        import torch.distributed as dist

        self.dist = dist
        self.backend = "nccl" if torch.cuda.is_available() else "gloo"
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # torchrun's: the GPU index among this process's visible devices
        if self.backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        self.device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group(self.backend, **({"timeout": timeout} if timeout else {}))
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        # TorchDistributor starts one torchrun per Spark task (LOCAL_WORLD_SIZE is 1 even when tasks share a host): count the ranks per host.
        hosts = self.allgather_object(socket.gethostname(), "hosts")
        self.local_size = hosts.count(hosts[self.rank])

    def distributed_optimizer(self, optimizer: Any, model: Any) -> Any:
        return optimizer  # gradients are averaged by average_gradients, not by a wrapper

    def average_gradients(self, optimizer: Any) -> None:
        """One allreduce of all gradients, flattened per dtype: sum, then times ``1 / size``, as Horovod averages.

        An explicit allreduce rather than ``DistributedDataParallel``: every
        parameter of the optimizer joins (a missing gradient as zeros, as
        Horovod does, so a parameter a rank's forward skipped cannot hang the
        others); parameters used outside the module's ``forward`` (the item
        table in the loss) need no special care; the model and its checkpoint
        keys stay unwrapped; and the GradScaler unscales the averaged
        gradients, exactly as on the Horovod path. DDP's overlap of
        communication with backward buys little for a model this small.
        """
        import torch

        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_kind: dict[tuple[Any, Any], list[Any]] = {}
        for p in params:
            by_kind.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for group in by_kind.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            self._call(self.dist.all_reduce, flat)
            flat.mul_(1.0 / self.size)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def stepping(self, optimizer: Any) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def broadcast_state(self, state: dict[str, Any]) -> None:
        for tensor in state.values():
            on_device = tensor.to(self.device)
            self._call(self.dist.broadcast, on_device, src=0)
            if on_device is not tensor:
                tensor.copy_(on_device)

    def broadcast_object(self, obj: T) -> T:
        box = [obj]
        self._call(self.dist.broadcast_object_list, box, src=0)
        return box[0]

    def allreduce(self, tensor: Any, op: ReduceOp, name: str) -> Any:
        out = tensor.detach().to(self.device, copy=True)
        self._call(self.dist.all_reduce, out)
        if op == "mean":
            out.mul_(1.0 / self.size)
        return out.to(tensor.device)

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        out: list[Any] = [None] * self.dist.get_world_size()
        self._call(self.dist.all_gather_object, out, obj)
        return out

    def close(self) -> None:
        self.dist.destroy_process_group()

    def _call(self, collective: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a collective; if it fails, log it, wait :data:`PEER_FAILURE_GRACE_S` and re-raise."""
        try:
            return collective(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - gloo and NCCL raise RuntimeError subclasses of their own
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.error("rank %d: %s failed (a peer died or stopped answering?): %s", getattr(self, "rank", -1), collective.__name__, first)
            time.sleep(PEER_FAILURE_GRACE_S)
            raise
