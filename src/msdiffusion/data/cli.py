"""`msdiffusion data`: build training manifests from videos or images, and check them.

Kept import-light (torch, transformers and PyAV load inside the command), so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..errors import InputError

__all__ = ["register"]

BUILD_EPILOG = """\
examples:
  msdiffusion data build --videos clips/ --out datasets/clips --config data.json
  msdiffusion data build --images photos/ --out datasets/photos      # augmented references
  accelerate launch --num_processes 8 -m msdiffusion.cli data build --videos clips/ --out ds/
  msdiffusion data build --videos clips/ --out ds/ --shard 3/16      # one job of a cluster array
  msdiffusion data config > data.json                                # every setting, defaults
  msdiffusion data demo --out outputs/data-demo      # synthetic videos, random models, offline

Re-running the same command resumes: finished input files are kept, the rest is processed.
"""


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected INDEX/COUNT such as 0/4, got {text!r}"
        ) from None
    return index, count


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``data`` command group: ``build``, ``config``, ``demo`` and ``check``."""
    parser = subparsers.add_parser(
        "data",
        help="build and check training manifests",
        description="Build multi-subject training data and check it.",
    )
    data_sub = parser.add_subparsers(
        dest="data_command", metavar="SUBCOMMAND", parser_class=type(parser)
    )
    data_sub.required = True

    build = data_sub.add_parser(
        "build",
        help="videos or images → training manifest, crops, masks and a report",
        description="Mine multi-subject training samples: caption each target frame, ground\n"
        "its entity phrases with an open-vocabulary detector, find each subject again\n"
        "in another frame of the same shot (or, for images, make an augmented crop),\n"
        "segment it with SAM, and write DATASET/manifest.jsonl with a report\n"
        "(docs/data.md).",
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", metavar="DIR", help="folder of videos (searched recursively)")
    source.add_argument("--images", metavar="DIR", help="folder of images (searched recursively)")
    build.add_argument("--out", metavar="DATASET", required=True, help="output dataset folder")
    build.add_argument("--config", metavar="JSON", help="settings (see `msdiffusion data config`)")
    build.add_argument("--seed", type=int, help="override the config's seed")
    build.add_argument("--device", help="override the device (default: accelerate's, else cpu)")
    build.add_argument("--batch-size", type=int, metavar="N", help="images per model call")
    build.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="process only shard I of N (independent jobs; the last one to finish "
        "writes the manifest)",
    )
    build.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="process at most N videos (or image chunks) in this run",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=run_build)

    config = data_sub.add_parser("config", help="print the default build settings as JSON")
    config.set_defaults(func=run_config)

    demo = data_sub.add_parser(
        "demo",
        help="synthetic videos → a dataset, with random-weight models (offline)",
        description="Write a few synthetic videos (moving shapes, hard cuts) and build a dataset "
        "from them with the random-tiny models: a smoke test of the whole pipeline "
        "that needs no download. The captions and boxes mean nothing; the manifest "
        "is valid and trains (`msdiffusion train --preset tiny`).",
    )
    demo.add_argument("--out", metavar="DIR", required=True, help="folder for videos/ and dataset/")
    demo.add_argument("--videos", type=int, default=4, metavar="N", help="videos to write (4)")
    demo.set_defaults(func=run_demo)

    _register_check(data_sub)
    return parser


def run_config(args: argparse.Namespace) -> int:
    from .config import BuildConfig

    print(json.dumps(BuildConfig().to_dict(), indent=2))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .build import build_dataset
    from .config import BuildConfig
    from .synthetic import demo_settings, write_demo_videos

    if args.videos < 1:
        raise InputError("--videos", ">= 1", args.videos)
    out = Path(args.out)
    write_demo_videos(out / "videos", args.videos, size=(192, 192))
    result = build_dataset(
        out / "videos",
        out / "dataset",
        mode="videos",
        cfg=BuildConfig.from_dict(demo_settings()),
        progress=False,
    )
    report = result.report or {}
    print(f"wrote {report.get('samples', 0)} samples to {result.manifest}")
    print(f"next: msdiffusion data check {result.manifest}")
    print(
        f"      msdiffusion train --preset tiny --manifest {result.manifest} --cpu "
        f"--max-steps 10 --batch-size 2 --resolution 64 --output-dir {out / 'train'}"
    )
    return 0


def run_build(args: argparse.Namespace) -> int:
    from .build import build_dataset
    from .config import load_build_config

    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    models: dict[str, Any] = {}
    if args.device is not None:
        models["device"] = args.device
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise InputError("--batch-size", ">= 1", args.batch_size)
        models["batch_size"] = args.batch_size
    if models:
        overrides["models"] = models
    cfg = load_build_config(args.config, overrides)
    mode, inputs = ("videos", args.videos) if args.videos else ("images", args.images)
    start = time.perf_counter()
    result = build_dataset(
        inputs,
        args.out,
        mode=mode,
        cfg=cfg,
        shard=args.shard,
        limit=args.limit,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    seconds = time.perf_counter() - start
    rate = f" ({result.processed / seconds:.2f} files/s)" if result.processed and seconds else ""
    print(
        f"processed {result.processed} files in {seconds:.1f} s{rate}; "
        f"{result.already_done} were already done"
        + (f" [shard {result.shard[0]}/{result.shard[1]}]" if result.shard[1] > 1 else "")
    )
    if result.manifest is None:
        print(
            f"{result.remaining} input files still to do (other shards, or --limit): the "
            "last shard to finish writes the manifest; re-run to resume after a failure"
        )
        return 0
    report = result.report or {}
    print(
        f"wrote {report.get('samples', 0)} samples with {report.get('subjects', 0)} subjects "
        f"to {result.manifest}; report: {result.manifest.parent / 'report.md'}"
    )
    return 0


def _register_check(data_subparsers: Any) -> argparse.ArgumentParser:
    """`msdiffusion data check`: a manifest's problems and summary (``msdiffusion.manifest``)."""
    parser = data_subparsers.add_parser(
        "check",
        help="validate a training manifest and summarise it",
        description="Validate a training manifest (JSONL, docs/training-data.md): schema, boxes, "
        "phrases in captions, duplicate records, missing or unreadable files, mask "
        "sizes. Prints a summary (records, subjects per record, image sizes) and the "
        "first problems. Exit code 0: no problems; 1: problems found.",
    )
    parser.add_argument("manifest", help="path to the manifest (.jsonl)")
    parser.add_argument(
        "--no-open", action="store_true", help="only check that files exist (do not open images)"
    )
    parser.add_argument(
        "--decode",
        action="store_true",
        help="decode every image fully (finds truncated files; slow)",
    )
    parser.add_argument(
        "--max-problems", type=int, default=20, metavar="N", help="problems to print (default 20)"
    )
    parser.add_argument("--workers", type=int, default=8, help="file-checking threads")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_check)
    return parser


def run_check(args: argparse.Namespace) -> int:
    from ..manifest import format_report, scan_manifest

    scan = scan_manifest(
        args.manifest,
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
