"""Scoring a run folder: per-image metrics with named models, then the report.

Per image (subject scores averaged over the sample's subjects):

- ``clip_t``: cosine(CLIP image embedding of the output, CLIP text embedding of the prompt);
- ``clip_i`` / ``dino``: the whole output vs the subject's references (the single-subject
  protocol; with several references, the mean over them);
- ``clip_i_box`` / ``dino_box``: the output cropped to the subject's layout box vs its references;
- ``clip_i_det`` / ``dino_det``: cropped to the detector's best box for the subject's phrase;
- ``m_dino_box`` / ``m_dino_det``: the product of the subjects' DINO scores (clamped at 0);
- ``layout_iou``: IoU of the detected box with the requested one;
- ``detection_rate``: the share of the subjects that are detected.

A subject whose best detection scores below ``detection_threshold`` is *missing*: its
``clip_i_det``, ``dino_det`` and IoU count as 0, so an image with a missing subject has M-DINO 0
(the raw crop similarities stay in ``scores.jsonl`` as ``*_det_crop`` and ``det_iou``).

The toy benchmark is scored instead with the toy world's exact pixel metrics
(:mod:`msdiffusion.evaluation.toy`): no model is loaded.

When several subjects share a phrase (two dogs), the detector's top distinct boxes for it are
matched to the requested boxes by maximal total IoU. Images that are missing, truncated or
unreadable, and images of samples whose references are missing, are skipped and counted — the
report says how many, never a silently smaller average.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..atomic import atomic_write_text
from ..benchmarks import Benchmark, BenchSample
from ..errors import InputError
from ..geometry import box_iou, crop_box
from ..runtime import check_dtype_name, to_dtype
from .features import (
    DEFAULT_MODELS,
    ClipEmbedder,
    Detection,
    DinoEmbedder,
    OwlDetector,
    ReferenceCache,
)
from .metrics import assign_detections, cosine_rows, product_score
from .protocols import SCORING_KEYS, Protocol, default_protocol, deviations, get_protocol
from .runs import ImageRecord, RunInputs, is_complete_image

__all__ = [
    "ScoringConfig",
    "ScoringModels",
    "score_run",
    "score_images",
    "detect_subjects",
    "scoring_deviations",
]


@dataclass
class ScoringConfig:
    """Which models score, and how. ``detector_model=None`` skips the detection metrics.

    The defaults are the ``paper`` protocol's; :meth:`from_protocol` starts from any protocol.
    """

    clip_model: str = DEFAULT_MODELS["clip"]
    dino_model: str = DEFAULT_MODELS["dino"]
    detector_model: str | None = DEFAULT_MODELS["detector"]
    dino_preprocessing: str = "resize-crop"  # or "processor" (features.py)
    query_template: str = "a photo of a {}"
    detection_threshold: float = 0.1  # best detection below it: the subject is missing
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 32
    detector_batch_size: int = 8
    chunk_images: int = 128  # images decoded and held at once
    workers: int = 4  # image-decoding threads
    cache_dir: str | None = None  # reference features; default RUN/cache
    percent: bool = False  # report similarities x100
    clip_t_weight: float | None = None  # report CLIP-T as CLIPScore: w * max(cos, 0)
    resamples: int = 2000  # bootstrap draws per interval
    seed: int = 0  # of the bootstrap draws
    worst: int = 8  # worst samples shown in the report

    def __post_init__(self) -> None:
        for name in ("batch_size", "detector_batch_size", "chunk_images", "workers"):
            if getattr(self, name) < 1:
                raise InputError(name, "must be >= 1", getattr(self, name))
        check_dtype_name(self.dtype, auto=False)
        if "{}" not in self.query_template:
            raise InputError(
                "query_template", "must contain {} for the phrase", self.query_template
            )
        if not 0.0 <= self.detection_threshold <= 1.0:
            raise InputError(
                "detection_threshold",
                "must be in [0, 1] (0: every best box counts)",
                self.detection_threshold,
            )
        if self.resamples < 100:
            raise InputError("resamples", "must be >= 100", self.resamples)
        if self.worst < 0:
            raise InputError("worst", "must be >= 0", self.worst)

    @classmethod
    def from_protocol(cls, protocol: str | Protocol, **settings: Any) -> ScoringConfig:
        """The protocol's scoring settings, with ``settings`` (those not None) on top."""
        proto = get_protocol(protocol) if isinstance(protocol, str) else protocol
        fixed = {k: v for k, v in proto.scoring.items() if k in SCORING_KEYS and k != "references"}
        given = {k: v for k, v in settings.items() if v is not None}
        return cls(**{**fixed, **given})


# ----------------------------------------------------------------------------------------------


def _load_image(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception:  # noqa: BLE001 - any unreadable file is counted as corrupt
        return None


def _mean_cos(a: torch.Tensor, refs: list[torch.Tensor]) -> float:
    """Mean cosine of embedding ``a`` (D,) with each reference embedding (D,)."""
    stacked = torch.stack(refs)  # (R, D)
    return float(cosine_rows(a.expand_as(stacked), stacked).mean())


class ScoringModels:
    """The scoring models of a :class:`ScoringConfig`, loaded once per run."""

    def __init__(self, config: ScoringConfig):
        kw = dict(device=config.device, dtype=to_dtype(config.dtype))
        self.clip = ClipEmbedder(config.clip_model, batch_size=config.batch_size, **kw)
        self.dino = DinoEmbedder(
            config.dino_model,
            preprocessing=config.dino_preprocessing,
            batch_size=config.batch_size,
            **kw,
        )
        self.detector = (
            OwlDetector(
                config.detector_model,
                query_template=config.query_template,
                batch_size=config.detector_batch_size,
                **kw,
            )
            if config.detector_model
            else None
        )

    def info(self) -> dict[str, Any]:
        return {
            "clip": self.clip.info,
            "dino": self.dino.info,
            "detector": self.detector.info if self.detector else None,
        }


def detect_subjects(
    detector: OwlDetector, samples: Sequence[BenchSample], images: Sequence[Image.Image]
) -> list[list[Detection]]:
    """Per image, per subject: the detector's best box for the subject's phrase — distinct boxes,
    matched by maximal total IoU, when several subjects share a phrase."""
    phrases = [list(dict.fromkeys(sub.phrase for sub in s.subjects)) for s in samples]
    top_k = [
        [sum(sub.phrase == p for sub in s.subjects) for p in ph]
        for s, ph in zip(samples, phrases, strict=True)
    ]
    found = detector.detect(images, phrases, top_k)
    out: list[list[Detection]] = []
    for i, s in enumerate(samples):
        per_subject: list[Detection | None] = [None] * len(s.subjects)
        for j, phrase in enumerate(phrases[i]):
            who = [n for n, sub in enumerate(s.subjects) if sub.phrase == phrase]
            cands = found[i][j]
            pick = assign_detections([c.box for c in cands], [s.subjects[n].box for n in who])
            for n, c in zip(who, pick, strict=True):
                per_subject[n] = cands[c]
        out.append(per_subject)
    return out


def score_images(
    models: ScoringModels,
    samples: Sequence[BenchSample],
    images: Sequence[Image.Image],
    refs: dict[str, dict[str, torch.Tensor]],
    prompt_feats: dict[str, torch.Tensor],
    detection_threshold: float = 0.1,
    detections: Sequence[Sequence[Detection]] | None = None,
) -> list[dict[str, Any]]:
    """Metric rows for ``images[i]`` generated for ``samples[i]`` (see the module docstring).

    ``refs[model][reference path]``: reference embeddings; ``prompt_feats``: CLIP text embeddings;
    a subject whose best detection scores below ``detection_threshold`` is missing.
    ``detections[i][n]``: subject n's detection in image i — by default
    :func:`detect_subjects` with ``models.detector`` (none: no detection metrics).
    """
    if detections is None and models.detector is not None:
        detections = detect_subjects(models.detector, samples, images)
    dets: list[list[Any]] = (
        [[d.box for d in per] for per in detections]
        if detections
        else [[None] * len(s.subjects) for s in samples]
    )
    det_scores: list[list[Any]] = (
        [[d.score for d in per] for per in detections]
        if detections
        else [[None] * len(s.subjects) for s in samples]
    )
    # Every view to embed: the whole image, then per subject its box crop and detection crop.
    views, where = [], []
    for i, (s, im) in enumerate(zip(samples, images, strict=True)):
        views.append(im)
        where.append((i, "full", None))
        for n, sub in enumerate(s.subjects):
            views.append(crop_box(im, sub.box))
            where.append((i, "box", n))
            if dets[i][n] is not None:
                views.append(crop_box(im, dets[i][n]))
                where.append((i, "det", n))
    clip_f, dino_f = models.clip.embed_images(views), models.dino.embed_images(views)
    feats: dict[tuple[int, str, int | None], tuple[torch.Tensor, torch.Tensor]] = {
        key: (clip_f[v], dino_f[v]) for v, key in enumerate(where)
    }

    rows = []
    for i, s in enumerate(samples):
        clip_full, dino_full = feats[(i, "full", None)]
        subjects = []
        for n, sub in enumerate(s.subjects):
            rc = [refs["clip"][r] for r in sub.references]
            rd = [refs["dino"][r] for r in sub.references]
            entry: dict[str, Any] = {
                "name": sub.name,
                "phrase": sub.phrase,
                "box": list(sub.box),
                "clip_i": _mean_cos(clip_full, rc),
                "dino": _mean_cos(dino_full, rd),
                "clip_i_box": _mean_cos(feats[(i, "box", n)][0], rc),
                "dino_box": _mean_cos(feats[(i, "box", n)][1], rd),
            }
            if dets[i][n] is not None:
                found = det_scores[i][n] >= detection_threshold
                crop_c = _mean_cos(feats[(i, "det", n)][0], rc)
                crop_d = _mean_cos(feats[(i, "det", n)][1], rd)
                iou = box_iou(dets[i][n], sub.box)
                entry.update(
                    det_box=list(dets[i][n]),
                    det_score=det_scores[i][n],
                    detected=found,
                    det_iou=iou,
                    iou=iou if found else 0.0,
                    clip_i_det_crop=crop_c,
                    dino_det_crop=crop_d,
                    clip_i_det=crop_c if found else 0.0,
                    dino_det=crop_d if found else 0.0,
                )
            subjects.append(entry)

        def mean(key: str, subjects=subjects) -> float | None:
            vals = [e[key] for e in subjects if key in e]
            return sum(vals) / len(vals) if vals else None

        text = prompt_feats[s.prompt]
        row = {
            "sample_id": s.id,
            "group": s.group,
            "n_subjects": len(s.subjects),
            "clip_t": float(cosine_rows(clip_full[None], text[None])[0]),
            "clip_i": mean("clip_i"),
            "dino": mean("dino"),
            "clip_i_box": mean("clip_i_box"),
            "dino_box": mean("dino_box"),
            "m_dino_box": product_score([e["dino_box"] for e in subjects]),
            "clip_i_det": mean("clip_i_det"),
            "dino_det": mean("dino_det"),
            "m_dino_det": (
                product_score([e["dino_det"] for e in subjects]) if detections else None
            ),
            "layout_iou": mean("iou"),
            "detection_rate": mean("detected"),
            "subjects": subjects,
        }
        rows.append(row)
    return rows


def score_run(
    inputs: RunInputs,
    config: ScoringConfig,
    *,
    progress: bool = True,
    models: ScoringModels | None = None,
    protocol: str | None = None,
) -> dict[str, Any]:
    """Score every image of a resolved run; write ``scores.jsonl`` and the report files.

    ``protocol``: what the numbers are measured against (default: the one the run was generated
    under, else the benchmark's); the report lists every setting of the run and of ``config``
    that deviates from it. Returns the report (also written as ``report.json``).
    """
    from tqdm.auto import tqdm

    from .report import build_report, write_report

    run, bench = inputs.run, inputs.benchmark
    recorded = ((inputs.meta or {}).get("protocol") or {}).get("name")
    proto = get_protocol(protocol or recorded or default_protocol(bench.name)).check(bench.name)
    skipped: dict[str, list[str]] = {"missing": [], "corrupt": [], "no_reference": []}
    todo: list[tuple[ImageRecord, Path]] = []
    for r in inputs.records:
        path = run.resolve(r.image)
        if r.sample_id in bench.skipped:
            skipped["no_reference"].append(r.image)
        elif not path.exists():
            skipped["missing"].append(r.image)
        elif not is_complete_image(path):
            skipped["corrupt"].append(r.image)
        else:
            todo.append((r, path))

    if bench.name == "toy":  # exact pixel metrics: no scoring models, no reference features
        from .toy import ToyScorer

        toy = ToyScorer(bench)
        model_info = toy.info

        def score_chunk(
            samples: list[BenchSample], images: list[Image.Image]
        ) -> list[dict[str, Any]]:
            return toy.score(samples, images)
    else:
        models = models or ScoringModels(config)
        model_info = models.info()
        cache = ReferenceCache(config.cache_dir or run.root / "cache")
        ref_paths = sorted(
            {
                r
                for rec, _ in todo
                for sub in bench.get(rec.sample_id).subjects
                for r in sub.references
            }
        )
        refs: dict[str, dict[str, torch.Tensor]] = {}
        for name, extractor in (("clip", models.clip), ("dino", models.dino)):
            got = cache.embed(extractor, [bench.path(p) for p in ref_paths], _load_reference)
            refs[name] = {p: got[bench.path(p)] for p in ref_paths}
        prompts = sorted({bench.get(rec.sample_id).prompt for rec, _ in todo})
        prompt_feats = (
            dict(zip(prompts, models.clip.embed_texts(prompts), strict=True)) if prompts else {}
        )

        def score_chunk(
            samples: list[BenchSample], images: list[Image.Image]
        ) -> list[dict[str, Any]]:
            return score_images(
                models, samples, images, refs, prompt_feats, config.detection_threshold
            )

    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), disable=not progress, desc="score", unit="img")
    chunks = [todo[i : i + config.chunk_images] for i in range(0, len(todo), config.chunk_images)]
    with ThreadPoolExecutor(config.workers) as pool:
        pending = [pool.submit(_load_image, p) for _, p in chunks[0]] if chunks else []
        for c, chunk in enumerate(chunks):
            loaded = [f.result() for f in pending]
            if c + 1 < len(chunks):  # decode the next chunk while this one is scored
                pending = [pool.submit(_load_image, p) for _, p in chunks[c + 1]]
            pairs = [(rec, im) for (rec, _), im in zip(chunk, loaded, strict=True)]
            good = [(rec, im) for rec, im in pairs if im is not None]
            skipped["corrupt"] += [rec.image for rec, im in pairs if im is None]
            if good:
                part = score_chunk(
                    [bench.get(rec.sample_id) for rec, _ in good], [im for _, im in good]
                )
                for (rec, _), row in zip(good, part, strict=True):
                    rows.append({**row, "index": rec.index, "image": rec.image, "seed": rec.seed})
            bar.update(len(chunk))
    bar.close()
    atomic_write_text(
        run.root / "scores.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    report = build_report(
        inputs,
        rows,
        skipped,
        model_info,
        asdict(config),
        proto,
        scoring_deviations(proto, config, bench),
    )
    write_report(run.root, report, rows, inputs)
    return report


def scoring_deviations(
    protocol: Protocol, config: ScoringConfig, bench: Benchmark
) -> dict[str, dict[str, Any]]:
    """The protocol's scoring settings that ``config`` (and the benchmark's references) do not
    follow. Models count by what was asked for (a path or hub id), as ``--models`` chose."""
    actual = {**asdict(config), "references": bench.definition.get("scoring_references", "all")}
    if config.detector_model is None:  # no detection: its settings are moot
        actual.update(
            query_template=protocol.scoring.get("query_template"),
            detection_threshold=protocol.scoring.get("detection_threshold"),
        )
    return deviations(protocol.scoring, actual)


def _load_reference(path: Path) -> Image.Image:
    image = _load_image(path)
    if image is None:
        raise InputError("data", "reference image is unreadable", str(path))
    return image
