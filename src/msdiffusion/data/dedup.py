"""Near-duplicate targets across clips: a perceptual hash of each target, and an index of them.

The same footage often reaches a collection several times (re-uploads, compilations, the same
static shot in several clips); training on copies over-weights them. Each target gets the 64-bit
DCT hash of its 32×32 grey thumbnail (the signs of the 8×8 lowest frequencies, DC left out,
against their median): robust to re-encoding, resizing and small colour shifts. A sample whose
hash lies within ``dedup.max_distance`` bits of an earlier one (in input order) is dropped and
counted (``sample:near_duplicate_target``).

``HashIndex`` finds hashes within a distance ``d`` by the pigeonhole rule: split the 64 bits in
``d + 1`` bands; two hashes within ``d`` bits agree exactly on at least one band, so only the
hashes sharing a band are compared.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["phash", "HashIndex"]

_SIDE = 32


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (n, n): ``C @ x`` transforms a column."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix(_SIDE)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash of ``image``."""
    grey = np.asarray(
        image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR), dtype=np.float64
    )  # (32, 32)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].reshape(-1)  # (64,) lowest frequencies
    bits = low > np.median(low[1:])
    bits[0] = False  # the DC term says only how bright the image is
    return int("".join("1" if b else "0" for b in bits), 2)


class HashIndex:
    """Hashes seen so far; ``near(h)`` says whether one lies within ``max_distance`` bits."""

    def __init__(self, max_distance: int):
        self.max_distance = max_distance
        bands = max(1, max_distance + 1)
        edges = np.linspace(0, 64, bands + 1).round().astype(int)
        self.bands = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        self.tables: list[dict[int, list[int]]] = [{} for _ in self.bands]

    def _parts(self, value: int) -> list[int]:
        return [(value >> (64 - b)) & ((1 << (b - a)) - 1) for a, b in self.bands]

    def near(self, value: int) -> bool:
        if self.max_distance < 0:
            return False
        for table, part in zip(self.tables, self._parts(value), strict=True):
            for other in table.get(part, ()):
                if (value ^ other).bit_count() <= self.max_distance:
                    return True
        return False

    def add(self, value: int) -> None:
        if self.max_distance < 0:
            return
        for table, part in zip(self.tables, self._parts(value), strict=True):
            table.setdefault(part, []).append(value)
