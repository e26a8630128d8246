"""Records → training samples (DESIGN §2.4), and batches with subjects padded per batch.

``SampleBuilder`` turns one record and its files (a manifest's folder or a shard sample's
members, ``records``) into one sample: the target resized and cropped, its boxes moved along, the
references cut and preprocessed, the dropouts applied. As the released training does, a box the
crop leaves empty stays, as the zero box (the subject is never attended), and subjects past
``data.max_subjects`` are dropped; both are counted (``boxes_emptied``, ``subjects_dropped``).

``ShardSamples`` makes the samples of a shard dataset (read by ``streams.ShardStream``);
``ManifestDataset`` reads a JSONL manifest by index. A sample is keyed by ``(epoch, index)`` (see
``sampler.ShardedStream``); its random crop and its dropouts come from a generator seeded by
(seed, epoch, index), so they do not depend on workers, processes or resumes. A record that fails
at load time (a line that is not a record, a missing or unreadable image, …) is replaced by the
next record of the dataset and reported in the sample's ``skipped`` list, which the trainer
counts against ``bad_data.max_skip_fraction``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..manifest import Record, RecordProblem, parse_record
from ..shards import RECORD, iter_tar
from .config import DataConfig, DropoutConfig
from .dropout import Dropouts, draw_dropouts
from .records import FolderFiles, ManifestLines, MemberFiles, SampleError, ShardSet
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
    "SampleBuilder",
    "ManifestDataset",
    "ShardSamples",
    "TarReader",
    "SampleError",
    "collate_samples",
    "PADDED_KEYS",
    "MAX_CONSECUTIVE_SKIPS",
    "EMPTY_BOX",
    "sample_rng",
]

# per-subject tensors, padded to the batch's largest subject count
PADDED_KEYS = ("reference_pixels", "image_embeds", "phrase_embeds", "boxes")
MAX_CONSECUTIVE_SKIPS = 32
EMPTY_BOX = (0.0, 0.0, 0.0, 0.0)  # a subject the crop removed: in no attention cell


def sample_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, attempt])


class SampleBuilder:
    """One record and its files → one sample.

    Items (before collation)::

        id str, pixel_values (3, H, W) in [-1, 1], caption str (""  when text is dropped),
        time_ids (6,), reference_pixels (S, 3, s, s) (zeros when the image is dropped),
        phrases list[str], boxes (S, 4) normalised to the crop (zeros: emptied by the crop),
        drop_grounding bool, dropouts Dropouts, boxes_emptied int, subjects_dropped int
    """

    def __init__(self, data: DataConfig, dropout: DropoutConfig, feature_extractor: Any):
        self.data, self.dropout, self.feature_extractor = data, dropout, feature_extractor

    def build(
        self,
        record: Record,
        files: Any,
        rng: np.random.Generator,
        dropouts: Dropouts | None = None,
    ) -> dict[str, Any]:
        """Raises SampleError with the reason when the record cannot become a sample."""
        if dropouts is None:
            dropouts = draw_dropouts(rng, self.dropout)
        subjects = record.subjects[: self.data.max_subjects]
        image = files.image(record.image, "image")
        geometry = crop_geometry((image.height, image.width), self.data.size, self.data.crop, rng)
        boxes = [transform_box(subject.box, geometry) for subject in subjects]
        refs = []
        for i, subject in enumerate(subjects):
            reference = files.image(subject.reference, f"subjects[{i}].reference")
            mask = None
            if subject.reference_mask is not None:
                mask = files.image(subject.reference_mask, f"subjects[{i}].reference_mask", "L")
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
            "boxes": torch.tensor([b or EMPTY_BOX for b in boxes], dtype=torch.float32),  # (S, 4)
            "drop_grounding": dropouts.grounding,
            "dropouts": dropouts,
            "boxes_emptied": sum(b is None for b in boxes),
            "subjects_dropped": len(record.subjects) - len(subjects),
        }


class ManifestDataset(Dataset):
    """Live samples of a JSONL manifest (``ManifestLines``), by ``(epoch, index)``."""

    def __init__(
        self,
        lines: ManifestLines,
        data: DataConfig,
        dropout: DropoutConfig,
        feature_extractor: Any,
        seed: int = 0,
    ):
        self.lines, self.seed = lines, seed
        self.files = FolderFiles(lines.root)
        self.builder = SampleBuilder(data, dropout, feature_extractor)

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        skipped: list[tuple[str | None, str]] = []
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            at = (index + attempt) % len(self.lines)
            try:
                sample = self.load(at, sample_rng(self.seed, epoch, index, attempt))
            except SampleError as err:
                skipped.append((err.record_id, str(err)))
                continue
            sample["skipped"] = skipped
            return sample
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_SKIPS} consecutive records could not be loaded "
            f"(last: {skipped[-1]}); is the data there?"
        )

    def load(
        self, index: int, rng: np.random.Generator, dropouts: Dropouts | None = None
    ) -> dict[str, Any]:
        """Line ``index`` → one sample; raises SampleError (with the record's id)."""
        record_id = None
        try:
            record = self.lines.record(index)
            record_id = record.id
            return self.builder.build(record, self.files, rng, dropouts)
        except RecordProblem as err:
            raise SampleError(err.describe(), err.record_id) from None
        except SampleError as err:
            raise SampleError(str(err), record_id) from None


class TarReader:
    """``read(i)``: the samples of shard ``i`` of a shard set (picklable, for workers)."""

    def __init__(self, shards: ShardSet):
        self.shards = shards.shards

    def __call__(self, i: int) -> Any:
        return iter_tar(self.shards[i])


class ShardSamples:
    """A shard sample's members → a training sample (the ``make`` of a ShardStream): sample
    ``index`` of shard ``shard`` in ``epoch`` draws its crop and dropouts from a generator seeded
    by (seed, epoch, shard, index)."""

    def __init__(self, builder: SampleBuilder, shards: ShardSet, seed: int):
        self.builder, self.names, self.seed = builder, [str(p) for p in shards.shards], seed

    def __call__(
        self,
        files: dict[str, bytes],
        key: str,
        shard: int,
        index: int,
        epoch: int,
        dropouts: Dropouts | None = None,
    ) -> dict[str, Any]:
        if RECORD not in files:
            raise SampleError(f"no {key}.{RECORD} record in {self.names[shard]}", key)
        try:
            obj = json.loads(files[RECORD].decode("utf-8"))
            record = parse_record(obj, index + 1)
        except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON; RecordProblem
            reason = str(err) if isinstance(err, RecordProblem) else err.__class__.__name__
            raise SampleError(f"{key}.{RECORD}: not a usable record ({reason})", key) from None
        rng = np.random.default_rng([self.seed, epoch, shard, index, 1])
        files_of = MemberFiles(key, files, self.names[shard])
        try:
            return self.builder.build(record, files_of, rng, dropouts)
        except SampleError as err:
            raise SampleError(str(err), record.id) from None


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
