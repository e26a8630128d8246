"""Per-step overhead of MS-Diffusion over plain SDXL: the same components, one process, runs
alternating plain / 2 subjects / 3 subjects, median of each; prints the ratios.

    python benchmarks/overhead.py                      # CPU: a mid-size SDXL-shaped model, 512²
    python benchmarks/overhead.py --size full --device cuda --dtype float16 --resolution 1024

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

SIZES = {
    # name: (unet kwargs, text hidden sizes (encoder 1, encoder 2), text layers, vision kwargs)
    "mid": (
        dict(
            block_out_channels=(160, 320, 640),
            transformer_layers_per_block=(0, 1, 2),
            attention_head_dim=(5, 5, 10),
            cross_attention_dim=1024,
        ),
        (384, 640),
        2,
        dict(
            hidden_size=640,
            intermediate_size=1280,
            num_hidden_layers=4,
            num_attention_heads=10,
            image_size=224,
            patch_size=14,
        ),
    ),
    "full": (
        dict(
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
        ),
        (768, 1280),
        None,
        dict(
            hidden_size=1664,
            intermediate_size=8192,
            num_hidden_layers=48,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
    ),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(size: str, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessorPil,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from msdiffusion.presets import char_tokenizer

    unet_kw, (h1, h2), text_layers, vision_kw = SIZES[size]
    torch.manual_seed(seed)
    tok = char_tokenizer()

    def text(hidden, layers, cls):
        heads = hidden // 64
        return cls(
            CLIPTextConfig(
                hidden_size=hidden,
                intermediate_size=4 * hidden,
                num_hidden_layers=layers or (12 if hidden == 768 else 32),
                num_attention_heads=heads,
                vocab_size=len(tok),
                projection_dim=h2,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        )

    down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    unet = UNet2DConditionModel(
        sample_size=128,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=6 * 256 + h2,
        **unet_kw,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64),
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
    )
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=1280, **vision_kw))
    side = vision_kw["image_size"]
    return dict(
        vae=vae,
        text_encoder=text(h1, text_layers, CLIPTextModel),
        text_encoder_2=text(h2, text_layers, CLIPTextModelWithProjection),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
        ),
        image_encoder=vision,
        feature_extractor=CLIPImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    from diffusers import StableDiffusionXLPipeline

    from msdiffusion import MSAdapter, MSDiffusionXLPipeline, Subject

    dtype = getattr(torch, args.dtype)
    components = build(args.size)
    hp = dict(
        image_embed_dim=components["image_encoder"].config.hidden_size,
        phrase_embed_dim=components["text_encoder"].config.hidden_size,
    )
    if args.size == "mid":
        hp.update(resampler_dim=640, resampler_heads=10)
    adapter = MSAdapter.for_unet(components["unet"], **hp)
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

    from msdiffusion.pipelines.subjects import build_conditioning, validate_layout

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
        layouts = validate_layout([subjects], [prompt], ours.tokenizer, res, res, 0.6, None)
        sync(args.device)
        start = time.perf_counter()
        conds[n] = build_conditioning(
            layouts,
            adapter=adapter,
            image_encoder=ours.image_encoder,
            feature_extractor=ours.feature_extractor,
            tokenizer=ours.tokenizer,
            text_encoder=ours.text_encoder,
            latent_size=latent,
            num_images_per_prompt=1,
            cond_start=1,
            dtype=dtype,
            device=device,
        )
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
    }
    if args.device.startswith("cuda"):
        result["card"] = torch.cuda.get_device_name()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
