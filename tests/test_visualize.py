"""Overlays: small outputs are drawn enlarged by whole pixels, so labels stay legible."""

from __future__ import annotations

import numpy as np
from PIL import Image

from msdiffusion.request import GenerationRequest, SubjectSpec
from msdiffusion.visualize import OVERLAY_MIN_SIDE, draw_overlay


def test_a_small_output_is_enlarged_by_whole_pixels_and_large_ones_are_not():
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
    ref = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    request = GenerationRequest(
        prompt="a ball", subjects=[SubjectSpec([ref], (0.6, 0.6, 0.95, 0.95), "ball")]
    )
    overlay = draw_overlay(small, request)
    factor = -(-OVERLAY_MIN_SIDE // 48)  # 6
    assert overlay.height == 64 * factor and overlay.width > 48 * factor
    # the output's top-left corner (outside the box and the label) is its pixel, repeated
    corner = np.asarray(overlay)[:factor, :factor].reshape(-1, 3)
    assert (corner == np.asarray(small)[0, 0]).all()
    large = Image.new("RGB", (320, 300), (10, 20, 30))
    assert draw_overlay(large, request).height == 300
