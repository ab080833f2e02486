"""Issue 18 item 3: artifacts (schema, checkpoints, reports) through one storage layer, on a local folder and on S3.

The S3 tests run against a real S3 API: moto's server on a free local port,
reached by s3fs with the standard AWS_* variables (the way a user configures
credentials and a non-AWS endpoint).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from shopseq.training import storage

# --------------------------------------------------------------------------- the storage module on local paths


@pytest.fixture(params=["path", "file_uri"])
def root(request, tmp_path) -> str:
    """A local folder, as a plain path and as a ``file://`` URI: both must behave the same."""
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def test_locations():
    assert [storage.is_uri(p) for p in ("s3://b/k", "file:///x", "/x", "rel/x", "C:/x")] == [True, True, False, False, False]
    assert [storage.local_path(p) for p in ("/x/y", "rel", "file:///x/y", "s3://b/k")] == ["/x/y", "rel", "/x/y", None]
    assert storage.join("s3://b/pre/", "gold", "schema.json") == "s3://b/pre/gold/schema.json"
    assert storage.join("data", "gold", "schema.json") == os.path.join("data", "gold", "schema.json")
    assert storage.absolute("s3://b/k") == "s3://b/k" and storage.absolute("rel") == os.path.abspath("rel")
    assert storage.check_location("/anywhere") is None and storage.check_location("file:///x") is None
    assert storage.check_location("nosuch://x").startswith("unknown storage protocol 'nosuch'")
    with pytest.raises(storage.StorageError, match=r"^nosuch://b/k: unknown storage protocol 'nosuch'"):
        storage.read_bytes("nosuch://b/k")


def _exercise(root: str, local_dir: Path | None) -> None:
    """Every operation of the storage module under ``root`` (``local_dir``: the same folder on disk, to look behind it)."""
    folder = storage.join(root, "a", "b")
    assert not storage.exists(folder) and storage.listdir(folder) == []
    storage.makedirs(folder)
    storage.write_json(storage.join(folder, "x.json"), {"k": [1, 2]}, indent=1)
    storage.write_text(storage.join(folder, "note.md"), "héllo\n")
    storage.write_bytes(storage.join(folder, "blob.bin"), b"\x00\x01")
    storage.save_torch(storage.join(folder, "state.pt"), {"epoch": 3, "w": [0.5]})
    assert storage.read_json(storage.join(folder, "x.json")) == {"k": [1, 2]}
    assert storage.read_bytes(storage.join(folder, "x.json")) == b'{\n "k": [\n  1,\n  2\n ]\n}'
    assert storage.read_text(storage.join(folder, "note.md")) == "héllo\n"
    assert storage.load_torch(storage.join(folder, "state.pt")) == {"epoch": 3, "w": [0.5]}
    assert storage.listdir(folder) == ["blob.bin", "note.md", "state.pt", "x.json"]
    assert storage.exists(folder) and not storage.isfile(folder) and storage.isfile(storage.join(folder, "x.json"))
    assert storage.listdir(storage.join(root, "a")) == []  # files directly inside only: b/ is a folder

    # An error inside atomic_write leaves the old content, and no temporary file behind.
    with pytest.raises(RuntimeError, match="stopped"):
        with storage.atomic_write(storage.join(folder, "x.json")) as fh:
            fh.write(b"half")
            raise RuntimeError("stopped")
    assert storage.read_json(storage.join(folder, "x.json")) == {"k": [1, 2]}
    with pytest.raises(RuntimeError):
        with storage.atomic_write(storage.join(folder, "new.json")) as fh:
            fh.write(b"half")
            raise RuntimeError("stopped")
    assert not storage.exists(storage.join(folder, "new.json"))
    if local_dir is not None:
        assert sorted(os.listdir(local_dir / "a" / "b")) == ["blob.bin", "note.md", "state.pt", "x.json"]

    with storage.local_folder(folder) as local:
        assert sorted(os.listdir(local)) == ["blob.bin", "note.md", "state.pt", "x.json"]
        assert Path(local, "note.md").read_text() == "héllo\n"

    dest = storage.join(root, "a", "runs", "r1")
    storage.move_files(folder, ["state.pt", "x.json"], dest)
    assert (storage.listdir(folder), storage.listdir(dest)) == (["blob.bin", "note.md"], ["state.pt", "x.json"])
    assert storage.load_torch(storage.join(dest, "state.pt"))["epoch"] == 3
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(folder, "x.json"))


def test_local_folder_and_file_uri(root, tmp_path):
    _exercise(root, tmp_path)


# --------------------------------------------------------------------------- S3: moto's server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_bucket():
    """A real S3 API on 127.0.0.1 (moto's server) with one bucket; yields ``s3://<bucket>``.

    Configured the way a user would: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    AWS_DEFAULT_REGION and AWS_ENDPOINT_URL_S3 in the environment (no shopseq config).
    """
    import logging

    import boto3  # the test extra: s3fs, moto[s3], flask, flask-cors
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "shopseq-test", "AWS_SECRET_ACCESS_KEY": "shopseq-test", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        boto3.client("s3").create_bucket(Bucket="shopseq")
        try:
            yield "s3://shopseq"
        finally:
            s3fs.S3FileSystem.clear_instance_cache()  # no later test reuses a client of the stopped server
            server.stop()


@pytest.fixture
def s3(s3_bucket) -> str:
    """A fresh prefix in the bucket for one test."""
    return f"{s3_bucket}/{uuid.uuid4().hex[:8]}"


def test_s3_operations(s3):
    _exercise(s3, None)
    assert storage.check_location(s3) is None


def test_s3_object_appears_whole_or_not_at_all(s3):
    """An object is PUT once when the block ends: during the block readers still see the previous version."""
    path = storage.join(s3, "last.pt")
    storage.write_bytes(path, b"old")
    with storage.atomic_write(path) as fh:
        fh.write(b"new, ")
        assert storage.read_bytes(path) == b"old"
        fh.write(b"complete")
    assert storage.read_bytes(path) == b"new, complete"


def _cfg(*overrides: str):
    from shopseq.jobs.config import load_config

    return load_config("local", REPO / "conf", list(overrides))


def test_artifact_root_on_s3_schema_reports_and_config(s3, tmp_path):
    """The jobs' artifact I/O with ``app.artifact_root`` on S3: schema artifact, evaluation and benchmark reports."""
    from shopseq.jobs.bench.kit import write_report as write_bench_report
    from shopseq.jobs.stages.build_features import _write_schema, schema_path
    from shopseq.jobs.catalog import catalog
    from shopseq.jobs.stages.report import report_files, write_report
    from shopseq.jobs.stages.train import load_schema
    from shopseq.training.evaluation import Evaluation, MetricRow

    cfg = _cfg(f"app.data_root={tmp_path}/data", f"app.artifact_root={s3}")
    assert schema_path(cfg) == f"{s3}/gold/schema.json"
    schema = {"format": "shopseq-gold/1", "embedding_sizes": {"item": 24}, "inputs": {"vocab_version": "v1"}}
    assert _write_schema(schema, schema_path(cfg)) == f"{s3}/gold/schema.json"
    assert load_schema(cfg) == schema
    assert not os.path.exists(f"{tmp_path}/data")  # nothing landed on the local data root

    rows = [MetricRow("purchase", "roc_auc", None, "model", 0.75, 4), MetricRow("next_item", "hr", 10, "model", 0.5, 4, 0.25, 0.75)]
    evaluation = Evaluation(rows=rows, binary={"purchase": {"model": (np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.4, 0.9]))}})
    summary = {
        "evaluation_id": "e1", "gold_table": "gold_test", "gold_version": 3, "split_protocol": "temporal", "model_version": "m-e0001",
        "checkpoint": f"{s3}/checkpoints/best.pt", "checkpoint_epoch": 1, "gold_train_version": 2, "evaluated_at": "2026-12-03T00:00:00+00:00",
        "n_examples": {"purchase": 4, "next_item": 4}, "oov_share": math.nan,
    }  # fmt: skip
    out = catalog(cfg).report("e1")
    assert write_report(out, summary, evaluation, [10], 4) == f"{s3}/reports/e1/report.md"
    assert storage.listdir(out) == sorted(report_files([10]))
    assert storage.read_json(f"{out}/metrics.json")["oov_share"] is None  # NaN -> null, as locally
    assert storage.read_bytes(f"{out}/roc_purchase.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert storage.read_text(f"{out}/report.md").startswith("# Evaluation `e1`")

    md = write_bench_report("demo", {"rows": 3}, lambda r: f"# {r['rows']} rows\n", [catalog(cfg).reports, tmp_path / "docs"])
    assert md == "# 3 rows\n"
    assert storage.read_json(f"{s3}/reports/bench_demo.json") == {"rows": 3} == json.loads((tmp_path / "docs" / "bench_demo.json").read_text())
    assert storage.read_text(f"{s3}/reports/bench_demo.md") == md == (tmp_path / "docs" / "bench_demo.md").read_text()


# --------------------------------------------------------------------------- a real training run checkpointing to S3

L, N_ITEMS = 8, 24


def _gold_files(folder: Path, n: int, seed: int, files: int) -> list[str]:
    """Plain Parquet files of the training fixture's rows (``tests/test_training.py``), written without Spark."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.test_training import _rows

    names = ["item_idx_seq", "category_idx_seq", "event_type_idx_seq", "price_seq", "seq_len", "next_item_idx", "next_event_type_idx",
             "next_label_mask", "purchase_label", "purchase_label_mask", "churn_label", "churn_label_mask"]  # fmt: skip
    types = [pa.list_(pa.int32())] * 3 + [pa.list_(pa.float32())] + [pa.int32()] * 8
    rows = _rows(n, seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(files):
        part = rows[i::files]
        table = pa.table({c: pa.array([r[j] for r in part], type=t) for j, (c, t) in enumerate(zip(names, types))})
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(table, path)
        paths.append(f"file://{path}")
    return paths


def test_training_checkpoints_to_s3_and_evaluation_opens_them(s3, tmp_path):
    """Rank 0 writes its checkpoints to ``s3://`` (no shared disk); the freshness check and ``open_checkpoint`` read them back."""
    from shopseq.jobs.stages.build_features import _write_schema, schema_path
    from shopseq.jobs.catalog import catalog
    from shopseq.jobs.stages.train import keep_earlier_run, open_checkpoint
    from tests.test_training import _params, _schema
    from shopseq.training.checkpoint import load_model
    from shopseq.training.launch import launch
    from shopseq.training.loop import _latest_checkpoint, train_fn

    cfg = _cfg(f"app.data_root={tmp_path}/data", f"app.artifact_root={s3}", "train.epochs=2")
    ckpt_dir = catalog(cfg).checkpoints
    assert ckpt_dir == f"{s3}/checkpoints"
    gold = {"train": _gold_files(tmp_path / "train", 256, 1, 4), "val": _gold_files(tmp_path / "val", 64, 2, 2)}
    result = launch(train_fn, _params(gold, ckpt_dir, epochs=2, max_steps_per_epoch=4), launcher="local")[0]
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    names = storage.listdir(ckpt_dir)
    assert {"epoch-0000.pt", "epoch-0001.pt", "last.pt", "best.pt", "history.json"} == set(names)
    assert not (tmp_path / "data").exists() and not Path(ckpt_dir).exists()  # nothing written to a local folder
    assert storage.read_json(f"{ckpt_dir}/history.json") == json.loads(json.dumps(result["history"]))
    assert _latest_checkpoint(ckpt_dir) == f"{ckpt_dir}/last.pt"
    assert storage.read_bytes(f"{ckpt_dir}/last.pt") == storage.read_bytes(f"{ckpt_dir}/epoch-0001.pt")

    # The driver side: evaluate/predict open the checkpoint from S3 (vocabulary checked against the schema artifact there).
    _write_schema(_schema(), schema_path(cfg))
    ckpt, version = open_checkpoint(cfg, "last", "evaluate")
    assert ckpt.path == f"{ckpt_dir}/last.pt" and ckpt.state["epoch"] == 1
    assert version == "sha256-" + hashlib.sha256(storage.read_bytes(f"{ckpt_dir}/last.pt")).hexdigest()[:16] == "sha256-" + ckpt.digest[:16]
    by_name, _ = open_checkpoint(cfg, "epoch-0001.pt", "evaluate")  # a name inside the checkpoint folder
    assert by_name.digest == ckpt.digest
    model, state = load_model(f"{ckpt_dir}/best.pt")
    assert state["schema"] == _schema() and not model.training

    # The freshness check's move: the run's files go to <checkpoints>/runs/<run id>/ on S3; nothing is lost.
    kept = keep_earlier_run(cfg, {"params": {"mlflow_run_id": "run1"}})
    assert kept == f"{ckpt_dir}/runs/run1"
    assert storage.listdir(ckpt_dir) == [] and storage.listdir(kept) == sorted(names)
    assert keep_earlier_run(cfg, {"params": {"mlflow_run_id": "run1"}}) is None  # nothing left to move
    assert _latest_checkpoint(ckpt_dir) is None


def test_training_resumes_from_a_checkpoint_on_s3(s3, tmp_path):
    from tests.test_training import _params
    from shopseq.training.loop import train_fn

    gold = {"train": _gold_files(tmp_path / "train", 128, 1, 2), "val": _gold_files(tmp_path / "val", 64, 2, 2)}
    first = train_fn(_params(gold, f"{s3}/ckpt", epochs=1, max_steps_per_epoch=2))
    resumed = train_fn(_params(gold, f"{s3}/ckpt", epochs=2, max_steps_per_epoch=2))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1] and resumed["history"][0] == first["history"][0]
