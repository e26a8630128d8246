"""Named component sets.

``tiny``: SDXL-shaped components with random weights built from configs — offline, a 256² image in
seconds on a CPU; what the tests run on. ``toy``: a small SDXL-shaped base and adapter trained on
the toy world (``msdiffusion.toyworld``), shipped with the package — real pictures, offline, on a
CPU; what the demo runs on. ``sdxl``: the released model — SDXL base 1.0,
the CLIP ViT-bigG/14 image encoder of IP-Adapter and the MS-Diffusion adapter — by hub id, or any
of them by local path.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Preset", "PRESETS", "Architecture", "ARCHITECTURES", "random_components",
           "adapter_kwargs", "tiny_components", "tiny_adapter_kwargs", "char_tokenizer"]


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
    architecture: str | None = None  # ARCHITECTURES entry whose adapter sizes new adapters get


# The toy world's trained base and adapter (`make learn` writes them; a few MB, shipped).
TOY_MODEL = Path(__file__).resolve().parent / "toyworld" / "model"

PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", None, None, None, None, None, default_size=256, architecture="tiny"),
    "toy": Preset(
        "toy",
        base=str(TOY_MODEL / "base"),
        image_encoder=str(TOY_MODEL / "image_encoder"),
        image_encoder_subfolder=None,
        adapter=str(TOY_MODEL / "adapter"),
        adapter_filename=None,
        default_size=64,
        architecture="toy",
    ),
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
TINY_IMAGE_DIM = 32


def char_tokenizer(directory: str | Path | None = None, words: Sequence[str] = ()):
    """A CLIP BPE tokenizer written to ``directory``: the byte-level alphabet, plus merges that make
    each of ``words`` one token (a small world's vocabulary); everything else is split into
    characters.

    Any prompt tokenises, and offsets map tokens back to characters exactly as with the real CLIP
    BPE.
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
    merges: list[str] = []
    # Longer words first: their merges take precedence, so "and" never splits "sand".
    for word in sorted(dict.fromkeys(w.lower() for w in words if len(w) > 1), key=len,
                       reverse=True):
        # left to right: "b a" → "ba", "ba l" → "bal", "bal l</w>" → "ball</w>"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged += piece
            if rule not in merges:
                merges.append(rule)
            vocab.setdefault(merged, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(str(directory))
    return tokenizer


@dataclass(frozen=True)
class Architecture:
    """Sizes of an SDXL-shaped component set (random weights): the test/demo preset and the
    scaled-down and full-size stacks the benchmarks time."""

    unet: dict[str, Any]
    text_hidden: tuple[int, int]  # text_encoder (CLIP-L-like), text_encoder_2 (bigG-like)
    text_layers: tuple[int, int]
    text_heads: tuple[int, int]
    vision: dict[str, Any]
    vae_channels: tuple[int, ...]
    vae_groups: int
    vae_layers: int
    time_embed_dim: int
    adapter: dict[str, int] = field(default_factory=dict)  # MSAdapter overrides
    down_blocks: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_blocks: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    words: tuple[str, ...] = ()  # whole-word tokens of the tokenizers (else characters)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


ARCHITECTURES: dict[str, Architecture] = {
    "tiny": Architecture(
        unet=dict(block_out_channels=(32, 64, 64), layers_per_block=1,
                  attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 1),
                  norm_num_groups=8, sample_size=32),
        text_hidden=(TINY_TEXT_DIM, TINY_TEXT_DIM), text_layers=(2, 2), text_heads=(4, 4),
        vision=dict(hidden_size=TINY_IMAGE_DIM, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, image_size=32, patch_size=8,
                    projection_dim=TINY_IMAGE_DIM),
        vae_channels=(8, 16, 16, 16), vae_groups=8, vae_layers=1, time_embed_dim=8,
        adapter=dict(resampler_dim=64, resampler_depth=2, resampler_heads=4,
                     resampler_head_dim=16)),
    "mid": Architecture(  # SDXL's layout at about a quarter of its compute
        unet=dict(block_out_channels=(160, 320, 640), layers_per_block=2,
                  attention_head_dim=(5, 5, 10), transformer_layers_per_block=(0, 1, 2),
                  sample_size=128),
        text_hidden=(384, 640), text_layers=(2, 2), text_heads=(6, 10),
        vision=dict(hidden_size=640, intermediate_size=1280, num_hidden_layers=4,
                    num_attention_heads=10, image_size=224, patch_size=14,
                    projection_dim=1280),
        vae_channels=(32, 32, 64, 64), vae_groups=32, vae_layers=1, time_embed_dim=256,
        adapter=dict(resampler_dim=640, resampler_heads=10)),
    "full": Architecture(  # SDXL base 1.0, CLIP-L + bigG text, CLIP-bigG vision (the release)
        unet=dict(block_out_channels=(320, 640, 1280), layers_per_block=2,
                  attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                  sample_size=128),
        text_hidden=(768, 1280), text_layers=(12, 32), text_heads=(12, 20),
        vision=dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48,
                    num_attention_heads=16, image_size=224, patch_size=14,
                    projection_dim=1280),
        vae_channels=(128, 256, 512, 512), vae_groups=32, vae_layers=2, time_embed_dim=256),
    # The toy world's base (msdiffusion.toyworld): 64² images, a 4× VAE, cross-attention on the
    # 16² and 8² grids, word tokens; trained by `msdiffusion.toyworld.base`.
    "toy": Architecture(
        unet=dict(block_out_channels=(64, 128), layers_per_block=1, attention_head_dim=(4, 8),
                  transformer_layers_per_block=(1, 1), norm_num_groups=16, sample_size=16),
        down_blocks=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_blocks=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        text_hidden=(64, 64), text_layers=(2, 2), text_heads=(4, 4),
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=4, image_size=64, patch_size=8, projection_dim=64),
        vae_channels=(16, 32, 64), vae_groups=8, vae_layers=1, time_embed_dim=8,
        adapter=dict(resampler_dim=128, resampler_depth=2, resampler_heads=4,
                     resampler_head_dim=32),
        words=("a", "and", "on", "ball", "star", "ring", "vase", "kite", "tent", "cross", "moon",
               "sand", "grass", "sky", "snow", "stone", "red", "orange", "yellow", "blue",
               "purple", "pink", "black", "teal", "stripes", "checks", "dots", "with")),
}


def random_components(architecture: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """SDXL-shaped components with random weights, deterministic for ``seed`` (fp32, CPU)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessorPil,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    arch = ARCHITECTURES[architecture]
    h1, h2 = arch.text_hidden
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = char_tokenizer(words=arch.words)

        def text_config(i: int) -> CLIPTextConfig:
            hidden = arch.text_hidden[i]
            return CLIPTextConfig(
                hidden_size=hidden, intermediate_size=2 * hidden if hidden < 64 else 4 * hidden,
                num_hidden_layers=arch.text_layers[i], num_attention_heads=arch.text_heads[i],
                vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=h2,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, hidden_act="gelu")

        text_encoder = CLIPTextModel(text_config(0))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(1))
        unet = UNet2DConditionModel(
            in_channels=4, out_channels=4,
            down_block_types=arch.down_blocks, up_block_types=arch.up_blocks,
            cross_attention_dim=h1 + h2, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=arch.time_embed_dim,
            projection_class_embeddings_input_dim=6 * arch.time_embed_dim + h2, **arch.unet)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=arch.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * len(arch.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(arch.vae_channels), latent_channels=4,
            norm_num_groups=arch.vae_groups, layers_per_block=arch.vae_layers,
            sample_size=arch.unet["sample_size"] * arch.vae_scale_factor)
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(hidden_act="gelu", **arch.vision))
    side = arch.vision["image_size"]
    feature_extractor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1)
    return dict(vae=vae.eval(), text_encoder=text_encoder.eval(),
                text_encoder_2=text_encoder_2.eval(), tokenizer=tokenizer,
                tokenizer_2=char_tokenizer(words=arch.words), unet=unet.eval(), scheduler=scheduler,
                image_encoder=image_encoder.eval(), feature_extractor=feature_extractor)


def adapter_kwargs(architecture: str) -> dict[str, int]:
    """``MSAdapter.for_unet`` hyper-parameters that fit ``random_components(architecture)``."""
    arch = ARCHITECTURES[architecture]
    return dict(image_embed_dim=arch.vision["hidden_size"], phrase_embed_dim=arch.text_hidden[0],
                **arch.adapter)


def tiny_components(seed: int = 0) -> dict[str, Any]:
    """The ``tiny`` preset: random-weight SDXL-shaped components, 256² in seconds on a CPU."""
    return random_components("tiny", seed)


def tiny_adapter_kwargs() -> dict[str, int]:
    """Adapter hyper-parameters that fit the tiny components (see ``MSAdapter.for_unet``)."""
    return adapter_kwargs("tiny")
