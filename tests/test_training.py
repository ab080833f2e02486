"""The training loop on a small gold table with a planted pattern: real Petastorm, real Horovod."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from shopseq.training.launch import launch
from shopseq.training.loop import TrainParams, lr_factor, train_fn

L, N_ITEMS = 8, 24
SEQ_COLS = {"item_idx_seq": "item", "category_idx_seq": "category", "event_type_idx_seq": "event_type", "price_seq": None}


def _schema() -> dict:
    cols = [{"name": c, "dtype": "int32" if e else "float32", "shape": [L], "role": "sequence", **({"embedding": e} if e else {})} for c, e in SEQ_COLS.items()]
    cols += [{"name": "seq_len", "dtype": "int32", "shape": [], "role": "sequence"}]
    cols += [{"name": n, "dtype": "int32", "shape": [], "role": "mask" if n.endswith("mask") else "label"} for n in (
        "next_item_idx", "next_event_type_idx", "next_label_mask", "purchase_label", "purchase_label_mask", "churn_label", "churn_label_mask")]
    return {"max_len": L, "embedding_sizes": {"item": N_ITEMS, "category": 6, "event_type": 7}, "columns": cols}


def _rows(n: int, seed: int) -> list[tuple]:
    """Item i is always followed by item succ(i); carts (event type 4) predict a purchase; a censored tail."""
    rng = np.random.default_rng(seed)
    succ = lambda i: (i - 2 + 1) % (N_ITEMS - 2) + 2  # noqa: E731
    rows = []
    for k in range(n):
        length = int(rng.integers(3, L + 1))
        start = int(rng.integers(2, N_ITEMS))
        seq = [start]
        for _ in range(length - 1):
            seq.append(succ(seq[-1]))
        carted = bool(rng.random() < 0.4)
        etype = [2] * (length - 1) + [4 if carted else 2]
        pad = [0] * (L - length)
        censored = k % 5 == 0
        rows.append((
            pad + seq, pad + [s % 5 + 1 for s in seq], pad + etype, [0.0] * (L - length) + [0.5] * length, length,
            succ(seq[-1]), 2, 1,
            -100 if censored else int(carted), 0 if censored else 1,
            int(not carted), 1,
        ))
    return rows


@pytest.fixture(scope="module")
def gold(spark, tmp_path_factory):
    from shopseq.jobs.config import load_config
    from shopseq.jobs.tables import TableIO
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("gold")
    io = TableIO(spark, load_config("local", REPO / "conf", [f"app.data_root={root}"]))
    ddl = ("item_idx_seq array<int>, category_idx_seq array<int>, event_type_idx_seq array<int>, price_seq array<float>, seq_len int, "
           "next_item_idx int, next_event_type_idx int, next_label_mask int, purchase_label int, purchase_label_mask int, churn_label int, churn_label_mask int")
    io.append("gold_train", spark.createDataFrame(_rows(512, 1), ddl).repartition(8))
    io.append("gold_val", spark.createDataFrame(_rows(128, 2), ddl).repartition(4))
    return {"train": io.files("gold_train"), "val": io.files("gold_val"), "root": root}


def _params(gold, ckpt, **kw) -> TrainParams:
    base = dict(schema=_schema(), train_files=gold["train"], val_files=gold["val"], checkpoint_dir=str(ckpt),
                model={"dim": 32, "layers": 1, "heads": 2, "dropout": 0.0}, batch_size=32, epochs=3, lr=3e-3,
                deterministic=True, patience=5, distributed=False,
                # the train.* fields have no defaults of their own (TrainParams.from_config copies them from config)
                weight_decay=0.0, wide_lr_scale=10.0, lr_schedule="cosine", loss_weights={"next_item": 1.0, "next_action": 0.5, "purchase": 0.5, "churn": 0.5},
                num_negatives=0, next_item_positions="all", repeat_lr_scale=1.0, seed=7, resume=True, amp=False, workers=2, max_steps_per_epoch=None)
    base.update(kw)
    return TrainParams(**base)


def test_single_process_learns_and_checkpoints(gold, tmp_path):
    res = launch(train_fn, _params(gold, tmp_path / "ckpt"), launcher="local")[0]
    losses = [h["train_loss"] for h in res["history"]]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0], losses
    assert res["history"][-1]["val_hr@10"] > 0.8  # the successor rule is learnable
    assert res["history"][-1]["val_purchase_auc"] > 0.9  # carts predict purchases
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt")) == ["best.pt", "epoch-0000.pt", "epoch-0001.pt", "epoch-0002.pt", "last.pt"]


def test_resume_reproduces_next_epoch_loss(gold, tmp_path):
    full = train_fn(_params(gold, tmp_path / "a", lr_schedule="cosine"))
    # "Interrupted" after epoch 1: a run whose last checkpoint is epoch 1's, same config (same cosine curve).
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "epoch-0001.pt", tmp_path / "b" / "last.pt")
    resumed = train_fn(_params(gold, tmp_path / "b", lr_schedule="cosine"))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    # Same seed, same data order per epoch, same state, the learning rate from the global step: epoch 2 matches.
    assert resumed["history"][2]["train_loss"] == pytest.approx(full["history"][2]["train_loss"], rel=1e-5, abs=1e-6)
    assert resumed["weights_digest"] == pytest.approx(full["weights_digest"], rel=1e-6)


def test_lr_factor_cosine_and_constant():
    assert [lr_factor("cosine", s, 4) for s in (0, 1, 2, 3, 4, 9)] == pytest.approx([1.0, (1 + 2**-0.5) / 2, 0.5, (1 - 2**-0.5) / 2, 0.0, 0.0])
    assert [lr_factor("constant", s, 4) for s in (0, 4)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        lr_factor("linear", 0, 4)


@pytest.fixture(scope="module")
def two_ranks(gold, spark, tmp_path_factory):
    """One uninterrupted 2-epoch run on 2 gloo ranks (horovod.spark.run): checked below, and the reference of the killed-rank test."""
    ckpt = tmp_path_factory.mktemp("hvd")
    return launch(train_fn, _params(gold, ckpt, epochs=2, distributed=True), launcher="spark", num_proc=2), ckpt


@pytest.mark.horovod
def test_two_gloo_ranks_via_horovod_spark_run(two_ranks):
    results, ckpt = two_ranks
    assert [r["rank"] for r in results] == [0, 1] and all(r["size"] == 2 for r in results)
    assert results[0]["weights_digest"] == results[1]["weights_digest"]  # identical weights on both ranks
    losses = [h["train_loss"] for h in results[0]["history"]]
    assert losses[1] < losses[0]
    assert (ckpt / "last.pt").exists()


RANK_TIMEOUT_S = 20  # train.rank_timeout_s of the killed run
STARTUP_S = 60  # horovod.spark.run's start (about 12 s here) and one epoch, with a wide margin on 2 busy cores


@pytest.mark.horovod
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # Horovod's Spark thread re-raises the job cancel it asked for
def test_a_killed_rank_stops_the_job_with_one_line_and_a_rerun_resumes_its_epoch(gold, two_ranks, tmp_path, monkeypatch):
    """Rank 1 dies (exit 137, as SIGKILL) at step 3 of epoch 1: the job ends in time, naming the rank and the checkpoint of
    epoch 0; the re-run resumes there and its epoch 1 matches the uninterrupted run's (deterministic, CPU)."""
    import time

    from shopseq.training.launch import TrainingFailed

    full, _ = two_ranks
    ckpt = tmp_path / "killed"
    params = _params(gold, ckpt, epochs=2, distributed=True)
    monkeypatch.setenv("SHOPSEQ_FAULT", "rank1:epoch1:step3")  # the fault hook of training/loop.py, forwarded to the ranks
    start = time.monotonic()
    with pytest.raises(TrainingFailed) as failed:
        launch(train_fn, params, launcher="spark", num_proc=2, rank_timeout_s=RANK_TIMEOUT_S)
    elapsed = time.monotonic() - start
    assert str(failed.value) == (
        f"training stopped: rank 1 of 2 exited with status 137 (killed: SIGKILL or out of memory); "
        f"a re-run resumes from {ckpt}/last.pt (epoch 0 complete, continues with epoch 1)"
    )
    assert elapsed < STARTUP_S + RANK_TIMEOUT_S, elapsed
    assert sorted(p.name for p in ckpt.glob("*.pt")) == ["best.pt", "epoch-0000.pt", "last.pt"]  # epoch 1 never completed

    monkeypatch.delenv("SHOPSEQ_FAULT")
    resumed = launch(train_fn, params, launcher="spark", num_proc=2, rank_timeout_s=RANK_TIMEOUT_S)
    assert [h["epoch"] for h in resumed[0]["history"]] == [0, 1]  # epoch 0 from the checkpoint, epoch 1 trained again
    assert resumed[0]["history"][0]["train_loss"] == full[0]["history"][0]["train_loss"]  # the killed run's epoch 0 = the uninterrupted one's
    assert resumed[0]["history"][1]["train_loss"] == pytest.approx(full[0]["history"][1]["train_loss"], rel=0, abs=1e-6)
    assert resumed[0]["weights_digest"] == pytest.approx(full[0]["weights_digest"], rel=1e-9)
    assert resumed[0]["weights_digest"] == resumed[1]["weights_digest"]


def test_in_memory_source_runs_the_same_loop(gold, tmp_path):
    res = train_fn(_params(gold, tmp_path / "mem", source="memory", epochs=2))
    steps = res["history"][0]["steps"]
    assert steps == 512 // 32  # whole batches of the single shard
    assert res["history"][1]["train_loss"] < res["history"][0]["train_loss"]


# --------------------------------------------------------------------------- TorchDistributor (torch.distributed ranks)


@pytest.fixture(scope="module")
def torch_two_ranks(gold, spark, tmp_path_factory):
    """The same 2-epoch, 2-rank run as ``two_ranks``, launched by TorchDistributor (local_mode=False: a barrier stage of 2 tasks, gloo)."""
    import time

    ckpt = tmp_path_factory.mktemp("torchdist")
    start = time.monotonic()
    results = launch(train_fn, _params(gold, ckpt, epochs=2, distributed=True), launcher="torch_distributor", num_proc=2)
    return results, ckpt, time.monotonic() - start


@pytest.mark.horovod
def test_two_gloo_ranks_via_torch_distributor_train_like_horovod(torch_two_ranks, two_ranks):
    """Same data, seed and initialisation; both backends average gradients as sum x 1/2, exact in float32 on 2 ranks,
    and the ranks read the same shards in the same order: the losses and final weights equal Horovod's bit for bit."""
    results, ckpt, _ = torch_two_ranks
    hvd, _ = two_ranks
    assert [(r["rank"], r["size"]) for r in results] == [(0, 2)]  # TorchDistributor passes back rank 0's result only
    (res,) = results
    assert len(res["weights_digests"]) == 2 and res["weights_digests"][0] == res["weights_digests"][1]  # the ranks stayed in step
    assert [h["epoch"] for h in res["history"]] == [0, 1] and all(np.isfinite(h["train_loss"]) for h in res["history"])
    # Every validation row exactly once over both ranks: disjoint shards that cover the 128 rows.
    assert [h["val_examples"] for h in res["history"]] == [128.0, 128.0]
    assert {"epoch-0000.pt", "epoch-0001.pt", "last.pt"} <= {p.name for p in ckpt.glob("*.pt")}  # rank 0 wrote them
    assert [h["train_loss"] for h in res["history"]] == [h["train_loss"] for h in hvd[0]["history"]]
    assert res["weights_digest"] == hvd[0]["weights_digest"]


TORCH_STARTUP_S = 90  # the barrier stage, 2 torchrun agents and 2 ranks importing torch, and epoch 0 (the failure came after 41 s at load 8-12)


def test_a_killed_torch_distributor_rank_stops_the_job_with_one_line(gold, torch_two_ranks, tmp_path, monkeypatch):
    """Rank 1 dies (exit 137) at step 3 of epoch 1: rank 0's next allreduce fails, the barrier stage is aborted and launch
    raises TrainingFailed naming rank 1 and the checkpoint of epoch 0; the re-run resumes there and matches the uninterrupted run."""
    import time

    from shopseq.training.launch import TrainingFailed

    full, _, _ = torch_two_ranks
    ckpt = tmp_path / "killed"
    params = _params(gold, ckpt, epochs=2, distributed=True)
    monkeypatch.setenv("SHOPSEQ_FAULT", "rank1:epoch1:step3")  # reaches the torchrun ranks through rank_entry's environment
    start = time.monotonic()
    with pytest.raises(TrainingFailed) as failed:
        launch(train_fn, params, launcher="torch_distributor", num_proc=2, rank_timeout_s=RANK_TIMEOUT_S)
    elapsed = time.monotonic() - start
    assert str(failed.value) == (
        "training stopped: rank 1 of 2 failed: its process exited without a result (killed, out of memory or an error): "
        "its exit status and output are in the executor's log; "
        f"a re-run resumes from {ckpt}/last.pt (epoch 0 complete, continues with epoch 1)"
    )
    assert elapsed < TORCH_STARTUP_S + RANK_TIMEOUT_S, elapsed
    assert sorted(p.name for p in ckpt.glob("*.pt")) == ["best.pt", "epoch-0000.pt", "last.pt"]

    monkeypatch.delenv("SHOPSEQ_FAULT")
    (resumed,) = launch(train_fn, params, launcher="torch_distributor", num_proc=2, rank_timeout_s=RANK_TIMEOUT_S)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]
    # Rank 0's checkpoint (weights, Adam's moments) reached rank 1 by broadcast: epoch 1 and the weights match the uninterrupted run.
    assert resumed["history"][1]["train_loss"] == full[0]["history"][1]["train_loss"]
    assert resumed["weights_digests"] == full[0]["weights_digests"]


def test_horovod_spark_kwargs_carry_the_executors_python_nics_and_start_timeout():
    from shopseq.training.launch import horovod_spark_kwargs

    env = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "20"}
    assert horovod_spark_kwargs(4, 300, env, ["eth0", "ib0"], "./env/bin/python") == {
        "num_proc": 4, "start_timeout": 300, "use_gloo": True, "verbose": 0, "env": env, "nics": {"eth0", "ib0"}, "executable": "./env/bin/python",
    }  # fmt: skip
    assert horovod_spark_kwargs(2, 1, {}, None, "/usr/bin/python3")["nics"] is None  # null: Horovod probes the interfaces


def test_executor_python_is_the_sessions_then_the_environments_then_this_one(spark):
    import sys

    from shopseq.training.launch import _pyspark_python_conf, executor_python

    assert executor_python("./env/bin/python", {"PYSPARK_PYTHON": "/opt/py/bin/python"}) == "./env/bin/python"  # the session's conf wins
    assert executor_python(None, {"PYSPARK_PYTHON": "/opt/py/bin/python"}) == "/opt/py/bin/python"
    assert executor_python(None, {}) == sys.executable  # nothing set: this interpreter (local mode)
    assert _pyspark_python_conf() is None  # the test session sets $PYSPARK_PYTHON, not the conf


def test_rank_entry_finds_the_jobs_py_files_in_the_executors_working_directory(tmp_path, monkeypatch):
    """A torchrun rank is a fresh interpreter: the entry (pickled by value) puts the ``--py-files`` the executor fetched
    into its working directory on sys.path before it unpickles the function, which lives in one of them."""
    import subprocess
    import sys
    import zipfile

    from pyspark import cloudpickle

    from shopseq.training.launch import rank_entry

    shipped = tmp_path / "build" / "probe_pkg.zip"
    shipped.parent.mkdir()
    with zipfile.ZipFile(shipped, "w") as zf:
        zf.writestr("probe_pkg/__init__.py", "import os\n\ndef job(p):\n    return {'value': p + 1, 'fault': os.environ.get('SHOPSEQ_FAULT')}\n")
    monkeypatch.syspath_prepend(str(shipped))  # the driver imports it from its own copy
    import probe_pkg

    executor = tmp_path / "executor"  # the executor's working directory: Spark fetched the file there
    executor.mkdir()
    (executor / "probe_pkg.zip").write_bytes(shipped.read_bytes())
    entry = rank_entry(cloudpickle.dumps((probe_pkg.job, 41)), {"SHOPSEQ_FAULT": "rank1:epoch0:step0"}, ["probe_pkg.zip"], str(tmp_path / "driver-userFiles"))
    (tmp_path / "entry.pkl").write_bytes(cloudpickle.dumps(entry))
    script = "import sys; from pyspark import cloudpickle; print(cloudpickle.loads(open(sys.argv[1], 'rb').read())())"
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "entry.pkl")], cwd=executor, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "{'value': 42, 'fault': 'rank1:epoch0:step0'}"
