"""The shipped `toy` model (the learning proof's base and full adapter): it loads offline and, with
two held-out subjects it never saw in training, draws each one's colours in its own box — and
follows the boxes when they are exchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msdiffusion import Subject
from msdiffusion.loading import load_pipeline
from msdiffusion.toyworld.metrics import classify_pixels, colour_histogram, identity_score

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "toy"
LEFT, RIGHT = (0.03, 0.25, 0.48, 0.72), (0.52, 0.25, 0.97, 0.72)  # the demo's boxes
PHRASES = ("ball", "moon")


@pytest.fixture(scope="module")
def toy():
    return load_pipeline("toy")


def _references() -> list[Image.Image]:
    return [Image.open(EXAMPLES / f"{name}.png").convert("RGB") for name in PHRASES]


def _identity(toy, boxes, scale: float, seed: int = 0) -> float:
    """Mean retrieval score of the two subjects' boxes among their two references (chance 0.5)."""
    refs = _references()
    out = toy.pipe(
        prompt="a ball and a moon on sand",
        subjects=[Subject(image=r, box=b, phrase=p) for r, b, p in zip(refs, boxes, PHRASES)],
        scale=scale,
        num_inference_steps=12,
        guidance_scale=5.0,
        num_images_per_prompt=4,
        generator=torch.Generator().manual_seed(seed),
    )
    hists = [colour_histogram(classify_pixels(r)) for r in refs]
    scores = [
        identity_score(colour_histogram(classify_pixels(image), box), hists, k)
        for image in out.images
        for k, box in enumerate(boxes)
    ]
    assert all(image.size == (64, 64) for image in out.images)
    return float(np.mean(scores))


def test_toy_model_keeps_held_out_identities_in_their_boxes(toy):
    assert toy.info["preset"] == "toy"
    for boxes in ((LEFT, RIGHT), (RIGHT, LEFT)):  # the swap: identities follow their boxes
        assert _identity(toy, boxes, scale=1.0) >= 0.75, boxes


def test_a_trained_base_is_written_whole_and_as_the_umask_says(tmp_path):
    import os
    import stat

    from diffusers import StableDiffusionXLPipeline

    from msdiffusion.testing.sdxl import random_components
    from msdiffusion.toyworld.base import save_base

    old = os.umask(0o002)
    try:
        save_base(random_components("tiny", seed=0), tmp_path)
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "image_encoder"]  # no leftovers
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o664}
    StableDiffusionXLPipeline.from_pretrained(tmp_path / "base")
