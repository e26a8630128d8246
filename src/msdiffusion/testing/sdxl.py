"""SDXL-shaped component sets with random weights, built from configs (offline, deterministic).

``ARCHITECTURES``: ``tiny`` (the test and demo preset: a 256² image in seconds on a CPU), ``mid``
and ``full`` (SDXL's layout at about a quarter of its compute, and at full size: what the
benchmarks time), ``toy`` (the toy world's base, ``msdiffusion.toyworld``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .tokenizers import char_tokenizer

__all__ = ["Architecture", "ARCHITECTURES", "random_components", "adapter_kwargs"]

# The tiny model's sizes: small enough for seconds on a CPU, shaped like SDXL (two text encoders,
# text-time conditioning, cross-attention at two UNet levels, a CLIP vision tower).
TINY_TEXT_DIM = 32
TINY_IMAGE_DIM = 32


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
        unet=dict(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4, 4),
            transformer_layers_per_block=(1, 1, 1),
            norm_num_groups=8,
            sample_size=32,
        ),
        text_hidden=(TINY_TEXT_DIM, TINY_TEXT_DIM),
        text_layers=(2, 2),
        text_heads=(4, 4),
        vision=dict(
            hidden_size=TINY_IMAGE_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=TINY_IMAGE_DIM,
        ),
        vae_channels=(8, 16, 16, 16),
        vae_groups=8,
        vae_layers=1,
        time_embed_dim=8,
        adapter=dict(resampler_dim=64, resampler_depth=2, resampler_heads=4, resampler_head_dim=16),
    ),
    "mid": Architecture(  # SDXL's layout at about a quarter of its compute
        unet=dict(
            block_out_channels=(160, 320, 640),
            layers_per_block=2,
            attention_head_dim=(5, 5, 10),
            transformer_layers_per_block=(0, 1, 2),
            sample_size=128,
        ),
        text_hidden=(384, 640),
        text_layers=(2, 2),
        text_heads=(6, 10),
        vision=dict(
            hidden_size=640,
            intermediate_size=1280,
            num_hidden_layers=4,
            num_attention_heads=10,
            image_size=224,
            patch_size=14,
            projection_dim=1280,
        ),
        vae_channels=(32, 32, 64, 64),
        vae_groups=32,
        vae_layers=1,
        time_embed_dim=256,
        adapter=dict(resampler_dim=640, resampler_heads=10),
    ),
    "full": Architecture(  # SDXL base 1.0, CLIP-L + bigG text, CLIP-bigG vision (the release)
        unet=dict(
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10),
            sample_size=128,
        ),
        text_hidden=(768, 1280),
        text_layers=(12, 32),
        text_heads=(12, 20),
        vision=dict(
            hidden_size=1664,
            intermediate_size=8192,
            num_hidden_layers=48,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=1280,
        ),
        vae_channels=(128, 256, 512, 512),
        vae_groups=32,
        vae_layers=2,
        time_embed_dim=256,
    ),
    # The toy world's base (msdiffusion.toyworld): 64² images, a 4× VAE, cross-attention on the
    # 16² and 8² grids, word tokens; trained by `msdiffusion.toyworld.base`.
    "toy": Architecture(
        unet=dict(
            block_out_channels=(64, 128),
            layers_per_block=1,
            attention_head_dim=(4, 8),
            transformer_layers_per_block=(1, 1),
            norm_num_groups=16,
            sample_size=16,
        ),
        down_blocks=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_blocks=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        text_hidden=(64, 64),
        text_layers=(2, 2),
        text_heads=(4, 4),
        vision=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
            projection_dim=64,
        ),
        vae_channels=(16, 32, 64),
        vae_groups=8,
        vae_layers=1,
        time_embed_dim=8,
        adapter=dict(
            resampler_dim=128, resampler_depth=2, resampler_heads=4, resampler_head_dim=32
        ),
        words=(
            "a",
            "and",
            "on",
            "ball",
            "star",
            "ring",
            "vase",
            "kite",
            "tent",
            "cross",
            "moon",
            "sand",
            "grass",
            "sky",
            "snow",
            "stone",
            "red",
            "orange",
            "yellow",
            "blue",
            "purple",
            "pink",
            "black",
            "teal",
            "stripes",
            "checks",
            "dots",
            "with",
        ),
    ),
}


def random_components(architecture: str | Architecture = "tiny", seed: int = 0) -> dict[str, Any]:
    """SDXL-shaped components with random weights, deterministic for ``seed`` (fp32, CPU);
    ``architecture``: an ``ARCHITECTURES`` name, or sizes of one's own."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessorPil,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    arch = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
    h1, h2 = arch.text_hidden
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = char_tokenizer(words=arch.words)

        def text_config(i: int) -> CLIPTextConfig:
            hidden = arch.text_hidden[i]
            return CLIPTextConfig(
                hidden_size=hidden,
                intermediate_size=2 * hidden if hidden < 64 else 4 * hidden,
                num_hidden_layers=arch.text_layers[i],
                num_attention_heads=arch.text_heads[i],
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                projection_dim=h2,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                hidden_act="gelu",
            )

        text_encoder = CLIPTextModel(text_config(0))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(1))
        unet = UNet2DConditionModel(
            in_channels=4,
            out_channels=4,
            down_block_types=arch.down_blocks,
            up_block_types=arch.up_blocks,
            cross_attention_dim=h1 + h2,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=arch.time_embed_dim,
            projection_class_embeddings_input_dim=6 * arch.time_embed_dim + h2,
            **arch.unet,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=arch.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * len(arch.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(arch.vae_channels),
            latent_channels=4,
            norm_num_groups=arch.vae_groups,
            layers_per_block=arch.vae_layers,
            sample_size=arch.unet["sample_size"] * arch.vae_scale_factor,
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(hidden_act="gelu", **arch.vision)
        )
    side = arch.vision["image_size"]
    feature_extractor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
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
        tokenizer_2=char_tokenizer(words=arch.words),
        unet=unet.eval(),
        scheduler=scheduler,
        image_encoder=image_encoder.eval(),
        feature_extractor=feature_extractor,
    )


def adapter_kwargs(architecture: str) -> dict[str, int]:
    """``MSAdapter.for_unet`` hyper-parameters that fit ``random_components(architecture)``."""
    arch = ARCHITECTURES[architecture]
    return dict(
        image_embed_dim=arch.vision["hidden_size"],
        phrase_embed_dim=arch.text_hidden[0],
        **arch.adapter,
    )
