"""Throughput of `msdiffusion data build` per stage, and a projection to a corpus of clips.

    python benchmarks/data_throughput.py                       # all parts, CPU, ~15 min on 2 cores
    python benchmarks/data_throughput.py --device cuda         # the models on a GPU
    python benchmarks/data_throughput.py --parts models --models random-base

Parts (``--parts``, comma-separated):

* ``models``: seconds per image of each model stage with the *default* models' architectures
  (``random-default``: BLIP large, Grounding DINO base with Swin-B, SAM ViT-B, DINOv2 base) and
  random weights — the compute per image of the trained checkpoints, with no download — on
  inputs of the size a build feeds them (a 1024×576 frame; 224-px subject crops);
* ``cpu``: the CPU stages on synthetic 1280×720 H.264 clips: decode + cut detection + frame
  sampling + target choice per clip; finalize (crops, masks, encoding) and the shard writer per
  sample; bytes per sample in the training and the raw shards;
* ``ray``: the same small build through the Ray program and through one process, for the
  engine's overhead on this machine;
* ``storage``: JPEG bytes of natural photos (the shared MS-Bench references, when present) per
  pixel, to size real frames (synthetic shapes compress far better than footage).

The projection multiplies the measured costs by the work per clip (``--targets-per-clip``,
``--crops-per-target``, ``--sam-per-target``: assumptions, printed with the result) and by
``--clips`` (3.6 M, the paper's corpus). Results go to stdout as JSON (and ``--json FILE``).
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

REPO = Path(__file__).resolve().parents[1]


def _time(fn, repeat: int) -> float:
    fn()  # warm-up (first-call allocations, lazy init)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_models(device: str, preset: str, repeat: int, batch: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from msdiffusion.data.models import random_role

    rng = np.random.default_rng(0)
    frame = Image.fromarray(rng.integers(0, 255, (576, 1024, 3), dtype=np.uint8))
    crop = frame.crop((100, 100, 324, 324))
    size = preset.removeprefix("random-")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    out = {}
    jobs = {
        "caption": ("captioner", lambda m: m.caption([frame] * batch)),
        "detect": (
            "detector",
            lambda m: m.detect([frame] * batch, [["dog", "red ball", "man"]] * batch),
        ),
        "features": ("features", lambda m: m.embed([crop] * batch)),
        "segment": (
            "segmenter",
            lambda m: m.segment(
                [frame] * batch, [[(0.1, 0.1, 0.5, 0.6), (0.5, 0.2, 0.9, 0.9)]] * batch
            ),
        ),
    }
    for stage, (role, call) in jobs.items():
        start = time.perf_counter()
        model = random_role(role, size, device=device, dtype=dtype, max_new_tokens=30)
        built = time.perf_counter() - start

        def run(model=model, call=call):
            call(model)
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        seconds = _time(run, repeat) / batch
        params = sum(p.numel() for p in _module(model).parameters())
        out[stage] = {
            "seconds_per_image": round(seconds, 4),
            "images_per_second": round(1 / seconds, 3),
            "parameters_millions": round(params / 1e6, 1),
            "build_seconds": round(built, 1),
            "batch": batch,
        }
        print(f"{stage}: {seconds:.3f} s/image", file=sys.stderr)
        del model
    return out


def _module(wrapper):
    return wrapper.model


def _clips(folder: Path, count: int, seconds: float) -> list[Path]:
    from msdiffusion.data.synthetic import make_video, standard_shots

    shots = standard_shots(scale=1280 / 192)
    per = sum(s.seconds for s in shots)
    reps = max(1, round(seconds / per))
    paths = []
    for k in range(count):
        order = (shots[k % 3 :] + shots[: k % 3]) * reps
        paths.append(
            make_video(
                folder / f"clip_{k:03d}.mp4", order, fps=24, size=(1280, 720), codec="libx264"
            )
        )
        (folder / f"clip_{k:03d}.txt").write_text(
            "a red square, a blue circle, a yellow square and a green square"
        )
    return paths


def _settings(fuse: bool) -> dict:
    from msdiffusion.testing.data_models import save_random_models

    dirs = save_random_models(
        Path(tempfile.mkdtemp(prefix="msd-bench-models-")), "tiny", names=("sam", "dinov2")
    )
    # Random features mean nothing: accept any similarity, so that samples (and their crops,
    # masks and bytes) get made and measured.
    return {
        "video": {"min_side": 64},
        "match": {"similarity_threshold": -1.0, "duplicate_similarity": 1.5},
        "models": {
            "captioner": None,
            "detector": {"kind": "msdiffusion.data.synthetic:colour_detector"},
            "segmenter": {"kind": "sam", "path": dirs["sam"]},
            "features": {"kind": "auto", "path": dirs["dinov2"]},
            "batch_size": 8,
        },
        "ray": {"fuse_model_stages": fuse},
        "shards": {"inputs_per_shard": 2},
    }


def bench_cpu(work: Path, count: int, seconds: float) -> dict:
    from msdiffusion.data.build import build_dataset
    from msdiffusion.data.config import BuildConfig
    from msdiffusion.shards import read_index

    videos = work / "videos"
    _clips(videos, count, seconds)
    cfg = BuildConfig.from_dict(_settings(fuse=False))
    start = time.perf_counter()
    result = build_dataset(
        videos, work / "local", mode="videos", cfg=cfg, engine="local", progress=False
    )
    wall = time.perf_counter() - start
    report, index = result.report, read_index(result.index)
    sec = report["seconds"]
    funnel = {row["stage"]: row["count"] for row in report["funnel"]}
    samples = max(report["samples"], 1)
    raw_records = sum(
        json.loads((result.index.parent / "shards" / f"shard-{n:06d}.json").read_text())[
            "raw_records"
        ]
        for n in range(len(index.shards))
    )
    shard_bytes = sum(s["bytes"] for s in index.shards)
    raw_bytes = sum(s["raw_bytes"] for s in index.shards)
    model_seconds = sum(sec.get(k, 0) for k in ("caption", "detect", "features", "segment"))
    from msdiffusion.shards import iter_tar

    targets_bytes = [len(files["jpg"]) for shard in index.paths() for _, files in iter_tar(shard)]
    frames_bytes = [
        len(files["frame0.jpg"])
        for n in range(len(index.shards))
        for _, files in iter_tar(result.index.parent / index.shards[n]["raw"])
    ]
    return {
        "clips": count,
        "clip_seconds": seconds,
        "clip_size": "1280x720 H.264 24 fps",
        "frames_decoded": funnel["frames_decoded"],
        "targets": funnel["targets"],
        "samples": report["samples"],
        "decode_seconds_per_clip": round(sec["decode"] / count, 3),
        "decoded_frames_per_second": round(funnel["frames_decoded"] / sec["decode"], 1),
        "finalize_seconds_per_target": round(sec.get("finalize", 0) / funnel["targets"], 4),
        "writer_and_rest_seconds_per_target": round(
            (wall - sec["decode"] - sec.get("finalize", 0) - model_seconds) / funnel["targets"], 4
        ),
        "shard_bytes_per_sample": round(shard_bytes / samples),
        "shard_bytes_per_target_image_byte": round(shard_bytes / max(sum(targets_bytes), 1), 3),
        "raw_frame_bytes": round(sum(frames_bytes) / max(len(frames_bytes), 1)),
        "raw_bytes_per_target": round(raw_bytes / max(raw_records, 1)),
        "wall_seconds_local": round(wall, 2),
    }


def bench_ray(work: Path) -> dict:
    import ray

    from msdiffusion.data.build import build_dataset
    from msdiffusion.data.config import BuildConfig

    videos = work / "videos"
    out = {}
    for fuse in (False, True):
        cfg = BuildConfig.from_dict(_settings(fuse=fuse))
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level="WARNING",
            object_store_memory=256 * 2**20,
        )
        start = time.perf_counter()
        build_dataset(videos, work / f"ray-{fuse}", mode="videos", cfg=cfg, progress=False)
        out["fused" if fuse else "pool_per_stage"] = round(time.perf_counter() - start, 2)
        ray.shutdown()
    same = all(
        (work / "local" / p.relative_to(work / "ray-False")).read_bytes() == p.read_bytes()
        for p in (work / "ray-False").glob("*/*.tar")
    )
    return {"wall_seconds_ray": out, "ray_shards_equal_local": same}


def bench_storage(folder: Path | None) -> dict:
    from PIL import Image

    from msdiffusion.data.item import encode_image

    if folder is None:  # the shared benchmark data next to the checkout, if any
        folder = next(
            (
                f
                for f in (
                    REPO.parent / "shared" / "data" / "msbench",
                    REPO.parent.parent / "shared" / "data" / "msbench",
                )
                if f.is_dir()
            ),
            None,
        )
    photos = sorted(folder.rglob("*.jpg"))[:40] if folder is not None else []
    if not photos:
        return {"note": "no shared photos in this checkout: storage of real frames not measured"}
    pixels = total = 0
    for path in photos:
        image = Image.open(path).convert("RGB")
        pixels += image.width * image.height
        total += len(encode_image(image, "jpg", 95))
    per_pixel = total / pixels
    return {
        "photos": len(photos),
        "jpeg95_bytes_per_pixel": round(per_pixel, 3),
        "frame_1024x576_bytes": round(per_pixel * 1024 * 576),
    }


def project(
    results: dict, clips: float, targets: float, crops: float, sam: float, references: int
) -> dict:
    m, c = results.get("models"), results.get("cpu")
    out: dict = {
        "clips": clips,
        "assumed_targets_per_clip": targets,
        "assumed_feature_crops_per_target": crops,
        "assumed_sam_images_per_target": sam,
        "detector_images_per_target": 1 + references,
    }
    if c:
        cpu_s = c["decode_seconds_per_clip"] + targets * (
            c["finalize_seconds_per_target"] + c["writer_and_rest_seconds_per_target"]
        )
        out["cpu_core_hours"] = round(clips * cpu_s * results["torch_threads"] / 3600)
        out["cpu_seconds_per_clip"] = round(cpu_s, 3)
    if m:
        per_target = (
            m["caption"]["seconds_per_image"]
            + (1 + references) * m["detect"]["seconds_per_image"]
            + crops * m["features"]["seconds_per_image"]
            + sam * m["segment"]["seconds_per_image"]
        )
        machine = results.get("models_machine", results["machine"])
        key = "gpu_hours" if machine["device"].startswith("cuda") else "model_hours_on_this_cpu"
        out[key] = round(clips * targets * per_target / 3600)
        out["model_seconds_per_target"] = round(per_target, 3)
    if c:
        frame = results.get("storage", {}).get("frame_1024x576_bytes")
        out["training_shard_tb_synthetic"] = round(
            clips * targets * c["shard_bytes_per_sample"] / 1e12, 2
        )
        out["raw_shard_tb_synthetic"] = round(clips * targets * c["raw_bytes_per_target"] / 1e12, 2)
        if frame:  # frames of real footage: target + references in raw, target + crops in shard
            out["raw_shard_tb_real_frames"] = round(
                clips * targets * (frame * (1 + references) + crops * 768 * 2) / 1e12, 2
            )
            out["training_shard_tb_real_frames"] = round(
                clips * targets * frame * c["shard_bytes_per_target_image_byte"] / 1e12, 2
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="models,cpu,ray,storage")
    parser.add_argument(
        "--models",
        default="random-default",
        help="random-default (the default models) | random-base | random-tiny",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda if any)")
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per model")
    parser.add_argument("--batch", type=int, default=1, help="images per model call")
    parser.add_argument("--count", type=int, default=4, help="synthetic clips (4)")
    parser.add_argument("--clip-seconds", type=float, default=11.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--clips", type=float, default=3.6e6)
    parser.add_argument("--targets-per-clip", type=float, default=1.0)
    parser.add_argument("--crops-per-target", type=float, default=20.0)
    parser.add_argument("--sam-per-target", type=float, default=2.0)
    parser.add_argument("--photos", help="folder of natural JPEG photos (storage part)")
    parser.add_argument(
        "--models-from", metavar="JSON", help="take the models part from an earlier run's --json"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    parts = set(args.parts.split(","))
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "device": device,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        },
        "torch_threads": torch.get_num_threads(),
    }
    work = Path(tempfile.mkdtemp(prefix="msd-data-bench-"))
    try:
        if args.models_from:
            earlier = json.loads(Path(args.models_from).read_text())
            results["models"] = earlier["models"]
            results["models_machine"] = earlier["machine"]
        elif "models" in parts:
            results["models"] = bench_models(device, args.models, args.repeat, args.batch)
        if "cpu" in parts or "ray" in parts:
            results["cpu"] = bench_cpu(work, args.count, args.clip_seconds)
        if "ray" in parts:
            results["ray"] = bench_ray(work)
        if "storage" in parts:
            results["storage"] = bench_storage(Path(args.photos) if args.photos else None)
        from msdiffusion.data.config import BuildConfig

        results["projection"] = project(
            results,
            args.clips,
            args.targets_per_clip,
            args.crops_per_target,
            args.sam_per_target,
            BuildConfig().video.max_references,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
