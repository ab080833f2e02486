"""The layers point down and the rooms stay apart.

- ``shopseq.features`` and ``shopseq.training`` never import ``shopseq.jobs``;
- the stages (``shopseq.jobs.stages.*``) never import the benchmarks (``shopseq.jobs.bench.*``);
  benchmarks may import stages;
- nothing imports the RecBole runner (``peers/recbole_run.py``: it runs in RecBole's own
  interpreter), and the runner imports nothing of shopseq;
- every import names ``shopseq.*``, never the bare folder names ``jobs``, ``features`` or
  ``training`` (the package's modules, the tests and the notebooks' code cells);
- nothing imports in a cycle.

Module names come from ``pyproject.toml``'s ``package-dir`` mapping (``jobs/stages/run.py``
is ``shopseq.jobs.stages.run``). Imports are read from the source (ast), function-level
ones included: they may not hide a cycle or a reach across rooms. Each check is a function
of an import map, with a self-test that it can fail.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BARE = ("jobs", "features", "training")  # the folders' own names: installed only as shopseq.<name>
RUNNER = REPO / "peers" / "recbole_run.py"
RUNNER_NAMES = ("recbole_run", "peers")  # how an import of the runner would be spelled (peers.recbole_run)
STAGES, BENCH = "shopseq.jobs.stages", "shopseq.jobs.bench"


def package_dirs() -> dict[str, Path]:
    """``[tool.setuptools] package-dir`` of ``pyproject.toml``: installed package -> folder of the checkout."""
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {pkg: REPO / folder for pkg, folder in mapping.items()}


def module_name(path: Path, dirs: dict[str, Path] | None = None) -> str:
    """The installed name of a ``.py`` file of the checkout (``jobs/stages/run.py`` -> ``shopseq.jobs.stages.run``)."""
    for pkg, folder in (dirs or package_dirs()).items():
        if path.is_relative_to(folder):
            return ".".join((pkg, *path.relative_to(folder).with_suffix("").parts)).removesuffix(".__init__")
    raise ValueError(f"{path} is in no package of pyproject.toml's package-dir")


def modules() -> dict[str, Path]:
    """Every module of the package (code folders only: conf/ holds YAML and an empty __init__.py), by installed name."""
    dirs = package_dirs()
    return {module_name(p, dirs): p for pkg, folder in dirs.items() if pkg != "shopseq.conf" for p in sorted(folder.rglob("*.py"))}


def _imported_names(tree: ast.AST, package: str = "") -> set[str]:
    """Every module an import names, function-level ones included, and ``importlib.import_module("<literal>")``.

    ``from a import b`` names ``a`` and ``a.b`` (b may be a module); a relative import is resolved
    against ``package`` (the importing module's package).
    """
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*parent, base] if base else parent)
            if base:
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


@functools.cache
def parsed(path: Path) -> ast.AST:
    """The file's syntax tree, parsed once per test session (notebooks: their code cells)."""
    return ast.parse(notebook_code(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8"))


def _string_constants(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def imports_of(path: Path, name: str = "") -> set[str]:
    """The modules a ``.py`` file imports (see :func:`_imported_names`); ``name``: its module name, for relative imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imported_names(parsed(path), package)


def references_of(path: Path, name: str, known: set[str]) -> set[str]:
    """:func:`imports_of` plus every string constant that is exactly a known module name.

    ``shopseq.jobs.cli`` reaches its stages through a table of names (``importlib.import_module(STAGES[...][0])``):
    a room rule counts such a name as a reach, the cycle check does not (a lazy name is not an import-time edge).
    """
    return imports_of(path, name) | (_string_constants(parsed(path)) & known)


def notebook_code(path: Path) -> str:
    """The code cells of a notebook as one Python source; IPython magics and shell lines (``%``, ``!``) become comments."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines += [("# " + line) if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return "\n".join(lines) + "\n"


def sources() -> dict[str, ast.AST]:
    """Every Python source whose imports the bare-name rule covers: the package, tests, peers and the notebooks' code cells."""
    files = [*modules().values(), *sorted((REPO / "tests").rglob("*.py")), *sorted((REPO / "peers").rglob("*.py"))]
    return {str(p.relative_to(REPO)): parsed(p) for p in [*files, *sorted((REPO / "notebooks").glob("*.ipynb"))]}


# --------------------------------------------------------------------------- the rules, as functions of an import map


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def reaches(refs: dict[str, set[str]], sources_in: str, targets_in: str) -> dict[str, list[str]]:
    """Modules under ``sources_in`` that name a module under ``targets_in``: module -> the names (sorted)."""
    found = {m: sorted(n for n in names if _under(n, targets_in)) for m, names in refs.items() if _under(m, sources_in)}
    return {m: v for m, v in found.items() if v}


def bare_imports(imported: dict[str, set[str]], bare: tuple[str, ...] = BARE) -> dict[str, list[str]]:
    """Sources that import a bare top-level ``jobs``, ``features`` or ``training`` (``jobs.cli`` too): source -> names."""
    found = {s: sorted(n for n in names if n.split(".")[0] in bare) for s, names in imported.items()}
    return {s: v for s, v in found.items() if v}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {n for n in imports_of(p, m) if n in mods and n != m} for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _references() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: references_of(p, m, known) for m, p in mods.items()}


# --------------------------------------------------------------------------- the names


def test_module_names_come_from_the_package_dir_mapping_and_are_what_python_imports():
    mods = modules()
    assert mods["shopseq.jobs.stages.run"] == REPO / "jobs" / "stages" / "run.py"
    assert mods["shopseq.jobs.config"] == REPO / "jobs" / "config" / "__init__.py"
    assert mods["shopseq.jobs.bench.kit"] == REPO / "jobs" / "bench" / "kit.py"
    assert mods["shopseq.features.sessionize"] == REPO / "features" / "sessionize.py"
    assert not [m for m in mods if not m.startswith("shopseq.")]
    # find_spec imports only the parent packages (their __init__.py files), never the module itself: no torch, no Spark.
    wrong = {m: str(importlib.util.find_spec(m).origin) for m, p in mods.items() if Path(importlib.util.find_spec(m).origin) != p}
    assert wrong == {}


# --------------------------------------------------------------------------- the rules on the code


def test_features_and_training_never_import_jobs():
    refs = _references()
    assert reaches(refs, "shopseq.features", "shopseq.jobs") == {}
    assert reaches(refs, "shopseq.training", "shopseq.jobs") == {}


def test_stages_never_import_benchmarks():
    assert reaches(_references(), STAGES, BENCH) == {}


def test_nothing_imports_the_recbole_runner_and_it_imports_nothing_of_shopseq():
    imported = {s: _imported_names(tree) for s, tree in sources().items()}
    runner = str(RUNNER.relative_to(REPO))
    assert bare_imports({s: n for s, n in imported.items() if s != runner}, RUNNER_NAMES) == {}
    assert bare_imports({runner: imported[runner]}, ("shopseq", *BARE)) == {}


def test_every_import_names_shopseq_never_a_bare_jobs_features_or_training():
    found = sources()
    assert {"tests/test_layers.py", "peers/recbole_run.py", "notebooks/01_sessions_and_features.ipynb"} <= set(found)
    assert bare_imports({s: _imported_names(tree) for s, tree in found.items()}) == {}


def test_the_import_graph_has_no_cycle():
    g = graph()
    assert "shopseq.jobs.stages.train" in g["shopseq.jobs.stages.evaluate"]  # the graph sees namespaced imports
    assert cycles(g) == []


# --------------------------------------------------------------------------- the checks can fail


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_reaches_finds_a_stage_that_imports_a_benchmark_and_a_feature_that_imports_jobs():
    refs = {
        "shopseq.jobs.stages.train": {"shopseq.jobs.bench.kit", "shopseq.jobs.tables"},
        "shopseq.jobs.stages.run": {"shopseq.jobs.stages.train"},
        "shopseq.jobs.bench.train": {"shopseq.jobs.stages.train"},  # allowed: benchmarks may import stages
        "shopseq.features.vocab": {"shopseq.jobs"},
        "shopseq.features.jobsish": {"shopseq.jobsx"},  # a prefix is not a package
    }
    assert reaches(refs, STAGES, BENCH) == {"shopseq.jobs.stages.train": ["shopseq.jobs.bench.kit"]}
    assert reaches(refs, "shopseq.features", "shopseq.jobs") == {"shopseq.features.vocab": ["shopseq.jobs"]}


def test_the_import_reader_sees_function_level_relative_and_importlib_imports_and_known_names():
    code = (
        "import os\nimport jobs.cli\nfrom features import sessionize\nimport shopseq.training.model\n"
        "def f():\n    from peers.recbole_run import main\n    import recbole_run\n"
        "    from .kit import timed\n    importlib.import_module('training.loop')\n"
        "TABLE = {'x': ('shopseq.jobs.bench.kit', 'help')}\n"
    )
    names = _imported_names(ast.parse(code), "shopseq.jobs.stages")
    assert {"jobs.cli", "features", "features.sessionize", "peers.recbole_run", "recbole_run", "shopseq.jobs.stages.kit", "training.loop"} <= names
    assert bare_imports({"x.py": names}) == {"x.py": ["features", "features.sessionize", "jobs.cli", "training.loop"]}
    assert bare_imports({"x.py": names}, RUNNER_NAMES) == {"x.py": ["peers.recbole_run", "peers.recbole_run.main", "recbole_run"]}
    assert _string_constants(ast.parse(code)) & {"shopseq.jobs.bench.kit"} == {"shopseq.jobs.bench.kit"}


def test_notebook_code_keeps_code_cells_and_comments_out_magics(tmp_path: Path):
    nb = tmp_path / "n.ipynb"
    nb.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "source": ["import jobs\n"]},
        {"cell_type": "code", "source": ["%matplotlib inline\n", "!pip list\n", "from jobs.config import load_config\n"]},
        {"cell_type": "code", "source": "import shopseq.jobs.spark"},
    ]}))  # fmt: skip
    names = _imported_names(ast.parse(notebook_code(nb)))
    assert names == {"jobs.config", "jobs.config.load_config", "shopseq.jobs.spark"}
    assert bare_imports({"n.ipynb": names}) == {"n.ipynb": ["jobs.config", "jobs.config.load_config"]}
