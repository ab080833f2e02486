"""Packaging for spark-submit: ``make dist``'s wheel and ``--py-files`` zip carry the code and the config, and workers' Python is chosen as Spark would.

The artifacts are built once, by the Makefile's own ``dist`` recipe run on a
copy of the working tree (so the checkout's ``build/`` and ``dist/`` stay
untouched), and each is imported in a fresh interpreter started outside the
repo with the editable install's finder removed: only the artifact can
provide ``shopseq.jobs``, ``shopseq.features`` and ``shopseq.training``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shopseq.jobs.config import load_config, to_dict
from shopseq.jobs.spark import python_env

REPO = Path(__file__).resolve().parent.parent
CODE = ("jobs", "features", "training", "conf")  # folders of the checkout, installed as shopseq.<folder>

# Run in the fresh interpreter: import from whatever PYTHONPATH holds, load the cluster layers with no conf dir given.
PROBE = r"""
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import shopseq.jobs.config, shopseq.features.sessionize, shopseq.training.model
from shopseq.jobs.config import default_conf_dir, load_config, to_dict
conf = default_conf_dir()
print(json.dumps({
    "modules": [m.__file__ for m in (shopseq.jobs.config, shopseq.features.sessionize, shopseq.training.model)],
    "conf": str(conf),
    "protocols": sorted(p.name for p in (conf / "protocols").glob("*.yaml")),
    "config": to_dict(load_config("cluster")),
}))
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make dist`` (the real recipe, setup not re-run) on a copy of the tree; returns the folder with the wheel and the zip."""
    from tests.cluster import make_dist

    return make_dist(tmp_path_factory.mktemp("packaging"))


def _probe(pythonpath: Path, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SHOPSEQ_"))}
    cwd.mkdir()
    done = subprocess.run([sys.executable, "-s", "-c", PROBE], cwd=cwd, env={**env, "PYTHONPATH": str(pythonpath)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _expected_conf() -> set[str]:
    conf = REPO / "conf"
    return {f"shopseq/conf/{p.relative_to(conf)}" for p in conf.rglob("*.yaml")} | {"shopseq/conf/README.md"}


def _expected_code() -> set[str]:
    return {f"shopseq/{p.relative_to(REPO)}" for name in CODE for p in (REPO / name).rglob("*.py") if "__pycache__" not in p.parts}


def _repo_cluster_config() -> dict:
    return json.loads(json.dumps(to_dict(load_config("cluster", REPO / "conf"))))


def test_the_wheel_carries_every_module_and_the_conf_and_an_installed_copy_loads_it_with_no_conf_dir(dist: Path, tmp_path: Path):
    (wheel,) = dist.glob("shopseq-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n for n in names if n.startswith("shopseq/conf/") and not n.endswith(".py")} == _expected_conf()
    assert {n for n in names if n.endswith(".py")} == _expected_code()
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts into site-packages
    seen = _probe(site, tmp_path / "elsewhere")
    assert [Path(m).is_relative_to(site) for m in seen["modules"]] == [True, True, True]
    assert seen["conf"] == str(site / "shopseq" / "conf")
    assert seen["protocols"] == sorted(p.name for p in (REPO / "conf" / "protocols").glob("*.yaml"))
    assert seen["config"] == _repo_cluster_config()
    assert (seen["config"]["spark"]["master"], seen["config"]["features"]["train_ranks"]) == (None, seen["config"]["train"]["num_proc"])


def test_the_py_files_zip_alone_imports_the_packages_and_loads_the_cluster_config(dist: Path, tmp_path: Path):
    (pyfiles,) = dist.glob("shopseq-*-pyfiles.zip")
    names = set(zipfile.ZipFile(pyfiles).namelist())
    assert names == _expected_conf() | _expected_code()  # the wheel's packages and conf, not its .dist-info
    seen = _probe(pyfiles, tmp_path / "elsewhere")
    assert [m.startswith(f"{pyfiles}{os.sep}") for m in seen["modules"]] == [True, True, True]
    conf = Path(seen["conf"])
    assert conf.name.startswith("shopseq-conf-") and not conf.is_relative_to(REPO)
    assert not conf.exists()  # the copy out of the zip is removed when the process exits
    assert seen["protocols"] == sorted(p.name for p in (REPO / "conf" / "protocols").glob("*.yaml"))
    assert seen["config"] == _repo_cluster_config()


EXE = "/opt/venv/bin/python"
ARCHIVE = "./environment/bin/python"


@pytest.mark.parametrize(
    ("master", "conf", "environ", "expected"),
    [
        # local mode, nothing set: workers and driver on this interpreter
        ("local[2]", {}, {}, {"PYSPARK_PYTHON": EXE, "PYSPARK_DRIVER_PYTHON": EXE}),
        ("local-cluster[2,1,1024]", {}, {}, {"PYSPARK_PYTHON": EXE, "PYSPARK_DRIVER_PYTHON": EXE}),
        # local mode, the environment names them: kept
        ("local[2]", {}, {"PYSPARK_PYTHON": "/usr/bin/python3.11", "PYSPARK_DRIVER_PYTHON": "/usr/bin/python3.11"}, {}),
        ("local[2]", {}, {"PYSPARK_PYTHON": EXE}, {"PYSPARK_DRIVER_PYTHON": EXE}),
        ("local[2]", {}, {"PYSPARK_PYTHON": ""}, {"PYSPARK_PYTHON": EXE, "PYSPARK_DRIVER_PYTHON": EXE}),  # empty = unset
        # spark-submit: --conf spark.pyspark.python=./environment/bin/python arrives as PYSPARK_PYTHON and is kept
        (None, {}, {"PYSPARK_PYTHON": ARCHIVE}, {}),
        # a cluster, nothing set: the launcher's default (python3 on the nodes), never the driver's path
        (None, {}, {}, {}),
        ("spark://master:7077", {}, {}, {}),
        ("yarn", {}, {"PYSPARK_DRIVER_PYTHON": EXE}, {}),
        # spark.pyspark.python in spark.conf wins over the environment, in any mode
        (None, {"spark.pyspark.python": ARCHIVE}, {"PYSPARK_PYTHON": "/usr/bin/python3"}, {"PYSPARK_PYTHON": ARCHIVE}),
        ("local[2]", {"spark.pyspark.python": ARCHIVE}, {}, {"PYSPARK_PYTHON": ARCHIVE, "PYSPARK_DRIVER_PYTHON": EXE}),
        (None, {"spark.pyspark.python": ARCHIVE}, {"PYSPARK_PYTHON": ARCHIVE}, {}),  # already so: nothing to change
    ],
)
def test_python_env_keeps_what_the_launcher_or_conf_names_and_defaults_to_this_interpreter_only_in_local_mode(master, conf, environ, expected):
    assert python_env(master, conf, environ, EXE) == expected


def test_train_ranks_null_follows_train_num_proc_and_an_explicit_value_stays():
    assert load_config("cluster", REPO / "conf").features.train_ranks == 2  # base.yaml: null, train.num_proc 2
    assert load_config("cluster", REPO / "conf", ["train.num_proc=4"]).features.train_ranks == 4
    assert load_config("local", REPO / "conf", ["train.num_proc=4", "features.train_ranks=8"]).features.train_ranks == 8
