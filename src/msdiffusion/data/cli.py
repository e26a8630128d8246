"""`msdiffusion data`: build training data from videos or images; refilter, check, export it.

Kept import-light (Ray, torch, transformers and PyAV load inside the command), so ``--help`` is
fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..errors import InputError
from ..flags import add_flag

__all__ = ["register"]

BUILD_EPILOG = """\
examples:
  msdiffusion data build --videos clips/ --out datasets/clips --config data.json
  msdiffusion data build --images photos/ --out datasets/photos      # augmented references
  RAY_ADDRESS=auto msdiffusion data build --videos /shared/clips --out /shared/ds  # a cluster
  msdiffusion data refilter datasets/clips --config stricter.json --out datasets/clips-strict
  msdiffusion data check datasets/clips                             # reads the shards
  msdiffusion data export datasets/clips --out small/ --limit 100   # a JSONL manifest + files
  msdiffusion data config > data.json                                # every setting, defaults
  msdiffusion data demo --out outputs/data-demo      # synthetic videos, random models, offline

Runs as a Ray Data program: on this machine by default, on a cluster when RAY_ADDRESS (set by
`ray job submit`) or config.ray.address names one (docs/data.md). Re-running the same command
resumes at the first unfinished shard.
"""


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="JSON",
        help="settings (see `msdiffusion data config`) (default: none, the built-in settings)",
    )
    parser.add_argument(
        "--engine",
        choices=("ray", "local"),
        default="ray",
        help="ray (a local Ray, or the cluster in RAY_ADDRESS) or local "
        "(one process, no Ray: for debugging) (default: ray)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="a running Ray cluster: auto, or ray://host:10001 (default: RAY_ADDRESS, else a "
        "local Ray)",
    )
    parser.add_argument(
        "--num-cpus", type=int, metavar="N", help="CPUs of a local Ray (default: all)"
    )
    add_flag(parser, "no_progress")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``data`` command group: build, refilter, check, export, config, demo."""
    parser = subparsers.add_parser(
        "data",
        help="build, check and export training data",
        description="Build multi-subject training data and check it.",
    )
    data_sub = parser.add_subparsers(
        dest="data_command", metavar="SUBCOMMAND", parser_class=type(parser)
    )
    data_sub.required = True

    build = data_sub.add_parser(
        "build",
        help="videos or images → WebDataset shards (targets, crops, masks) + report",
        description="Mine multi-subject training samples: caption each target frame, ground\n"
        "its entity phrases with an open-vocabulary detector, find each subject again\n"
        "in another frame of the same shot (or, for images, make an augmented crop),\n"
        "segment it with SAM, and write DATASET/shards/*.tar with index.json, raw\n"
        "model outputs (raw/*.tar, for `data refilter`) and a report (docs/data.md).",
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--videos",
        metavar="DIR",
        help="folder of videos, searched recursively (required: this or --images)",
    )
    source.add_argument(
        "--images",
        metavar="DIR",
        help="folder of images, searched recursively (required: this or --videos)",
    )
    build.add_argument(
        "--out", metavar="DATASET", required=True, help="output dataset folder (required)"
    )
    _engine_args(build)
    build.add_argument(
        "--seed", type=int, metavar="N", help="override the config's seed (default: the config's)"
    )
    build.add_argument(
        "--device",
        help="override the models' device (default: cuda where the worker has a GPU, else cpu)",
    )
    add_flag(
        build, "batch_size", help="items per model call", shown="the config's, models.batch_size"
    )
    build.add_argument(
        "--max-shards",
        type=int,
        metavar="N",
        help="write at most N shards in this run, for time-boxed jobs (default: all)",
    )
    build.set_defaults(func=run_build)

    refilter = data_sub.add_parser(
        "refilter",
        help="new thresholds on a build's raw outputs → new shards (no models)",
        description="Apply other filter/match/dedup thresholds to the raw outputs a build kept "
        "(captions, detections with scores, features, masks) and write a new dataset "
        "folder; no model runs. Settings that shaped the raw outputs cannot change "
        "(docs/data.md).",
        epilog="example:\n  msdiffusion data refilter datasets/clips --config stricter.json "
        "--out datasets/clips-strict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    refilter.add_argument("dataset", help="a dataset folder written by `data build`")
    refilter.add_argument(
        "--out", metavar="DATASET", required=True, help="new dataset folder (required)"
    )
    _engine_args(refilter)
    refilter.set_defaults(func=run_refilter)

    export = data_sub.add_parser(
        "export",
        help="shards → a JSONL manifest with image files (small scale)",
        description="Write a dataset's samples as a training manifest (docs/training-data.md) "
        "with one file per image.",
        epilog="example:\n  msdiffusion data export datasets/clips --out small/ --limit 100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("dataset", help="a dataset folder (or one shard .tar)")
    export.add_argument(
        "--out", metavar="DIR", required=True, help="folder for manifest.jsonl (required)"
    )
    export.add_argument(
        "--limit", type=int, metavar="N", help="only the first N samples (default: all)"
    )
    export.set_defaults(func=run_export)

    config = data_sub.add_parser(
        "config",
        help="print the default build settings as JSON",
        description="Print every build setting with its default, as JSON: a starting point for "
        "--config.",
        epilog="example:\n  msdiffusion data config > data.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.set_defaults(func=run_config)

    demo = data_sub.add_parser(
        "demo",
        help="synthetic videos → a dataset, with random-weight models (offline)",
        description="Write a few synthetic videos (moving shapes, hard cuts) and build a dataset "
        "from them with the random-tiny models: a smoke test of the whole pipeline "
        "that needs no download. The captions and boxes mean nothing; the shards "
        "are valid (`msdiffusion data check`).",
        epilog="example:\n  msdiffusion data demo --out outputs/data-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out", metavar="DIR", required=True, help="folder for videos/ and dataset/ (required)"
    )
    demo.add_argument(
        "--videos", type=int, default=4, metavar="N", help="videos to write (default: 4)"
    )
    _engine_args(demo)
    demo.set_defaults(func=run_demo)

    _register_check(data_sub)
    return parser


def run_config(args: argparse.Namespace) -> int:
    from .config import BuildConfig

    print(json.dumps(BuildConfig().to_dict(), indent=2))
    return 0


# flags that count something: at least 1 when given
COUNTS = ("num_cpus", "batch_size")


def _given(args: argparse.Namespace, keys: dict[str, str]) -> dict[str, Any]:
    """The flags given (not None), by the config keys they set (``keys``: flag dest → key);
    a count below 1 is refused."""
    values = {}
    for dest, key in keys.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if dest in COUNTS and value < 1:
            raise InputError("--" + dest.replace("_", "-"), ">= 1", value)
        values[key] = value
    return values


def _config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Any:
    from .config import load_build_config

    overrides = dict(overrides or {})
    ray = _given(args, {"ray_address": "address", "num_cpus": "num_cpus"})
    if ray:
        overrides["ray"] = ray
    return load_build_config(args.config, overrides)


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _print_result(result: Any, seconds: float) -> None:
    print(
        f"wrote {result.shards_written} shards in {seconds:.1f} s; "
        f"{result.shards_done_before} were already done"
    )
    if result.index is None:
        print(f"{result.shards_remaining} shards still to do (--max-shards): re-run to go on")
        return
    report = result.report or {}
    failed = report.get("failed_inputs", 0)
    print(
        f"{report.get('samples', 0)} samples with {report.get('subjects', 0)} subjects in "
        f"{result.index}; report: {result.index.parent / 'report.md'}"
        + (f"; {failed} failed inputs (failed.jsonl)" if failed else "")
    )


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .build import build_dataset
    from .synthetic import demo_settings, write_demo_videos

    if args.videos < 1:
        raise InputError("--videos", ">= 1", args.videos)
    out = Path(args.out)
    cfg = _config(args, demo_settings()) if args.config is None else _config(args)
    write_demo_videos(out / "videos", args.videos, size=(192, 192))
    result = build_dataset(
        out / "videos",
        out / "dataset",
        mode="videos",
        cfg=cfg,
        engine=args.engine,
        progress=_progress(args),
    )
    report = result.report or {}
    print(f"wrote {report.get('samples', 0)} samples to {result.index}")
    print(f"next: msdiffusion data check {out / 'dataset'}")
    print(f"      msdiffusion data export {out / 'dataset'} --out {out / 'manifest'}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from .build import build_dataset

    overrides = _given(args, {"seed": "seed"})
    models = _given(args, {"device": "device", "batch_size": "batch_size"})
    if models:
        overrides["models"] = models
    cfg = _config(args, overrides)
    mode, inputs = ("videos", args.videos) if args.videos else ("images", args.images)
    start = time.perf_counter()
    result = build_dataset(
        inputs,
        args.out,
        mode=mode,
        cfg=cfg,
        engine=args.engine,
        max_shards=args.max_shards,
        progress=_progress(args),
    )
    _print_result(result, time.perf_counter() - start)
    return 0


def run_refilter(args: argparse.Namespace) -> int:
    from .refilter import refilter_dataset

    start = time.perf_counter()
    result = refilter_dataset(
        args.dataset, args.out, _config(args), engine=args.engine, progress=_progress(args)
    )
    _print_result(result, time.perf_counter() - start)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import export_manifest

    manifest = export_manifest(args.dataset, args.out, limit=args.limit)
    print(f"wrote {manifest}")
    return 0


def _register_check(data_subparsers: Any) -> argparse.ArgumentParser:
    """`msdiffusion data check`: a dataset's or a manifest's problems and summary."""
    parser = data_subparsers.add_parser(
        "check",
        help="validate training data (a dataset's shards, or a manifest)",
        description="Validate training data: a dataset folder (its index.json and WebDataset "
        "shards), one shard .tar, or a JSONL manifest (docs/training-data.md). "
        "Checks the schema, boxes, phrases in captions, duplicate records, missing "
        "or unreadable images, mask sizes. Prints a summary (records, subjects per "
        "record, image sizes) and the first problems. Exit code 0: no problems; 1: "
        "problems found.",
        epilog="examples:\n  msdiffusion data check datasets/clips\n"
        "  msdiffusion data check data/manifest.jsonl --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", help="dataset folder, shard .tar or manifest .jsonl")
    parser.add_argument(
        "--no-open",
        action="store_true",
        help="only check that files exist, do not open images (default: off)",
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="decode every image fully: finds truncated files; slow (default: off)",
    )
    parser.add_argument(
        "--max-problems",
        type=int,
        default=20,
        metavar="N",
        help="problems to print (default: 20)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=8,
        metavar="N",
        help="file-checking threads, for a manifest (default: 8)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as JSON (default: off, text)"
    )
    parser.set_defaults(func=run_check)
    return parser


def run_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..manifest import format_report, scan_manifest
    from ..shards import scan_shards

    path = Path(args.data)
    if path.is_dir() or path.suffix == ".tar" or path.name == "index.json":
        scan = scan_shards(path, open_images=not args.no_open, decode=args.decode)
    else:
        scan = scan_manifest(
            path,
            check_files=True,
            open_images=not args.no_open,
            decode=args.decode,
            workers=args.workers,
            progress=sys.stderr.isatty(),
        )
    if args.json:
        report = scan.summary()
        report["problems"] = [
            {"line": p.line, "id": p.record_id, "kind": p.kind, "message": str(p)}
            for p in scan.problems[: args.max_problems]
        ]
        print(json.dumps(report, indent=2))
    else:
        print(format_report(scan, args.max_problems))
    return 1 if scan.problems else 0
