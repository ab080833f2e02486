"""Batches for training: Petastorm over a gold table's snapshot files, or in-memory tensors.

No Spark on the hot path: the job resolves the gold tables' current files
(``TableIO.files``) on the driver and hands the list to each rank, which
streams its shard with Petastorm's ``make_batch_reader``.

Sharding is by file: rank ``r`` of ``size`` reads files ``r, r + size, ...`` of
the sorted snapshot list (the gold writer makes at least four files per rank).
Petastorm's own ``cur_shard`` deals row groups by an internal index, so shard
sizes are not known in advance; by file, every rank computes every shard's
exact row count from the Parquet footers. Epochs are then the same number of
steps on every rank, ``min over ranks of rows_r // batch_size``: a rank that ran
out of data early would leave the others waiting forever in an allreduce.
Each epoch opens a fresh, finite (one pass) reader seeded by ``seed + epoch``,
so a run resumed at epoch ``e`` sees exactly the batches an uninterrupted run
saw at epoch ``e`` (an endless reader is not reproducible across its passes).
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


def model_columns(schema: dict) -> list[str]:
    """The numeric gold columns training reads: sequences, seq_len, profiles, labels, masks."""
    return [c["name"] for c in schema["columns"] if c["role"] in ("sequence", "profile", "label", "mask")]


def count_rows(files: list[str]) -> int:
    """Rows in a list of Parquet files, from their footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(_local(f)).metadata.num_rows for f in files)


def _local(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def shard_files(files: list[str], rank: int, world_size: int) -> list[str]:
    """This rank's files: every ``world_size``-th of the sorted snapshot list."""
    ordered = sorted(files)
    if len(ordered) < world_size:
        raise ValueError(f"{len(ordered)} files for {world_size} ranks: rewrite the gold table with at least one file per rank")
    return ordered[rank::world_size]


def steps_per_epoch(files: list[str], batch_size: int, world_size: int) -> int:
    """Whole batches every rank can take in one pass of its shard (the smallest shard decides), at least one."""
    return max(1, min(count_rows(shard_files(files, r, world_size)) // batch_size for r in range(world_size)))


def petastorm_batches(
    files: list[str],
    columns: list[str],
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    steps: int | None,
    shuffle: bool = True,
    workers: int = 2,
    deterministic: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Yield up to ``steps`` batches (all when None) from one pass over this rank's shard.

    ``deterministic`` uses Petastorm's in-process pool so the order depends only on ``seed``.
    """
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    # Petastorm 0.12 calls pyarrow's legacy ParquetDataset API (FutureWarning per file) and hands torch
    # read-only arrays (UserWarning); both are known and harmless, and per rank they flood the job's log.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    # Distributed only: each rank reads its own files.
    mine = shard_files(files, rank, world_size)
    torch.manual_seed(seed)  # BatchedDataLoader's shuffling buffer draws from torch's RNG
    reader = make_batch_reader(
        mine,
        schema_fields=columns,
        num_epochs=1,
        shuffle_row_groups=shuffle,
        seed=seed,
        reader_pool_type="dummy" if deterministic else "thread",
        workers_count=1 if deterministic else workers,
    )
    try:
        loader = BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=8 * batch_size if shuffle else 0)
        for i, batch in enumerate(loader):
            if steps is not None and i >= steps:
                break
            yield batch
    finally:
        reader.stop()
        reader.join()


def load_tensors(files: list[str], columns: list[str]) -> dict[str, Tensor]:
    """The whole table as tensors in memory (baselines, the benchmark's reference, small evaluations)."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(_local(f), columns=columns) for f in files]
    out: dict[str, Tensor] = {}
    for col in columns:
        chunks = [t.column(col).combine_chunks() for t in tables]
        if chunks and hasattr(chunks[0], "flatten") and str(chunks[0].type).startswith("list"):
            arrays = [np.stack(c.to_numpy(zero_copy_only=False)) if len(c) else np.zeros((0, 0)) for c in chunks]
            out[col] = torch.from_numpy(np.concatenate([a for a in arrays if a.size], axis=0))
        else:
            out[col] = torch.from_numpy(np.concatenate([c.to_numpy(zero_copy_only=False) for c in chunks]))
    return out


def tensor_batches(data: dict[str, Tensor], batch_size: int, rank: int, world_size: int, seed: int, steps: int | None, shuffle: bool = True) -> Iterator[dict[str, Tensor]]:
    """Batches from in-memory tensors with the same contract as :func:`petastorm_batches`."""
    n = len(next(iter(data.values())))
    g = torch.Generator().manual_seed(seed)
    # Distributed only: rank r takes rows r, r + size, ...
    idx = torch.arange(rank, n, world_size)
    total = steps if steps is not None else (len(idx) + batch_size - 1) // batch_size
    pos = 0
    order = idx[torch.randperm(len(idx), generator=g)] if shuffle else idx
    for _ in range(total):
        if pos >= len(order):
            order = idx[torch.randperm(len(idx), generator=g)] if shuffle else idx
            pos = 0
        take = order[pos : pos + batch_size]
        pos += batch_size
        yield {k: v[take] for k, v in data.items()}
