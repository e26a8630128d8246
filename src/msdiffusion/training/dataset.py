"""Manifest records → training samples (DESIGN §2.4), and batches with subjects padded per batch.

A sample is keyed by ``(epoch, index)`` (see ``sampler.ShardedStream``); its random crop and its
dropouts come from a generator seeded by (seed, epoch, index), so they do not depend on workers,
processes or resumes. A record that fails at load time (unreadable image, a box emptied by the
crop, ...) is replaced by the next record of the dataset and reported in the sample's
``skipped`` list, which the trainer counts against ``bad_data.max_skip_fraction``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..encoding import load_image
from ..errors import InputError
from ..manifest import Record, RecordProblem
from .config import DataConfig, DropoutConfig
from .dropout import Dropouts, draw_dropouts
from .transforms import (
    add_time_ids,
    crop_geometry,
    cut_reference,
    image_to_tensor,
    reference_pixels,
    resize_and_crop,
    transform_box,
)

__all__ = [
    "ManifestDataset",
    "SampleError",
    "collate_samples",
    "PADDED_KEYS",
    "MAX_CONSECUTIVE_SKIPS",
    "sample_rng",
]

# per-subject tensors, padded to the batch's largest subject count
PADDED_KEYS = ("reference_pixels", "image_embeds", "phrase_embeds", "boxes")
MAX_CONSECUTIVE_SKIPS = 32


class SampleError(Exception):
    """A record that cannot become a sample; ``reason`` is one line."""


def sample_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, attempt])


class ManifestDataset(Dataset):
    """Live samples: the target image, its caption and micro-conditioning, the cut references.

    Items (before collation)::

        id str, pixel_values (3, H, W) in [-1, 1], caption str (""  when text is dropped),
        time_ids (6,), reference_pixels (S, 3, s, s) (zeros when the image is dropped),
        phrases list[str], boxes (S, 4) normalised to the crop, drop_grounding bool,
        dropouts Dropouts, skipped list[(id, reason)]
    """

    def __init__(
        self,
        records: Sequence[Record],
        root: str | Path,
        data: DataConfig,
        dropout: DropoutConfig,
        feature_extractor: Any,
        seed: int = 0,
    ):
        self.records, self.root = list(records), Path(root)
        self.data, self.dropout = data, dropout
        self.feature_extractor, self.seed = feature_extractor, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped: list[tuple[str, str]] = []
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            record = self.records[(index + attempt) % len(self.records)]
            rng = sample_rng(self.seed, epoch, index, attempt)
            try:
                sample = self.load(record, rng)
            except SampleError as err:
                skipped.append((record.id, str(err)))
                continue
            sample["skipped"] = skipped
            return sample
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_SKIPS} consecutive records could not be loaded "
            f"(last: {skipped[-1]}); is the data there?"
        )

    def load(
        self, record: Record, rng: np.random.Generator, dropouts: Dropouts | None = None
    ) -> dict[str, Any]:
        """One record → one sample (raises SampleError with the reason)."""
        if dropouts is None:
            dropouts = draw_dropouts(rng, self.dropout)
        subjects = record.subjects[: self.data.max_subjects]
        image = self._image(record.image, "image")
        geometry = crop_geometry((image.height, image.width), self.data.size, self.data.crop, rng)
        boxes = []
        for i, subject in enumerate(subjects):
            box = transform_box(subject.box, geometry)
            if box is None:
                raise SampleError(
                    f"subjects[{i}].box: empty after cropping "
                    f"({subject.box} with a {self.data.crop} crop)"
                )
            boxes.append(box)
        refs = []
        for i, subject in enumerate(subjects):
            reference = self._image(subject.reference, f"subjects[{i}].reference")
            mask = None
            if subject.reference_mask is not None:
                mask = self._image(subject.reference_mask, f"subjects[{i}].reference_mask", "L")
            try:
                cut = cut_reference(reference, subject.reference_box, mask)
            except ValueError as err:
                raise SampleError(f"subjects[{i}]: {err}") from None
            pixels = reference_pixels(
                cut, self.feature_extractor, self.data.reference_interpolation
            )  # (3, s, s)
            refs.append(torch.zeros_like(pixels) if dropouts.image else pixels)
        return {
            "id": record.id,
            "pixel_values": image_to_tensor(resize_and_crop(image, geometry)),  # (3, H, W)
            "caption": "" if dropouts.text else record.caption,
            "time_ids": torch.tensor(add_time_ids(geometry), dtype=torch.float32),  # (6,)
            "reference_pixels": torch.stack(refs),  # (S, 3, s, s)
            "phrases": [s.phrase for s in subjects],
            "boxes": torch.tensor(boxes, dtype=torch.float32),  # (S, 4)
            "drop_grounding": dropouts.grounding,
            "dropouts": dropouts,
        }

    def _image(self, rel: str, name: str, mode: str = "RGB") -> Image.Image:
        path = self.root / rel
        try:
            if mode == "RGB":
                return load_image(path, name)
            with Image.open(path) as handle:
                return handle.convert(mode)
        except (InputError, RecordProblem) as err:
            raise SampleError(str(err)) from None
        except (OSError, ValueError, SyntaxError) as err:
            raise SampleError(
                f"{name}: is not a readable image ({err.__class__.__name__}) (got {str(path)!r})"
            ) from None


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples; per-subject tensors are padded to the batch's largest subject count.

    Adds ``valid`` (B, S_max) bool — False marks padding, which never reaches the attention —
    and concatenates the samples' ``skipped`` lists.
    """
    counts = [len(s["boxes"]) for s in samples]
    s_max = max(counts)
    batch: dict[str, Any] = {"valid": torch.tensor([[j < n for j in range(s_max)] for n in counts])}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in PADDED_KEYS:
            padded = values[0].new_zeros((len(values), s_max, *values[0].shape[1:]))
            for i, v in enumerate(values):
                padded[i, : len(v)] = v
            batch[key] = padded  # (B, S_max, ...)
        elif key == "phrases":
            batch[key] = [list(v) + [""] * (s_max - len(v)) for v in values]
        elif key == "skipped":
            batch[key] = [item for v in values for item in v]
        elif key == "drop_grounding":
            batch[key] = torch.tensor(values, dtype=torch.bool)  # (B,)
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
