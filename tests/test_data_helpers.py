"""Shared helpers of the data-pipeline tests (no tests here).

* videos: ``msdiffusion.data.synthetic`` (moving coloured shapes written with PyAV, hard cuts);
* ``tiny_model_dirs``: the real transformers model classes (BLIP, Grounding DINO, OWLv2, SAM,
  CLIP vision, DINOv2) built from tiny configs with random weights and saved with
  ``save_pretrained``, so the pipeline loads them through the real ``from_pretrained`` path;
* ``ColourDetector`` (``msdiffusion.data.synthetic``): a deterministic detector that finds
  "red square", "blue circle", ... by colour — for tests that need known boxes.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from msdiffusion.data.synthetic import (  # noqa: E402,F401  (re-exported for the tests)
    COLOURS,
    STANDARD_CAPTION,
    ColourDetector,
    Shape,
    Shot,
    make_video,
    standard_shots,
)
from msdiffusion.testing.data_models import save_random_models  # noqa: E402

# --- tiny real transformers models ----------------------------------------------------------


@functools.lru_cache(maxsize=1)
def tiny_model_dirs() -> dict[str, str]:
    """Folders with the tiny random-weight models saved by ``save_pretrained`` (built once)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = Path(tempfile.mkdtemp(prefix="msd-data-models-"))
    atexit.register(shutil.rmtree, root, True)
    return save_random_models(root, "tiny")


def tiny_models_config(detector: str = "grounding_dino", features: str = "clip") -> dict:
    """The ``models`` section of a config that loads the tiny models from disk."""
    dirs = tiny_model_dirs()
    return {
        "captioner": {"kind": "blip", "path": dirs["blip"], "options": {"max_new_tokens": 8}},
        "detector": {"kind": detector, "path": dirs[detector]},
        "segmenter": {"kind": "sam", "path": dirs["sam"]},
        "features": {"kind": "auto", "path": dirs[features]},
        "batch_size": 4,
    }


def settings_for_tests(**sections) -> dict:
    """Settings for the small synthetic inputs (192×144 videos, shapes of 30–45 px)."""
    base = {
        "image_format": "png",
        "video": {
            "sample_fps": 4.0,
            "min_side": 64,
            "min_gap_s": 1.0,
            "min_shot_s": 1.0,
            "max_references": 2,
            "min_sharpness": 5.0,
        },
        "filters": {"score_threshold": 0.3, "min_box_side": 8, "min_box_area": 0.005},
        "match": {
            "similarity_threshold": -1.0,
            "duplicate_similarity": 1.5,
            "duplicate_pixel_diff": 0.02,
            "min_mask_fraction": 0.0,
        },
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return base


STALL_WHEN = "MSD_TEST_STALL_WHEN"  # a path: once it exists, the slow detector stops for good


class SlowColourDetector(ColourDetector):
    """``ColourDetector`` that waits ``delay`` seconds per call: a build slow enough to kill. In a
    process whose environment names a path under :data:`STALL_WHEN`, every call after that path
    appears waits for an hour — a build that is certainly still running when it is killed."""

    def __init__(self, delay: float = 0.5, **options):
        super().__init__(**options)
        self.delay = delay

    def detect(self, images, phrases):
        import time

        time.sleep(self.delay)
        stall = os.environ.get(STALL_WHEN)
        if stall and os.path.exists(stall):
            time.sleep(3600)
        return super().detect(images, phrases)


def slow_colour_detector(path, device, dtype, **options) -> SlowColourDetector:
    return SlowColourDetector(**options)


class PoisonedDetector(ColourDetector):
    """``ColourDetector`` that raises on any frame showing magenta: a model that breaks on one
    input (as a processor does on a 6000×20 image), wherever the batch comes from."""

    def detect(self, images, phrases):
        import numpy as np

        for image in images:
            pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
            magenta = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] > 180)
            if magenta.sum() > 50:
                raise ValueError("poisoned frame: the processor rejects it")
        return super().detect(images, phrases)


def poisoned_detector(path, device, dtype, **options) -> PoisonedDetector:
    return PoisonedDetector(**options)


def unloadable_detector(path, device, dtype, **options):
    """A detector plug-in whose model cannot load (as a hub id offline and not cached)."""
    from msdiffusion.errors import ModelNotAvailableError

    raise ModelNotAvailableError("cannot load the detector model from 'nowhere/detector' (test)")
