"""Issue 17: crash safety of the table stages, proven by killing them (docs/reliability.md).

One data root is taken through the pipeline by a chain of real processes, each
killed at a different point by the fault hook (``$SHOPSEQ_FAULT``,
:func:`shopseq.jobs.tables.fault_point`): during a write (SIGKILL from inside the
Spark task that writes, so files are half-written and nothing commits) and
between the commits of two tables, or of the last table and the schema
artifact. Each process re-runs what the one before left unfinished. After each
kill every table either reads exactly the uninterrupted run's rows or does not
exist yet; the artifact state is the one the kill point implies. A last run in
this process completes the pipeline: the rows (order-independent checksums),
the schema artifact and the audit rows equal the uninterrupted run's, and after
the documented VACUUM every Parquet file under a table folder is one its
current snapshot references.

The uninterrupted run is the suite's shared ``trained`` fixture (same config,
same generated input); the chain reads that fixture's landing folder and
scores with its checkpoint, and never writes under its root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.checksums import DIGITS, checksum
from tests.conftest import REPO, TRAINED_OVERRIDES

# Four pipeline processes (a JVM each) and a final run on the shared fixture's data: minutes on 2 cores, more under load.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]
# The tables the chain writes, and columns that name a run rather than hold data (left out of the checksums).
TABLES = ("bronze_events", "run_metrics", "silver_events", "sessions", "vocab", "gold_train", "gold_val", "gold_test", "predictions", "predictions_latest")
RUN_COLUMNS = {"bronze_events": ["ingest_batch"], "silver_events": ["ingest_batch"], "predictions": ["scored_at"], "predictions_latest": ["scored_at"]}
AUDIT = ("stage", "input_rows", "accepted", "quarantined", "duplicates", "by_reason")
# Keys of the schema artifact that name table versions and locations, which differ between two data roots.
ROOT_KEYS = ("tables", "inputs", "lineage")


def table_sums(tables, names=TABLES) -> dict[str, tuple[int, str]]:
    """Checksums of the tables that exist (run_metrics is compared as audit rows instead)."""
    return {n: checksum(tables.read(n).drop(*RUN_COLUMNS.get(n, []))) for n in names if n != "run_metrics" and tables.exists(n)}


def prediction_rows(tables) -> dict[str, dict]:
    """``user_id -> row`` of ``predictions`` (``scored_at`` left out: the run's wall clock)."""
    return {r["user_id"]: r.asDict() for r in tables.read("predictions").drop("scored_at").collect()}


def assert_same_predictions(got: dict[str, dict], want: dict[str, dict]) -> None:
    """The same users, partition and lineage; scores equal to 1e-5 and the same top items up to float ties at the k-th place.

    Two processes score with batches of other sizes, so float32 sums may differ in the last bits (as in
    tests/test_predict.py's Spark-vs-in-process check); a checksum of rounded floats would flip on them.
    """
    import numpy as np

    assert sorted(got) == sorted(want)
    exact = ("as_of", "as_of_key", "cutoff_time", "model_version", "silver_version", "gold_train_version", "vocab_version")
    for user, w in want.items():
        g = got[user]
        assert {c: g[c] for c in exact} == {c: w[c] for c in exact}, user
        np.testing.assert_allclose(g["top_scores"], w["top_scores"], atol=1e-5)
        np.testing.assert_allclose([g["purchase_prob"], g["churn_prob"]], [w["purchase_prob"], w["churn_prob"]], atol=1e-5)
        assert sorted(g["next_action_probs"]) == sorted(w["next_action_probs"])
        np.testing.assert_allclose([g["next_action_probs"][k] for k in sorted(w["next_action_probs"])], [w["next_action_probs"][k] for k in sorted(w["next_action_probs"])], atol=1e-5)
    agree = np.mean([list(got[u]["top_items"]) == list(w["top_items"]) for u, w in want.items()])
    assert agree >= 0.99, agree


def audit_rows(tables) -> list[tuple]:
    return sorted(tuple(r) for r in tables.read("run_metrics").select(*AUDIT).collect())


def unreferenced(tables, name: str) -> list[str]:
    """Parquet files under the table folder (its log's checkpoints aside) that its current snapshot does not reference."""
    from shopseq.jobs.tables import local_path

    root = Path(tables.ref(name).location)
    on_disk = {str(p) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}
    return sorted(on_disk - {local_path(f) for f in tables.files(name)})


def artifact(root: Path) -> dict:
    return json.loads((root / "gold" / "schema.json").read_text())


def rounded(value):
    """The artifact with its floats rounded to DIGITS places (price and profile statistics are Spark float sums)."""
    if isinstance(value, float):
        return round(value, DIGITS)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


@pytest.fixture(scope="module")
def chain(trained, tmp_path_factory):
    """The killed processes, their exit codes and what each left behind (read back by this test's Spark)."""
    from shopseq.jobs.config import load_config
    from shopseq.jobs.tables import TableIO

    root = tmp_path_factory.mktemp("crash")
    logs = tmp_path_factory.mktemp("crash-logs")
    sets = [
        f"app.data_root={root}", *TRAINED_OVERRIDES, "spark.shuffle_partitions=2", "spark.driver_memory=1g",
        f"source.path={trained.root}/raw/generated/events", f"predict.checkpoint={trained.root}/checkpoints/best.pt",
        "tables.optimize=false",  # OPTIMIZE moves rows between files, never changes them: the checksums do not see it; it only costs time
    ]  # fmt: skip
    cfg = load_config("local", REPO / "conf", sets)
    tables = TableIO(trained.tables.spark, cfg)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def killed(fault: str, *argv: str) -> dict:
        args = [sys.executable, "-m", "shopseq.jobs.cli", *argv, "--conf-dir", str(REPO / "conf"), *[a for s in sets for a in ("--set", s)]]
        log_path = logs / f"{fault.replace(':', '_')}.log"
        with open(log_path, "w") as out:
            proc = subprocess.Popen(args, cwd=REPO, env={**env, "SHOPSEQ_FAULT": fault}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM (its Python workers stop with the JVM)
                raise
        state = {
            "rc": rc,
            "log": log_path.read_text()[-3000:],
            "exists": sorted(n for n in TABLES if tables.exists(n)),
            "versions": {n: tables.version(n) for n in TABLES},
            "sums": table_sums(tables),
            "predictions": prediction_rows(tables) if tables.exists("predictions") else None,
            "audit": audit_rows(tables) if tables.exists("run_metrics") else None,
            "artifact": artifact(root) if (root / "gold" / "schema.json").is_file() else None,
        }
        return state

    states = {
        # ingest: bronze committed, the run_metrics row's write killed in its Spark task.
        "ingest": killed("during_write:run_metrics", "run", "--stages", "ingest"),
        # sessionize (after an ingest re-run that records the killed run's audit row): silver committed, the sessions write killed mid-way.
        "sessionize": killed("during_write:sessions", "run", "--stages", "ingest,sessionize"),
        # predict: predictions committed, the predictions_latest write killed mid-way.
        "predict": killed("during_write:predictions_latest", "run", "--stages", "sessionize,features,predict"),
        # features (forced, so an earlier artifact exists): all three gold tables committed, killed before schema.json.
        "features": killed("after_commit:gold_test", "features", "--force"),
    }
    return {"root": root, "cfg": cfg, "tables": tables, "states": states}


def test_every_kill_leaves_each_table_at_a_committed_version_with_the_uninterrupted_rows(chain, trained):
    ref = table_sums(trained.tables, ("bronze_events", "silver_events", "sessions", "vocab", "gold_train", "gold_val", "gold_test"))
    s = chain["states"]
    for stage in ("ingest", "sessionize", "predict"):  # SIGKILLed from inside a write task: the driver died of signal 9
        assert s[stage]["rc"] == -9, (stage, s[stage]["log"])
    assert s["features"]["rc"] == 137, s["features"]["log"]  # os._exit(137) in the driver after gold_test's commit

    assert s["ingest"]["exists"] == ["bronze_events"]  # run_metrics was never committed: only orphan files
    assert s["ingest"]["sums"] == {"bronze_events": ref["bronze_events"]}
    assert s["sessionize"]["exists"] == ["bronze_events", "run_metrics", "silver_events"]
    assert s["sessionize"]["sums"] == {k: ref[k] for k in ("bronze_events", "silver_events")}
    after_predict = ["bronze_events", "gold_test", "gold_train", "gold_val", "predictions", "run_metrics", "sessions", "silver_events", "vocab"]
    assert s["predict"]["exists"] == after_predict  # predictions committed, predictions_latest not
    assert {k: v for k, v in s["predict"]["sums"].items() if k != "predictions"} == ref
    assert s["predict"]["sums"]["predictions"][0] == trained.tables.read("silver_events").select("user_id").distinct().count()  # a row per user
    assert s["features"]["exists"] == after_predict
    assert {k: v for k, v in s["features"]["sums"].items() if k != "predictions"} == ref  # the forced rebuild wrote the same rows
    # The kill came between gold_test's commit and schema.json: the artifact on disk names the earlier gold versions.
    gold_now = {split: s["features"]["versions"][f"gold_{split}"] for split in ("train", "val", "test")}
    assert {split: t["version"] for split, t in s["features"]["artifact"]["tables"].items()} == {split: v - 1 for split, v in gold_now.items()}


def test_a_rerun_completes_the_pipeline_to_the_uninterrupted_rows_artifact_and_audit(chain, trained):
    from shopseq.jobs.stages.run import run_pipeline
    from shopseq.jobs.tables import local_path

    tables, root, s = chain["tables"], chain["root"], chain["states"]
    committed_predictions = s["predict"]["predictions"]
    result = run_pipeline(tables, chain["cfg"], stages="sessionize,features,predict")
    assert [(r["stage"], r["skipped"]) for r in result["stages"]] == [("sessionize", True), ("features", False), ("predict", False)]

    ref = table_sums(trained.tables, ("bronze_events", "silver_events", "sessions", "vocab", "gold_train", "gold_val", "gold_test"))
    now = table_sums(tables)
    assert {k: now[k] for k in ref} == ref
    assert now["predictions"][0] == len(committed_predictions)
    assert_same_predictions(prediction_rows(tables), committed_predictions)  # the re-run replaced its (as_of, model version) partition with the same rows
    latest = tables.read("predictions_latest").drop("scored_at")
    assert checksum(latest) == checksum(tables.read("predictions").drop("scored_at"))  # one partition: latest = its rows

    # Each table's newest commit names the versions it was computed from, and they are the current ones.
    assert tables.history("silver_events")[0]["metadata"]["bronze_version"] == tables.version("bronze_events")
    assert tables.history("sessions")[0]["metadata"]["silver_version"] == tables.version("silver_events")
    for split in ("train", "val", "test"):
        assert tables.history(f"gold_{split}")[0]["metadata"]["lineage"]["silver_version"] == tables.version("silver_events")
    assert {r[0] for r in tables.read("predictions_latest").select("silver_version").distinct().collect()} == {tables.version("silver_events")}

    # The artifact: rebuilt for the current gold versions (not the stale one the kill left), equal to the uninterrupted run's.
    art, ref_art = artifact(root), artifact(trained.root)
    assert {split: t["version"] for split, t in art["tables"].items()} == {split: tables.version(f"gold_{split}") for split in ("train", "val", "test")}
    assert rounded({k: v for k, v in art.items() if k not in ROOT_KEYS}) == rounded({k: v for k, v in ref_art.items() if k not in ROOT_KEYS})
    assert art["inputs"]["vocab_version"] == ref_art["inputs"]["vocab_version"]

    # Audit: the killed first ingest's row, recorded by the next ingest from what it stored, then that ingest's all-duplicates row.
    (first,) = [r for r in audit_rows(trained.tables) if r[2] > 0]  # its one ingest that stored rows (test_run re-runs it: all duplicates)
    _, n_input, n_accepted, _, _, _ = first
    recovered = ("ingest", n_accepted, n_accepted, 0, 0, "{}")
    rerun = ("ingest", n_input, 0, 0, n_input, "{}")
    assert audit_rows(tables) == s["sessionize"]["audit"] == sorted([recovered, rerun])
    details = [json.loads(r["details"]) for r in tables.read("run_metrics").where("accepted > 0").collect()]
    assert [d.get("recovered") for d in details] == [True]
    assert tables.read("bronze_events").count() == sum(r[2] for r in audit_rows(tables))  # every stored event is in an audit row

    # VACUUM as docs/operations.md says (here with no retention: nothing else uses these tables).
    orphans = {n: unreferenced(tables, n) for n in TABLES}
    # Unpartitioned writes open their file as rows arrive: the kill left it half-written. (The sessions write is
    # partitioned: Spark sorts all of a task's rows by partition before opening a file, so that kill came before any.)
    for killed_write in ("run_metrics", "predictions_latest"):
        assert orphans[killed_write], f"{killed_write}: the killed write left no file behind"
    assert orphans["silver_events"] and orphans["gold_train"]  # superseded by the re-runs' commits and OPTIMIZE
    versions = {n: tables.version(n) for n in TABLES}
    for n in TABLES:
        assert sorted(local_path(f) for f in tables.vacuum(n, retain_hours=0)) == orphans[n], n
        assert unreferenced(tables, n) == [], n
    assert {n: tables.version(n) for n in TABLES} == versions  # VACUUM commits nothing: no stage sees new input
    assert table_sums(tables) == now  # VACUUM removed no file a snapshot reads
