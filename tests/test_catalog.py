"""Issue 16: one catalog names every table and artifact of a data root; no other job joins paths onto the data root."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from tests.conftest import REPO

# The one other place allowed to build a path from the data root: the table resolver the catalog delegates to.
DELEGATES = {("jobs/tables.py", "table_ref")}


def _refers_to_data_root(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Attribute) and n.attr == "data_root") or (isinstance(n, ast.Name) and n.id == "data_root") for n in ast.walk(node)
    )


def _call_name(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Attribute):
        base = _call_name(ast.Call(func=f.value, args=[], keywords=[])) if isinstance(f.value, (ast.Attribute, ast.Name)) else ""
        return f"{base}.{f.attr}" if base else f.attr
    return f.id if isinstance(f, ast.Name) else ""


def data_root_joins(source: str) -> list[tuple[int, str]]:
    """``(line, enclosing function)`` of every path built from a data root: ``os.path.join``/``Path``/``PurePath``
    with it among the arguments, ``<data root> / x``, or an f-string that puts a ``/`` right after it."""
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}

    def function_of(node: ast.AST) -> str:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node.name
        return "<module>"

    found = []
    for node in ast.walk(tree):
        hit = False
        if isinstance(node, ast.Call) and _call_name(node) in ("os.path.join", "path.join", "join", "Path", "PurePath", "pathlib.Path"):
            hit = any(_refers_to_data_root(a) for a in node.args)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            hit = _refers_to_data_root(node.left) and not isinstance(node.left, ast.Constant)
        elif isinstance(node, ast.JoinedStr):
            parts = node.values
            hit = any(
                isinstance(p, ast.FormattedValue) and _refers_to_data_root(p.value) and isinstance(nxt, ast.Constant) and str(nxt.value).startswith("/")
                for p, nxt in zip(parts, parts[1:])
            )
        if hit:
            found.append((node.lineno, function_of(node)))
    return sorted(found)


def test_the_detector_finds_each_kind_of_join():
    sample = (
        "def f(cfg, data_root):\n"
        "    a = os.path.join(cfg.app.data_root, 'x')\n"
        "    b = Path(cfg.app.data_root) / 'reports'\n"
        "    c = f'{data_root}/tables'\n"
        "    d = f'under {cfg.app.data_root} already'\n"  # a message, not a path
        "    e = cfg.app.data_root\n"  # passing the root on is not joining
    )
    assert data_root_joins(sample) == [(2, "f"), (3, "f"), (3, "f"), (4, "f")]


def test_no_job_but_the_catalog_joins_the_data_root():
    offenders = {}
    for path in sorted((REPO / "jobs").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "jobs/catalog.py":
            continue
        hits = [(line, fn) for line, fn in data_root_joins(path.read_text()) if (rel, fn) not in DELEGATES]
        if hits:
            offenders[rel] = hits
    assert offenders == {}, "ask shopseq.jobs.catalog for the location instead"
    # The delegate is still the one resolving tables (so the exemption is not stale).
    assert [fn for _, fn in data_root_joins((REPO / "jobs" / "tables.py").read_text())] == ["table_ref"]


def test_default_locations_of_a_data_root(tmp_path, monkeypatch):
    from shopseq.jobs.catalog import Catalog

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.chdir(tmp_path)
    cat = Catalog("data")
    here = str(tmp_path)
    assert cat.location == f"{here}/data"
    assert cat.table("silver_events").location == f"{here}/data/tables/silver_events" and not cat.table("silver_events").is_catalog
    assert cat.schema_artifact == "data/gold/schema.json" and cat.gold_dir == "data/gold"
    assert cat.checkpoints == f"{here}/data/checkpoints"
    assert (cat.checkpoint("best"), cat.checkpoint("last")) == (f"{here}/data/checkpoints/best.pt", f"{here}/data/checkpoints/last.pt")
    assert cat.earlier_run("abc123") == f"{here}/data/checkpoints/runs/abc123"
    assert (cat.mlruns, cat.mlflow_uri) == (f"{here}/data/mlruns", f"file:{here}/data/mlruns")
    assert cat.reports == "data/reports" and cat.sessions_plot == "data/reports/sessions.png"
    assert cat.report("0123456789abcdef") == f"{here}/data/reports/0123456789abcdef"
    assert (cat.landing, cat.generated_events, cat.generate_marker) == ("data/raw/generated", "data/raw/generated/events", "data/raw/generated/_shopseq_generate.json")
    assert cat.bench("features", "1000") == "data/bench/features/1000" and cat.scratch("warmup") == "data/warmup"
    with pytest.raises(ValueError, match="unknown entry 'tmp'"):
        cat.scratch("tmp")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    assert Catalog("data").mlflow_uri == "databricks"


def test_config_keys_move_what_they_name(tmp_path, monkeypatch):
    from shopseq.jobs.catalog import catalog
    from shopseq.jobs.config import load_config

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    root = tmp_path / "root"
    moved = catalog(
        load_config("local", REPO / "conf", [
            f"app.data_root={root}", f"train.checkpoint_dir={tmp_path}/ckpt", f"evaluate.report_dir={tmp_path}/rep",
            "train.mlflow_tracking_uri=http://mlflow:5000", f"tables.root={tmp_path}/t", "tables.locations={vocab: main.other.vocab}",
        ])
    )  # fmt: skip
    assert moved.checkpoints == f"{tmp_path}/ckpt" and moved.checkpoint("last") == f"{tmp_path}/ckpt/last.pt"
    assert moved.earlier_run("r1") == f"{tmp_path}/ckpt/runs/r1"
    assert moved.report("anything") == f"{tmp_path}/rep"  # evaluate.report_dir is the folder itself
    assert moved.mlflow_uri == "http://mlflow:5000"
    assert moved.table("gold_train").location == f"{tmp_path}/t/gold_train"
    assert (moved.table("vocab").location, moved.table("vocab").is_catalog) == ("main.other.vocab", True)
    # What the keys do not move stays under the data root.
    assert (moved.schema_artifact, moved.landing, moved.reports) == (f"{root}/gold/schema.json", f"{root}/raw/generated", f"{root}/reports")

    # What app.artifact_root moves: the schema artifact, checkpoints (and earlier runs), reports and the local MLflow store; tables stay.
    art = catalog(load_config("local", REPO / "conf", [f"app.data_root={root}", f"app.artifact_root={tmp_path}/art"]))
    assert art.artifacts == f"{tmp_path}/art" and art.location == str(root)
    assert (art.schema_artifact, art.gold_dir) == (f"{tmp_path}/art/gold/schema.json", f"{tmp_path}/art/gold")
    assert (art.checkpoints, art.checkpoint("best"), art.earlier_run("r1")) == (
        f"{tmp_path}/art/checkpoints", f"{tmp_path}/art/checkpoints/best.pt", f"{tmp_path}/art/checkpoints/runs/r1",
    )  # fmt: skip
    assert (art.reports, art.report("e1"), art.sessions_plot) == (f"{tmp_path}/art/reports", f"{tmp_path}/art/reports/e1", f"{tmp_path}/art/reports/sessions.png")
    assert (art.mlruns, art.mlflow_uri) == (f"{tmp_path}/art/mlruns", f"file:{tmp_path}/art/mlruns")
    assert (art.table("gold_train").location, art.landing, art.bench("x")) == (f"{root}/tables/gold_train", f"{root}/raw/generated", f"{root}/bench/x")

    uc = catalog(load_config("local", REPO / "conf", [f"app.data_root={root}", "tables.catalog=main", "tables.schema=shopseq"]))
    assert [(uc.table(n).location, uc.table(n).is_catalog) for n in ("bronze_events", "predictions_latest")] == [
        ("main.shopseq.bronze_events", True), ("main.shopseq.predictions_latest", True),
    ]  # fmt: skip
    assert os.path.isabs(uc.checkpoints) and uc.checkpoints == f"{root}/checkpoints"


def test_the_jobs_answer_with_the_catalog(cfg_factory, tmp_path, monkeypatch):
    from shopseq.jobs.stages.build_features import schema_path
    from shopseq.jobs.catalog import TABLES, catalog
    from shopseq.jobs.config import SourceConfig
    from shopseq.jobs.stages.evaluate import METRICS_TABLE, report_dir
    from shopseq.jobs.stages.generate import landing_dir
    from shopseq.jobs.stages.run import TABLES as RUN_TABLES
    from shopseq.jobs.sources import default_path
    from shopseq.jobs.tables import CHANGE_DATA_FEED
    from shopseq.jobs.stages.train import checkpoint_dir, tracking_uri

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    cfg = cfg_factory()
    cat = catalog(cfg)
    assert TABLES == (
        "bronze_events", "quarantine", "run_metrics", "silver_events", "sessions", "vocab",
        "gold_train", "gold_val", "gold_test", "metrics", "predictions", "predictions_latest",
    ) == RUN_TABLES  # fmt: skip
    assert CHANGE_DATA_FEED <= set(TABLES) and METRICS_TABLE in TABLES
    assert (schema_path(cfg), landing_dir(cfg), checkpoint_dir(cfg), tracking_uri(cfg), report_dir(cfg, "e1")) == (
        f"{tmp_path}/gold/schema.json", f"{tmp_path}/raw/generated", f"{tmp_path}/checkpoints", f"file:{tmp_path}/mlruns", f"{tmp_path}/reports/e1",
    )  # fmt: skip
    assert default_path(SourceConfig(format="generated"), cfg.app.data_root) == cat.generated_events == f"{tmp_path}/raw/generated/events"


def test_an_object_store_artifact_root_gives_uris(tmp_path, monkeypatch):
    """A URI artifact root: every artifact is a URI under it (never made "absolute"); MLflow's file store stays on the data root's disk."""
    from shopseq.jobs.catalog import Catalog

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.chdir(tmp_path)
    cat = Catalog("data", artifact_root="s3://bucket/shopseq/")
    assert cat.schema_artifact == "s3://bucket/shopseq/gold/schema.json" and cat.gold_dir == "s3://bucket/shopseq/gold"
    assert (cat.checkpoints, cat.checkpoint("last"), cat.earlier_run("abc")) == (
        "s3://bucket/shopseq/checkpoints", "s3://bucket/shopseq/checkpoints/last.pt", "s3://bucket/shopseq/checkpoints/runs/abc",
    )  # fmt: skip
    assert (cat.reports, cat.report("e1"), cat.sessions_plot) == ("s3://bucket/shopseq/reports", "s3://bucket/shopseq/reports/e1", "s3://bucket/shopseq/reports/sessions.png")
    assert (cat.mlruns, cat.mlflow_uri) == (f"{tmp_path}/data/mlruns", f"file:{tmp_path}/data/mlruns")
    assert Catalog("data", artifact_root="s3://bucket/x", mlflow_tracking_uri="http://mlflow:5000").mlflow_uri == "http://mlflow:5000"
    assert cat.table("vocab").location == f"{tmp_path}/data/tables/vocab"  # tables stay on the data root (tables.root moves them)
    # A file:// root is local: MLflow's store goes there too, as the URI it is.
    local = Catalog("data", artifact_root="file:///srv/art")
    assert (local.checkpoint("best"), local.mlflow_uri) == ("file:///srv/art/checkpoints/best.pt", "file:///srv/art/mlruns")
    # Moved checkpoints and report folders may be URIs too.
    moved = Catalog("data", checkpoint_dir="gs://b/ckpt", report_dir="abfs://c/rep")
    assert (moved.checkpoint("last"), moved.earlier_run("r"), moved.report("e")) == ("gs://b/ckpt/last.pt", "gs://b/ckpt/runs/r", "abfs://c/rep")


def test_artifact_root_is_validated_when_config_loads(tmp_path):
    from shopseq.jobs.config import ConfigError, load_config

    assert load_config("local", REPO / "conf", ["app.artifact_root=s3://bucket/prefix"]).app.artifact_root == "s3://bucket/prefix"  # s3fs: test extra
    assert load_config("local", REPO / "conf", []).app.artifact_root is None
    with pytest.raises(ConfigError, match=r"--set: 'app.artifact_root' must be a non-empty path, or a URI whose fsspec filesystem is installed .*got 'nosuch://x'"):
        load_config("local", REPO / "conf", ["app.artifact_root=nosuch://x"])
    with pytest.raises(ConfigError, match=r"'app.artifact_root' must be a non-empty path"):
        load_config("local", REPO / "conf", ["app.artifact_root=' '"])
