"""Named component sets.

``tiny``: SDXL-shaped components with random weights built from configs — offline, a 256² image in
seconds on a CPU; what the demo and the tests run on. ``sdxl``: the released model — SDXL base 1.0,
the CLIP ViT-bigG/14 image encoder of IP-Adapter and the MS-Diffusion adapter — by hub id, or any
of them by local path.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Preset", "PRESETS", "tiny_components", "tiny_adapter_kwargs", "char_tokenizer"]


@dataclass(frozen=True)
class Preset:
    """Where the components of a model come from, and its native output size."""

    name: str
    base: str | None  # SDXL pipeline folder or hub id (None: built from configs)
    image_encoder: str | None
    image_encoder_subfolder: str | None
    adapter: str | None  # our adapter folder, a released `.bin`, or a hub repo id
    adapter_filename: str | None
    vae: str | None = None
    default_size: int = 1024
    notes: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", None, None, None, None, None, default_size=256),
    "sdxl": Preset(
        "sdxl",
        base="stabilityai/stable-diffusion-xl-base-1.0",
        image_encoder="h94/IP-Adapter",
        image_encoder_subfolder="sdxl_models/image_encoder",
        adapter="doge1516/MS-Diffusion",
        adapter_filename="ms_adapter.bin",
        vae="madebyollin/sdxl-vae-fp16-fix",
        default_size=1024,
    ),
}

# The tiny model's sizes: small enough for seconds on a CPU, shaped like SDXL (two text encoders,
# text-time conditioning, cross-attention at two UNet levels, a CLIP vision tower).
TINY_TEXT_DIM = 32
TINY_CROSS_DIM = 64  # = TINY_TEXT_DIM (text_encoder) + TINY_TEXT_DIM (text_encoder_2)
TINY_IMAGE_DIM = 32


def char_tokenizer(directory: str | Path | None = None):
    """A character-level CLIP tokenizer (byte-level alphabet, no merges) written to ``directory``.

    Every printable byte is a token, so any prompt tokenises, and offsets map tokens back to
    characters exactly as with the real CLIP BPE.
    """
    from transformers import CLIPTokenizer

    directory = Path(directory or tempfile.mkdtemp(prefix="msdiffusion-tok-"))
    directory.mkdir(parents=True, exist_ok=True)
    # The GPT-2/CLIP byte → unicode alphabet (printable stand-ins for every byte).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    alphabet = [chr(c) for c in chars]
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def tiny_components(seed: int = 0) -> dict[str, Any]:
    """Random-weight SDXL-shaped components, deterministic for ``seed`` (fp32, on the CPU)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessorPil,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tokenizer = char_tokenizer()
        vocab = len(tokenizer)
        text_cfg = dict(
            hidden_size=TINY_TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=vocab,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=TINY_TEXT_DIM,
            hidden_act="gelu",
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg))
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4, 4),
            transformer_layers_per_block=(1, 1, 1),
            cross_attention_dim=TINY_CROSS_DIM,
            norm_num_groups=8,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + TINY_TEXT_DIM,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
            sample_size=256,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=TINY_IMAGE_DIM,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=32,
                patch_size=8,
                projection_dim=TINY_IMAGE_DIM,
                hidden_act="gelu",
            )
        )
    finally:
        torch.random.set_rng_state(gen_state)
    feature_extractor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return dict(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=char_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        image_encoder=image_encoder.eval(),
        feature_extractor=feature_extractor,
    )


def tiny_adapter_kwargs() -> dict[str, int]:
    """Adapter hyper-parameters that fit the tiny components (see ``MSAdapter.for_unet``)."""
    return dict(
        image_embed_dim=TINY_IMAGE_DIM,
        phrase_embed_dim=TINY_TEXT_DIM,
        resampler_dim=64,
        resampler_depth=2,
        resampler_heads=4,
        resampler_head_dim=16,
        num_queries=16,
        num_dummy_tokens=4,
        fourier_freqs=8,
        ff_mult=4,
    )
