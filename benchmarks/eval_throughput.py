"""Throughput of the evaluation harness: generation and scoring, in images per second.

    python benchmarks/eval_throughput.py                      # tiny generator + tiny scorers
    python benchmarks/eval_throughput.py --full-size-scorers  # + CLIP B/32, DINO S/16, OWLv2 B/16
                                                              #   at their real sizes (random
                                                              #   weights: the same compute)
    python benchmarks/eval_throughput.py --device cuda --gen-size 1024 ...

Generation uses the ``tiny`` preset (no weights needed) on stand-in MS-Bench data; the full SDXL
model needs the released weights (run ``msdiffusion eval generate`` and read ``generation.json``).
Scoring runs the real scoring path (detector, crops, CLIP, DINO, report) over generated-size
images with 2–3 subjects each. Prints a markdown table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from msdiffusion.benchmarks import load_benchmark  # noqa: E402
from msdiffusion.evaluation.generate import GenerationConfig, run_generation  # noqa: E402
from msdiffusion.evaluation.runs import resolve_run  # noqa: E402
from msdiffusion.evaluation.scoring import ScoringConfig, score_run  # noqa: E402
from msdiffusion.evaluation.standin import write_standin  # noqa: E402
from msdiffusion.testing.scorers import write_tiny_scorers  # noqa: E402


def full_size_scorers(directory: Path) -> dict[str, str]:
    """CLIP ViT-B/32, DINO ViT-S/16 and OWLv2 B/16 (960²) with random weights, as folders."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        ViTConfig,
        ViTImageProcessorPil,
        ViTModel,
    )

    from msdiffusion.testing.tokenizers import char_tokenizer

    paths = {
        "clip": directory / "clip",
        "dino": directory / "dino",
        "detector": directory / "owlv2",
    }
    CLIPModel(CLIPConfig()).save_pretrained(paths["clip"])  # the defaults are ViT-B/32
    char_tokenizer(paths["clip"])
    CLIPImageProcessorPil().save_pretrained(paths["clip"])
    ViTModel(
        ViTConfig(
            hidden_size=384,
            num_attention_heads=6,
            intermediate_size=1536,
            patch_size=16,
            image_size=224,
        ),
        add_pooling_layer=False,
    ).save_pretrained(paths["dino"])
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(paths["dino"])
    Owlv2ForObjectDetection(
        Owlv2Config(vision_config={"image_size": 960, "patch_size": 16})
    ).save_pretrained(paths["detector"])
    char_tokenizer(paths["detector"])
    Owlv2ImageProcessorPil().save_pretrained(paths["detector"])
    return {k: str(v) for k, v in paths.items()}


def fake_run(root: Path, bench, n: int, size: int) -> Path:
    """``n`` bring-your-own images of ``size``² for the first samples of every group."""
    for s in bench.select(limit=n):
        path = root / "images" / s.id / "0.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.effect_noise((size, size), 64).convert("RGB").save(path)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gen-images", type=int, default=8)
    ap.add_argument("--gen-size", type=int, default=256)
    ap.add_argument("--gen-steps", type=int, default=4)
    ap.add_argument("--gen-batch", type=int, default=2)
    ap.add_argument("--score-images", type=int, default=26)
    ap.add_argument("--score-size", type=int, default=1024)
    ap.add_argument("--full-size-scorers", action="store_true")
    ap.add_argument("--full-size-images", type=int, default=6)
    ap.add_argument("--json", default="outputs/eval_throughput.json")
    args = ap.parse_args()

    results = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average": os.getloadavg(),
        },
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench = load_benchmark("msbench", write_standin(tmp / "data"))

        cfg = GenerationConfig(
            steps=args.gen_steps, height=args.gen_size, width=args.gen_size, images_per_sample=1
        )
        samples = bench.select(limit=args.gen_images)
        run_generation(
            bench, tmp / "warm", cfg, samples=samples[:1], progress=False, device=args.device
        )
        stats = run_generation(
            bench,
            tmp / "gen",
            cfg,
            samples=samples,
            progress=False,
            batch_size=args.gen_batch,
            device=args.device,
        )
        results["rows"].append(
            {
                "what": f"generate, tiny preset, {args.gen_size}², {args.gen_steps} steps, "
                f"batch {args.gen_batch}",
                "images": stats["generated"],
                "seconds": stats["seconds"],
                "images_per_s": stats["images_per_s"],
            }
        )

        suites = [("tiny scorers", write_tiny_scorers(tmp / "tiny"), args.score_images)]
        if args.full_size_scorers:
            suites.append(
                (
                    "CLIP B/32 + DINO S/16 + OWLv2 B/16@960 (random weights)",
                    full_size_scorers(tmp / "full"),
                    args.full_size_images,
                )
            )
        for name, models, n in suites:
            run = fake_run(tmp / f"score-{len(results['rows'])}", bench, n, args.score_size)
            config = ScoringConfig(
                clip_model=models["clip"],
                dino_model=models["dino"],
                detector_model=models["detector"],
                device=args.device,
                cache_dir=str(tmp / "cache"),
            )
            inputs = resolve_run(run, benchmark="msbench", data=tmp / "data")
            t0 = time.perf_counter()
            report = score_run(inputs, config, progress=False)
            seconds = time.perf_counter() - t0
            scored = report["counts"]["images_scored"]
            subjects = sum(len(inputs.benchmark.get(r.sample_id).subjects) for r in inputs.records)
            results["rows"].append(
                {
                    "what": f"score, {name}, {args.score_size}² images, {subjects / scored:.1f} "
                    "subjects/image (models loaded, report written)",
                    "images": scored,
                    "seconds": seconds,
                    "images_per_s": scored / seconds,
                }
            )

    print(f"machine: {results['machine']}")
    print("| what | images | seconds | images/s |\n|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['what']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.3f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
