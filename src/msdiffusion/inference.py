"""The one entry the CLI, the web UI, training's validation and the evaluation harness share: run
``GenerationRequest``s (batched) on a loaded model (``msdiffusion.loading``), and write images,
overlays and sidecars.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_save_image, atomic_write_json
from .errors import ErrorList, InputError
from .loading import LoadedModel
from .request import GenerationRequest
from .version import __version__
from .visualize import draw_overlay

__all__ = ["GenerationResult", "generate", "write_result", "persist_images"]


@dataclass
class GenerationResult:
    """A request's images and their seeds. ``call_images`` is how many images the pipeline call
    that made them made in all (other requests' included), ``call_offset`` where this request's
    first image sat among them: an image replays bit-exactly in a call of the same make-up."""

    request: GenerationRequest
    images: list[Image.Image]
    seeds: list[int]
    call_images: int = 1
    call_offset: int = 0
    call_prompts: int = 1


def _identity(value: Any) -> Any:
    """A request's picture as a batch key entry: in-memory ones by object, paths by value."""
    return id(value) if isinstance(value, (Image.Image, np.ndarray)) else value


def _batch_key(request: GenerationRequest, size: int) -> tuple:
    return (
        *request.size(size),
        request.num_inference_steps,
        request.guidance_scale,
        request.scale,
        request.num_images,
        request.mask_threshold,
        request.start_step,
        request.drop_grounding_tokens,
        request.scheduler,
        request.negative_prompt is None,
        request.prompt_2 is None,
        request.negative_prompt_2 is None,
        _identity(request.control_image),
        request.controlnet_conditioning_scale,
        # one picture to start from per call (diffusers repeats it for every image of the call)
        _identity(request.init_image),
        request.strength,
        _identity(request.inpaint_mask),
    )


def _texts(requests: Sequence[GenerationRequest], name: str) -> list[str] | None:
    """One text per request for a batched call, or None when the requests give none (their batch
    key makes it all or none)."""
    texts = [getattr(r, name) for r in requests]
    return None if texts[0] is None else texts


def _use_scheduler(pipe: Any, name: str | None, own: Any) -> None:
    """The scheduler ``name`` on ``pipe`` (None: the model's ``own``)."""
    from .pipelines.schedulers import make_scheduler

    wanted = own if name is None else make_scheduler(name, own.config)
    pipe.scheduler = wanted


def _source_arguments(request: GenerationRequest, size: tuple[int, int]) -> dict[str, Any]:
    """The image-to-image / inpainting arguments of a call: the picture at the output ``size``
    (height, width), the strength, the mask."""
    picture = request.load_init_image()
    if picture is None:
        return {}
    height, width = size
    if picture.size != (width, height):  # as diffusers' own resizing: Lanczos
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    arguments: dict[str, Any] = {"image": picture, "strength": request.strength}
    if request.inpaint_mask is not None:
        arguments.update(mask_image=request.inpaint_mask_image(), height=height, width=width)
    return arguments


def _keep_outside(image: Image.Image, picture: Image.Image, mask: Image.Image) -> Image.Image:
    """An inpainted ``image`` with the ``picture``'s own pixels wherever ``mask`` is black: the
    VAE's round trip would otherwise change them slightly."""
    inside = np.asarray(mask.convert("L").resize(image.size, Image.Resampling.BILINEAR)) >= 128
    kept = np.where(inside[..., None], np.asarray(image), np.asarray(picture.convert("RGB")))
    return Image.fromarray(kept)  # (H, W, 3) uint8


def generate(
    model: LoadedModel,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int = 1,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> list[GenerationResult]:
    """Run requests, ``batch_size`` prompts per pipeline call (consecutive requests with the same
    settings share a call). Image k of a request is seeded ``seed + k`` on a CPU generator, so
    outputs don't depend on batching or on the device's RNG. Requests with an ``init_image`` run
    on the model's image-to-image or inpainting pipeline (``LoadedModel.pipeline``)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise InputError("batch_size", "must be >= 1", batch_size)
    pipe = model.pipe
    has_controlnet = getattr(pipe, "controlnet", None) is not None
    errors = ErrorList()  # every request's errors before the first image
    subjects = []
    for i, request in enumerate(requests):
        with errors.check("requests", i):
            request.validate()
            subjects.append(
                request.prepare(pipe.tokenizer, model.default_size, pipe.vae_scale_factor)
            )
            if has_controlnet and request.init_image is not None:
                raise InputError(
                    "init_image",
                    "needs a model without a ControlNet (ControlNet works with text-to-image only)",
                    str(request.init_image),
                )
            if has_controlnet and request.control_image is None:
                raise InputError("control_image", "is required: the model has a ControlNet", None)
            if not has_controlnet and request.control_image is not None:
                raise InputError(
                    "control_image", "needs a model with a ControlNet", request.control_image
                )
    errors.raise_if_any()
    batches: list[list[int]] = []
    for i, request in enumerate(requests):
        key = _batch_key(request, model.default_size)
        if (
            batches
            and len(batches[-1]) < batch_size
            and _batch_key(requests[batches[-1][0]], model.default_size) == key
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    total = sum(requests[b[0]].num_inference_steps for b in batches)
    bar = tqdm(total=total, desc="denoising", unit="step", disable=not progress)
    done = 0

    def step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        nonlocal done
        done += 1
        bar.update(1)
        if on_step is not None:
            on_step(done, total)
        return {}

    results: list[GenerationResult] = []
    own_scheduler = pipe.scheduler
    used = []
    try:
        for batch in batches:
            first = requests[batch[0]]
            members = [requests[i] for i in batch]
            n = first.num_images
            generators = [
                torch.Generator("cpu").manual_seed(requests[i].seed + k)
                for i in batch
                for k in range(n)
            ]
            call = model.pipeline(first.kind)
            call.set_progress_bar_config(disable=True)
            used.append(call)
            _use_scheduler(call, first.scheduler, own_scheduler)
            size = first.size(model.default_size)
            extra = _source_arguments(first, size)
            if first.control_image is not None:
                extra["control_image"] = first.load_control_image()
                extra["controlnet_conditioning_scale"] = first.controlnet_conditioning_scale
            if first.init_image is None:
                extra.update(height=size[0], width=size[1])
            out = call(
                prompt=[r.prompt for r in members],
                subjects=[subjects[i] for i in batch],
                negative_prompt=_texts(members, "negative_prompt"),
                prompt_2=_texts(members, "prompt_2"),
                negative_prompt_2=_texts(members, "negative_prompt_2"),
                scale=first.scale,
                drop_grounding_tokens=first.drop_grounding_tokens,
                mask_threshold=first.mask_threshold,
                start_step=first.start_step,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                num_images_per_prompt=n,
                generator=generators,
                callback_on_step_end=step_end,
                **extra,
            )
            images = out.images
            if first.kind == "inpainting":
                images = [_keep_outside(im, extra["image"], extra["mask_image"]) for im in images]
            for j, i in enumerate(batch):
                results.append(
                    GenerationResult(
                        requests[i],
                        images[j * n : (j + 1) * n],
                        [requests[i].seed + k for k in range(n)],
                        call_images=len(batch) * n,
                        call_offset=j * n,
                        call_prompts=len(batch),
                    )
                )
    finally:
        for call in used:
            call.scheduler = own_scheduler
        bar.close()
    return results


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "msdiffusion": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def _as_picture(value: Any) -> Image.Image | None:
    """An in-memory image (PIL) or mask (array, tensor) as a picture to save; None for a path."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return None
    if isinstance(value, Image.Image):
        return value
    from .layout import mask_to_array

    inside = mask_to_array(value, "mask")  # (h, w) bool
    return Image.fromarray(inside.astype(np.uint8) * 255, mode="L")


def persist_images(request: GenerationRequest, out_dir: Path) -> GenerationRequest:
    """In-memory reference images, masks (images, arrays, tensors), control images, pictures to
    start from and inpainting masks → PNGs under ``out_dir/references`` (named by content), so
    the sidecar can name them."""
    refs = out_dir / "references"

    def keep(value: Any) -> Any:
        picture = _as_picture(value)
        if picture is None:
            return value
        digest = hashlib.sha1(picture.mode.encode() + picture.tobytes()).hexdigest()[:16]
        path = refs / f"{digest}.png"
        if not path.exists():
            refs.mkdir(parents=True, exist_ok=True)
            atomic_save_image(picture, path)
        return str(path)

    subjects = [
        replace(
            s,
            images=[keep(im) for im in s.images],
            mask=keep(s.mask) if s.mask is not None else None,
        )
        for s in request.subjects
    ]
    return replace(
        request,
        subjects=subjects,
        control_image=keep(request.control_image),
        init_image=keep(request.init_image),
        inpaint_mask=keep(request.inpaint_mask),
    )


def _names(stem: str, k: int) -> tuple[str, str, str]:
    return f"{stem}_{k}.png", f"{stem}_{k}_overlay.png", f"{stem}_{k}.json"


def write_result(
    result: GenerationResult,
    out_dir: str | os.PathLike[str],
    info: dict[str, Any],
    stem: str = "image",
    extra: dict[str, Any] | None = None,
) -> list[dict[str, str]]:
    """Write each image, its layout overlay and its JSON sidecar (written last: a sidecar means the
    image is complete). The sidecar's request, run again on the same model, reproduces that image
    (bit-exactly in a pipeline call of the same make-up: its ``batch`` entry). ``extra``: more
    entries for every sidecar. Files already there are never replaced: an ``InputError`` before
    anything is written."""
    out = Path(out_dir)
    taken = [
        name for k in range(len(result.images)) for name in _names(stem, k) if (out / name).exists()
    ]
    if taken:
        raise InputError("out", f"already holds {taken[0]}; results are never replaced", str(out))
    out.mkdir(parents=True, exist_ok=True)
    request = persist_images(result.request, out)
    versions = _versions()
    records = []
    for k, (image, seed) in enumerate(zip(result.images, result.seeds)):
        image_name, overlay_name, sidecar_name = _names(stem, k)
        single = replace(request, seed=seed, num_images=1, height=image.height, width=image.width)
        sidecar = {
            "request": single.to_dict(base_dir=out),
            "seed": seed,
            "image": image_name,
            "overlay": overlay_name,
            "batch": {
                "images": result.call_images,
                "index": result.call_offset + k,
                "prompts": result.call_prompts,
            },
            "model": info,
            "versions": versions,
            **(extra or {}),
        }
        records.append((image, image_name, overlay_name, sidecar_name, sidecar))
    written = []
    for image, image_name, overlay_name, sidecar_name, sidecar in records:
        atomic_save_image(image, out / image_name)
        atomic_save_image(draw_overlay(image, request), out / overlay_name)
        atomic_write_json(out / sidecar_name, sidecar)
        written.append(
            {
                "image": str(out / image_name),
                "overlay": str(out / overlay_name),
                "sidecar": str(out / sidecar_name),
            }
        )
    return written
