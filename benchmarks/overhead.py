"""Per-step overhead of MS-Diffusion over plain SDXL: the same components, one process, runs
alternating plain / 2 subjects / 3 subjects, median of each; prints the ratios.

    python benchmarks/overhead.py                      # CPU: a mid-size SDXL-shaped model, 512²
    python benchmarks/overhead.py --size full --device cuda --dtype float16 --resolution 1024
    python benchmarks/overhead.py --size full --device cuda --dtype float16 --resolution 1024 \
        --compile                                      # both UNets under torch.compile

Weights are random (compute does not depend on their values). ``--size full`` builds SDXL-base-
shaped components from their published configs (UNet 2.6 B parameters, CLIP-L + bigG text
encoders, CLIP-bigG vision tower): for a GPU. Timed: one UNet denoising step at the
classifier-free-guidance batch of 2 (the subject K/V and masks cached as within a call), and, once
per call, the subject encoding (CLIP vision + phrases + resampler).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from PIL import Image


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=["tiny", "mid", "full"],
        default="mid",
        help="architecture (msdiffusion.testing.sdxl.ARCHITECTURES)",
    )
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile both UNets (plain and ours) first"
    )
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    from diffusers import StableDiffusionXLPipeline

    from msdiffusion import MSAdapter, MSDiffusionXLPipeline, Subject
    from msdiffusion.testing.sdxl import adapter_kwargs, random_components

    dtype = getattr(torch, args.dtype)
    components = random_components(args.size)
    adapter = MSAdapter.for_unet(components["unet"], **adapter_kwargs(args.size))
    plain = StableDiffusionXLPipeline(**components).to(args.device, dtype)
    ours = MSDiffusionXLPipeline(
        **{**components, "unet": copy.deepcopy(components["unet"])}, adapter=adapter
    ).to(args.device, dtype)
    for p in (plain, ours):
        p.set_progress_bar_config(disable=True)
    refs = [Image.new("RGB", (64, 64), c) for c in ((200, 80, 40), (40, 90, 200), (60, 160, 60))]
    boxes = [(0.0, 0.2, 0.45, 0.9), (0.5, 0.1, 1.0, 0.8), (0.3, 0.0, 0.7, 0.5)]
    phrases = ["dog", "cat", "hat"]
    prompt = "a dog and a cat with a hat on the beach"

    from msdiffusion.layout import validate_layout
    from msdiffusion.pipelines.subjects import ConditioningSettings, build_conditioning

    device = torch.device(args.device)
    res = args.resolution
    latent = (res // 8, res // 8)
    with torch.no_grad():  # the per-call parts, once: text, subjects
        embeds, neg, pooled, neg_pooled = plain.encode_prompt(prompt, device=device)
    text = torch.cat([neg, embeds])  # (2, 77, C): classifier-free guidance batch
    added = {
        "text_embeds": torch.cat([neg_pooled, pooled]),
        "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * 2, device=device, dtype=dtype),
    }
    x = torch.randn(2, 4, *latent, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    conds, encode_ms = {}, {}
    for n in (2, 3):
        subjects = [Subject(refs[i], boxes[i], phrases[i]) for i in range(n)]
        layouts = validate_layout([subjects], [prompt], ours.tokenizer, (res, res), 0.6, None)
        sync(args.device)
        start = time.perf_counter()
        settings = ConditioningSettings(
            latent_size=latent, num_images_per_prompt=1, cond_start=1, dtype=dtype, device=device
        )
        conds[n] = build_conditioning(layouts, ours, settings)
        sync(args.device)
        encode_ms[f"{n} subjects"] = round((time.perf_counter() - start) * 1000, 2)

    def run(label: str) -> float:
        n = {"plain": 0, "2 subjects": 2, "3 subjects": 3}[label]
        unet = plain.unet if n == 0 else ours.unet
        kwargs = {"ms": conds[n]} if n else None
        sync(args.device)
        start = time.perf_counter()
        with torch.no_grad():
            unet(x, t, text, added_cond_kwargs=added, cross_attention_kwargs=kwargs)
        sync(args.device)
        return time.perf_counter() - start

    labels = ["plain", "2 subjects", "3 subjects"]
    compile_s = None
    if args.compile:
        start = time.perf_counter()
        plain.unet = torch.compile(plain.unet)
        ours.unet = torch.compile(ours.unet)
        for label in labels:  # compiles: plain, then the subject buckets (2 and 4 slots)
            run(label)
        compile_s = round(time.perf_counter() - start, 1)
    for label in labels:  # warm-up
        run(label)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(args.repeats):
        for label in labels:
            times[label].append(run(label))
    medians = {label: statistics.median(v) for label, v in times.items()}
    result = {
        "size": args.size,
        "resolution": args.resolution,
        "device": args.device,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "unet_step_ms": {k: round(v * 1000, 2) for k, v in medians.items()},
        "per_call_subject_encoding_ms": encode_ms,
        "ratio": {k: round(v / medians["plain"], 3) for k, v in medians.items()},
        "compiled": args.compile,
        "compile_seconds": compile_s,
    }
    if args.device.startswith("cuda"):
        result["card"] = torch.cuda.get_device_name()
        peaks = {}
        for label in labels:  # peak GPU memory of one step (weights included)
            torch.cuda.reset_peak_memory_stats()
            run(label)
            peaks[label] = round(torch.cuda.max_memory_allocated() / 2**20)
        result["peak_memory_mib"] = peaks
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
