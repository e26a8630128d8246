"""Condition dropouts (DESIGN §2.4), drawn per sample from the sample's own random generator.

One uniform draw decides image / text / both / neither (released: 0.05 each); an independent draw
decides whether the grounding tokens (phrase + box) are replaced by the learned queries (0.1).
Drawing from a generator seeded by (seed, epoch, index) makes a sample's dropouts the same
whatever the worker count, the process count, or a resume — and lets the embedding cache apply
them after the fact (the cache keeps the empty caption's and the zero image's embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import DropoutConfig

__all__ = ["Dropouts", "draw_dropouts"]


@dataclass(frozen=True)
class Dropouts:
    """Which conditions one sample trains without."""

    image: bool = False  # reference pixels are zeros (the encoder and resampler still run)
    text: bool = False  # the caption is ""
    grounding: bool = False  # learned queries instead of phrase + box embeddings


NONE = Dropouts()


def draw_dropouts(rng: np.random.Generator, config: DropoutConfig) -> Dropouts:
    """Two draws from ``rng``: the image/text/both bucket, then grounding."""
    u = float(rng.random())
    image_only = u < config.image
    text_only = config.image <= u < config.image + config.text
    both = config.image + config.text <= u < config.image + config.text + config.both
    grounding = float(rng.random()) < config.grounding
    return Dropouts(image=image_only or both, text=text_only or both, grounding=grounding)
