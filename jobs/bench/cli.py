"""`shopseq bench <name>`: benchmarks reported as ratios against a reference measured in the same run.

One module per benchmark, over the shared helpers of :mod:`shopseq.jobs.bench.kit`:
``sessionize`` (:mod:`shopseq.jobs.bench.sessionize`, Spark against DuckDB),
``features`` (:mod:`shopseq.jobs.bench.features`), ``train`` (:mod:`shopseq.jobs.bench.train`),
``predict`` (:mod:`shopseq.jobs.bench.predict`), ``quality`` (:mod:`shopseq.jobs.bench.quality`,
the model against the baselines and RecBole on the real samples),
``bot`` (:mod:`shopseq.jobs.bench.bot`, a million-event bot against the same pipeline without it).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

from shopseq.jobs.bench.sessionize import bench_sessionize
from shopseq.jobs.common import Context, InputError, run_stage, stage_parser

log = logging.getLogger(__name__)


def build_parser():
    parser = stage_parser("bench", "Benchmarks reported as ratios against a reference engine in the same run.")
    parser.add_argument(
        "name",
        choices=["sessionize", "train", "features", "predict", "quality", "scale", "bot", "render"],
        help="which benchmark ('sessionize': Spark against DuckDB; 'features', 'train', 'predict': those stages; "
        "'quality': model vs baselines on the real samples, per protocol; 'scale': per-core throughput of ingest, sessionize and features at several sizes, "
        "projected to --target-events a day; 'bot': one user with --events events in a day against the same pipeline without it); 'render' re-renders every bench_<name>.md in --docs from its JSON",
    )
    parser.add_argument(
        "--events",
        default=None,
        help="sessionize: comma-separated event counts, e.g. 1000000,10000000 (default: 1000000); train: build gold from this many generated events; "
        "features: comma-separated event counts (default: 1000000,10000000); scale: comma-separated event counts (default: 1000000,3000000,10000000); bot: the bot's events in its one day (default: 1000000)",
    )
    parser.add_argument("--regenerate", action="store_true", help="regenerate the input even when a previous run left it (sessionize, features, predict)")
    parser.add_argument("--rows", type=int, default=None, help="predict: windows to score (every user's latest window, replicated) (default: 100000)")
    parser.add_argument("--users", type=int, default=None, help="bot: ordinary background users, about 18 events each (default: 1000)")
    parser.add_argument("--no-ingest", dest="ingest", action="store_false", help="skip the Spark ingest + sessionize timing")
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine (features: per timed step) and size, alternating; the fastest is reported (default: 1)")
    parser.add_argument("--data-dir", default=None, help="quality: folder with the real samples (default: ../shared/data beside the repo)")
    parser.add_argument("--samples", default=None, help="quality: comma-separated samples (default: taobao,rees46,diginetica)")
    parser.add_argument("--protocols", default=None, help="quality: comma-separated protocol presets from conf/protocols (default: recbole_loo,session,cutoff)")
    parser.add_argument("--peer", default=None, choices=["recbole"], help="quality: also run RecBole's SASRec and GRU4Rec on the recbole_loo split (needs `make peer-recbole`)")
    parser.add_argument("--target-events", type=float, default=1e9, help="scale: events a day to project cores and wall time for (default: 1e9)")
    parser.add_argument("--window-hours", type=float, default=2.0, help="scale: hours the daily run of ingest, sessionize and features may take (default: 2)")
    parser.add_argument(
        "--warmup", type=int, default=None, metavar="EVENTS", help="scale: events of the untimed first pass (JIT, class loading); 0: none (default: half the smallest size, at most 20000)"
    )
    parser.add_argument(
        "--docs", default=None, metavar="DIR", help="also write the report's JSON and the Markdown page rendered from it into DIR, e.g. docs/benchmarks (default: only <app.data_root>/reports)"
    )
    return parser


RENDERERS = {name: f"shopseq.jobs.bench.{name}" for name in ("sessionize", "features", "train", "predict", "quality", "scale", "bot")} | {"scale_cluster": "shopseq.jobs.bench.scale"}


def render_docs(out_dir: Path) -> list[Path]:
    """Re-render ``bench_<name>.md`` from ``bench_<name>.json`` for every report in ``out_dir``; returns the pages written."""
    written = []
    for name, module in RENDERERS.items():
        src = out_dir / f"bench_{name}.json"
        if src.is_file():
            page = out_dir / f"bench_{name}.md"
            page.write_text(importlib.import_module(module).render_markdown(json.loads(src.read_text())))
            written.append(page)
    return written


def _docs(ctx: Context) -> Path | None:
    return Path(ctx.args.docs) if ctx.args.docs else None


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--events: expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise InputError(f"--events: expected positive event counts, got {text!r}")
    return sizes


def _run_train(ctx: Context) -> int:
    from shopseq.jobs.bench.train import bench_train  # the training stage's benchmark
    sizes = _parse_sizes(ctx.args.events) if ctx.args.events else [None]
    if len(sizes) != 1:
        raise InputError("--events: bench train takes one event count")
    bench_train(ctx, sizes[0], docs=_docs(ctx))
    return 0


def _run(ctx: Context) -> int:
    if ctx.args.name == "render":
        if not ctx.args.docs:
            raise InputError("bench render: give the folder with --docs DIR")
        pages = render_docs(Path(ctx.args.docs))
        if not pages:
            raise InputError(f"bench render: no bench_<name>.json in {ctx.args.docs}")
        log.info("re-rendered %s", ", ".join(str(p) for p in pages))
        return 0
    if ctx.args.name == "train":
        return _run_train(ctx)
    if ctx.args.name == "quality":
        from shopseq.jobs.bench.quality import _run as run_quality  # model quality on the real samples (issue #14)

        return run_quality(ctx)
    if ctx.args.name == "bot":
        from shopseq.jobs.bench.bot import DEFAULT_BOT_EVENTS, DEFAULT_USERS, bench_bot  # a million-event bot (issue #17)

        sizes = _parse_sizes(ctx.args.events) if ctx.args.events else [DEFAULT_BOT_EVENTS]
        users = DEFAULT_USERS if ctx.args.users is None else ctx.args.users
        if len(sizes) != 1 or users < 1:
            raise InputError("bench bot takes one --events count and a positive --users")
        bench_bot(ctx.spark, ctx.cfg, sizes[0], users, args=ctx.args, docs=_docs(ctx))
        return 0
    if ctx.args.repeat < 1:
        raise InputError(f"--repeat: expected a positive count, got {ctx.args.repeat}")
    if ctx.args.name == "predict":
        from shopseq.jobs.bench.predict import bench_predict  # the predict stage's benchmark (issue #6)

        sizes = _parse_sizes(ctx.args.events) if ctx.args.events else [None]
        if len(sizes) != 1 or (ctx.args.rows is not None and ctx.args.rows < 1):
            raise InputError("bench predict takes one --events count and a positive --rows")
        bench_predict(ctx, sizes[0], rows=ctx.args.rows, repeat=ctx.args.repeat, docs=_docs(ctx))
        return 0
    if ctx.args.name == "scale":
        from shopseq.jobs.bench.scale import DEFAULT_SIZES, bench_scale  # throughput at several sizes, projected (issue #18)

        if ctx.args.target_events <= 0 or ctx.args.window_hours <= 0 or (ctx.args.warmup is not None and ctx.args.warmup < 0):
            raise InputError("bench scale: --target-events and --window-hours must be positive, --warmup 0 or more")
        sizes = _parse_sizes(ctx.args.events) if ctx.args.events else list(DEFAULT_SIZES)
        bench_scale(ctx.spark, ctx.cfg, sizes, ctx.args.target_events, ctx.args.window_hours, regenerate=ctx.args.regenerate, docs=_docs(ctx), warmup=ctx.args.warmup)
        return 0
    if ctx.args.name == "features":
        from shopseq.jobs.bench.features import bench_features  # the features stage's benchmark (issue #4)

        bench_features(ctx.spark, ctx.cfg, _parse_sizes(ctx.args.events or "1000000,10000000"), regenerate=ctx.args.regenerate, repeat=ctx.args.repeat, docs=_docs(ctx))
        return 0
    bench_sessionize(
        ctx.spark, ctx.cfg, _parse_sizes(ctx.args.events or "1000000"), regenerate=ctx.args.regenerate, with_ingest=ctx.args.ingest, repeat=ctx.args.repeat, docs=_docs(ctx)
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_stage(build_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main())
