"""The README stays a guide and the docs stay linked: no Spark, no fixtures that start it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
# Written by a benchmark command (`shopseq bench quality --docs docs/benchmarks`), so it may not exist yet.
GENERATED = DOCS / "benchmarks"

# ](target) where target is a path with an optional #anchor and no spaces; an optional "title" is allowed.
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def pages() -> list[Path]:
    """README.md and every Markdown page directly under docs/ (docs/benchmarks/ is generated, not checked)."""
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(path: Path) -> str:
    """The file without fenced code blocks (a `](...)` inside code is not a link)."""
    out, in_fence = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append(line)
    return "\n".join(out)


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path))


def relative_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link as written, resolved target, anchor) for each relative link in the page."""
    out = []
    for link in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I) or link.startswith("#"):
            continue  # http(s), mailto, ...; anchors inside the page
        target, _, anchor = link.partition("#")
        out.append((link, (path.parent / target).resolve(), anchor))
    return out


def is_generated(target: Path) -> bool:
    return target == GENERATED.resolve() or GENERATED.resolve() in target.parents


def slugs(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_readme_is_a_guide_not_a_log():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < 300, f"README.md has {n} lines; move reference and measurements into docs/ (hard limit 300)"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    broken = []
    for link, target, _ in relative_links(page):
        if not target.exists() and not is_generated(target):
            broken.append(link)
    assert not broken, f"{page.relative_to(REPO)}: links to missing files: {broken}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_anchors_into_markdown_resolve(page: Path):
    broken = []
    for link, target, anchor in relative_links(page):
        if anchor and target.suffix == ".md" and target.is_file() and not is_generated(target):
            if anchor not in slugs(target):
                broken.append(link)
    for link in links(page):
        if link.startswith("#") and link[1:] not in slugs(page):
            broken.append(link)
    assert not broken, f"{page.relative_to(REPO)}: links to missing headings: {broken}"


def test_every_docs_page_is_in_the_index():
    index = DOCS / "README.md"
    linked = {target for _, target, _ in relative_links(index)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p != index and p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link: {missing}"


def test_readme_links_every_docs_page():
    linked = {target for _, target, _ in relative_links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md (Where to read more) does not link: {missing}"


def test_spark_submit_lines_agree():
    """The README and docs/operations.md show the same spark-submit commands."""

    def block(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        m = re.search(r"```bash\n(make dist .*?)```", text, re.S)
        assert m, f"{path.relative_to(REPO)}: no spark-submit block"
        return m.group(1)

    assert block(README) == block(DOCS / "operations.md")


# --------------------------------------------------------------------------- the configuration reference

CONFIG_PAGE = DOCS / "configuration.md"


def reference_table(text: str) -> dict[str, dict[str, str]]:
    """The rows of every ``| `key` | type | default | valid values | meaning |`` table: key -> cells."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 5, f"docs/configuration.md: a row without 5 cells: {line}"
        rows[cells[0].strip("`")] = dict(zip(("type", "default", "valid", "meaning"), cells[1:]))
    return rows


def test_configuration_reference_is_the_rendering_of_the_typed_config():
    from shopseq.jobs.config import reference_markdown

    assert CONFIG_PAGE.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/configuration.md is stale: regenerate it with `.venv/bin/shopseq config --reference > docs/configuration.md`"
    )


def test_configuration_reference_documents_exactly_the_typed_keys_with_their_defaults_and_ranges():
    import dataclasses

    from shopseq.jobs.config import Config, default_of, key_docs, type_hints, yaml_value

    def leaves(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
        out = {}
        for f in dataclasses.fields(cls):
            tp = type_hints(cls)[f.name]
            out.update(leaves(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else {f"{prefix}{f.name}": f})
        return out

    documented = reference_table(CONFIG_PAGE.read_text(encoding="utf-8"))
    typed = leaves(Config)
    assert sorted(set(typed) - set(documented)) == [], "typed config keys missing from docs/configuration.md"
    assert sorted(set(documented) - set(typed)) == [], "docs/configuration.md documents keys the typed config does not have"
    declared = {d.key: d for d in key_docs()}
    wrong = {}
    for key, f in typed.items():
        row = documented[key]
        if row["default"] != f"`{yaml_value(default_of(f))}`":
            wrong[key] = ("default", row["default"], yaml_value(default_of(f)))
        elif row["valid"] != declared[key].valid:
            wrong[key] = ("valid values", row["valid"], declared[key].valid)
        elif not row["meaning"]:
            wrong[key] = ("meaning", "", "a meaning")
    assert wrong == {}
    assert documented["train.num_proc"] == {"type": "int", "default": "`2`", "valid": ">= 1", "meaning": documented["train.num_proc"]["meaning"]}
    assert documented["train.encoder"]["valid"] == "one of `transformer`, `gru`"
    assert documented["features.gap_days"]["valid"] == ">= 0, or null"


# --------------------------------------------------------------------------- README quick commands

# Commands in README.md code blocks that this test does not run, by prefix, and why.
EXCLUDED = {
    "make test": "the whole suite",
    "make run": "the whole pipeline (minutes)",
    ".venv/bin/shopseq run --input": "a pipeline run on real data",
    ".venv/bin/shopseq run --stages": "a pipeline run",
    ".venv/bin/shopseq run --limit": "a pipeline run",
    "make dist": "builds the wheel and the --py-files zip",
    "SPARK=": "the standalone cluster of tests/test_cluster.py (it runs these lines)",
    "J=": "the standalone cluster of tests/test_cluster.py (it runs these lines)",
    "PY=": "the standalone cluster of tests/test_cluster.py (it runs these lines)",
    "export SPARK_LOCAL_IP=": "the standalone cluster of tests/test_cluster.py (it runs these lines)",
    "$SPARK/": "the standalone cluster of tests/test_cluster.py (it runs these lines)",
    "DELTA=": "spark-submit on YARN or Kubernetes",
    "spark-submit ": "spark-submit on YARN or Kubernetes",
    "databricks bundle": "a Databricks workspace",
}


def readme_commands() -> list[str]:
    """Every command line of README.md's bash blocks (continuations joined, comments dropped)."""
    commands, in_bash, pending = [], False, ""
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            in_bash = not in_bash and line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        text = pending + re.sub(r"(^|\s)#.*$", "", line).strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text:
            commands.append(text)
    return commands


def quick_commands() -> list[str]:
    return [c for c in readme_commands() if not any(c.startswith(prefix) for prefix in EXCLUDED)]


def test_every_readme_command_is_run_or_excluded_by_name():
    quick = quick_commands()
    assert [c for c in quick if not c.startswith(".venv/bin/shopseq ")] == [], "README commands neither run here nor in EXCLUDED"
    assert len(quick) >= 3 and any(c.endswith("--help") for c in quick) and any(" config " in f"{c} " for c in quick)


@pytest.mark.parametrize("command", quick_commands())
def test_readme_quick_command_exits_0(command: str, capsys, monkeypatch):
    """The quick commands, through ``shopseq.jobs.cli.main`` (the ``shopseq`` entry point) in this process: no Spark, well under a second."""
    import shlex

    from shopseq.jobs import cli

    monkeypatch.chdir(REPO)
    argv = shlex.split(command)[1:]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse exits after printing --help
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0 and out.strip(), f"{command}: exit {code}"
