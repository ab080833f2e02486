"""`shopseq run`: the whole pipeline in one command, generate -> ingest -> sessionize -> features -> train -> evaluate -> predict.

Recipe: with no arguments, write the embedded synthetic dataset (``shopseq
generate``) and take it through every stage in local mode, logging
``[i/n] <stage>`` with the elapsed seconds of each; then print a summary to
stdout (tables with their Delta versions and row counts, the model against
each baseline per task, where the report, the checkpoints and the MLflow runs
are). ``--input PATH --format NAME`` runs on real data instead: the generate
stage is left out, and the dataset's config layer ``conf/datasets/<NAME>.yaml``
(when there is one) is applied between ``<env>.yaml`` and ``--set``; it holds
what that dataset needs (its own data root, ingest window, horizons and
split boundaries for a short time range). ``--protocol NAME`` applies
``conf/protocols/NAME.yaml`` after it (the evaluation protocol's features keys).
``--stages`` runs a subset.

Every stage keeps its own idempotency, so a second run changes no table a
stage skips: generate skips when its landing folder records the same
``generate`` config; ingest finds only duplicates (bronze and quarantine keep
their versions; ``run_metrics`` gets its row); sessionize and features skip
when their inputs' versions and config are unchanged; train
(:func:`shopseq.jobs.stages.train.run_train`, as ``shopseq train``) skips when the last
checkpoint was trained on the current gold tables and vocabulary with the
current model config and is finished, and starts a new run (instead of
resuming, keeping the old checkpoint under ``<checkpoints>/runs/<run id>``)
when they changed; evaluate skips an evaluation already recorded; predict
replaces only its own (as-of, model version) partition.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from shopseq.jobs.catalog import BRONZE_EVENTS, TABLES, catalog
from shopseq.jobs.common import Context, InputError, add_protocol_flag, protocol_layer, row_limit, run_with_layers, stage_parser
from shopseq.jobs.config import Config, default_conf_dir, to_dict
from shopseq.jobs.sources import FORMATS
from shopseq.jobs.tables import TableIO

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("generate", "ingest", "sessionize", "features", "train", "evaluate", "predict")
# TABLES (from the catalog): every table the pipeline writes, in pipeline order (the summary lists those that exist).


@dataclass
class RunOptions:
    """What ``shopseq run`` was asked to do, beyond the config."""

    input_path: str | None = None
    fmt: str | None = None
    limit: int | None = None  # quick mode: ingest only the first N input lines/rows
    stages: tuple[str, ...] = STAGES

    @property
    def real_data(self) -> bool:
        return self.input_path is not None or (self.fmt is not None and self.fmt != "generated")


@dataclass
class StageRun:
    name: str
    seconds: float
    skipped: bool  # nothing to do: inputs and config unchanged since the last run
    result: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # shown after "done" in the summary


def build_parser():
    parser = stage_parser(
        "run",
        "The whole pipeline: generate -> ingest -> sessionize -> features -> train -> evaluate -> predict, then a summary. "
        "With --input/--format it runs on real data (no generate stage; conf/datasets/<format>.yaml is applied when present).",
    )
    parser.add_argument("--input", default=None, metavar="PATH", help="real data: input file, folder or glob (the generate stage is left out)")
    parser.add_argument("--format", default=None, metavar="NAME", help=f"source format of --input: {', '.join(FORMATS)}")
    parser.add_argument("--limit", type=row_limit, default=None, metavar="N", help="quick mode: ingest only the first N input lines/rows")
    parser.add_argument("--stages", default=None, metavar="LIST", help=f"comma-separated subset to run, in pipeline order (default: all of {','.join(STAGES)})")
    add_protocol_flag(parser)
    return parser


def dataset_layer(conf_dir: str | None, fmt: str | None) -> Path | None:
    """``<conf dir>/datasets/<fmt>.yaml`` when ``fmt`` is given and the file exists."""
    if not fmt:
        return None
    path = Path(conf_dir) if conf_dir else default_conf_dir()
    layer = path / "datasets" / f"{fmt}.yaml"
    return layer if layer.is_file() else None


def select_stages(requested: str | None, real_data: bool) -> tuple[str, ...]:
    """The stages to run, in pipeline order; generate is left out for real data."""
    if requested is None:
        names = list(STAGES)
    else:
        names = [s.strip() for s in requested.split(",") if s.strip()]
        unknown = [s for s in names if s not in STAGES]
        if unknown or not names:
            raise InputError(f"--stages: unknown stage(s) {unknown or requested!r}; choose from {','.join(STAGES)}")
    if real_data and "generate" in names:
        if requested is not None:
            log.info("--input/--format given: the generate stage (synthetic data) is left out")
        names.remove("generate")
    return tuple(s for s in STAGES if s in names)


# --------------------------------------------------------------------------- stages


def _generate(tables: TableIO, cfg: Config, opts: RunOptions) -> StageRun:
    from shopseq.jobs.stages.generate import write_generated

    cat = catalog(cfg)
    out_dir, marker = cat.landing, cat.generate_marker
    wanted = to_dict(cfg.generate)
    local = "://" not in out_dir
    if local and os.path.isfile(marker) and os.path.isdir(cat.generated_events):
        with open(marker) as fh:
            if json.load(fh).get("generate") == wanted:
                log.info("generated data in %s already matches the generate config; not rewritten", out_dir)
                return StageRun("generate", 0.0, True, {"events": cat.generated_events})
        if tables.exists(BRONZE_EVENTS):
            log.warning(
                "the generate config changed since %s was written: ingest appends, so bronze_events will hold the events of both; "
                "give this config its own --set app.data_root=DIR", out_dir,
            )  # fmt: skip
    result = write_generated(tables.spark, cfg, out_dir)
    if local:
        with open(marker, "w") as fh:
            json.dump({"generate": wanted, "rows": result["rows"]}, fh, indent=1, sort_keys=True)
    return StageRun("generate", 0.0, False, result)


def _ingest(tables: TableIO, cfg: Config, opts: RunOptions) -> StageRun:
    from shopseq.jobs.stages.ingest import run_ingest  # refuses a second dataset in one root itself (shopseq.jobs.stages.ingest.check_single_source)

    m = run_ingest(tables, cfg, input_path=opts.input_path, fmt=opts.fmt, limit=opts.limit)
    nothing_new = m["accepted"] == 0 and m["quarantined"] == 0
    return StageRun("ingest", 0.0, False, m, "no new rows: all duplicates" if nothing_new else "")


def _sessionize(tables: TableIO, cfg: Config, opts: RunOptions) -> StageRun:
    from shopseq.jobs.stages.sessionize import run_sessionize

    stats = run_sessionize(tables, cfg)
    return StageRun("sessionize", 0.0, bool(stats["skipped"]), stats)


def _features(tables: TableIO, cfg: Config, opts: RunOptions) -> StageRun:
    from shopseq.jobs.stages.build_features import run_features

    artifact = run_features(tables, cfg)
    return StageRun("features", 0.0, bool(artifact["skipped"]), artifact)


def _train(tables: TableIO, cfg: Config, opts: RunOptions) -> StageRun:
    from shopseq.jobs.stages.train import run_train

    result = run_train(tables, cfg)  # keeps a current finished checkpoint, resumes a current unfinished one, else starts a new run
    return StageRun("train", 0.0, bool(result["skipped"]), result)


def _evaluate(tables: TableIO, cfg: Config, opts: RunOptions) -> StageRun:
    from shopseq.jobs.stages.evaluate import run_evaluate

    result = run_evaluate(tables, cfg)
    return StageRun("evaluate", 0.0, bool(result["skipped"]), result)


def _predict(tables: TableIO, cfg: Config, opts: RunOptions) -> StageRun:
    from shopseq.jobs.stages.predict import run_predict

    result = run_predict(tables, cfg)
    return StageRun("predict", 0.0, False, result)  # always rewrites its own (as-of, model version) partition


STAGE_FUNCS: dict[str, Callable[[TableIO, Config, RunOptions], StageRun]] = {
    "generate": _generate,
    "ingest": _ingest,
    "sessionize": _sessionize,
    "features": _features,
    "train": _train,
    "evaluate": _evaluate,
    "predict": _predict,
}


# --------------------------------------------------------------------------- pipeline


def table_versions(tables: TableIO) -> dict[str, int | None]:
    return {name: tables.version(name) for name in TABLES}


def table_summary(tables: TableIO, before: dict[str, int | None] | None = None, counts: bool = True) -> list[dict[str, Any]]:
    """Each existing table: name, location, version, rows (with ``counts``: a count Spark answers from
    Parquet footers, else None) and ``changed``: whether the version differs from ``before`` (None without it)."""
    rows = []
    for name in TABLES:
        version = tables.version(name)
        if version is None:
            continue
        changed = None if before is None else version != before.get(name)
        n = tables.read(name).count() if counts else None
        rows.append({"table": name, "location": tables.ref(name).location, "version": version, "changed": changed, "rows": n})
    return rows


def run_pipeline(
    tables: TableIO,
    cfg: Config,
    input_path: str | None = None,
    fmt: str | None = None,
    limit: int | None = None,
    stages: str | None = None,
) -> dict[str, Any]:
    """Run the selected stages in order and collect what the summary shows.

    Returns a dict: ``stages`` (name, seconds, skipped per stage run),
    ``results`` (each stage's own returned dict), ``tables`` (see
    :func:`table_summary`), ``evaluation`` (the evaluate result or None),
    ``checkpoint_dir``, ``mlflow`` (tracking URI, experiment, run id),
    ``data_root``, ``seconds`` (total).
    """
    opts = RunOptions(input_path, fmt, limit)
    opts.stages = select_stages(stages, opts.real_data)
    before = table_versions(tables)
    runs: list[StageRun] = []
    started = time.perf_counter()
    for i, name in enumerate(opts.stages, 1):
        log.info("[%d/%d] %s ...", i, len(opts.stages), name)
        t0 = time.perf_counter()
        try:
            run = STAGE_FUNCS[name](tables, cfg, opts)
        except Exception:
            log.error("[%d/%d] %s failed after %.1f s", i, len(opts.stages), name, time.perf_counter() - t0)
            raise
        run.seconds = time.perf_counter() - t0
        log.info("[%d/%d] %s %s in %.1f s", i, len(opts.stages), name, _status({"skipped": run.skipped, "note": run.note}), run.seconds)
        runs.append(run)
    return _collect(tables, cfg, runs, before, time.perf_counter() - started)


def _collect(tables: TableIO, cfg: Config, runs: list[StageRun], before: dict[str, int | None], seconds: float) -> dict[str, Any]:
    cat = catalog(cfg)
    results = {r.name: r.result for r in runs}
    train = results.get("train", {})
    evaluation = results.get("evaluate") or {}
    return {
        "stages": [{"stage": r.name, "seconds": round(r.seconds, 1), "skipped": r.skipped, "note": r.note} for r in runs],
        "results": results,
        "tables": table_summary(tables, before),
        "evaluation": results.get("evaluate"),
        "prediction": results.get("predict"),
        "checkpoint_dir": train.get("checkpoint_dir") or cat.checkpoints,
        "mlflow": {"tracking_uri": train.get("tracking_uri") or cat.mlflow_uri, "experiment": cfg.train.experiment, "run_id": train.get("mlflow_run_id") or evaluation.get("mlflow_run_id")},
        "data_root": cat.location,
        "seconds": round(seconds, 1),
    }


# --------------------------------------------------------------------------- summary


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A plain-text table with columns padded to their widest cell (numbers right-aligned)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if c[:1].isdigit() or c[:1] == "-" and c[1:2].isdigit() else c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _interval(value: Any, low: Any = None, high: Any = None, signed: bool = False) -> str:
    """``0.1375 [0.1200, 0.1500]``, or the value alone when there is no interval."""
    if not isinstance(value, float) or math.isnan(value):
        return _num(value)
    f = "{:+.4f}" if signed else "{:.4f}"
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (low, high)):
        return f.format(value)
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def comparison_rows(evaluation: dict[str, Any] | None) -> list[list[str]]:
    """Per task (the evaluation's ``comparison``): task, primary metric, the model's value, each baseline's (with
    their bootstrap intervals when present), when the comparison carries it model minus the best baseline with its
    paired interval, whether the model beats every baseline, and the outcome (beats / ties / loses, ``(no interval)``
    when point values decided)."""
    if not evaluation:
        return []
    rows = []
    for c in evaluation.get("comparison", []):
        baselines = ", ".join(f"{b['name']} {_interval(b['value'], b.get('ci_low'), b.get('ci_high'))}" for b in c["baselines"]) or "none"
        outcome = c.get("outcome", "") + (" (no interval)" if c.get("interval") == "none" else "")
        diff = [_interval(c["diff"], c.get("diff_low"), c.get("diff_high"), signed=True)] if "diff" in c else []
        rows.append([c["task"], c["metric"], _interval(c["model"], c.get("model_low"), c.get("model_high")), baselines, *diff, "yes" if c["beats_baselines"] else "no", outcome])
    return rows


def _status(stage: dict[str, Any]) -> str:
    if stage["skipped"]:
        return "skipped (up to date)"
    return f"done ({stage['note']})" if stage.get("note") else "done"


def format_summary(result: dict[str, Any]) -> str:
    """The text ``shopseq run`` prints at the end (stages, tables, model vs baselines, locations)."""
    out = [f"shopseq run: {len(result['stages'])} stage(s) in {result['seconds']:.1f} s, data root {result['data_root']}", ""]
    out += _table(["stage", "seconds", "status"], [[s["stage"], f"{s['seconds']:.1f}", _status(s)] for s in result["stages"]])
    out += ["", "Tables (Delta version; changed = written by this run)"]
    out += _table(
        ["table", "version", "rows", "changed", "location"],
        [[t["table"], str(t["version"]), _num(t["rows"]), "yes" if t["changed"] else "no", t["location"]] for t in result["tables"]],
    )
    rows = comparison_rows(result.get("evaluation"))
    if rows:
        evaluation = result["evaluation"]
        out += ["", f"Model vs baselines ({evaluation.get('split', 'test')} split)"]
        header = ["task", "metric", "model", "baselines", "beats baselines", "outcome"]
        if any(len(r) > len(header) for r in rows):
            header.insert(4, "model - best baseline")
            rows = [r if len(r) == len(header) else r[:4] + [""] + r[4:] for r in rows]
        out += _table(header, rows)
        out += ["", f"Report:      {evaluation.get('report_path') or evaluation.get('report_dir')}"]
    elif "evaluate" in [s["stage"] for s in result["stages"]]:
        out += ["", "Model vs baselines: the evaluation returned no comparison"]
    filtered = (result["results"].get("features") or {}).get("filter")
    if filtered:  # the protocol's event filter (features stage): users (or sessions), items, events kept of those it saw
        kept, seen = filtered["after"], filtered["before"]
        counts = ", ".join(f"{_num(kept[k])} of {_num(seen[k])} {k if k != 'users' else filtered['entity'] + 's'}" for k in ("users", "items", "events"))
        out += ["", f"Protocol:    {result['results']['features'].get('protocol')}: {counts} ({filtered['rounds']} filter round(s))"]
    train = result["results"].get("train") or {}
    history = train.get("history") or []
    if history:
        last = history[-1]
        out += ["", f"Training:    {len(history)} epoch(s), last train loss {last['train_loss']:.4f}, val NDCG@10 {last.get('val_ndcg@10', float('nan')):.4f}"]
    prediction = result.get("prediction")
    if prediction:
        out += [f"Predictions: {_num(prediction.get('rows'))} users as of {prediction.get('as_of_key')}, model version {prediction.get('model_version')}"]
    mlflow = result["mlflow"]
    out += [
        f"Checkpoints: {result['checkpoint_dir']}",
        f"MLflow:      {mlflow['tracking_uri']} (experiment {mlflow['experiment']}{', run ' + mlflow['run_id'] if mlflow.get('run_id') else ''})",
    ]
    return "\n".join(out) + "\n"


def _run(ctx: Context) -> int:
    a = ctx.args
    result = run_pipeline(ctx.tables, ctx.cfg, input_path=a.input, fmt=a.format, limit=a.limit, stages=a.stages)
    sys.stdout.write(format_summary(result))  # the summary is this command's product
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    # The dataset's layer, then the protocol's, go first: explicit --conf-file layers and --set still override them.
    return run_with_layers(
        build_parser(), argv, _run, lambda known: [dataset_layer(known.conf_dir, known.format), protocol_layer(known.conf_dir, known.protocol)]
    )


if __name__ == "__main__":
    sys.exit(main())
