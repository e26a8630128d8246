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

import torch
from PIL import Image

from .atomic import atomic_save_image, atomic_write_json
from .errors import ErrorList, InputError
from .loading import LoadedModel
from .request import GenerationRequest
from .version import __version__
from .visualize import draw_overlay

__all__ = ["GenerationResult", "generate", "write_result"]


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image]
    seeds: list[int]


def _batch_key(request: GenerationRequest, size: int) -> tuple:
    return (
        request.height or size,
        request.width or size,
        request.num_inference_steps,
        request.guidance_scale,
        request.scale,
        request.num_images,
        request.mask_threshold,
        request.start_step,
        request.drop_grounding_tokens,
    )


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
    outputs don't depend on batching or on the device's RNG."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise InputError("batch_size", "must be >= 1", batch_size)
    pipe = model.pipe
    errors = ErrorList()  # every request's errors before the first image
    subjects = []
    for i, request in enumerate(requests):
        with errors.check("requests", i):
            request.validate()
            subjects.append(
                request.prepare(pipe.tokenizer, model.default_size, pipe.vae_scale_factor)
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
    pipe.set_progress_bar_config(disable=True)
    try:
        for batch in batches:
            first = requests[batch[0]]
            n = first.num_images
            generators = [
                torch.Generator("cpu").manual_seed(requests[i].seed + k)
                for i in batch
                for k in range(n)
            ]
            out = pipe(
                prompt=[requests[i].prompt for i in batch],
                subjects=[subjects[i] for i in batch],
                negative_prompt=[requests[i].negative_prompt for i in batch],
                scale=first.scale,
                drop_grounding_tokens=first.drop_grounding_tokens,
                mask_threshold=first.mask_threshold,
                start_step=first.start_step,
                height=first.height or model.default_size,
                width=first.width or model.default_size,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                num_images_per_prompt=n,
                generator=generators,
                callback_on_step_end=step_end,
            )
            for j, i in enumerate(batch):
                results.append(
                    GenerationResult(
                        requests[i],
                        out.images[j * n : (j + 1) * n],
                        [requests[i].seed + k for k in range(n)],
                    )
                )
    finally:
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


def _persist_images(request: GenerationRequest, out_dir: Path) -> GenerationRequest:
    """In-memory reference images/masks → PNGs under ``out_dir/references`` (for the sidecar)."""
    refs = out_dir / "references"

    def keep(image: Any) -> Any:
        if not isinstance(image, Image.Image):
            return image
        digest = hashlib.sha1(image.tobytes()).hexdigest()[:16]
        path = refs / f"{digest}.png"
        if not path.exists():
            refs.mkdir(parents=True, exist_ok=True)
            atomic_save_image(image, path)
        return str(path)

    subjects = [
        replace(
            s,
            images=[keep(im) for im in s.images],
            mask=keep(s.mask) if s.mask is not None else None,
        )
        for s in request.subjects
    ]
    return replace(request, subjects=subjects)


def write_result(
    result: GenerationResult,
    out_dir: str | os.PathLike[str],
    info: dict[str, Any],
    stem: str = "image",
) -> list[dict[str, str]]:
    """Write each image, its layout overlay and its JSON sidecar (written last: a sidecar means the
    image is complete). The sidecar's request, run again, reproduces that image exactly."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    request = _persist_images(result.request, out)
    written = []
    for k, (image, seed) in enumerate(zip(result.images, result.seeds)):
        name = f"{stem}_{k}"
        image_path, overlay_path = out / f"{name}.png", out / f"{name}_overlay.png"
        atomic_save_image(image, image_path)
        atomic_save_image(draw_overlay(image, request), overlay_path)
        single = replace(request, seed=seed, num_images=1, height=image.height, width=image.width)
        sidecar = {
            "request": single.to_dict(base_dir=out),
            "seed": seed,
            "image": image_path.name,
            "overlay": overlay_path.name,
            "model": info,
            "versions": _versions(),
        }
        sidecar_path = out / f"{name}.json"
        atomic_write_json(sidecar_path, sidecar)
        written.append(
            {"image": str(image_path), "overlay": str(overlay_path), "sidecar": str(sidecar_path)}
        )
    return written
