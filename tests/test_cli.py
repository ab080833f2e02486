from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shopseq.jobs import cli

REPO = Path(__file__).resolve().parent.parent


def test_help_lists_every_stage(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ("generate", "ingest", "sessionize", "features", "train", "evaluate", "predict", "run", "bench", "config"):
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
    res = subprocess.run([sys.executable, "-m", "shopseq.jobs.cli", "ingestt"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "unknown stage 'ingestt'" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "shopseq.jobs.cli", "ingest", "--set", "sessionize.gap_minuts=5", "--set", f"app.data_root={tmp_path}"],
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
        "predict": f"shopseq predict: error: no checkpoint at {tmp_path}/checkpoints/best.pt: run `shopseq train` first (or set predict.checkpoint)",
    }
    for stage, line in expected.items():
        assert cli.main([stage, *root]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == line


def test_the_namespaced_packages_are_this_checkout():
    import shopseq.features
    import shopseq.jobs
    import shopseq.training

    for pkg, folder in ((shopseq.features, "features"), (shopseq.jobs, "jobs"), (shopseq.training, "training")):
        assert Path(pkg.__file__).resolve().parent == REPO / folder, pkg.__file__


def _option_blocks(help_text: str) -> dict[str, str]:
    """Each option of ``--help`` output -> its help text (wrapped lines joined), from the "options:" section."""
    import re

    blocks: dict[str, str] = {}
    names: list[str] = []
    for line in help_text.split("options:", 1)[1].splitlines():
        entry = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if entry:  # "  --set KEY=VALUE       override ...": the invocation, then (maybe) the help
            names = re.findall(r"(?:^|, )(-{1,2}[\w-]+)", entry.group(1))
            text = entry.group(2) or ""
        elif names and re.match(r"^\s{3,}\S", line):  # a wrapped help line
            text = line.strip()
        else:
            names = []
            continue
        for name in names:
            blocks[name] = f"{blocks.get(name, '')} {text}".strip()
    return blocks


def _parsers():
    import importlib

    yield "shopseq", cli.build_parser()
    for stage, (module, _) in cli.STAGES.items():
        yield stage, importlib.import_module(module).build_parser()


def test_every_option_of_every_stage_shows_its_default():
    missing = []
    for name, parser in _parsers():
        blocks = _option_blocks(parser.format_help())
        for action in parser._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                if option not in blocks or "(default" not in blocks[option]:
                    missing.append(f"{name} {option}")
    assert missing == []
    from shopseq.jobs.stages.train import build_parser

    common = _option_blocks(build_parser().format_help())
    assert common["--env"].endswith("(default: local)")
    assert common["--set"].endswith("(repeatable) (default: none)") and common["--conf-file"].endswith("(repeatable) (default: none)")
    assert common["--fresh"].endswith("(default: off)") and common["--epochs"].endswith("(default: train.epochs)")


def test_a_bad_config_value_stops_a_stage_with_one_line_and_exit_2(capsys):
    # load_config refuses the value before any Spark session starts
    assert cli.main(["train", "--set", "train.num_proc=0"]) == 2
    assert capsys.readouterr().err == "shopseq train: error: --set: 'train.num_proc' must be >= 1, got 0\n"
    assert cli.main(["sessionize", "--set", "sessionize.gap_minutes=-5"]) == 2
    assert capsys.readouterr().err == "shopseq sessionize: error: --set: 'sessionize.gap_minutes' must be > 0, got -5.0\n"
    assert cli.main(["config", "--set", "train.encoder=lstm"]) == 2
    assert capsys.readouterr().err == "shopseq config: error: --set: 'train.encoder' must be one of 'transformer', 'gru', got 'lstm'\n"


LIMIT_ERROR = "shopseq ingest: error: argument --limit: must be a whole number from 1 to 2147483647, got {!r}"


def test_limit_is_range_checked_while_parsing(capsys, tmp_path):
    for value in ("-1", "0", "12345678901234567890123", "2147483648", "ten"):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["ingest", "--limit", value, "--set", f"app.data_root={tmp_path}"])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == LIMIT_ERROR.format(value) and "Traceback" not in err
    from shopseq.jobs.stages.ingest import build_parser

    assert build_parser().parse_args(["--limit", "2147483647"]).limit == 2147483647


def test_limit_is_refused_before_spark_could_start(tmp_path):
    """With no Java to start, a bad --limit still gets its line (nothing tried to start Spark); a good one reaches Spark, which cannot start."""
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java")}
    args = [sys.executable, "-m", "shopseq.jobs.cli", "ingest", "--set", f"app.data_root={tmp_path / 'root'}", "--limit"]
    refused = subprocess.run([*args, "12345678901234567890123"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == LIMIT_ERROR.format("12345678901234567890123")
    assert "java" not in refused.stderr.lower() and not (tmp_path / "root").exists()
    started = subprocess.run([*args, "5"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert started.returncode == 1 and "Spark failed: PySparkRuntimeError: [JAVA_GATEWAY_EXITED]" in started.stderr.splitlines()[-1], started.stderr
