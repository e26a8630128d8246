"""The reported metrics: label, the scorer roles behind each, what it compares.

``METRICS`` are per-image values (``scores.jsonl`` rows); ``SUBJECT_METRICS`` maps those that are
a mean over the image's subjects to the per-subject key they average, for the per-category and
per-subject tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["METRICS", "SUBJECT_METRICS", "label", "model_names"]

# metric -> (label, model roles, what it compares)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "clip_t": ("CLIP-T", ("clip",), "whole output vs prompt"),
    "clip_i": ("CLIP-I", ("clip",), "whole output vs references"),
    "dino": ("DINO", ("dino",), "whole output vs references"),
    "clip_i_box": ("CLIP-I box", ("clip",), "crop at the layout box vs reference"),
    "dino_box": ("DINO box", ("dino",), "crop at the layout box vs reference"),
    "m_dino_box": ("M-DINO box", ("dino",), "product over subjects of DINO box"),
    "clip_i_det": (
        "CLIP-I det",
        ("clip", "detector"),
        "crop at the detected box vs reference (missing subject: 0)",
    ),
    "dino_det": (
        "DINO det",
        ("dino", "detector"),
        "crop at the detected box vs reference (missing subject: 0)",
    ),
    "m_dino_det": (
        "M-DINO",
        ("dino", "detector"),
        "product over subjects of DINO det (a missing subject makes it 0)",
    ),
    "layout_iou": ("IoU", ("detector",), "detected box vs requested box (missing subject: 0)"),
    "detection_rate": (
        "Detected",
        ("detector",),
        "share of subjects whose best detection reaches the threshold",
    ),
    "toy_identity": (
        "Identity",
        ("toy",),
        "box content retrieved among the sample's and "
        "distractor references (1 = right, chance = 1/candidates)",
    ),
    "toy_identity_all": (
        "Identity (all)",
        ("toy",),
        "every subject of the image right at once (product of the subjects' identity scores)",
    ),
    "toy_layout": ("Layout", ("toy",), "share of each subject's pixels inside its box"),
    "toy_background": ("Background", ("toy",), "the prompt's background outside the boxes"),
}

# image metric -> the per-subject value it is the mean of
SUBJECT_METRICS: dict[str, str] = {
    "clip_i": "clip_i",
    "dino": "dino",
    "clip_i_box": "clip_i_box",
    "dino_box": "dino_box",
    "clip_i_det": "clip_i_det",
    "dino_det": "dino_det",
    "layout_iou": "iou",
    "detection_rate": "detected",
    "toy_identity": "identity",
    "toy_layout": "layout",
}


def label(metric: str) -> str:
    return METRICS[metric][0]


def model_names(models: dict[str, Any], roles: Sequence[str]) -> str:
    """The models behind a metric, by role: ``"openai/clip… + google/owlv2…"``."""
    return " + ".join(models[r]["model"] for r in roles if models.get(r))
