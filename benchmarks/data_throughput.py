"""Throughput of `msdiffusion data build`: files, frames and samples per second, per model.

    python benchmarks/data_throughput.py                      # random-base models, synthetic videos
    python benchmarks/data_throughput.py --models random-tiny # pipeline overhead only
    python benchmarks/data_throughput.py --models data.json --videos my_clips/   # your real setup

``random-base`` builds the released checkpoints' architectures at full size with random weights
(BLIP base, Grounding DINO Swin-T, SAM ViT-B, DINOv2 base): the compute per image is that of the
trained models, so the timings hold without any download. Random weights do produce random
detections, so the *number* of boxes per frame (which drives SAM and the feature encoder) differs
from real data: read the per-model images/s, not only the samples/s. Model loading is timed
separately and left out of the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="random-base",
        help="random-base | random-tiny | a data-build JSON config (real models)",
    )
    parser.add_argument("--videos", help="folder of videos (default: synthetic ones)")
    parser.add_argument("--count", type=int, default=3, help="synthetic videos (3)")
    parser.add_argument("--size", default="640x360", help="synthetic video size (640x360)")
    parser.add_argument("--fps", type=int, default=24, help="synthetic video frame rate (24)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if any)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work folder (videos, dataset, report) and print its path",
    )
    args = parser.parse_args()

    import torch

    from msdiffusion.data.build import build_dataset
    from msdiffusion.data.config import BuildConfig, load_build_config
    from msdiffusion.data.models import load_models
    from msdiffusion.data.synthetic import write_demo_videos

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="msd-data-bench-"))
    if args.videos:
        videos = Path(args.videos)
    else:
        width, height = (int(v) for v in args.size.split("x"))
        videos = work / "videos"
        write_demo_videos(videos, args.count, size=(width, height), fps=args.fps)
    if args.models.startswith("random-"):
        # default filters; small shapes on small frames need a smaller minimum side
        cfg = BuildConfig.from_dict(
            {
                "video": {"min_side": 64},
                "models": {"preset": args.models, "device": device, "batch_size": args.batch_size},
            }
        )
    else:
        cfg = load_build_config(
            args.models, {"models": {"device": device, "batch_size": args.batch_size}}
        )

    start = time.perf_counter()
    models = load_models(cfg.models, device)
    load_seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = build_dataset(
        videos, work / "dataset", mode="videos", cfg=cfg, models=models, progress=False
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    report = result.report or {}
    funnel = {row["stage"]: row["count"] for row in report.get("funnel", [])}
    out = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": device,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        },
        "models": args.models,
        "batch_size": args.batch_size,
        "videos": funnel.get("files", 0),
        "frames_decoded": funnel.get("frames_decoded", 0),
        "targets": funnel.get("targets", 0),
        "samples": report.get("samples", 0),
        "subjects": report.get("subjects", 0),
        "model_load_seconds": round(load_seconds, 2),
        "wall_seconds": round(wall, 2),
        "videos_per_second": round(funnel.get("files", 0) / wall, 3),
        "frames_decoded_per_second": round(funnel.get("frames_decoded", 0) / wall, 1),
        "samples_per_second": round(report.get("samples", 0) / wall, 3),
        "seconds_per_step": report.get("seconds", {}),
        "model_images": report.get("model_images", {}),
        "throughput": report.get("throughput", {}),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.keep:
        print(f"work folder: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
