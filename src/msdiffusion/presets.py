"""Named component sets.

``tiny``: SDXL-shaped components with random weights built from configs
(``msdiffusion.testing.sdxl``) — offline, a 256² image in seconds on a CPU; what the tests run on.
``toy``: a small SDXL-shaped base and adapter trained on the toy world (``msdiffusion.toyworld``),
shipped with the package — real pictures, offline, on a CPU; what the demo runs on. ``sdxl``: the
released model — SDXL base 1.0, the CLIP ViT-bigG/14 image encoder of IP-Adapter and the
MS-Diffusion adapter — by hub id, or any of them by local path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Preset", "PRESETS", "TOY_MODEL"]


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
    architecture: str | None = None  # ARCHITECTURES entry whose adapter sizes new adapters get
    vae_scale_factor: int = 8  # output pixels per latent cell, per side (its VAE's)


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
        vae_scale_factor=4,
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
