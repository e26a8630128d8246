"""Reading the embedding cache (``cache.py`` writes it): cached samples with the dropouts applied
at read time, drawn from the same generators as live training's, so a cached run sees the same
dropouts as a live one.

* A cache of a JSONL manifest lists every record in its index: ``CachedDataset``, by
  ``(epoch, index)`` like ``dataset.ManifestDataset``.
* A cache of a shard dataset has one cache shard per data shard, its records listed in the
  shard's own metadata: ``CachedShards`` feeds a ``streams.ShardStream`` (``read`` a cache shard's
  records in order, ``make`` one sample), like the live shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from torch.utils.data import Dataset

from ..errors import InputError
from .config import DropoutConfig
from .dataset import sample_rng
from .dropout import Dropouts, draw_dropouts

__all__ = ["CachedDataset", "CachedShards", "read_index", "check_fingerprint", "PER_RECORD"]

INDEX_NAME, NULL_NAME = "index.json", "null.safetensors"
PER_RECORD = (
    "latent_moments",
    "prompt_embeds",
    "pooled_prompt_embeds",
    "time_ids",
    "image_embeds",
    "phrase_embeds",
    "boxes",
)


def read_index(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(cache_dir) / INDEX_NAME
    if not path.is_file():
        raise InputError(
            "data.cache_dir",
            "holds no complete cache (no index.json); run `msdiffusion train cache` first",
            str(cache_dir),
        )
    return json.loads(path.read_text())


def check_fingerprint(index: dict[str, Any], expected: dict[str, Any] | None, where: str) -> None:
    """Refuse a cache built for other settings than ``expected``. A cache built without a
    subject cap whose records all fit the cap asked for is the same cache (caches built before
    the cap's default became 4)."""
    if expected is None or index["fingerprint"] == expected:
        return
    diff = sorted(k for k in expected if expected[k] != index["fingerprint"].get(k))
    if diff == ["max_subjects"] and index["fingerprint"].get("max_subjects") is None:
        most = max((int(r[3]) for r in index.get("records", [])), default=None)
        if most is not None and most <= expected["max_subjects"]:
            return
    raise InputError(
        "data.cache_dir",
        f"was built for other settings ({', '.join(diff)} differ); "
        "rebuild it with `msdiffusion train cache`",
        where,
    )


class _Reader:
    """Open cache files (per process: handles do not cross process boundaries)."""

    def __init__(self, cache_dir: str | os.PathLike[str]):
        self.dir = Path(cache_dir)
        with safe_open(str(self.dir / NULL_NAME), framework="pt") as handle:
            self.null = {k: handle.get_tensor(k) for k in handle.keys()}
        self._handles: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def handle(self, name: str) -> Any:
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.dir / name), framework="pt")
        return self._handles[name]

    def sample(self, shard: str, prefix: str, dropouts: Dropouts) -> dict[str, Any]:
        """One cached record with ``dropouts`` applied: the empty caption's and the zero
        reference's embeddings substituted."""
        handle = self.handle(shard)
        sample: dict[str, Any] = {
            name: handle.get_tensor(f"{prefix}.{name}") for name in PER_RECORD
        }
        if dropouts.text:
            sample["prompt_embeds"] = self.null["prompt_embeds"]
            sample["pooled_prompt_embeds"] = self.null["pooled_prompt_embeds"]
        if dropouts.image:
            sample["image_embeds"] = (
                self.null["image_embeds"].expand_as(sample["image_embeds"]).clone()
            )  # (S, T, D_img)
        sample.update(drop_grounding=dropouts.grounding, dropouts=dropouts, skipped=[])
        return sample


class _Cache:
    """A cache opened for reading: its index (checked against ``expected_fingerprint``), its
    files, and the dropouts to apply."""

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        dropout: DropoutConfig,
        seed: int = 0,
        expected_fingerprint: dict[str, Any] | None = None,
    ):
        self.index = read_index(cache_dir)
        check_fingerprint(self.index, expected_fingerprint, str(cache_dir))
        self.reader = _Reader(cache_dir)
        self.dropout, self.seed = dropout, seed


class CachedDataset(_Cache, Dataset):
    """A manifest's cached samples.

    Items: id, latent_moments (8, h, w), prompt_embeds (77, C), pooled_prompt_embeds (D_pool),
    time_ids (6,), image_embeds (S, T, D_img), phrase_embeds (S, D_phrase), boxes (S, 4),
    drop_grounding, dropouts, skipped (always empty: bad records were left out when caching).
    """

    def __init__(self, cache_dir: str | os.PathLike[str], *args: Any, **kwargs: Any):
        super().__init__(cache_dir, *args, **kwargs)
        if self.index.get("source") == "shards":
            raise InputError(
                "data.cache_dir", "holds a shard dataset's cache (read as a stream)", cache_dir
            )
        self.shards, self.records = self.index["shards"], self.index["records"]
        self.skipped = self.index["skipped"]
        if not self.records:
            raise InputError("data.cache_dir", "holds no records", str(cache_dir))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        shard, prefix, record_id, *_ = self.records[index]
        dropouts = draw_dropouts(sample_rng(self.seed, epoch, index), self.dropout)
        return {**self.reader.sample(self.shards[shard], prefix, dropouts), "id": record_id}


class CachedShards(_Cache):
    """A shard dataset's cache, for a ``ShardStream``: ``read(i)`` yields cache shard i's records,
    ``make`` loads one (its dropouts seeded by the data shard's sample index, as live)."""

    def __init__(self, cache_dir: str | os.PathLike[str], *args: Any, **kwargs: Any):
        super().__init__(cache_dir, *args, **kwargs)
        self.names = [s["path"] for s in self.index["shards"]]
        self.sizes = [int(s["samples"]) for s in self.index["shards"]]
        self.skipped = int(self.index["skipped_count"])
        if not sum(self.sizes):
            raise InputError("data.cache_dir", "holds no records", str(cache_dir))

    def read(self, shard: int) -> Iterator[tuple[str, Any]]:
        records = json.loads(self.reader.handle(self.names[shard]).metadata()["records"])
        for record_id, prefix, _, source_index in records:
            yield record_id, (prefix, source_index)

    def make(
        self, raw: tuple[str, int], key: str, shard: int, index: int, epoch: int
    ) -> dict[str, Any]:
        prefix, source_index = raw
        rng = np.random.default_rng([self.seed, epoch, shard, source_index, 1])
        dropouts = draw_dropouts(rng, self.dropout)
        return {**self.reader.sample(self.names[shard], prefix, dropouts), "id": key}
