"""The Databricks Asset Bundle (``databricks.yml`` and its ``include:`` files), checked without a workspace.

The Databricks CLI cannot be installed here, so ``databricks bundle validate`` never runs;
this is the closest real check. For each target (``dev``, ``prod``) the bundle's
variables take their defaults and the target's values, ``${workspace.*}`` and
``${bundle.*}`` take plausible values, and every job of ``resources.jobs`` is loaded
through the typed job classes of Databricks' ``databricks-bundles`` package
(``databricks.bundles.jobs.Job.from_dict``). Its loader refuses a key that is not a field
of the dataclass at any depth (``ValueError: Unexpected field 'x' for class Task``), a
missing required field and a value of the wrong type, so no key walk of our own is needed
(``test_the_checker_catches_an_unknown_key`` proves it does). Then, on the typed job:

- every ``python_wheel_task`` calls this wheel (``package_name`` = pyproject's project name)
  through an entry point of ``[project.scripts]``; its first parameter is a stage the CLI
  knows (``shopseq.jobs.cli.STAGES``), and the stage's own argument parser and the config
  loader accept the rest (``--conf-dir`` is the synced ``conf/`` of the checkout; every
  ``--set`` key exists and its value validates);
- every ``depends_on`` names a task of the job, every ``job_cluster_key`` a cluster of it;
- every task's wheel (``libraries: - whl: ../../dist/*.whl``, relative to the file that
  defines the job) is the ``dist/`` that the bundle's ``artifacts`` build writes, and
  matches the wheel's file name.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shopseq.jobs.config import load_config

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "databricks.yml"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
WHEEL = f"{PROJECT['name']}-{PROJECT['version']}-py3-none-any.whl"
USER = "someone@example.com"  # ${workspace.current_user.userName}
TARGETS = ("dev", "prod")
# Top-level mappings and a target's mappings of the bundle configuration reference (the CLI would refuse others).
TOP_KEYS = {
    "bundle", "include", "artifacts", "variables", "workspace", "targets", "resources",
    "sync", "permissions", "run_as", "presets", "experimental", "python", "scripts", "git",
}  # fmt: skip
TARGET_KEYS = {
    "default", "mode", "variables", "workspace", "resources", "artifacts", "bundle",
    "cluster_id", "compute_id", "git", "run_as", "permissions", "presets", "sync",
}  # fmt: skip
REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][\w.\[\]-]*)\}")


# --------------------------------------------------------------------------- loading the bundle


def load_bundle() -> tuple[dict[str, Any], dict[str, Path]]:
    """``databricks.yml`` with its ``include:`` files' resources merged in; and the file that defines each job."""
    root = yaml.safe_load(BUNDLE.read_text(encoding="utf-8"))
    sources = {name: BUNDLE for name in (root.get("resources") or {}).get("jobs") or {}}
    for pattern in root.get("include") or []:
        files = sorted(REPO.glob(pattern))
        assert files, f"databricks.yml include {pattern!r} matches no file"
        for path in files:
            part = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            assert set(part) <= TOP_KEYS, f"{path.relative_to(REPO)}: unknown top-level keys {sorted(set(part) - TOP_KEYS)}"
            for kind, items in (part.get("resources") or {}).items():
                merged = root.setdefault("resources", {}).setdefault(kind, {})
                assert not set(items) & set(merged), f"{path.relative_to(REPO)}: {kind} defined twice: {sorted(set(items) & set(merged))}"
                merged.update(items)
                if kind == "jobs":
                    sources.update({name: path for name in items})
    return root, sources


def context(root: dict[str, Any], target: str) -> dict[str, Any]:
    """The value of every ``${...}`` reference the bundle may use, for ``target``."""
    spec = root["targets"][target] or {}
    variables = {name: (v or {}).get("default") for name, v in (root.get("variables") or {}).items()}
    for name, value in (spec.get("variables") or {}).items():
        assert name in variables, f"target {target}: variable {name!r} is not declared under variables"
        variables[name] = value.get("default") if isinstance(value, dict) else value
    undefined = [name for name, value in variables.items() if value is None]
    assert not undefined, f"target {target}: variables without a value: {undefined}"
    workspace = {**(root.get("workspace") or {}), **(spec.get("workspace") or {})}
    ctx: dict[str, Any] = {f"var.{k}": v for k, v in variables.items()}
    ctx |= {"bundle.name": root["bundle"]["name"], "bundle.target": target}
    ctx |= {"workspace.current_user.userName": USER, "workspace.current_user.short_name": USER.split("@")[0]}
    default_root = "/Workspace/Users/${workspace.current_user.userName}/.bundle/${bundle.name}/${bundle.target}"  # the CLI's default
    root_path = substitute(workspace.get("root_path", default_root), ctx)
    ctx |= {"workspace.root_path": root_path, "workspace.host": "https://example.cloud.databricks.com"}
    ctx |= {
        "workspace.file_path": substitute(workspace.get("file_path", f"{root_path}/files"), ctx),
        "workspace.artifact_path": substitute(workspace.get("artifact_path", f"{root_path}/artifacts"), ctx),
    }
    return ctx


def substitute(value: Any, ctx: dict[str, Any]) -> Any:
    """``value`` with every ``${ref}`` replaced; a string that is one reference takes the value's type (``num_workers: ${var.workers}`` -> 2)."""
    if isinstance(value, dict):
        return {k: substitute(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, ctx) for v in value]
    if not isinstance(value, str):
        return value
    for ref in REF.findall(value):
        if ref not in ctx:
            raise KeyError(f"unknown reference ${{{ref}}}")
    whole = REF.fullmatch(value)
    if whole:
        return ctx[whole.group(1)]
    return REF.sub(lambda m: str(ctx[m.group(1)]), value)


# --------------------------------------------------------------------------- checking one job


def _stage_accepts(stage: str, params: list[str], ctx: dict[str, Any]) -> str | None:
    """None when the stage's own parser and the config loader accept ``params``, else why not."""
    from shopseq.jobs.cli import STAGES

    module = importlib.import_module(STAGES[stage][0])
    parser: argparse.ArgumentParser = module.build_parser()
    parser.exit_on_error = False
    try:
        args = parser.parse_args(params)
    except (argparse.ArgumentError, SystemExit) as exc:
        return f"shopseq {stage} refuses its parameters: {exc}"
    files = ctx["workspace.file_path"]
    conf_dir = args.conf_dir or ""
    if not conf_dir.startswith(f"{files}/"):
        return f"--conf-dir {conf_dir!r} is not inside the bundle's synced files ({files})"
    local = REPO / conf_dir.removeprefix(f"{files}/")  # the checkout's folder that the bundle syncs there
    try:
        load_config(args.env, local, args.overrides, args.conf_files)
    except Exception as exc:  # noqa: BLE001 - ConfigError (or a missing folder): the message names the key
        return f"config of shopseq {stage} --env {args.env}: {exc}"
    return None


def job_problems(name: str, job: dict[str, Any], source: Path, ctx: dict[str, Any]) -> list[str]:
    """What is wrong with one job of the bundle (``job``: its resolved dict; ``source``: the file that defines it)."""
    from databricks.bundles.jobs import Job

    from shopseq.jobs.cli import STAGES

    try:
        typed = Job.from_dict(copy.deepcopy(job))  # raises on an unknown key, a missing field or a wrong type, at any depth
    except (ValueError, TypeError) as exc:
        return [f"{name}: {exc}"]
    problems: list[str] = []
    scripts = PROJECT.get("scripts", {})
    keys = [t.task_key for t in typed.tasks]
    clusters = {c.job_cluster_key for c in typed.job_clusters}
    if len(set(keys)) != len(keys):
        problems.append(f"{name}: task keys repeat: {keys}")
    for task in typed.tasks:
        where = f"{name}.{task.task_key}"
        problems += [f"{where}: depends_on {d.task_key!r} is no task of the job" for d in task.depends_on if d.task_key not in keys]
        if task.job_cluster_key is not None and task.job_cluster_key not in clusters:
            problems.append(f"{where}: job_cluster_key {task.job_cluster_key!r} is no cluster of the job ({sorted(clusters)})")
        wheel = task.python_wheel_task
        if wheel is None:
            continue
        if wheel.package_name != PROJECT["name"]:
            problems.append(f"{where}: package_name {wheel.package_name!r} is not {PROJECT['name']!r}")
        if wheel.entry_point not in scripts:
            problems.append(f"{where}: entry_point {wheel.entry_point!r} is not in pyproject.toml's [project.scripts] ({sorted(scripts)})")
        elif scripts[wheel.entry_point] != "shopseq.jobs.cli:main":
            problems.append(f"{where}: entry point {wheel.entry_point!r} runs {scripts[wheel.entry_point]}, not the stage dispatcher shopseq.jobs.cli:main")
        params = list(wheel.parameters)
        if not params or params[0] not in STAGES:
            problems.append(f"{where}: first parameter {params[:1]} is no stage of shopseq.jobs.cli.STAGES")
        elif why := _stage_accepts(params[0], params[1:], ctx):
            problems.append(f"{where}: {why}")
        for lib in task.libraries:
            if lib.whl is None:
                continue
            path = (source.parent / lib.whl).resolve()
            if path.parent != REPO / "dist" or not fnmatch.fnmatch(WHEEL, path.name):
                problems.append(f"{where}: library {lib.whl!r} (from {source.relative_to(REPO)}) is not the built wheel dist/{WHEEL}")
    return problems


def bundle_problems(target: str) -> list[str]:
    root, sources = load_bundle()
    ctx = context(root, target)
    jobs = substitute(root["resources"]["jobs"], ctx)
    return [p for name, job in jobs.items() for p in job_problems(name, job, sources[name], ctx)]


# --------------------------------------------------------------------------- the bundle


def test_the_bundle_has_known_mappings_one_default_target_and_builds_the_wheel_into_dist():
    root, sources = load_bundle()
    assert set(root) <= TOP_KEYS, sorted(set(root) - TOP_KEYS)
    assert set(root["targets"]) == set(TARGETS)
    assert [t for t, spec in root["targets"].items() if (spec or {}).get("default")] == ["dev"]
    for target, spec in root["targets"].items():
        assert set(spec or {}) <= TARGET_KEYS, (target, sorted(set(spec) - TARGET_KEYS))
    (artifact,) = root["artifacts"].values()
    assert (artifact["type"], artifact["path"]) == ("whl", ".")
    assert artifact["build"].split() == ["python", "-m", "build", "--wheel"]  # python -m build writes into ./dist
    assert sources and set(sources.values()) == {REPO / "conf" / "databricks" / "shopseq_job.yml"}


@pytest.mark.parametrize("target", TARGETS)
def test_every_job_loads_through_the_typed_job_classes_and_runs_stages_the_cli_knows(target: str):
    assert bundle_problems(target) == []


def test_the_job_runs_every_pipeline_stage_in_order():
    root, _ = load_bundle()
    ctx = context(root, "dev")
    (job,) = substitute(root["resources"]["jobs"], ctx).values()
    stages = [t["python_wheel_task"]["parameters"][0] for t in job["tasks"]]
    assert stages == ["generate", "ingest", "sessionize", "features", "train", "evaluate", "predict"]
    assert [t.get("depends_on", [{}])[0].get("task_key") for t in job["tasks"]] == [None, *[t["task_key"] for t in job["tasks"][:-1]]]


def test_targets_differ_where_the_bundle_says():
    root, _ = load_bundle()
    dev, prod = context(root, "dev"), context(root, "prod")
    assert (dev["var.schema"], prod["var.schema"]) == ("shopseq_dev", "shopseq")
    assert dev["workspace.file_path"] == f"/Workspace/Users/{USER}/.bundle/shopseq/dev/files"
    assert prod["workspace.file_path"] == "/Workspace/Shared/.bundle/shopseq/prod/files"
    assert dev["var.workers"] == 2 and isinstance(substitute("${var.workers}", dev), int)


# --------------------------------------------------------------------------- the checker can fail


def _job() -> tuple[str, dict[str, Any], Path, dict[str, Any]]:
    root, sources = load_bundle()
    ctx = context(root, "dev")
    (name, job), = substitute(root["resources"]["jobs"], ctx).items()  # fmt: skip
    return name, job, sources[name], ctx


def test_the_checker_catches_an_unknown_key():
    name, job, source, ctx = _job()
    typo = copy.deepcopy(job)
    typo["tasks"][0]["python_wheel_task"]["entrypoint"] = typo["tasks"][0]["python_wheel_task"].pop("entry_point")
    assert job_problems(name, typo, source, ctx) == [f"{name}: Unexpected field 'entrypoint' for class PythonWheelTask"]
    deep = copy.deepcopy(job)
    deep["job_clusters"][0]["new_cluster"]["num_worker"] = 2
    assert job_problems(name, deep, source, ctx) == [f"{name}: Unexpected field 'num_worker' for class ClusterSpec"]
    top = {**job, "max_concurrent_run": 1}
    assert job_problems(name, top, source, ctx) == [f"{name}: Unexpected field 'max_concurrent_run' for class Job"]


def test_the_checker_catches_a_missing_entry_point_an_unknown_stage_and_bad_parameters():
    name, job, source, ctx = _job()
    bad = copy.deepcopy(job)
    bad["tasks"][0]["python_wheel_task"]["entry_point"] = "shopseq-run"
    bad["tasks"][1]["python_wheel_task"]["parameters"][0] = "bronze"
    bad["tasks"][2]["python_wheel_task"]["parameters"] += ["--set", "sessionize.no_such_key=1"]
    bad["tasks"][3]["python_wheel_task"]["package_name"] = "jobs"
    problems = job_problems(name, bad, source, ctx)
    assert problems[0] == f"{name}.generate: entry_point 'shopseq-run' is not in pyproject.toml's [project.scripts] (['shopseq'])"
    assert problems[1] == f"{name}.ingest: first parameter ['bronze'] is no stage of shopseq.jobs.cli.STAGES"
    assert problems[2].startswith(f"{name}.sessionize: config of shopseq sessionize --env databricks: ") and "sessionize.no_such_key" in problems[2]
    assert problems[3] == f"{name}.features: package_name 'jobs' is not 'shopseq'"
    assert len(problems) == 4


def test_the_checker_catches_a_missing_task_cluster_and_wheel_and_an_unknown_variable():
    name, job, source, ctx = _job()
    bad = copy.deepcopy(job)
    bad["tasks"][1]["depends_on"] = [{"task_key": "generated"}]
    bad["tasks"][2]["job_cluster_key"] = "gpus"
    bad["tasks"][3]["libraries"] = [{"whl": "../dist/*.whl"}]
    assert job_problems(name, bad, source, ctx) == [
        f"{name}.ingest: depends_on 'generated' is no task of the job",
        f"{name}.sessionize: job_cluster_key 'gpus' is no cluster of the job (['etl', 'gpu'])",
        f"{name}.features: library '../dist/*.whl' (from conf/databricks/shopseq_job.yml) is not the built wheel dist/{WHEEL}",
    ]
    with pytest.raises(KeyError, match=r"var\.catalogue"):
        substitute({"x": ["--set", "tables.catalog=${var.catalogue}"]}, ctx)
