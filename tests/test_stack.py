"""Proof that every component of the stack runs here: Petastorm over Delta files, Horovod on Spark."""

from __future__ import annotations

import numpy as np
import pytest


def test_petastorm_reads_delta_files_into_torch_with_two_shards(spark, tables):
    import torch
    from petastorm import make_batch_reader
    from petastorm.pytorch import DataLoader

    n = 64
    df = spark.range(n).selectExpr("id", "cast(id * 2 as double) as x", "array(id, id + 1, id + 2) as seq")
    tables.append("gold", df.repartition(4))  # 4 files -> 4 row groups: at least 2 per rank
    files = tables.files("gold")
    assert len(files) == 4 and all(f.startswith("file://") and f.endswith(".parquet") for f in files)

    seen: list[np.ndarray] = []
    for rank in range(2):
        with make_batch_reader(files, cur_shard=rank, shard_count=2, num_epochs=1, shuffle_row_groups=False, workers_count=1) as reader:
            ids = []
            for batch in DataLoader(reader, batch_size=8):
                assert isinstance(batch["seq"], torch.Tensor) and batch["seq"].shape[1:] == (3,)
                assert torch.equal(batch["seq"][:, 0], batch["id"]) and torch.equal(batch["x"], batch["id"].double() * 2)
                ids.append(batch["id"].numpy())
            seen.append(np.concatenate(ids))
    assert len(seen[0]) > 0 and len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1])  # disjoint shards
    assert sorted(np.concatenate(seen).tolist()) == list(range(n))  # together: every row exactly once


def _horovod_step():
    """Runs in each Horovod rank (Spark task): one SGD step on rank-specific data."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    torch.manual_seed(100 + hvd.rank())  # different init per rank: the broadcast must fix it
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # Distributed only: start every rank from rank 0's weights and optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    w0 = [p.detach().clone().numpy() for p in model.parameters()]
    # Distributed only: gradients are averaged across ranks by allreduce.
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    x = torch.full((4, 3), float(hvd.rank() + 1))
    y = torch.full((4, 1), float(hvd.rank()))
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return {"rank": hvd.rank(), "size": hvd.size(), "w0": w0, "w1": [p.detach().numpy() for p in model.parameters()]}


@pytest.mark.horovod
def test_horovod_spark_run_two_gloo_ranks_end_with_identical_weights(spark):
    import sys

    import cloudpickle
    import horovod.spark
    import torch

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    results = horovod.spark.run(_horovod_step, num_proc=2, use_gloo=True, verbose=0, start_timeout=120)
    results = sorted(results, key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1] and all(r["size"] == 2 for r in results)
    for a, b in zip(results[0]["w0"], results[1]["w0"]):
        np.testing.assert_array_equal(a, b)  # broadcast from rank 0
    for a, b in zip(results[0]["w1"], results[1]["w1"]):
        np.testing.assert_array_equal(a, b)  # identical after the step
    # The step equals one single-process SGD step on the mean of both ranks' gradients.
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        for p, w in zip(model.parameters(), results[0]["w0"]):
            p.copy_(torch.from_numpy(w))
    grads = []
    for rank in range(2):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(torch.full((4, 3), float(rank + 1))), torch.full((4, 1), float(rank))).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    expected = [w - 0.1 * (g0 + g1).numpy() / 2 for w, g0, g1 in zip(results[0]["w0"], grads[0], grads[1])]
    for got, want in zip(results[0]["w1"], expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[0]["w1"][0], results[0]["w0"][0])  # the step moved the weights
