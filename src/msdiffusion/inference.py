"""The one entry the CLI, the web UI and the evaluation harness share: load a model by preset or
paths, run ``GenerationRequest``s (batched), and write images, overlays and sidecars.
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
from .encoding import load_image
from .errors import InputError, ModelNotAvailableError
from .layout import Subject, mask_to_array
from .presets import PRESETS, tiny_adapter_kwargs, tiny_components
from .request import GenerationRequest, SubjectSpec, read_requests
from .visualize import draw_overlay

__all__ = [
    "SubjectSpec",
    "GenerationRequest",
    "LoadedModel",
    "GenerationResult",
    "load_pipeline",
    "load_adapter",
    "generate",
    "write_result",
    "draw_overlay",
    "read_requests",
    "resolve_device",
    "resolve_dtype",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass
class LoadedModel:
    """A ready pipeline and a description of what it was built from (for sidecars)."""

    pipe: Any
    info: dict[str, Any]
    default_size: int


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image]
    seeds: list[int]


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError("device", "must be auto, cpu, cuda or cuda:N", device) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device", "CUDA is not available on this machine", device)
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InputError("dtype", f"must be one of auto, {', '.join(DTYPES)}", dtype)
    return DTYPES[dtype]


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a failed hub/local load raises (not our bugs: those keep their traceback)."""
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, ValueError, HfHubHTTPError)


def _unavailable(what: str, source: str, err: Exception, hint: str) -> ModelNotAvailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    why = (
        "offline (HF_HUB_OFFLINE=1) and not in the local cache"
        if offline
        else f"{err.__class__.__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    )
    return ModelNotAvailableError(
        f"cannot load the {what} from {source!r} ({why}). {hint} — or use --preset tiny to try "
        "the package without weights"
    )


def load_adapter(source: str, unet: torch.nn.Module, filename: str | None = None) -> Any:
    """An adapter from our folder, a released ``.bin``, or a hub repo id (+ filename)."""
    from .models.adapter import MSAdapter

    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        return MSAdapter.from_pretrained(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            return MSAdapter.from_pretrained(path)
        return MSAdapter.from_original_checkpoint(path, unet)
    if path.is_absolute() or source.startswith("."):
        raise InputError("adapter", "no adapter folder or checkpoint file there", source)
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(source, filename or "ms_adapter.bin")
    except _hub_errors() as err:  # offline, missing repo, no access
        raise _unavailable(
            "MS-Diffusion adapter",
            source,
            err,
            f"Download it with `hf download {source} "
            f"{filename or 'ms_adapter.bin'}` and pass --adapter PATH",
        ) from None
    return MSAdapter.from_original_checkpoint(local, unet)


def _check_toy_weights() -> None:
    from .presets import TOY_MODEL

    missing = [p for p in ("base", "image_encoder", "adapter") if not (TOY_MODEL / p).is_dir()]
    if missing:
        raise ModelNotAvailableError(
            f"the toy preset's weights are missing from {TOY_MODEL} ({', '.join(missing)}); "
            "`make learn` trains them (docs/learning.md)")


def load_pipeline(
    preset: str = "tiny",
    *,
    base: str | None = None,
    image_encoder: str | None = None,
    adapter: str | None = None,
    vae: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Build the pipeline of ``preset`` ("tiny", "toy" or "sdxl"); any component may be a local
    path."""
    from .models.adapter import MSAdapter
    from .pipelines.pipeline_msdiffusion_xl import MSDiffusionXLPipeline

    if preset not in PRESETS:
        raise InputError("preset", f"must be one of {sorted(PRESETS)}", preset)
    spec = PRESETS[preset]
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    info: dict[str, Any] = {
        "preset": preset,
        "device": str(torch_device),
        "dtype": str(torch_dtype).removeprefix("torch."),
    }
    if preset == "tiny" and base is None:
        components = tiny_components(seed=0)
        if adapter is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                ms_adapter = MSAdapter.for_unet(components["unet"], **tiny_adapter_kwargs())
        else:
            ms_adapter = load_adapter(adapter, components["unet"])
        pipe = MSDiffusionXLPipeline(**components, adapter=ms_adapter)
        info.update(
            base="tiny (random weights)",
            image_encoder="tiny (random weights)",
            adapter=adapter or "tiny (random weights, seed 0)",
        )
    else:
        from transformers import CLIPVisionModelWithProjection

        base = base or spec.base
        encoder_source = image_encoder or spec.image_encoder
        subfolder = "" if image_encoder else (spec.image_encoder_subfolder or "")
        if preset == "toy" and not (base and image_encoder and adapter):
            _check_toy_weights()
        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                encoder_source, subfolder=subfolder, torch_dtype=torch_dtype
            )
        except _hub_errors() as err:
            raise _unavailable(
                "image encoder",
                encoder_source,
                err,
                f"Download it with `hf download {spec.image_encoder} --include "
                f"'{spec.image_encoder_subfolder}/*'` and pass --image-encoder "
                f"PATH/{spec.image_encoder_subfolder}",
            ) from None
        extra: dict[str, Any] = {}
        if vae is not None:
            from diffusers import AutoencoderKL

            try:
                extra["vae"] = AutoencoderKL.from_pretrained(vae, torch_dtype=torch_dtype)
            except _hub_errors() as err:
                raise _unavailable("VAE", vae, err, "Pass a local --vae PATH") from None
        try:
            pipe = MSDiffusionXLPipeline.from_pretrained(
                base,
                image_encoder=encoder,
                adapter=None,
                controlnet=None,
                torch_dtype=torch_dtype,
                **extra,
            )
        except _hub_errors() as err:
            raise _unavailable(
                "SDXL base",
                base,
                err,
                f"Download it with `hf download {spec.base}` and pass --base PATH",
            ) from None
        ms_adapter = load_adapter(
            adapter or spec.adapter, pipe.unet, None if adapter else spec.adapter_filename
        )
        pipe.attach_adapter(ms_adapter.to(torch_dtype))
        info.update(
            base=base,
            image_encoder=encoder_source if not subfolder else f"{encoder_source}/{subfolder}",
            adapter=adapter or f"{spec.adapter}/{spec.adapter_filename}",
            vae=vae,
        )
    if pipe.unet.dtype != torch_dtype:  # tiny components are built in float32
        pipe.to(dtype=torch_dtype)
    pipe.to(torch_device)
    return LoadedModel(pipe=pipe, info=info, default_size=spec.default_size)


def _subject(spec: SubjectSpec, where: str) -> Subject:
    images = [load_image(image, f"{where}.images[{k}]") for k, image in enumerate(spec.images)]
    mask = None
    if spec.mask is not None:
        mask = mask_to_array(
            load_image(spec.mask, f"{where}.mask")
            if isinstance(spec.mask, (str, os.PathLike))
            else spec.mask,
            f"{where}.mask",
        )
    return Subject(image=images, box=spec.box, phrase=spec.phrase, mask=mask, scale=spec.scale)


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
    from .pipelines.subjects import validate_layout

    requests = [r.validate() for r in requests]
    subjects = [
        [_subject(s, f"requests[{i}].subjects[{j}]") for j, s in enumerate(r.subjects)]
        for i, r in enumerate(requests)
    ]
    for request, group in zip(requests, subjects):  # every layout error before the first image
        validate_layout(
            [group],
            [request.prompt],
            model.pipe.tokenizer,
            request.height or model.default_size,
            request.width or model.default_size,
            request.scale,
            request.mask_threshold,
        )
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
    pipe = model.pipe
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

    from . import __version__

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
