"""Evaluation protocols: named sets of every setting a benchmark's numbers depend on.

A protocol fixes generation (negative prompt, steps, guidance, image-branch scale γ, size, images
per sample, base seed) and scoring (scorer models, their preprocessing, detection threshold and
query, references, dtype, reporting convention). ``eval generate`` and ``eval score`` start from
the protocol and record it — and every setting that differs from it, as a *deviation* — in
``run.json`` and the report, so a number is comparable exactly when its run has no deviations.

- ``paper`` (MS-Bench, DreamBench; the default): the released model's generation settings and the
  scorers most personalization papers use.
- ``dreambench``: DreamBooth's single-subject convention (4 images per prompt; whole-image CLIP-I,
  DINO against all of a subject's images; no detection).
- ``mip-adapter``: MIP-Adapter's scoring (whole-image CLIP-I/DINO, DINO resized to 256 bicubic and
  centre-cropped, CLIP-T as 2.5·max(cos, 0)).
- ``toy``: the toy world's benchmark (64² images, its own exact pixel metrics).

``PAPER_REPORTED`` holds the numbers the MS-Diffusion paper reports — shown by ``eval compare``
as a reference row, never as a result of this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

__all__ = [
    "GENERATION_KEYS",
    "PAPER_REPORTED",
    "PROTOCOLS",
    "SCORING_KEYS",
    "Protocol",
    "default_protocol",
    "deviations",
    "get_protocol",
]

# What the protocol fixes; the GenerationConfig / ScoringConfig fields of the same names.
GENERATION_KEYS = (
    "negative_prompt",
    "steps",
    "guidance_scale",
    "scale",
    "height",
    "width",
    "images_per_sample",
    "seed",
)
SCORING_KEYS = (
    "clip_model",
    "dino_model",
    "detector_model",
    "dino_preprocessing",
    "query_template",
    "detection_threshold",
    "references",
    "dtype",
    "percent",
    "clip_t_weight",
)

RELEASED_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"
CLIP_B32 = "openai/clip-vit-base-patch32"
DINO_S16 = "facebook/dino-vits16"
OWLV2_B16 = "google/owlv2-base-patch16-ensemble"


@dataclass(frozen=True)
class Protocol:
    """One named protocol. ``generation`` / ``scoring`` map GENERATION_KEYS / SCORING_KEYS to
    values (``None`` for a scoring model: that role is not used); ``sources`` says where each
    value comes from."""

    name: str
    description: str
    benchmarks: tuple[str, ...]  # the benchmarks it applies to
    generation: dict[str, Any]
    scoring: dict[str, Any]
    headline: dict[str, tuple[str, ...]]  # per benchmark: the metrics its tables lead with
    worst_by: dict[str, str]  # per benchmark: the metric the "worst samples" are ranked by
    sources: dict[str, str] = field(default_factory=dict)

    def check(self, benchmark: str) -> Protocol:
        if benchmark not in self.benchmarks:
            raise InputError(
                "protocol",
                f"{self.name} applies to {', '.join(self.benchmarks)}, "
                f"not {benchmark} (its protocol: {default_protocol(benchmark)})",
                self.name,
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "benchmarks": list(self.benchmarks),
            "generation": dict(self.generation),
            "scoring": dict(self.scoring),
            "sources": dict(self.sources),
        }

    def table(self) -> str:
        """The protocol as aligned text (what ``msdiffusion eval protocols NAME`` prints)."""
        lines = [
            f"{self.name}: {self.description}",
            f"benchmarks: {', '.join(self.benchmarks)}",
            "",
        ]
        for part, values in (("generation", self.generation), ("scoring", self.scoring)):
            lines.append(f"{part}:")
            for key, value in values.items():
                note = self.sources.get(key)
                lines.append(f"  {key:<20} {value!r}" + (f"   ({note})" if note else ""))
        return "\n".join(lines)


_SAMPLING_SOURCES = {
    "negative_prompt": "the released generation code's default when none is given",
    "steps": "the released inference script",
    "guidance_scale": "the released generation code's default",
    "scale": "the released inference script and model card",
    "height": "the released inference script (SDXL's native size)",
    "width": "the released inference script (SDXL's native size)",
    "seed": "base seed; image k of a sample: sha256('<seed>:<sample_id>') mod (2^31-1000) + k",
}
_RELEASED_SAMPLING = {
    "negative_prompt": RELEASED_NEGATIVE_PROMPT,
    "steps": 30,
    "guidance_scale": 7.5,
    "scale": 0.6,
    "height": 1024,
    "width": 1024,
    "seed": 0,
}
_STANDARD_SCORERS = {
    "clip_model": CLIP_B32,
    "dino_model": DINO_S16,
    "dino_preprocessing": "resize-crop",
    "dtype": "fp32",
    "percent": False,
    "clip_t_weight": None,
}
_SCORER_SOURCES = {
    "clip_model": "CLIP ViT-B/32, as DreamBooth and most personalization papers; its own "
    "processor (short side 224 bicubic, centre crop 224)",
    "dino_model": "DINO ViT-S/16, as DreamBooth and most personalization papers",
    "dino_preprocessing": "short side 256 bicubic, centre crop 224, ImageNet mean/std",
    "references": "DreamBench: every image of the subject (the DreamBooth protocol)",
}

PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(
        name="paper",
        description="the MS-Diffusion paper's setting: the released model's sampling, 5 images "
        "per sample, CLIP/DINO/OWLv2 scorers; M-DINO with missed subjects as 0",
        benchmarks=("msbench", "dreambench"),
        generation={**_RELEASED_SAMPLING, "images_per_sample": 5},
        scoring={
            **_STANDARD_SCORERS,
            "detector_model": OWLV2_B16,
            "query_template": "a photo of a {}",
            "detection_threshold": 0.1,
            "references": "all",
        },
        headline={
            "msbench": (
                "clip_t",
                "clip_i",
                "dino",
                "m_dino_det",
                "clip_i_det",
                "dino_det",
                "layout_iou",
                "detection_rate",
            ),
            "dreambench": ("clip_t", "clip_i", "dino", "layout_iou", "detection_rate"),
        },
        worst_by={"msbench": "m_dino_det", "dreambench": "dino"},
        sources={
            **_SAMPLING_SOURCES,
            **_SCORER_SOURCES,
            "images_per_sample": "the paper (5 images per sample)",
            "detector_model": "OWLv2 base, open-vocabulary (this package's choice)",
            "detection_threshold": "a subject whose best detection scores lower is "
            "missing: 0 in M-DINO and the det metrics",
        },
    ),
    "dreambench": Protocol(
        name="dreambench",
        description="DreamBooth's single-subject convention: 4 images per prompt, whole-image "
        "CLIP-T / CLIP-I / DINO against all of the subject's images, no detection",
        benchmarks=("dreambench",),
        generation={**_RELEASED_SAMPLING, "images_per_sample": 4},
        scoring={
            **_STANDARD_SCORERS,
            "detector_model": None,
            "query_template": "a photo of a {}",
            "detection_threshold": 0.1,
            "references": "all",
        },
        headline={"dreambench": ("clip_t", "clip_i", "dino")},
        worst_by={"dreambench": "dino"},
        sources={
            **_SAMPLING_SOURCES,
            **_SCORER_SOURCES,
            "images_per_sample": "DreamBooth (4 images per prompt, 3000 in all)",
        },
    ),
    "mip-adapter": Protocol(
        name="mip-adapter",
        description="MIP-Adapter's scoring: whole-image CLIP-I / DINO (DINO short side 256 "
        "bicubic + centre crop 224), CLIP-T as 2.5·max(cos, 0)",
        benchmarks=("msbench", "dreambench"),
        generation={**_RELEASED_SAMPLING, "images_per_sample": 5},
        scoring={
            **_STANDARD_SCORERS,
            "detector_model": None,
            "query_template": "a photo of a {}",
            "detection_threshold": 0.1,
            "references": "all",
            "clip_t_weight": 2.5,
        },
        headline={
            "msbench": ("clip_t", "clip_i", "dino"),
            "dreambench": ("clip_t", "clip_i", "dino"),
        },
        worst_by={"msbench": "dino", "dreambench": "dino"},
        sources={
            **_SAMPLING_SOURCES,
            **_SCORER_SOURCES,
            "clip_t_weight": "CLIPScore, w = 2.5 (MIP-Adapter's evaluation code)",
        },
    ),
    "toy": Protocol(
        name="toy",
        description="the toy world's benchmark: 64² images, 20 steps, guidance 5, γ 1.0 (the "
        "training value), exact pixel metrics",
        benchmarks=("toy",),
        generation={
            "negative_prompt": "",
            "steps": 20,
            "guidance_scale": 5.0,
            "scale": 1.0,
            "height": 64,
            "width": 64,
            "images_per_sample": 2,
            "seed": 0,
        },
        scoring={},  # exact pixel metrics: no scorer models, nothing to choose
        headline={"toy": ("toy_identity", "toy_identity_all", "toy_layout", "toy_background")},
        worst_by={"toy": "toy_identity_all"},
        sources={
            "height": "the toy world's image size",
            "width": "the toy world's image size",
            "scale": "the training value of γ",
            "seed": _SAMPLING_SOURCES["seed"],
        },
    ),
}

# The MS-Diffusion paper's own numbers (its tables, raw cosines): a reference, not a result.
# Keys are the metrics here with the nearest definitions (the paper's scoring code is not public).
PAPER_REPORTED: dict[str, dict[str, float]] = {
    "msbench": {"clip_i": 0.698, "dino": 0.425, "m_dino_det": 0.108, "clip_t": 0.341},
    "dreambench": {"clip_i": 0.792, "dino": 0.671},
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` (an InputError naming the known ones otherwise)."""
    key = str(name).lower().replace("_", "-")
    if key not in PROTOCOLS:
        raise InputError("protocol", f"must be one of {', '.join(PROTOCOLS)}", name)
    return PROTOCOLS[key]


def default_protocol(benchmark: str) -> str:
    """``paper`` — except for the toy benchmark, which has its own."""
    return "toy" if benchmark == "toy" else "paper"


def deviations(fixed: dict[str, Any], actual: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every key of ``fixed`` whose value in ``actual`` differs: ``{key: {protocol, run}}``."""
    return {
        key: {"protocol": want, "run": actual.get(key)}
        for key, want in fixed.items()
        if actual.get(key) != want
    }
