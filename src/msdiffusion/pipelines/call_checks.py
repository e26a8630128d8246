"""The checks of an ``MSDiffusionXLPipeline`` call, before any model runs: every argument's type
and range, the prompt-or-embeddings rules of SDXL, sizes the VAE can make, latents that fit them.
Each failure is an ``InputError`` naming the argument, the rule and the value; every error of a
call is reported at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..checks import check_flag, check_integer, check_number
from ..errors import ErrorList, InputError
from ..layout import validate_scale
from ..models.attention import MSCrossAttnProcessor

__all__ = [
    "MAX_GUIDANCE",
    "OUTPUT_TYPES",
    "CallArguments",
    "check_call",
    "check_latents",
    "check_generators",
    "ip_adapter_loaded",
]

MAX_GUIDANCE = 100.0  # classifier-free guidance far above ~30 only burns the image
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class CallArguments:
    """What the checks found: the batch and the output size."""

    batch_size: int
    prompts: list[str] | None  # the prompt texts (None: given as embeddings)
    height: int
    width: int


def _texts(name: str, value: Any, errors: ErrorList) -> list[str] | None:
    """A string or a non-empty list of strings → the list (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    errors.add(InputError(name, "must be a string or a non-empty list of strings", value))
    return None


def _embeds(name: str, value: Any, ndim: int, errors: ErrorList) -> torch.Tensor | None:
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        errors.add(InputError(name, f"must be a {ndim}-D tensor", shape))
        return None
    return value


def _pair(name: str, value: Any, errors: ErrorList) -> None:
    if value is None:
        return
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        errors.add(
            InputError(name, "must be a pair of integers (height, width) / (top, left)", value)
        )
        return
    for v in value:
        with errors.check():
            check_integer(name, v, low=0)


def ip_adapter_loaded(unet: Any) -> bool:
    """Whether ``pipe.load_ip_adapter`` put an IP-Adapter's image projection on ``unet``."""
    return getattr(unet, "encoder_hid_proj", None) is not None and (
        unet.config.encoder_hid_dim_type == "ip_image_proj"
    )


def _ip_adapter(pipe: Any, a: dict[str, Any], errors: ErrorList) -> None:
    """IP-Adapter inputs as diffusers takes them, with an IP-Adapter loaded and its processors
    running (the MS-Diffusion processors have no IP-Adapter branch: they would drop it)."""
    image, embeds = a["ip_adapter_image"], a["ip_adapter_image_embeds"]
    name = "ip_adapter_image_embeds" if image is None else "ip_adapter_image"
    given = image if image is not None else embeds
    loaded = ip_adapter_loaded(pipe.unet)
    if image is not None and embeds is not None:
        errors.add(InputError(name, "give ip_adapter_image or ip_adapter_image_embeds", "both"))
    elif given is None:
        if loaded:
            errors.add(
                InputError(
                    "ip_adapter_image",
                    "is required while an IP-Adapter is loaded (or ip_adapter_image_embeds; "
                    "pipe.unload_ip_adapter() removes it)",
                    None,
                )
            )
    elif not loaded:
        errors.add(
            InputError(
                name,
                "needs an IP-Adapter: load one with pipe.load_ip_adapter(...)",
                type(given).__name__,
            )
        )
    elif ours := sum(
        isinstance(p, MSCrossAttnProcessor) for p in pipe.unet.attn_processors.values()
    ):
        errors.add(
            InputError(
                name,
                "needs the IP-Adapter's attention processors, but the UNet runs MS-Diffusion's "
                "(they have no IP-Adapter branch): pipe.attach_adapter(None) brings the "
                "IP-Adapter's back",
                f"{ours} MS-Diffusion cross-attention processors",
            )
        )
    if embeds is not None and (
        not isinstance(embeds, list)
        or not all(isinstance(e, torch.Tensor) and e.ndim in (3, 4) for e in embeds)
    ):
        errors.add(InputError(name, "must be a list of 3-D or 4-D tensors", type(embeds).__name__))


def check_call(pipe: Any, a: dict[str, Any]) -> CallArguments:
    """Check the arguments ``a`` of one call (the pipeline's keyword names) against ``pipe``."""
    errors = ErrorList()
    prompts = _texts("prompt", a["prompt"], errors)
    for name in ("prompt_2", "negative_prompt", "negative_prompt_2"):
        _texts(name, a[name], errors)
    embeds = _embeds("prompt_embeds", a["prompt_embeds"], 3, errors)
    pooled = _embeds("pooled_prompt_embeds", a["pooled_prompt_embeds"], 2, errors)
    negative = _embeds("negative_prompt_embeds", a["negative_prompt_embeds"], 3, errors)
    negative_pooled = _embeds(
        "negative_pooled_prompt_embeds", a["negative_pooled_prompt_embeds"], 2, errors
    )
    batch_size = len(prompts) if prompts is not None else 1
    if a["prompt"] is not None and a["prompt_embeds"] is not None:
        errors.add(InputError("prompt_embeds", "give prompt or prompt_embeds, not both", "both"))
    elif a["prompt"] is None and a["prompt_embeds"] is None:
        errors.add(InputError("prompt", "is required (or prompt_embeds)", None))
    elif embeds is not None:
        batch_size = embeds.shape[0]
        if a["prompt_2"] is not None:
            errors.add(InputError("prompt_2", "cannot go with prompt_embeds", a["prompt_2"]))
        if pooled is None:
            errors.add(InputError("pooled_prompt_embeds", "is required with prompt_embeds", None))
        elif pooled.shape[0] != batch_size:
            errors.add(
                InputError("pooled_prompt_embeds", f"needs {batch_size} rows", pooled.shape[0])
            )
    if negative is not None:
        for name in ("negative_prompt", "negative_prompt_2"):
            if a[name] is not None:
                errors.add(InputError(name, "cannot go with negative_prompt_embeds", a[name]))
        if embeds is not None and negative.shape != embeds.shape:
            errors.add(
                InputError(
                    "negative_prompt_embeds",
                    f"must have prompt_embeds' shape {tuple(embeds.shape)}",
                    tuple(negative.shape),
                )
            )
        if negative_pooled is None:
            errors.add(
                InputError(
                    "negative_pooled_prompt_embeds", "is required with negative_prompt_embeds", None
                )
            )

    _ip_adapter(pipe, a, errors)
    multiple = pipe.vae_scale_factor
    size = {}
    for name in ("height", "width"):
        value = a[name]
        size[name] = pipe.default_sample_size * multiple if value is None else value
        if value is not None:
            with errors.check():
                if check_integer(name, value, low=multiple) % multiple:
                    raise InputError(name, f"must be a positive multiple of {multiple}", value)

    with errors.check():
        validate_scale(a["scale"], "scale")
    with errors.check():
        check_flag("drop_grounding_tokens", a["drop_grounding_tokens"])
    if a["mask_threshold"] is not None:
        with errors.check():
            check_number("mask_threshold", a["mask_threshold"], low=0.0, high=1.0, high_open=True)
    with errors.check():
        check_integer("start_step", a["start_step"], low=0)
    if a["timesteps"] is None and a["sigmas"] is None:
        with errors.check():
            check_integer("num_inference_steps", a["num_inference_steps"], low=1, high=1000)
    with errors.check():
        check_number("guidance_scale", a["guidance_scale"], low=0.0, high=MAX_GUIDANCE)
    with errors.check():
        check_number("guidance_rescale", a["guidance_rescale"], low=0.0, high=1.0)
    if a["denoising_end"] is not None:
        with errors.check():
            check_number(
                "denoising_end",
                a["denoising_end"],
                low=0.0,
                high=1.0,
                low_open=True,
                high_open=True,
            )
    with errors.check():
        check_number("eta", a["eta"], low=0.0, high=1.0)
    with errors.check():
        check_integer("num_images_per_prompt", a["num_images_per_prompt"], low=1)
    if a["clip_skip"] is not None:
        layers = [
            e.config.num_hidden_layers
            for e in (pipe.text_encoder, pipe.text_encoder_2)
            if e is not None
        ]
        with errors.check():
            check_integer("clip_skip", a["clip_skip"], low=0, high=min(layers, default=2) - 1)
    with errors.check():
        check_number(
            "controlnet_conditioning_scale", a["controlnet_conditioning_scale"], low=0.0, high=10.0
        )
    controlnet = getattr(pipe, "controlnet", None)  # the text-to-image pipeline's component
    if a["control_image"] is not None and controlnet is None:
        errors.add(
            InputError(
                "control_image",
                "needs a controlnet component (MSDiffusionXLPipeline(..., controlnet=...))",
                type(a["control_image"]).__name__,
            )
        )
    if controlnet is not None and a["control_image"] is None:
        errors.add(InputError("control_image", "is required with a controlnet", None))
    for name in (
        "original_size",
        "crops_coords_top_left",
        "target_size",
        "negative_original_size",
        "negative_crops_coords_top_left",
        "negative_target_size",
    ):
        _pair(name, a[name], errors)
    if a["output_type"] not in OUTPUT_TYPES:
        errors.add(
            InputError("output_type", f"must be one of {', '.join(OUTPUT_TYPES)}", a["output_type"])
        )
    kwargs = a["cross_attention_kwargs"]
    if kwargs is not None and (not isinstance(kwargs, dict) or "ms" in kwargs):
        errors.add(
            InputError(
                "cross_attention_kwargs",
                'must be a dict without "ms" (the pipeline passes the subjects there)',
                kwargs if not isinstance(kwargs, dict) else sorted(kwargs),
            )
        )
    names = a["callback_on_step_end_tensor_inputs"]
    unknown = [n for n in names if n not in pipe._callback_tensor_inputs]
    if unknown:
        errors.add(
            InputError(
                "callback_on_step_end_tensor_inputs",
                f"may name only {', '.join(pipe._callback_tensor_inputs)}",
                unknown,
            )
        )
    errors.raise_if_any()
    return CallArguments(batch_size, prompts, size["height"], size["width"])


def check_latents(
    latents: torch.Tensor | None,
    rows: int,
    channels: int,
    size: tuple[int, int],
    factor: int,
    dtype: torch.dtype,
) -> None:
    """Given latents must be the (rows, channels, height/f, width/f) of the requested output, in
    the UNet's dtype."""
    if latents is None:
        return
    want = (rows, channels, size[0] // factor, size[1] // factor)
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != want:
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InputError(
            "latents",
            f"must have shape {want} — (images, channels, height/{factor}, width/{factor}) for "
            f"height {size[0]}, width {size[1]} and {rows} images; pass the height and width "
            "the latents were made for",
            got,
        )
    if latents.dtype != dtype:
        raise InputError("latents", f"must have the UNet's dtype {dtype}", latents.dtype)


def check_generators(generator: Any, rows: int) -> None:
    """A list of generators needs one per image."""
    if isinstance(generator, Sequence) and len(generator) != rows:
        raise InputError(
            "generator", f"needs one generator, or one per image ({rows})", len(generator)
        )
