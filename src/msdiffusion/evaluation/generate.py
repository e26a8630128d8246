"""Generating a benchmark's images into a run folder: resumable, deterministic, sharded.

- Every image has its own seed, a function of (base seed, sample id, image index) only
  (:func:`image_seed`), so an image is the same whatever the number of processes, the batch size,
  the ``--limit`` or the order in which it is made.
- An image counts as done when its PNG is complete and its sidecar readable; files are written to a
  temporary folder of the run and moved into place (sidecar first, image last), so an interrupted
  run resumes where it stopped and a truncated file is made again.
- Under ``accelerate launch`` (or ``torchrun``) process ``i`` of ``n`` takes every n-th planned
  image (:func:`~msdiffusion.evaluation.runs.shard`): disjoint shares that together cover the plan.
  The main process writes ``run.json`` and ``index.jsonl``; at the end it records throughput and
  completeness in ``generation.json``.
- ``run.json`` names the evaluation protocol (:mod:`~msdiffusion.evaluation.protocols`) and every
  setting that deviates from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..benchmarks import Benchmark, BenchSample
from ..errors import InputError
from ..runtime import check_dtype_name
from .protocols import (
    GENERATION_KEYS,
    RELEASED_NEGATIVE_PROMPT,
    Protocol,
    default_protocol,
    deviations,
    get_protocol,
)
from .runs import ImageRecord, RunFolder, shard

__all__ = [
    "GenerationConfig",
    "image_seed",
    "plan_images",
    "build_request",
    "run_generation",
    "recorded_deviations",
]

MAX_IMAGES_PER_SAMPLE = 1000


@dataclass
class GenerationConfig:
    """How images are made. Everything but ``images_per_sample`` must match to resume a run.

    The defaults are the ``paper`` protocol's sampling (the released model's); height and width
    ``None`` mean the preset's native size. :meth:`from_protocol` starts from any protocol.
    """

    preset: str = "tiny"
    base: str | None = None  # SDXL folder or hub id (overrides the preset's)
    image_encoder: str | None = None
    adapter: str | None = None
    dtype: str | None = None  # fp32 | fp16 | bf16; None = load_pipeline's choice for the device
    steps: int = 30
    guidance_scale: float = 7.5
    scale: float = 0.6
    height: int | None = None  # None = the preset's native size
    width: int | None = None
    negative_prompt: str = RELEASED_NEGATIVE_PROMPT
    seed: int = 0
    images_per_sample: int = 5
    # "box": each subject attends in its box (the method); "image": every subject's attention
    # region is the whole image while its box still goes to the grounding tokens — the ablation
    # "without masked attention", for adapters trained with model.region = "image".
    region: str = "box"
    # Start the resampler from its learned queries (no phrase/box embedding): for adapters
    # trained with dropout.grounding = 1 (the ablation "without grounding tokens").
    drop_grounding_tokens: bool = False

    def __post_init__(self) -> None:
        if self.region not in ("box", "image"):
            raise InputError("region", "must be box or image", self.region)
        if not 1 <= self.images_per_sample <= MAX_IMAGES_PER_SAMPLE:
            raise InputError(
                "images_per_sample",
                f"must be in 1..{MAX_IMAGES_PER_SAMPLE}",
                self.images_per_sample,
            )
        check_dtype_name(self.dtype, auto=False, none=True)
        if self.steps < 1:
            raise InputError("steps", "must be >= 1", self.steps)

    @classmethod
    def from_protocol(cls, protocol: str | Protocol, **settings: Any) -> GenerationConfig:
        """The protocol's generation settings, with ``settings`` (those not None) on top."""
        proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
        given = {k: v for k, v in settings.items() if v is not None}
        return cls(**{**proto.generation, **given})

    def identity(self) -> dict[str, Any]:
        """The settings that decide what an image looks like."""
        d = asdict(self)
        d.pop("images_per_sample")
        return d

    def effective(self) -> dict[str, Any]:
        """The settings with the size resolved (``None`` → the preset's native size)."""
        from ..presets import PRESETS

        d = asdict(self)
        native = PRESETS[self.preset].default_size if self.preset in PRESETS else None
        d["height"] = self.height or self.width or native
        d["width"] = self.width or self.height or native
        return d

    def deviations(self, protocol: Protocol) -> dict[str, dict[str, Any]]:
        """The protocol's generation settings this configuration does not follow."""
        actual = self.effective()
        return deviations(protocol.generation, {k: actual[k] for k in GENERATION_KEYS})


def recorded_deviations(meta: dict[str, Any], protocol: Protocol) -> dict[str, dict[str, Any]]:
    """The generation settings a run (its ``run.json``) did not take from ``protocol``."""
    settings = dict(meta.get("generation") or {})
    try:
        config = GenerationConfig(**settings, images_per_sample=meta.get("images_per_sample", 1))
    except (TypeError, InputError):  # written by another version: compare what it says
        return deviations(
            protocol.generation, {**settings, "images_per_sample": meta.get("images_per_sample")}
        )
    return config.deviations(protocol)


def image_seed(base_seed: int, sample_id: str, k: int) -> int:
    """The seed of image ``k`` of ``sample_id``: a stable hash of (base seed, sample), plus k."""
    digest = hashlib.sha256(f"{base_seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - MAX_IMAGES_PER_SAMPLE) + k


def plan_images(
    samples: Sequence[BenchSample], config: GenerationConfig, run: RunFolder
) -> list[ImageRecord]:
    """Every image to make, in benchmark order (sample-major, then image index)."""
    return [
        ImageRecord(
            sample_id=s.id,
            index=k,
            image=run.image_relpath(s.id, k),
            seed=image_seed(config.seed, s.id, k),
            group=s.group,
            prompt=s.prompt,
            subjects=[sub.to_dict() for sub in s.subjects],
        )
        for s in samples
        for k in range(config.images_per_sample)
    ]


def build_request(sample: BenchSample, benchmark: Benchmark, config: GenerationConfig, seed: int):
    """The inference request of one image of ``sample`` (absolute reference paths)."""
    from ..request import GenerationRequest, SubjectSpec

    mask = None
    if config.region == "image":
        from PIL import Image

        side_h = config.height or config.width or 1
        side_w = config.width or config.height or 1
        mask = Image.new("L", (side_w, side_h), 255)  # the whole image, the output's aspect
    subjects = [
        SubjectSpec(
            images=[str(benchmark.path(s.image))], box=tuple(s.box), phrase=s.phrase, mask=mask
        )
        for s in sample.subjects
    ]
    return GenerationRequest(
        prompt=sample.prompt,
        subjects=subjects,
        negative_prompt=config.negative_prompt,
        height=config.height,
        width=config.width,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        scale=config.scale,
        seed=seed,
        num_images=1,
        drop_grounding_tokens=config.drop_grounding_tokens,
    )


def _check_resume(
    meta: dict[str, Any],
    benchmark: Benchmark,
    config: GenerationConfig,
    out: Path,
    protocol: Protocol,
) -> None:
    if meta.get("benchmark") != benchmark.name:
        raise InputError(
            "out",
            f"holds a {meta.get('benchmark')} run, not {benchmark.name}; choose another --out",
            str(out),
        )
    if meta.get("benchmark_options") != benchmark.options:
        raise InputError(
            "out",
            "was generated with other benchmark options "
            f"{meta.get('benchmark_options')}; choose another --out",
            benchmark.options,
        )
    recorded = (meta.get("protocol") or {}).get("name", protocol.name)
    if recorded != protocol.name:
        raise InputError(
            "protocol",
            f"the run in {out} is measured against the {recorded} "
            "protocol; resume with it or choose another --out",
            protocol.name,
        )
    before = meta.get("generation", {})
    changed = {k: (before.get(k), v) for k, v in config.identity().items() if before.get(k) != v}
    if changed:
        raise InputError(
            "out",
            "was generated with other settings (setting: (run, now)); "
            "resume with the same settings or choose another --out",
            changed,
        )


def _save(
    run: RunFolder, record: ImageRecord, result: Any, info: dict[str, Any], overlays: bool
) -> None:
    """Write one result with the inference API's writer into a staging folder of the run, then
    move it into place: the sidecar (renamed fields, plus the sample) first, the PNG last."""
    from ..inference import write_result

    staging = run.root / ".staging" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        written = write_result(result, staging, info, stem="image")
        assert len(written) == 1, "one image per request"
        files = written[0]
        final = run.resolve(record.image)
        final.parent.mkdir(parents=True, exist_ok=True)
        sidecar = json.loads(Path(files["sidecar"]).read_text(encoding="utf-8"))
        sidecar.update(
            image=final.name, overlay=None, sample_id=record.sample_id, image_index=record.index
        )
        if overlays:
            overlay = run.root / "overlays" / record.sample_id / f"{record.index}.png"
            overlay.parent.mkdir(parents=True, exist_ok=True)
            os.replace(files["overlay"], overlay)
            sidecar["overlay"] = os.path.relpath(overlay, final.parent)
        atomic_write_json(run.sidecar(final), sidecar)
        os.replace(files["image"], final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _process_state(partial_state: Any) -> Any:
    """This process's place among those ``accelerate launch`` / ``torchrun`` started.

    PartialState only joins CPU processes into one group (MULTI_CPU, gloo) when told ``cpu``:
    do so when ACCELERATE_USE_CPU is set or no CUDA device exists.
    """
    import torch
    from accelerate.utils import parse_flag_from_env

    return partial_state(
        cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    )


def run_generation(
    benchmark: Benchmark,
    out: str | Path,
    config: GenerationConfig,
    *,
    samples: Sequence[BenchSample] | None = None,
    batch_size: int = 1,
    overlays: bool = False,
    device: str | None = None,
    progress: bool = True,
    model: Any = None,
    protocol: str | None = None,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Generate (this process's share of) ``samples`` into run folder ``out``.

    Returns this process's statistics; the main process also writes ``generation.json`` with the
    totals once every process is done. Call it in every process of an ``accelerate launch``.
    ``model``: an already loaded :class:`~msdiffusion.loading.LoadedModel` to use instead of
    loading ``config``'s (it must be the model ``config`` describes: the run records ``config``).
    ``protocol``: the evaluation protocol the run is measured against (default: the benchmark's,
    ``paper`` or ``toy``); ``run.json`` records it and the settings that deviate from it.
    ``on_start``: called once the model is loaded, before anything is written (a command's notes:
    a run that fails to start says only why).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from ..version import __version__

    if batch_size < 1:
        raise InputError("batch_size", "must be >= 1", batch_size)
    proto = get_protocol(protocol or default_protocol(benchmark.name)).check(benchmark.name)
    state = _process_state(PartialState)
    run = RunFolder(out)
    samples = list(samples if samples is not None else benchmark.runnable)
    skipped = [s.id for s in samples if s.id in benchmark.skipped]
    if skipped:
        raise InputError("samples", "include samples whose references are missing", skipped[:3])
    if run.root.exists() and not run.root.is_dir():
        raise InputError("out", "is a file, not a run folder", str(run.root))
    meta = run.read_meta()
    if meta is not None:
        _check_resume(meta, benchmark, config, run.root, proto)
    plan = plan_images(samples, config, run)
    mine = shard(plan, state.process_index, state.num_processes)
    todo = [r for r in mine if not run.is_done(r)]
    by_id = {s.id: s for s in samples}
    load_seconds = 0.0
    if todo and model is None:  # before anything is written: a model that fails leaves no run
        from ..loading import load_pipeline

        t0 = time.perf_counter()
        model = load_pipeline(
            config.preset,
            base=config.base,
            image_encoder=config.image_encoder,
            adapter=config.adapter,
            device=device or str(state.device),
            dtype=config.dtype,
        )
        load_seconds = time.perf_counter() - t0
    if on_start is not None:
        on_start()
    if state.is_main_process:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_meta(
            {
                "benchmark": benchmark.name,
                "data_dir": str(benchmark.data_dir),
                "benchmark_options": benchmark.options,
                "benchmark_definition": benchmark.definition,
                "generation": config.identity(),
                "images_per_sample": config.images_per_sample,
                "protocol": {"name": proto.name, "deviations": config.deviations(proto)},
                "samples": len(samples),
                "images": len(plan),
                "skipped_samples": len(benchmark.skipped),
                "missing_references": benchmark.missing,
                "created": (meta or {}).get("created") or datetime.now(timezone.utc).isoformat(),
                "msdiffusion_version": __version__,
            }
        )
        run.write_index(plan)

    stats = {
        "process": state.process_index,
        "processes": state.num_processes,
        "assigned": len(mine),
        "already_done": len(mine) - len(todo),
        "generated": 0,
        "seconds": 0.0,
        "load_seconds": load_seconds,
        "images": [],
    }
    if todo:
        from ..inference import generate

        stats["model"] = model.info
        t0 = time.perf_counter()
        bar = tqdm(
            total=len(todo),
            disable=not progress,
            position=state.process_index,
            desc=f"generate [{state.process_index + 1}/{state.num_processes}]",
            unit="img",
        )
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            requests = [build_request(by_id[r.sample_id], benchmark, config, r.seed) for r in chunk]
            results = generate(model, requests, batch_size=len(requests), progress=False)
            for record, result in zip(chunk, results, strict=True):
                _save(run, record, result, model.info, overlays)
                stats["images"].append(record.image)
            stats["generated"] += len(chunk)
            bar.update(len(chunk))
        bar.close()
        stats["seconds"] = time.perf_counter() - t0
    stats["images_per_s"] = stats["generated"] / stats["seconds"] if stats["seconds"] else None
    atomic_write_json(run.root / "progress" / f"process-{state.process_index}.json", stats)

    state.wait_for_everyone()
    if state.is_main_process:
        _write_summary(run, plan, state.num_processes)
        with contextlib.suppress(OSError):  # only if empty: every process is done with it
            (run.root / ".staging").rmdir()
    return stats


def _write_summary(run: RunFolder, plan: list[ImageRecord], processes: int) -> None:
    """``generation.json``: totals over the processes of this invocation, and completeness."""
    parts = []
    for i in range(processes):
        try:
            parts.append(json.loads((run.root / "progress" / f"process-{i}.json").read_text()))
        except (OSError, ValueError):
            continue
    generated = sum(p["generated"] for p in parts)
    parts = [{k: v for k, v in p.items() if k != "images"} for p in parts]  # lists stay there
    wall = max((p["seconds"] for p in parts), default=0.0)
    done = sum(run.is_done(r) for r in plan)
    model = next((p["model"] for p in parts if p.get("model")), None)
    atomic_write_json(
        run.root / "generation.json",
        {
            "planned": len(plan),
            "done": done,
            "complete": done == len(plan),
            "processes": processes,
            "generated_this_session": generated,
            "seconds": wall,
            "images_per_s": generated / wall if wall else None,
            "per_process": parts,
            "model": model,
            "finished": datetime.now(timezone.utc).isoformat(),
        },
    )
