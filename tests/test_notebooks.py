"""Both notebooks execute top to bottom against a pipeline's local tables (the shared `trained` fixture + evaluate + predict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.e2e]

NOTEBOOKS = REPO / "notebooks"


def execute(name: str) -> list[str]:
    """Run a notebook in a fresh ``python3`` kernel (this interpreter); the text of every output, in order.

    The kernel starts its own local Spark session (its own JVM), reading the
    data root from ``SHOPSEQ_DATA_ROOT``; nbclient fails on the first cell error.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                texts.append(out["text"])
            elif out["output_type"] in ("execute_result", "display_data"):
                texts.append("image/png" if "image/png" in out["data"] else out["data"].get("text/plain", ""))
    return texts


def test_notebooks_define_no_logic():
    import nbformat

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "def " not in code and "class " not in code, f"{path.name}: notebooks import the package, they define no functions"
        assert "from shopseq.jobs.config import load_config" in code and "TableIO" in code


def test_notebooks_run_top_to_bottom(trained, monkeypatch):
    evaluation = trained.run["evaluation"]  # the shared pipeline run evaluated and predicted
    monkeypatch.setenv("SHOPSEQ_DATA_ROOT", str(trained.root))

    out = "\n".join(first := execute("01_sessions_and_features.ipynb"))
    sessions = trained.tables.read("sessions").count()
    gold = sum(trained.tables.read(f"gold_{s}").count() for s in ("train", "val", "test"))
    assert f"sessions: {sessions}\n" in out
    assert f"gold examples: {gold}\n" in out
    assert first.count("image/png") == 3  # session histograms, events per day, windows and profiles

    out = "\n".join(second := execute("02_metrics_and_predictions.ipynb"))
    latest = trained.tables.read("predictions_latest").count()
    assert f"evaluation {evaluation['evaluation_id']}: model {evaluation['model_version']}" in out
    assert f"predictions_latest rows: {latest} " in out
    pngs = sorted(Path(evaluation["report_dir"]).glob("*.png"))
    assert pngs and f"({len(pngs)} plots)" in out
    assert second.count("image/png") == 3 + len(pngs)  # comparison bars, metric@K, prediction distributions + the report's PNGs
