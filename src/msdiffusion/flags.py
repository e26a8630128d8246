"""The command line's vocabulary: one name, one help line and one way to state the default for
every flag that several commands share (``generate``, ``ui``, ``eval generate``, ``train``).

A command adds a shared flag with :func:`add_flag`, giving its own default and how the help shows
it; the name, its aliases (old spellings kept, e.g. ``--guidance`` for ``--guidance-scale``), the
metavar and the meaning are defined here once. Import-light: argparse only, so ``--help`` is fast.
Values are checked where they are used (dtypes by ``runtime``, requests by ``request``).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["FLAGS", "PRESET_NAMES", "DTYPE_HELP", "add_flag", "with_default"]

PRESET_NAMES = ("tiny", "toy", "sdxl")
DTYPE_HELP = "auto, fp32, fp16 or bf16 (float32, float16, bfloat16 are accepted too)"

# key (the argparse dest) → names (canonical first, then aliases) and argparse settings
FLAGS: dict[str, dict[str, Any]] = {
    # -- the model
    "preset": {
        "names": ("--preset",),
        "choices": PRESET_NAMES,
        "help": "component set: tiny (random weights, offline, seconds on a CPU), toy (trained on "
        "the toy world, shipped, offline) or sdxl (the released weights, from the hub cache)",
    },
    "base": {
        "names": ("--base",),
        "metavar": "DIR|ID|FILE",
        "help": "SDXL pipeline folder, hub id, or one checkpoint file (.safetensors / .ckpt, e.g. "
        "a fine-tune), instead of the preset's",
    },
    "base_config": {
        "names": ("--base-config",),
        "metavar": "DIR|ID",
        "help": "with a checkpoint file as --base: the diffusers SDXL folder or hub id whose "
        "configs and tokenizers it uses",
    },
    "image_encoder": {
        "names": ("--image-encoder",),
        "metavar": "DIR|ID",
        "help": "CLIP ViT-bigG/14 vision model folder or hub id, instead of the preset's",
    },
    "adapter": {
        "names": ("--adapter",),
        "metavar": "PATH|ID",
        "help": "adapter: our folder, a released ms_adapter.bin, or a hub repo id",
    },
    "vae": {
        "names": ("--vae",),
        "metavar": "DIR|ID",
        "help": "VAE folder or hub id (e.g. an fp16-fix VAE), instead of the preset's; 'base' "
        "keeps the base pipeline's own",
    },
    "device": {
        "names": ("--device",),
        "metavar": "DEVICE",
        "help": "auto (a GPU when there is one), cpu, cuda or cuda:N",
    },
    "dtype": {"names": ("--dtype",), "metavar": "DTYPE", "help": DTYPE_HELP},
    # -- sampling
    "init_image": {
        "names": ("--init-image",),
        "metavar": "IMAGE",
        "help": "a picture to start from (image-to-image; with --inpaint-mask, inpainting); the "
        "output takes its size, rounded down to a multiple of 8, unless --height/--width say "
        "otherwise",
    },
    "strength": {
        "names": ("--strength",),
        "type": float,
        "metavar": "X",
        "help": "how much of --init-image is re-noised, 0 (kept as it is) to 1 (all new)",
    },
    "inpaint_mask": {
        "names": ("--inpaint-mask",),
        "metavar": "PNG",
        "help": "repaint only the white part of --init-image (the output's aspect ratio); every "
        "subject's box must lie inside it; outside it the picture comes back pixel for pixel",
    },
    "negative_prompt": {
        "names": ("--negative-prompt",),
        "metavar": "TEXT",
        "help": "what the image should not show",
    },
    "height": {"names": ("--height",), "type": int, "metavar": "PX", "help": "output height"},
    "width": {"names": ("--width",), "type": int, "metavar": "PX", "help": "output width"},
    "steps": {"names": ("--steps",), "type": int, "metavar": "N", "help": "denoising steps"},
    "guidance_scale": {
        "names": ("--guidance-scale", "--guidance"),
        "type": float,
        "metavar": "X",
        "help": "classifier-free guidance scale",
    },
    "scale": {
        "names": ("--scale",),
        "type": float,
        "metavar": "X",
        "help": "γ, the image-branch scale (0 = plain SDXL)",
    },
    "seed": {"names": ("--seed",), "type": int, "metavar": "N", "help": "seed"},
    "num_images": {
        "names": ("--num-images",),
        "type": int,
        "metavar": "N",
        "help": "images per prompt",
    },
    "batch_size": {
        "names": ("--batch-size",),
        "type": int,
        "metavar": "N",
        "help": "prompts per pipeline call",
    },
    "drop_grounding_tokens": {
        "names": ("--drop-grounding-tokens",),
        "action": "store_true",
        "help": "start the resampler from its learned queries (no phrase or box embedding)",
    },
    "no_progress": {
        "names": ("--no-progress",),
        "action": "store_true",
        "help": "no progress bars",
    },
}


def with_default(help_text: str, shown: Any) -> str:
    """``help_text`` ending in ``(default: shown)``."""
    return f"{help_text} (default: {shown})"


def add_flag(
    parser: argparse.ArgumentParser | Any,
    key: str,
    *,
    default: Any = None,
    shown: Any = None,
    help: str | None = None,
    aliases: tuple[str, ...] = (),
    **settings: Any,
) -> argparse.Action:
    """Add the shared flag ``key`` to ``parser`` (or an argument group) with the command's
    ``default``; the help ends in ``(default: shown)`` — ``shown`` defaults to the value itself,
    ``off`` for switches and ``none`` for ``None``. ``help`` replaces the shared meaning (for a
    command whose use differs); ``aliases``: old spellings this command still accepts;
    ``settings`` override argparse settings (``choices``, ...)."""
    spec = {**FLAGS[key], **settings}
    names = (*spec.pop("names"), *aliases)
    meaning = help or spec.pop("help")
    spec.pop("help", None)
    if shown is None:
        if spec.get("action") == "store_true":
            shown = "off"
        elif default is None or default is argparse.SUPPRESS:
            shown = "none"
        else:
            shown = default
    if spec.get("action") == "store_true" and default is None:
        default = False
    return parser.add_argument(
        *names, dest=key, default=default, help=with_default(meaning, shown), **spec
    )
