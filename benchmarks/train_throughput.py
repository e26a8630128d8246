"""Training throughput: the original recipe vs ours, same process, same model, same batches.

    python benchmarks/train_throughput.py                          # CPU: the mid-size model, 256²
    python benchmarks/train_throughput.py --size full --device cuda --resolution 512 --batch-size 8

original: frozen weights in fp32 under fp16 autocast, every encoder runs every step (VAE in
    fp32, the image encoder on the references zero-padded to 4 per sample, both text encoders),
    subjects padded to a fixed 4.
ours: frozen weights in bf16, the encoders' outputs come from the embedding cache (a step runs the
    resampler + UNet only), subjects padded per batch (to the batch's largest count).
On a CPU both run in fp32 (CPU autocast is bf16-only and slow without AMX), so the CPU ratio
shows the cache and padding gains only, not the precision one.
Both train the same adapter with AdamW + clipping through ``AdapterUNet`` (our SDPA processors —
the released processors' extra cost, DESIGN §5, comes on top for the original and is measured by
benchmarks/overhead.py). The recipes alternate for ``--rounds`` rounds; medians over all timed
steps. Weights are random (speed does not depend on their values); ``--size
full`` is SDXL-shaped (UNet 2.6 B, CLIP-L + bigG text, CLIP-bigG vision), for a GPU; ``mid`` is
the scaled-down stack of msdiffusion.testing.sdxl.ARCHITECTURES; ``tiny`` the test preset.
Prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch


def components_for(size: str) -> tuple[dict, dict]:
    """(components, adapter hyper-parameters) of a named architecture, random weights."""
    from msdiffusion.testing.sdxl import adapter_kwargs, random_components

    return random_components(size), adapter_kwargs(size)


def live_batch(batch_size: int, counts: list[int], slots: int, res: int, side: int) -> dict:
    """A collated live batch (as ManifestDataset + collate_samples make) of random content."""
    g = torch.Generator().manual_seed(0)
    valid = torch.tensor([[j < n for j in range(slots)] for n in counts])
    return {
        "pixel_values": torch.rand(batch_size, 3, res, res, generator=g) * 2 - 1,
        "caption": ["a dog and a cat on the beach"] * batch_size,
        "reference_pixels": torch.randn(batch_size, slots, 3, side, side, generator=g)
        * valid[..., None, None, None],
        "phrases": [["dog", "cat", "hat", "ball"][:slots]] * batch_size,
        "boxes": torch.tensor([0.1, 0.1, 0.6, 0.9]).expand(batch_size, slots, 4) * valid[..., None],
        "valid": valid,
        "drop_grounding": torch.zeros(batch_size, dtype=torch.bool),
        "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * batch_size, dtype=torch.float32),
    }


def measure(recipe: str, args: argparse.Namespace) -> dict:
    from diffusers import DDPMScheduler

    from msdiffusion.models.adapter import MSAdapter
    from msdiffusion.training.components import move_module
    from msdiffusion.training.encoders import FrozenEncoders, ModelInputs
    from msdiffusion.training.model import AdapterUNet

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    original = recipe == "original"
    if not cuda:  # CPUs: fp32 for both (CPU autocast is bf16-only, and slow without AMX)
        weight_dtype = amp = torch.float32
    elif original:
        weight_dtype, amp = torch.float32, torch.float16
    else:
        weight_dtype = amp = torch.bfloat16
    components, hp = components_for(args.size)
    for name in ("unet", "text_encoder", "text_encoder_2", "image_encoder", "vae"):
        move_module(components[name], device, torch.float32 if name == "vae" else weight_dtype)
        components[name].requires_grad_(False)
    torch.manual_seed(0)
    adapter = MSAdapter.for_unet(components["unet"], **hp).to(device)
    model = AdapterUNet(components["unet"], adapter)
    if args.gradient_checkpointing and not original:
        components["unet"].enable_gradient_checkpointing()
    encoders = FrozenEncoders(**components)
    noise_scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    params = list(model.trainable_parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    side = components["image_encoder"].config.image_size
    counts = [1 + i % args.max_subjects for i in range(args.batch_size)]  # e.g. 1, 2, 1, 2, ...
    slots = 4 if original else max(counts)
    batch = live_batch(args.batch_size, counts, slots, args.resolution, side)
    autocast = (
        torch.autocast(device.type, dtype=amp) if amp != torch.float32 else contextlib.nullcontext()
    )

    def inputs() -> ModelInputs:
        if original:  # the references are zero-padded to 4 and all encoded, every step
            enc = dict(batch, valid=torch.ones_like(batch["valid"]))
            with autocast:
                full = encoders.encode_batch(enc, device)
            full.valid = batch["valid"].to(device)
            return full
        return cached

    if not original:  # what the cache holds: computed once, outside the timed steps
        cached = encoders.encode_batch(batch, device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        x = inputs()
        noise = torch.randn_like(x.latents)
        t = torch.randint(0, 1000, (args.batch_size,), device=device)
        with autocast:
            pred = model(noise_scheduler.add_noise(x.latents, noise, t), t, x)
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    out = {
        "recipe": recipe,
        "times": times,
        "weights": str(weight_dtype).removeprefix("torch."),
        "autocast": str(amp).removeprefix("torch."),
        "subject_slots": slots,
    }
    if cuda:
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
    return out


def summarise(runs: list[dict], batch_size: int) -> dict:
    """Median step time over every timed step of every round of one recipe."""
    step_s = statistics.median(t for run in runs for t in run["times"])
    out = {k: v for k, v in runs[0].items() if k not in ("times", "peak_memory_gib")}
    out.update(step_ms=round(step_s * 1000, 1), samples_per_s=round(batch_size / step_s, 2))
    if "peak_memory_gib" in runs[0]:
        out["peak_memory_gib"] = max(run["peak_memory_gib"] for run in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "mid", "full"], default="mid")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--max-subjects",
        type=int,
        default=2,
        help="samples have 1..N subjects, cycling (default 2)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternate the recipes this many times (a busy machine drifts)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="ours with gradient checkpointing (the 24 GB recipe)",
    )
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    runs: dict[str, list[dict]] = {"original": [], "ours": []}
    for _ in range(args.rounds):
        for recipe in runs:
            runs[recipe].append(measure(recipe, args))
    results = [summarise(runs[recipe], args.batch_size) for recipe in runs]
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "size": args.size,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "results": results,
        "speedup": round(results[1]["samples_per_s"] / results[0]["samples_per_s"], 2),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
