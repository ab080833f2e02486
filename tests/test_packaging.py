"""Packaging: ``make dist``'s wheel and ``--py-files`` zip carry the code and the config under one namespace, and workers' Python is chosen as Spark would.

The artifacts are built once, by the Makefile's own ``dist`` recipe run on a
copy of the working tree (so the checkout's ``build/`` and ``dist/`` stay
untouched), and each is imported in a fresh interpreter started outside the
repo with the editable install's finder removed: only the artifact can
provide ``shopseq.jobs``, ``shopseq.features`` and ``shopseq.training``.
The wheel is also pip-installed into an empty venv, where ``shopseq --help``
and ``import shopseq.jobs.cli`` work and the bare names ``jobs``,
``features`` and ``training`` do not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from shopseq.jobs.config import load_config, to_dict
from shopseq.jobs.spark import python_env

REPO = Path(__file__).resolve().parent.parent
CODE = ("jobs", "features", "training", "conf")  # folders of the checkout, installed as shopseq.<folder>
BARE = ("jobs", "features", "training")  # the folders' own names: never importable from an installed wheel
HEAVY = ("torch", "pyspark", "pyarrow", "pandas", "numpy", "horovod", "petastorm")  # what `shopseq --help` must not import

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
    cwd.mkdir()
    done = subprocess.run([sys.executable, "-s", "-c", PROBE], cwd=cwd, env={**_clean_env(), "PYTHONPATH": str(pythonpath)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _expected_conf() -> set[str]:
    conf = REPO / "conf"
    return {f"shopseq/conf/{p.relative_to(conf)}" for p in conf.rglob("*.yaml")} | {"shopseq/conf/README.md"}


def _expected_code() -> set[str]:
    return {f"shopseq/{p.relative_to(REPO)}" for name in CODE for p in (REPO / name).rglob("*.py") if "__pycache__" not in p.parts}


def _folders(names: set[str]) -> set[str]:
    """Every folder of ``names`` as a zip directory entry (``shopseq/``, ``shopseq/jobs/``, ...)."""
    return {n[: i + 1] for n in names for i, c in enumerate(n) if c == "/"}


def _clean_env() -> dict[str, str]:
    """This environment without PYTHON*, SHOPSEQ_* and PIP_* variables (nothing may point an interpreter or pip at the checkout)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SHOPSEQ_", "PIP_"))}


def _repo_cluster_config() -> dict:
    return json.loads(json.dumps(to_dict(load_config("cluster", REPO / "conf"))))


def test_the_wheel_carries_every_module_and_the_conf_and_an_installed_copy_loads_it_with_no_conf_dir(dist: Path, tmp_path: Path):
    (wheel,) = dist.glob("shopseq-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n for n in names if n.startswith("shopseq/conf/") and not n.endswith(".py")} == _expected_conf()
    assert {n for n in names if n.endswith(".py")} == _expected_code()
    # One namespace: nothing at the top but shopseq/ and the metadata; no peers/ (the RecBole runner runs in its own interpreter).
    assert {n.split("/")[0] for n in names} == {"shopseq", "shopseq-0.1.0.dist-info"}
    assert zipfile.ZipFile(wheel).read("shopseq-0.1.0.dist-info/top_level.txt").decode().split() == ["shopseq"]
    assert not [n for n in names if "peers/" in n or "recbole_run" in n]
    assert not (names & {"shopseq/__init__.py"})  # shopseq is an implicit namespace package (PEP 420)
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
    files = _expected_conf() | _expected_code()
    # The wheel's packages and conf, not its .dist-info, and an entry per folder: Python 3.11's zipimport finds the
    # namespace package shopseq (no __init__.py) only through its "shopseq/" entry, which the wheel does not have.
    assert names == files | _folders(files)
    assert "shopseq/" in names
    seen = _probe(pyfiles, tmp_path / "elsewhere")
    assert [m.startswith(f"{pyfiles}{os.sep}") for m in seen["modules"]] == [True, True, True]
    conf = Path(seen["conf"])
    assert conf.name.startswith("shopseq-conf-") and not conf.is_relative_to(REPO)
    assert not conf.exists()  # the copy out of the zip is removed when the process exits
    assert seen["protocols"] == sorted(p.name for p in (REPO / "conf" / "protocols").glob("*.yaml"))
    assert seen["config"] == _repo_cluster_config()


# Run by the fresh venv's Python: where shopseq.jobs.cli comes from, and which heavy packages `shopseq --help` imports.
HELP_PROBE = r"""
import contextlib, io, json, sys
import shopseq.jobs.cli as cli
with contextlib.redirect_stdout(io.StringIO()) as out:
    rc = cli.main(["--help"])
print(json.dumps({
    "cli": cli.__file__, "rc": rc, "help": out.getvalue(),
    "editable": [m for m in sys.modules if m.startswith("__editable")],
    "heavy": sorted(m for m in %r if m in sys.modules),
}))
"""


def test_the_wheel_pip_installed_into_an_empty_venv_gives_the_shopseq_command_and_only_the_shopseq_namespace(dist: Path, tmp_path: Path):
    """``pip install --no-deps --no-index`` the wheel into a venv with nothing in it; its dependencies come from this venv by one ``.pth`` line.

    Nothing is downloaded. pip is this venv's, pointed at the new one (``--python``), so the empty venv
    needs no pip of its own; the ``.pth`` line goes in after the install, so pip never sees this venv's
    editable shopseq. A path added by a ``.pth`` line has its own ``.pth`` files left unprocessed, so
    the editable install's finder never loads there (:func:`tests.cluster.exec_python` does the same).
    """
    from shopseq.jobs.cli import STAGES

    (wheel,) = dist.glob("shopseq-*-py3-none-any.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python, site = venv / "bin" / "python", venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    env = _clean_env()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python)]
    done = subprocess.run([*pip, "install", "--no-deps", "--no-index", str(wheel)], env={**env, "PIP_CONFIG_FILE": os.devnull}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in site.iterdir()) == ["shopseq", "shopseq-0.1.0.dist-info"]
    (site / "shopseq_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"  # outside the repo: no ./jobs, ./features, ./training, ./conf to find
    elsewhere.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True, text=True)

    shown = run(str(venv / "bin" / "shopseq"), "--help")  # the console script pip wrote
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert [s for s in STAGES if f"    {s}" not in shown.stdout] == []

    done = run(str(python), "-c", HELP_PROBE % (HEAVY,))
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert Path(seen["cli"]).is_relative_to(site) and seen["editable"] == []
    assert (seen["rc"], seen["help"]) == (0, shown.stdout)
    assert seen["heavy"] == []  # --help lists the stages without importing them: no torch, no Spark

    for name in BARE:
        failed = run(str(python), "-c", f"import {name}")
        assert failed.returncode == 1 and f"ModuleNotFoundError: No module named '{name}'" in failed.stderr, (name, failed.stderr[-500:])


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
