from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobs import cli

REPO = Path(__file__).resolve().parent.parent


def test_help_lists_every_stage(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ("generate", "ingest", "sessionize", "features", "train", "evaluate", "predict", "run", "bench"):
        assert f"    {stage}" in out


def test_each_stage_has_help_with_common_flags(capsys):
    for stage in cli.STAGES:
        try:
            cli.main([stage, "--help"])
        except SystemExit as exc:  # argparse exits 0 after printing help
            assert exc.code == 0
        out = capsys.readouterr().out
        assert f"usage: shopseq {stage}" in out and "--env" in out and "--conf-dir" in out and "--set KEY=VALUE" in out


def test_unknown_stage_and_misspelled_key_are_one_line_errors(tmp_path):
    res = subprocess.run([sys.executable, "-m", "jobs.cli", "ingestt"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "unknown stage 'ingestt'" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "ingest", "--set", "sessionize.gap_minuts=5", "--set", f"app.data_root={tmp_path}"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == "shopseq ingest: error: --set: unknown key 'sessionize.gap_minuts'"
    assert "Traceback" not in res.stderr


def test_stage_without_its_input_names_the_stage_to_run_first(spark, tmp_path, capsys):
    root = ["--set", f"app.data_root={tmp_path}"]
    expected = {
        "features": "shopseq features: error: table 'silver_events' does not exist; run 'shopseq sessionize' first",
        "evaluate": f"shopseq evaluate: error: no checkpoint at {tmp_path}/checkpoints/best.pt: run `shopseq train` first (or set evaluate.checkpoint)",
        "predict": f"shopseq predict: error: no checkpoint at {tmp_path}/checkpoints/best.pt: run `shopseq train` first or pass --checkpoint PATH",
    }
    for stage, line in expected.items():
        assert cli.main([stage, *root]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == line


def test_features_package_is_this_project():
    import features
    import jobs
    import training

    for pkg in (features, jobs, training):
        assert Path(pkg.__file__).resolve().parent.parent == REPO, pkg.__file__
