"""Issue 17: a model is never stale or mismatched.

Training keeps a current checkpoint, resumes a current unfinished one and otherwise
starts a new run with the old checkpoint kept under its run id; evaluate and predict
refuse a checkpoint trained on another vocabulary.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from tests.conftest import EPOCHS, REPO, TRAINED_OVERRIDES, copy_root

MODEL = {"encoder": "gru", "dim": 8}
CURRENT = {"gold_train_version": 4, "gold_val_version": 4, "vocab_version": "v2"}


def _state(epoch: int = 1, bad_epochs: int = 0, model: dict | None = None, **lineage: object) -> dict:
    return {"epoch": epoch, "bad_epochs": bad_epochs, "model_config": model or MODEL, "lineage": {**CURRENT, "silver_version": 3, **lineage}, "params": {"mlflow_run_id": "run1"}}


def test_checkpoint_verdict():
    from shopseq.jobs.stages.train import checkpoint_verdict

    def verdict(state: dict, epochs: int = 3, patience: int = 2) -> tuple[str, str]:
        return checkpoint_verdict(state, CURRENT, MODEL, epochs, patience)

    assert verdict({}) == ("fresh", "no checkpoint")
    assert verdict(_state(epoch=1)) == ("resume", "trained on the current gold tables, vocabulary and model config, unfinished at epoch 1 of 3")
    assert verdict(_state(epoch=2)) == ("done", "trained on the current gold tables, vocabulary and model config, finished at epoch 2")
    assert verdict(_state(epoch=0, bad_epochs=2))[0] == "done"  # stopped early
    assert verdict(_state(gold_train_version=3, vocab_version="v1")) == (
        "fresh", "trained on other data or another model config (gold_train_version 3 -> 4, vocab_version v1 -> v2)",
    )  # fmt: skip
    assert verdict(_state(gold_val_version=None)) == ("fresh", "trained on other data or another model config (gold_val_version None -> 4)")
    assert verdict(_state(model={**MODEL, "dim": 16})) == ("fresh", "trained on other data or another model config (model config)")
    assert verdict(_state(silver_version=9))[0] == "resume"  # silver alone does not make a model stale: gold and vocab do


def test_earlier_run_is_moved_under_its_run_id_and_never_overwritten(cfg_factory, tmp_path):
    from shopseq.jobs.catalog import catalog
    from shopseq.jobs.stages.train import keep_earlier_run, run_key

    cfg = cfg_factory()
    ckpt = Path(catalog(cfg).checkpoints)
    assert keep_earlier_run(cfg, {}) is None  # no folder yet: nothing to keep
    files = {"last.pt": b"L", "best.pt": b"B", "epoch-0000.pt": b"E0", "history.json": b"[]"}

    def write_run() -> None:
        ckpt.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (ckpt / name).write_bytes(data)
        (ckpt / "notes.txt").write_text("not a run file")

    write_run()
    kept = keep_earlier_run(cfg, _state())
    assert kept == f"{ckpt}/runs/run1"
    assert {p.name: p.read_bytes() for p in Path(kept).iterdir()} == files
    assert sorted(p.name for p in ckpt.iterdir()) == ["notes.txt", "runs"]
    write_run()
    assert keep_earlier_run(cfg, _state()) == f"{ckpt}/runs/run1-2"  # the same run id again: a new folder
    assert {p.name: p.read_bytes() for p in Path(kept).iterdir()} == files
    assert keep_earlier_run(cfg, _state()) is None  # nothing left to move

    no_run = {"lineage": {"vocab_version": "v1"}, "model_config": MODEL}
    assert run_key(no_run) == run_key(dict(no_run)) and run_key(no_run).startswith("lineage-") and len(run_key(no_run)) == len("lineage-") + 12
    assert run_key({**no_run, "lineage": {"vocab_version": "v2"}}) != run_key(no_run)


def _args(root: Path, *extra: str) -> list[str]:
    # One process for data B's short training: the launcher is not part of a model's lineage, and this test is about lineage.
    overrides = [f"app.data_root={root}", *TRAINED_OVERRIDES, "train.epochs=1", "train.max_steps_per_epoch=3", "train.launcher=local", "train.num_proc=1"]
    return ["--conf-dir", str(REPO / "conf"), *[a for o in overrides for a in ("--set", o)], *extra]


@pytest.mark.e2e
def test_new_data_trains_a_new_model_keeps_the_old_and_predict_uses_it(spark, trained, tmp_path, caplog, capsys):
    """e2e: a second dataset through ingest, sessionize and features, one short training and one prediction
    (measured 178 s on the 2-core machine while other test runs shared it, load average 10; the sessionize and
    features stages are two thirds of it). Cheaper than its own pipeline: data A is the shared fixture's.

    Data A is the shared ``trained`` fixture's root (copied, so the fixture stays as it is): its model is
    current and finished. Data B (another seed) goes into the same root; ``shopseq train`` then trains a
    new model on B from epoch 0 and keeps A's under its MLflow run id; ``shopseq predict`` scores with
    B's model; A's model is refused by predict and evaluate (another vocabulary).
    """
    import torch

    from shopseq.jobs.stages.build_features import run_features
    from shopseq.jobs.catalog import catalog
    from shopseq.jobs.config import load_config
    from shopseq.jobs.stages.evaluate import main as evaluate_main
    from shopseq.jobs.stages.generate import write_generated
    from shopseq.jobs.stages.ingest import run_ingest
    from shopseq.jobs.stages.predict import main as predict_main
    from shopseq.jobs.stages.sessionize import run_sessionize
    from shopseq.jobs.tables import TableIO
    from shopseq.jobs.stages.train import load_schema
    from shopseq.jobs.stages.train import main as train_main

    root = tmp_path / "root"
    copy_root(trained, root)  # a new MLflow store; the runs it names stay readable
    cfg = load_config("local", REPO / "conf", [f"app.data_root={root}", *TRAINED_OVERRIDES])
    tables, cat = TableIO(spark, cfg), catalog(cfg)
    last = Path(cat.checkpoint("last"))
    a_state = torch.load(last, map_location="cpu", weights_only=False)
    a_run, a_bytes = a_state["params"]["mlflow_run_id"], last.read_bytes()
    assert a_state["lineage"] == trained.train["lineage"] and len(a_state["history"]) == EPOCHS

    # A's model is current and finished: `shopseq train` says so and trains nothing.
    caplog.set_level(logging.INFO, logger="shopseq.jobs.stages.train")
    assert train_main(_args(root)) == 0
    assert [r.getMessage() for r in caplog.records if "not retrained" in r.getMessage()] == [
        f"checkpoint {last} is trained on the current gold tables, vocabulary and model config, finished at epoch {EPOCHS - 1}; not retrained (--fresh starts a new run)"
    ]
    assert last.read_bytes() == a_bytes and not (last.parent / "runs").exists()

    # Data B: another seed into the same landing folder, then ingest (appends), sessionize and features
    # (no OPTIMIZE after sessionize: it only compacts files, and costs a third of the stage here).
    b_cfg = load_config("local", REPO / "conf", [f"app.data_root={root}", *TRAINED_OVERRIDES, "generate.seed=11", "generate.users=60", "tables.optimize=false"])
    write_generated(spark, b_cfg, cat.landing)
    run_ingest(tables, b_cfg)
    run_sessionize(tables, b_cfg, plot=False)
    run_features(tables, b_cfg)
    b_schema = load_schema(cfg)
    b_gold = {"gold_train_version": tables.version("gold_train"), "gold_val_version": tables.version("gold_val"), "vocab_version": b_schema["inputs"]["vocab_version"]}
    assert b_gold["gold_train_version"] > a_state["lineage"]["gold_train_version"] and b_gold["vocab_version"] != a_state["lineage"]["vocab_version"]

    caplog.clear()
    assert train_main(_args(root)) == 0
    kept = last.parent / "runs" / a_run
    assert [r.getMessage() for r in caplog.records if "kept in" in r.getMessage()] == [
        f"checkpoint {last}: trained on other data or another model config (gold_train_version {a_state['lineage']['gold_train_version']} -> "
        f"{b_gold['gold_train_version']}, gold_val_version {a_state['lineage']['gold_val_version']} -> {b_gold['gold_val_version']}, "
        f"vocab_version {a_state['lineage']['vocab_version']} -> {b_gold['vocab_version']}); starting a new run from epoch 0, "
        f"the earlier run's checkpoint is kept in {kept}"
    ]
    assert sorted(p.name for p in kept.iterdir()) == ["best.pt", *(f"epoch-{e:04d}.pt" for e in range(EPOCHS)), "history.json", "last.pt"]
    assert (kept / "last.pt").read_bytes() == a_bytes
    b_state = torch.load(last, map_location="cpu", weights_only=False)
    assert {k: b_state["lineage"][k] for k in b_gold} == b_gold  # trained on B ...
    assert b_state["epoch"] == 0 and [h["epoch"] for h in b_state["history"]] == [0]  # ... from scratch, not resumed from A
    b_run = b_state["params"]["mlflow_run_id"]
    assert b_run != a_run and sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "epoch-0000.pt", "history.json", "last.pt", "runs"]

    # `shopseq predict` scores with B's model, and its lineage says so.
    assert predict_main(_args(root)) == 0
    commit = tables.history("predictions")[0]["metadata"]
    best = cat.checkpoint("best")
    assert (commit["model_version"], commit["checkpoint"], commit["gold_train_version"], commit["vocab_version"]) == (
        f"{b_run}-e0000", best, b_gold["gold_train_version"], b_gold["vocab_version"],
    )  # fmt: skip
    assert commit["checkpoint_sha256"] == hashlib.sha256(Path(best).read_bytes()).hexdigest()
    rows = tables.read("predictions").where(f"model_version = '{b_run}-e0000'").select("gold_train_version", "vocab_version").distinct().collect()
    assert [tuple(r) for r in rows] == [(b_gold["gold_train_version"], b_gold["vocab_version"])]

    # A's model has another vocabulary: predict and evaluate refuse it in one line (exit 2).
    capsys.readouterr()
    a_best = kept / "best.pt"
    a_items, b_items = a_state["schema"]["embedding_sizes"]["item"], b_schema["embedding_sizes"]["item"]
    refusal = (
        f"checkpoint {a_best} was trained on vocabulary {a_state['lineage']['vocab_version']} ({a_items} items), the gold tables now use "
        f"vocabulary {b_gold['vocab_version']} ({b_items} items): run `shopseq train` to train a model on them"
    )
    before = tables.version("predictions")
    assert predict_main(_args(root, "--checkpoint", str(a_best))) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"shopseq predict: error: {refusal}"
    assert tables.version("predictions") == before
    assert evaluate_main(_args(root, "--checkpoint", f"runs/{a_run}/best.pt")) == 2  # relative: looked up in the checkpoint folder
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"shopseq evaluate: error: {refusal}"
