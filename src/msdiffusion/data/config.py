"""Settings of a data build (`msdiffusion data build --config data.json`).

Every knob of the pipeline lives here, grouped by stage. A JSON config only lists what it changes;
unknown keys and values of the wrong type or range are an ``InputError`` naming the key. The
config's fingerprint (everything that changes the output) is stored with the dataset, so a resumed
build cannot silently mix two settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configs import build, read_json
from ..errors import InputError
from ..runtime import check_dtype_name

__all__ = [
    "VideoConfig",
    "FilterConfig",
    "MatchConfig",
    "AugmentConfig",
    "ModelSpec",
    "ModelsConfig",
    "RawConfig",
    "DedupConfig",
    "ShardConfig",
    "FaultConfig",
    "RayConfig",
    "BuildConfig",
    "load_build_config",
    "REFILTER_SECTIONS",
]

# Words that name scenery rather than a subject; phrases whose head word is one of them are not
# grounded (a "beach" box teaches the adapter nothing about identity).
DEFAULT_STUFF = (
    "background",
    "beach",
    "building",
    "buildings",
    "camera",
    "ceiling",
    "city",
    "cloud",
    "clouds",
    "day",
    "desert",
    "distance",
    "field",
    "floor",
    "forest",
    "front",
    "grass",
    "ground",
    "hill",
    "hills",
    "image",
    "lake",
    "light",
    "middle",
    "mountain",
    "mountains",
    "night",
    "ocean",
    "park",
    "photo",
    "picture",
    "river",
    "road",
    "room",
    "sand",
    "scene",
    "sea",
    "side",
    "sky",
    "snow",
    "stage",
    "street",
    "sun",
    "sunset",
    "top",
    "view",
    "wall",
    "walls",
    "water",
    "way",
    "window",
    "woods",
    "air",
    "shot",
    "close",
    "closeup",
    "image",
    "video",
    "frame",
    "area",
    "lot",
    "couple",
    "group",
    "bunch",
    "pair",
    "piece",
)


@dataclass
class VideoConfig:
    """Frame sampling, shot splitting, frame quality and the target/reference time rule."""

    sample_fps: float = 2.0  # frames kept per second of video (after decoding every frame)
    max_frames: int = 600  # sampled frames per video at most (long videos are cut there)
    cut_threshold: float = 0.12  # mean |Δ| of consecutive 64-px RGB thumbnails, in [0, 1]...
    cut_ratio: float = 3.0  # ...and this many times the median |Δ| of the ±8 frames around
    min_shot_s: float = 1.0  # shorter shots are dropped
    min_gap_s: float = 1.0  # a reference frame is at least this far in time from the target
    max_gap_s: float | None = None  # ...and at most this far (None: anywhere in the shot)
    max_references: int = 3  # reference frames searched per target
    min_brightness: float = 0.06  # mean luma in [0, 1]; darker frames are dropped
    min_sharpness: float = 30.0  # variance of the Laplacian of the 0..255 grey frame (≤256 px)
    min_side: int = 256  # frames whose short side is smaller are dropped


@dataclass
class FilterConfig:
    """Which detections become subjects (applied in this order: score, size, aspect, NMS, top-N)."""

    score_threshold: float = 0.35
    min_box_area: float = 0.01  # box area / image area
    max_box_area: float = 0.8
    min_box_side: int = 32  # pixels of the target frame, both sides
    max_aspect: float = 4.0  # long side / short side of the box, in pixels
    nms_iou: float = 0.5  # class-agnostic: two boxes of different phrases on one object → one
    max_subjects: int = 4
    min_subjects: int = 1  # samples with fewer subjects are dropped


@dataclass
class MatchConfig:
    """Finding a subject again in a reference frame, and its reference crop."""

    similarity_threshold: float = 0.6  # cosine similarity of image-encoder features, at least
    duplicate_similarity: float = 0.98  # ...and below this (else: a near-duplicate of the target)
    duplicate_pixel_diff: float = 0.02  # mean |Δ| of 32-px crops below this: a near-duplicate
    reference_margin: float = 0.1  # crop = box grown by this fraction of its size on each side
    min_mask_fraction: float = 0.05  # SAM mask area / box area below this: mask dropped (null)


@dataclass
class AugmentConfig:
    """Image-only input: the reference is an augmented crop of the target itself."""

    flip_p: float = 0.5
    margin: tuple[float, float] = (0.0, 0.25)  # crop margin, fraction of the box size, per side
    scale: tuple[float, float] = (0.7, 1.3)  # resize factor of the crop
    brightness: float = 0.2  # factors drawn from [1 - j, 1 + j]
    contrast: float = 0.2
    saturation: float = 0.2


@dataclass
class ModelSpec:
    """One model: ``kind`` picks the wrapper; ``path`` is a hub id or a local folder."""

    kind: str
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _default_models() -> dict[str, ModelSpec]:
    return {
        "captioner": ModelSpec(
            "blip", "Salesforce/blip-image-captioning-large", {"max_new_tokens": 30}
        ),
        "detector": ModelSpec("grounding_dino", "IDEA-Research/grounding-dino-base"),
        "segmenter": ModelSpec("sam", "facebook/sam-vit-base"),
        "features": ModelSpec("auto", "facebook/dinov2-base"),
    }


@dataclass
class ModelsConfig:
    """The four models, where they run and how many images go through them at once.

    ``captioner: null``: every caption must come from a sidecar; ``segmenter: null``: no masks.
    ``preset``: ``random-tiny`` / ``random-base`` / ``random-default`` (the default models'
    architectures) build the models with random weights instead (offline demos, smoke tests and
    throughput measurements; the paths are not used).
    """

    preset: str | None = None
    captioner: ModelSpec | None = field(default_factory=lambda: _default_models()["captioner"])
    detector: ModelSpec = field(default_factory=lambda: _default_models()["detector"])
    segmenter: ModelSpec | None = field(default_factory=lambda: _default_models()["segmenter"])
    features: ModelSpec = field(default_factory=lambda: _default_models()["features"])
    device: str | None = None  # None: the accelerate process's device
    dtype: str = "auto"  # auto: fp16 on CUDA, fp32 elsewhere; or fp32/fp16/bf16 (float32, ...)
    batch_size: int = 8


@dataclass
class RawConfig:
    """What the model stages keep, so ``data refilter`` can apply other thresholds later."""

    min_score: float = 0.2  # detections at or above this score are kept (and embedded)...
    max_detections: int = 12  # ...at most this many per image, best first


@dataclass
class DedupConfig:
    """Near-duplicate targets across the whole dataset (the same footage in several clips)."""

    max_distance: int = 4  # Hamming distance of the targets' 64-bit perceptual hashes; -1: off


@dataclass
class ShardConfig:
    """How the output is cut into WebDataset shards (the resume unit)."""

    inputs_per_shard: int = 1000  # input files per shard: a shard holds their samples


@dataclass
class FaultConfig:
    """What happens when processing one input raises."""

    retries: int = 2  # further attempts, one input at a time, before it is listed as failed


@dataclass
class RayConfig:
    """Where and how the Ray Data program runs (speed only: not in the fingerprint).

    ``address``: ``null`` connects to the cluster named by ``RAY_ADDRESS`` (what ``ray job
    submit`` sets) or else starts Ray on this machine; ``"auto"`` or ``"ray://host:10001"``
    name a running cluster. ``num_cpus`` and ``object_store_mb`` apply to a local start only.
    """

    address: str | None = None
    num_cpus: int | None = None  # local start: CPUs Ray may use (null: all)
    object_store_mb: int = 1024  # local start: shared-memory object store
    max_actors: int | None = None  # per model stage (null: one per GPU, or 1 on CPUs)
    cpus_per_actor: float | None = None  # null: 1, or less when the machine has < 8 CPUs
    gpus_per_actor: float = 0.25  # four model stages share one GPU
    inputs_per_block: int = 8  # input files per Ray Data block (the decode task's size)
    fuse_model_stages: bool = False  # one actor pool holds all four models (a small machine:
    # fewer processes and less memory; a cluster scales each stage's pool on its own)


@dataclass
class BuildConfig:
    """Everything a build needs besides its input and output folders."""

    seed: int = 0
    image_format: str = "jpg"  # jpg or png, for targets and reference crops (masks are PNG)
    jpeg_quality: int = 95
    max_image_side: int = 1024  # targets and reference frames are stored at most this large
    max_input_pixels: int = 178_956_970  # larger images are skipped (decompression bombs)
    use_sidecar_captions: bool = True  # <file>.txt or captions.json(l) in the input folder
    phrase_vocabulary: list[str] | None = None  # set: phrases are these words found in captions
    stuff_words: list[str] = field(default_factory=lambda: sorted(set(DEFAULT_STUFF)))
    max_phrases: int = 8  # entity phrases per caption sent to the detector
    video: VideoConfig = field(default_factory=VideoConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    raw: RawConfig = field(default_factory=RawConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    # Settings that change speed, not output: left out of the fingerprint.
    RUNTIME_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "models.batch_size",
        "models.device",
        "ray",
        "faults",
    )

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def output_settings(self) -> dict[str, Any]:
        """The settings that change the output (all but ``RUNTIME_KEYS``)."""
        data = self.to_dict()
        for key in self.RUNTIME_KEYS:
            section, _, name = key.partition(".")
            if name:
                data[section].pop(name, None)
            else:
                data.pop(section, None)
        return data

    def fingerprint(self) -> str:
        """sha256 of the settings that change the output."""
        return _digest(self.output_settings())

    def raw_fingerprint(self) -> str:
        """sha256 of the settings the raw outputs depend on (all but ``REFILTER_SECTIONS``)."""
        data = self.output_settings()
        for key in REFILTER_SECTIONS:
            data.pop(key, None)
        return _digest(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        """Build from a (partial) dict; unknown keys and wrong types are an ``InputError``."""
        return build(cls, data, ("config",))


# Sections applied after the models (``data refilter`` may change them; the rest is fixed by
# the raw outputs a build keeps).
REFILTER_SECTIONS = ("filters", "match", "augment", "dedup", "image_format", "jpeg_quality", "seed")


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_build_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> BuildConfig:
    """Read a JSON config (None: the defaults), then apply ``overrides`` (same nesting)."""
    data: Any = {}
    if path is not None:
        data = read_json(path, "--config")
        if not isinstance(data, dict):
            raise InputError("--config", "must hold a JSON object", type(data).__name__)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return BuildConfig.from_dict(data)


# --- range checks --------------------------------------------------------------------------


def _check(where: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise InputError(where, rule, value)


def _validate(cfg: BuildConfig) -> None:
    """Range checks, each naming the key (types are checked when reading JSON)."""
    v, f, m, a, mo = cfg.video, cfg.filters, cfg.match, cfg.augment, cfg.models
    _check(
        "config.image_format",
        cfg.image_format in ("jpg", "png"),
        "one of jpg, png",
        cfg.image_format,
    )
    _check("config.jpeg_quality", 1 <= cfg.jpeg_quality <= 100, "in 1..100", cfg.jpeg_quality)
    _check("config.max_image_side", cfg.max_image_side >= 64, ">= 64", cfg.max_image_side)
    _check("config.max_input_pixels", cfg.max_input_pixels > 0, "> 0", cfg.max_input_pixels)
    _check("config.max_phrases", cfg.max_phrases >= 1, ">= 1", cfg.max_phrases)
    for name in ("phrase_vocabulary", "stuff_words"):
        words = getattr(cfg, name) or []
        _check(
            f"config.{name}", all(w.strip() for w in words), "a list of non-empty strings", words
        )
    _check("config.video.sample_fps", v.sample_fps > 0, "> 0", v.sample_fps)
    _check("config.video.max_frames", v.max_frames >= 2, ">= 2", v.max_frames)
    _check("config.video.cut_threshold", 0 < v.cut_threshold <= 1, "in (0, 1]", v.cut_threshold)
    _check("config.video.cut_ratio", v.cut_ratio >= 1, ">= 1", v.cut_ratio)
    _check("config.video.min_shot_s", v.min_shot_s >= 0, ">= 0", v.min_shot_s)
    _check("config.video.min_gap_s", v.min_gap_s > 0, "> 0", v.min_gap_s)
    _check(
        "config.video.max_gap_s",
        v.max_gap_s is None or v.max_gap_s >= v.min_gap_s,
        ">= min_gap_s",
        v.max_gap_s,
    )
    _check("config.video.max_references", v.max_references >= 1, ">= 1", v.max_references)
    _check("config.video.min_brightness", 0 <= v.min_brightness < 1, "in [0, 1)", v.min_brightness)
    _check("config.video.min_sharpness", v.min_sharpness >= 0, ">= 0", v.min_sharpness)
    _check("config.video.min_side", v.min_side >= 1, ">= 1", v.min_side)
    _check(
        "config.filters.score_threshold",
        0 <= f.score_threshold <= 1,
        "in [0, 1]",
        f.score_threshold,
    )
    _check(
        "config.filters.min_box_area",
        0 <= f.min_box_area < f.max_box_area <= 1,
        "0 <= min_box_area < max_box_area <= 1",
        (f.min_box_area, f.max_box_area),
    )
    _check("config.filters.min_box_side", f.min_box_side >= 1, ">= 1", f.min_box_side)
    _check("config.filters.max_aspect", f.max_aspect >= 1, ">= 1", f.max_aspect)
    _check("config.filters.nms_iou", 0 < f.nms_iou <= 1, "in (0, 1]", f.nms_iou)
    _check("config.filters.max_subjects", f.max_subjects >= 1, ">= 1", f.max_subjects)
    _check(
        "config.filters.min_subjects",
        1 <= f.min_subjects <= f.max_subjects,
        "in 1..max_subjects",
        f.min_subjects,
    )
    _check(
        "config.match.similarity_threshold",
        -1 <= m.similarity_threshold <= 1,
        "in [-1, 1]",
        m.similarity_threshold,
    )
    _check(
        "config.match.duplicate_similarity",
        m.duplicate_similarity > m.similarity_threshold,
        "> similarity_threshold",
        m.duplicate_similarity,
    )
    _check(
        "config.match.duplicate_pixel_diff",
        0 <= m.duplicate_pixel_diff <= 1,
        "in [0, 1]",
        m.duplicate_pixel_diff,
    )
    _check(
        "config.match.reference_margin",
        0 <= m.reference_margin <= 2,
        "in [0, 2]",
        m.reference_margin,
    )
    _check(
        "config.match.min_mask_fraction",
        0 <= m.min_mask_fraction <= 1,
        "in [0, 1]",
        m.min_mask_fraction,
    )
    _check("config.augment.flip_p", 0 <= a.flip_p <= 1, "in [0, 1]", a.flip_p)
    for name in ("margin", "scale"):
        low, high = getattr(a, name)
        _check(f"config.augment.{name}", low <= high, "low <= high", getattr(a, name))
    _check("config.augment.margin", 0 <= a.margin[0], "low >= 0", a.margin)
    _check("config.augment.scale", a.scale[0] > 0, "low > 0", a.scale)
    for name in ("brightness", "contrast", "saturation"):
        value = getattr(a, name)
        _check(f"config.augment.{name}", 0 <= value < 1, "in [0, 1)", value)
    _check(
        "config.models.preset",
        mo.preset in (None, "random-tiny", "random-base", "random-default"),
        "null, random-tiny, random-base or random-default",
        mo.preset,
    )
    check_dtype_name(mo.dtype, "config.models.dtype")
    _check("config.models.batch_size", mo.batch_size >= 1, ">= 1", mo.batch_size)
    r, d, sh, fa, ra = cfg.raw, cfg.dedup, cfg.shards, cfg.faults, cfg.ray
    _check("config.raw.min_score", 0 <= r.min_score <= 1, "in [0, 1]", r.min_score)
    _check("config.raw.max_detections", r.max_detections >= 1, ">= 1", r.max_detections)
    _check(
        "config.filters.score_threshold",
        f.score_threshold >= r.min_score,
        ">= raw.min_score (weaker detections are not kept)",
        f.score_threshold,
    )
    _check(
        "config.dedup.max_distance",
        -1 <= d.max_distance <= 64,
        "in -1..64 (-1: off)",
        d.max_distance,
    )
    _check("config.shards.inputs_per_shard", sh.inputs_per_shard >= 1, ">= 1", sh.inputs_per_shard)
    _check("config.faults.retries", fa.retries >= 0, ">= 0", fa.retries)
    _check(
        "config.ray.num_cpus", ra.num_cpus is None or ra.num_cpus >= 1, ">= 1 or null", ra.num_cpus
    )
    _check("config.ray.object_store_mb", ra.object_store_mb >= 64, ">= 64", ra.object_store_mb)
    _check(
        "config.ray.max_actors",
        ra.max_actors is None or ra.max_actors >= 1,
        ">= 1 or null",
        ra.max_actors,
    )
    _check(
        "config.ray.cpus_per_actor",
        ra.cpus_per_actor is None or ra.cpus_per_actor > 0,
        "> 0 or null",
        ra.cpus_per_actor,
    )
    _check("config.ray.gpus_per_actor", 0 < ra.gpus_per_actor <= 8, "in (0, 8]", ra.gpus_per_actor)
    _check("config.ray.inputs_per_block", ra.inputs_per_block >= 1, ">= 1", ra.inputs_per_block)
