"""`msdiffusion convert`: the released `ms_adapter.bin` → our format (safetensors + config.json)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a released ms_adapter.bin to safetensors + config.json",
        description="Convert the released MS-Diffusion checkpoint (a pickled dict, read with "
        "weights_only=True) into msdiffusion's format. The UNet's layer layout is "
        "needed to map the released layer indices to module names: it is read from "
        "--unet (a UNet folder or an SDXL pipeline folder / hub id).",
        epilog="example:\n  msdiffusion convert ms_adapter.bin models/ms-adapter",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="path to ms_adapter.bin")
    p.add_argument("out", help="output folder (written whole, or not at all)")
    p.add_argument(
        "--unet",
        default="stabilityai/stable-diffusion-xl-base-1.0",
        help="UNet config source: a UNet folder, an SDXL folder or hub id, or 'tiny' "
        "(default: SDXL base 1.0; only its config.json is read)",
    )
    p.set_defaults(func=run)


def unet_from_config(source: str):
    """Build the UNet skeleton from its config alone (no weights are read)."""
    from diffusers import UNet2DConditionModel

    from ..errors import ModelNotAvailableError

    if source == "tiny":
        from ..testing.sdxl import random_components

        return random_components("tiny")["unet"]
    for subfolder in (None, "unet"):
        try:
            config = UNet2DConditionModel.load_config(source, subfolder=subfolder)
        except Exception:  # try the next layout
            continue
        with _init_empty():
            return UNet2DConditionModel.from_config(config)
    raise ModelNotAvailableError(
        f"cannot read a UNet config from {source!r} (a UNet folder, an SDXL folder, or a hub id "
        "in the local cache); download stabilityai/stable-diffusion-xl-base-1.0 unet/config.json"
    )


def _init_empty():
    from accelerate import init_empty_weights

    return init_empty_weights()


def run(args: argparse.Namespace) -> int:
    from ..models.adapter import MSAdapter

    unet = unet_from_config(args.unet)
    overrides = {}
    if args.unet == "tiny":
        from ..testing.sdxl import adapter_kwargs

        overrides = adapter_kwargs("tiny")
    adapter = MSAdapter.from_original_checkpoint(args.checkpoint, unet, **overrides)
    adapter.save_pretrained(args.out)
    count = sum(p.numel() for p in adapter.parameters())
    print(
        f"wrote {args.out} ({count / 1e6:.1f} M parameters, {len(adapter.config.layers)} "
        "cross-attention layers)"
    )
    return 0
