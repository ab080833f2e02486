"""docs/architecture.md's two diagrams, and every module and file the architecture and operations pages name, stay in step with the code.

- The rooms diagram (the tree under "## Rooms") names only folders and files that exist,
  every module of ``jobs/`` (its top, ``jobs/stages/``, ``jobs/bench/``) is in it, and each
  folder's line names the folder's installed package (``jobs/stages/`` is ``shopseq.jobs.stages``).
- The stage -> table flow (the block under "## Stages and tables"): one line per pipeline stage,
  ``<stage> <reads> ─► <module> ─► <writes>``, in ``shopseq run``'s order; the module is the one
  ``shopseq <stage>`` runs; ``[name]`` is a Delta table of the catalog; every table is written by
  exactly one stage, and that stage's source names it (a literal or a catalog constant).
- Every repository path (``jobs/stages/ingest.py``, ``shopseq/jobs/...`` inside the wheel) and
  every dotted name (``shopseq.jobs.stages.train.run_train``) that either page mentions exists.

No Spark session and no torch: the catalog and the CLI's stage table import light.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.test_layers import modules, package_dirs, parsed

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURE = REPO / "docs" / "architecture.md"
PAGES = (ARCHITECTURE, REPO / "docs" / "operations.md")
ARROW = "─►"
BRANCH = re.compile(r"^((?:│   |    )*)(├── |└── )(.*)$")
TABLE = re.compile(r"\[(\w+)\]")
# A path of the checkout: starts with one of its top folders, not inside a longer path, URL or template.
REPO_PATH = re.compile(r"(?<![\w/.<>~${-])((?:jobs|features|training|conf|peers|tests|notebooks)/[\w./-]*)")
INSTALLED_PATH = re.compile(r"(?<![\w/.-])shopseq/((?:jobs|features|training|conf)/[\w./-]*)")  # inside the wheel or the zip
DOTTED = re.compile(r"(?<![\w./-])shopseq(?:\.\w+)+")


# --------------------------------------------------------------------------- reading the page


def code_block(text: str, heading: str) -> list[str]:
    """The lines of the first fenced block after ``heading``."""
    after = text[text.index(f"\n{heading}\n") :]
    start = after.index("```\n") + 4
    return after[start : after.index("```", start)].rstrip("\n").splitlines()


def tree_entries(lines: list[str]) -> list[tuple[Path, str]]:
    """(path relative to the repo, description) of each name in a rooms tree.

    The first line is the namespace's root (no path). A line ``<│   ...>├── name [name ...]  description``
    sits under the last folder one level up (a name ending in ``/``); names at the first level and
    lines with no branch are relative to the repository root. Names and description are parted by
    two or more spaces; several files share a line with single spaces between them.
    """
    entries: list[tuple[Path, str]] = []
    folders: dict[int, Path] = {0: Path()}
    for line in lines[1:]:
        m = BRANCH.match(line)
        depth, rest = (len(m.group(1)) // 4 + 1, m.group(3)) if m else (0, line)
        names, _, description = rest.partition("  ")
        parent = folders[depth - 1] if depth > 1 else Path()
        for name in names.split():
            path = parent / name
            entries.append((path, description.strip()))
            if name.endswith("/"):
                folders[depth] = path
    return entries


def flow_rows(lines: list[str]) -> list[tuple[str, list[str], str, list[str], str]]:
    """(stage, tables read, module path, tables written, the writes column) of each ``reads ─► module ─► writes`` line."""
    rows = []
    for line in lines:
        if ARROW not in line:
            continue
        left, module, writes = (part.strip() for part in line.split(ARROW))
        stage, _, reads = left.partition(" ")
        rows.append((stage, TABLE.findall(reads), module, TABLE.findall(writes), writes))
    return rows


def installed_name(path: Path) -> str:
    """``jobs/stages/`` -> ``shopseq.jobs.stages``; ``jobs/stages/run.py`` -> ``shopseq.jobs.stages.run``."""
    full = REPO / path
    for pkg, folder in package_dirs().items():
        if full.is_relative_to(folder):
            rel = full.relative_to(folder)
            return ".".join((pkg, *(rel.with_suffix("") if full.suffix == ".py" else rel).parts)).removesuffix(".__init__")
    raise ValueError(f"{path} is in no package of pyproject.toml's package-dir")


def dotted_names() -> dict[str, Path | None]:
    """Every importable name of the package: modules (-> their file) and folders, namespace ones included (-> None)."""
    names: dict[str, Path | None] = dict(modules())
    for pkg, folder in package_dirs().items():
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            names.setdefault(installed_name(sub.relative_to(REPO)), None)
            init = sub / "__init__.py"
            if init.is_file():
                names[installed_name(sub.relative_to(REPO))] = init
    return names


def top_level_names(path: Path) -> set[str]:
    """What a module defines at its top: functions, classes, assigned and imported names."""
    out: set[str] = set()
    for node in parsed(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                out.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
    return out


def missing_dotted(text: str, names: dict[str, Path | None]) -> list[str]:
    """Dotted ``shopseq.*`` names in ``text`` that are no module, folder, or top-level name of a module."""
    missing = []
    for found in sorted(set(DOTTED.findall(text))):
        parts = found.split(".")
        for cut in range(len(parts), 1, -1):
            if ".".join(parts[:cut]) in names:
                break
        else:
            missing.append(found)
            continue
        owner, rest = names[".".join(parts[:cut])], parts[cut:]
        if rest and (owner is None or rest[0] not in top_level_names(owner)):
            missing.append(found)
    return missing


def missing_paths(text: str) -> list[str]:
    """Repository paths (``jobs/stages/ingest.py``, ``shopseq/jobs/stages/run.py`` inside the wheel) in ``text`` that do not exist."""
    found = {p.rstrip(".") for p in REPO_PATH.findall(text)} | {p.rstrip(".") for p in INSTALLED_PATH.findall(text)}
    return sorted(p for p in found if not (REPO / p).exists())


def catalog_constants() -> dict[str, set[str]]:
    """Each module-level name of ``shopseq.jobs.catalog`` that stands for tables (``BRONZE_EVENTS``, ``GOLD``), but not ``TABLES`` (all of them)."""
    from shopseq.jobs import catalog

    out: dict[str, set[str]] = {}
    for name, value in vars(catalog).items():
        if name.isupper() and name != "TABLES":
            if isinstance(value, str):
                values = {value}
            elif isinstance(value, (dict, tuple, frozenset)):
                values = set(value.values() if isinstance(value, dict) else value)
            else:
                continue
            if values and values <= set(catalog.TABLES):
                out[name] = values
    return out


def tables_named_by(path: Path, constants: dict[str, set[str]]) -> set[str]:
    """Tables a module's source names: a string literal that is a table, or a catalog constant it uses."""
    from shopseq.jobs.catalog import TABLES

    tree = parsed(path)
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)} & set(TABLES)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "shopseq.jobs.catalog" for a in n.names}
    return literals | {t for name in used & set(constants) for t in constants[name]}


def pipeline_order() -> list[str]:
    """``shopseq run``'s stages in order: the ``STAGES`` tuple of ``jobs/stages/run.py`` (read, not imported: that would import torch)."""
    for node in parsed(REPO / "jobs" / "stages" / "run.py").body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "STAGES":
            return list(ast.literal_eval(node.value))
    raise AssertionError("jobs/stages/run.py defines no STAGES")


# --------------------------------------------------------------------------- the rooms diagram


def test_the_rooms_diagram_names_existing_folders_and_files_with_their_installed_packages():
    entries = tree_entries(code_block(ARCHITECTURE.read_text(encoding="utf-8"), "## Rooms"))
    assert [str(p) for p, _ in entries if not (REPO / p).exists()] == []
    for path, description in entries:
        if description.startswith("shopseq."):
            assert description.split()[0].rstrip(":") == installed_name(path), path


def test_the_rooms_diagram_shows_every_module_of_jobs_its_stages_and_its_benchmarks():
    shown = {REPO / p for p, _ in tree_entries(code_block(ARCHITECTURE.read_text(encoding="utf-8"), "## Rooms"))}
    jobs = REPO / "jobs"
    expected = {p for folder in (jobs, jobs / "stages", jobs / "bench") for p in folder.glob("*.py") if p.name != "__init__.py"}
    expected |= {p.parent for p in jobs.glob("*/__init__.py")}  # sub-packages: config/, stages/, bench/
    assert sorted(str(p.relative_to(REPO)) for p in expected - shown) == []
    assert {REPO / "features", REPO / "training", REPO / "conf", REPO / "peers" / "recbole_run.py"} <= shown


def test_the_tree_reader_follows_depth_and_reads_several_files_a_line():
    lines = [
        "pkg.*            root",
        "├── a/           pkg.a: things",
        "│   ├── x.py     one",
        "│   ├── b/       pkg.a.b",
        "│   │   └── y.py z.py",
        "│   └── w.py     back up",
        "└── c/           pkg.c",
        "peers/r.py       outside",
    ]  # fmt: skip
    assert [(str(p), d) for p, d in tree_entries(lines)] == [
        ("a", "pkg.a: things"), ("a/x.py", "one"), ("a/b", "pkg.a.b"), ("a/b/y.py", ""), ("a/b/z.py", ""),
        ("a/w.py", "back up"), ("c", "pkg.c"), ("peers/r.py", "outside"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- the stage -> table flow


def test_the_flow_diagram_runs_the_cli_stages_in_pipeline_order_and_names_only_catalog_tables():
    from shopseq.jobs.catalog import TABLES
    from shopseq.jobs.cli import STAGES

    rows = flow_rows(code_block(ARCHITECTURE.read_text(encoding="utf-8"), "## Stages and tables"))
    assert [stage for stage, *_ in rows] == pipeline_order()
    for stage, reads, module, writes, _ in rows:
        assert (REPO / module).is_file(), module
        assert STAGES[stage][0] == installed_name(Path(module)), (stage, module)
        assert [t for t in reads + writes if t not in TABLES] == [], stage


def test_every_table_is_written_by_exactly_one_stage_whose_source_names_it():
    from shopseq.jobs.catalog import TABLES

    rows = flow_rows(code_block(ARCHITECTURE.read_text(encoding="utf-8"), "## Stages and tables"))
    written = [t for *_, writes, _ in rows for t in writes]
    assert sorted(written) == sorted(TABLES)  # each once
    constants = catalog_constants()
    unnamed = {module: sorted(set(writes) - tables_named_by(REPO / module, constants)) for _, _, module, writes, _ in rows}
    assert {m: v for m, v in unnamed.items() if v} == {}


def test_the_flow_reader_and_the_table_check_can_fail(tmp_path: Path):
    row = "ingest      raw files ─► jobs/stages/ingest.py ─► [bronze_events] [quarantine], a note"
    assert flow_rows(["stage  reads  module  writes", row]) == [
        ("ingest", [], "jobs/stages/ingest.py", ["bronze_events", "quarantine"], "[bronze_events] [quarantine], a note")
    ]
    constants = catalog_constants()
    assert constants["GOLD"] == {"gold_train", "gold_val", "gold_test"} and "TABLES" not in constants
    module = tmp_path / "m.py"
    module.write_text("from shopseq.jobs.catalog import GOLD, VOCAB as V\nx = 'metrics'\ny = 'not_a_table'\n")
    assert tables_named_by(module, constants) == {"gold_train", "gold_val", "gold_test", "vocab", "metrics"}


# --------------------------------------------------------------------------- every name the pages mention


def test_every_module_and_path_the_architecture_and_operations_pages_name_exists():
    names = dotted_names()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert (page.name, missing_dotted(text, names), missing_paths(text)) == (page.name, [], [])


def test_the_name_checks_catch_stale_names():
    names = dotted_names()
    text = (
        "`shopseq.jobs.stages.train.run_train` and `shopseq.jobs.catalog` and `shopseq.conf.datasets` are real; "
        "`shopseq.jobs.run`, `shopseq.jobs.stages.train.no_such_function` and `shopseq.jobs.bench_quality` are not. "
        "`jobs/stages/run.py`, `jobs/stages/<stage>.py` and `shopseq/jobs/stages/run.py` exist; `jobs/run.py`, "
        "`jobs/bench_quality.py` and `shopseq/jobs/run.py` do not; `../conf/README.md` is a link."
    )
    assert missing_dotted(text, names) == ["shopseq.jobs.bench_quality", "shopseq.jobs.run", "shopseq.jobs.stages.train.no_such_function"]
    assert missing_paths(text) == ["jobs/bench_quality.py", "jobs/run.py"]
