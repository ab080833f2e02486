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
        m = re.search(r"```bash\n(python -m pip wheel.*?)```", text, re.S)
        assert m, f"{path.relative_to(REPO)}: no spark-submit block"
        return m.group(1)

    assert block(README) == block(DOCS / "operations.md")
