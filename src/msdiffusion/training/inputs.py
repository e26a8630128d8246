"""The training input: a JSONL manifest, a shard dataset, or an embedding cache — as a dataset,
its DataLoader from a checkpoint's position, and the identity that position is relative to.

* A manifest (small sets) or a cache: map-style, one global order (``sampler.ShardedStream``):
  the position is one integer, the order of the remaining samples survives a change of batch
  size or process count; each record is read when drawn (``records.ManifestLines``).
* A shard dataset (any size): every process and DataLoader worker streams its own shards
  (``streams.ShardStream``): the position is one per stream, exact for the same streams.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch

from ..errors import InputError
from ..shards import is_dataset
from .baddata import SkipLog
from .checkpoint import TrainState
from .config import TrainConfig
from .dataset import ManifestDataset, SampleBuilder, ShardSamples, TarReader, collate_samples
from .preemption import ignore_stop_signals
from .records import ShardSet
from .streams import Position, ShardStream, stream_layout

__all__ = ["TrainingInput"]

logger = logging.getLogger("msdiffusion.training")


class TrainingInput:
    """Builds the dataset ``config.data`` names; ``loader(state)`` iterates it from ``state``.

    ``streamed``: a shard dataset or its cache, read by ``ShardStream`` (``sizes``, ``read``,
    ``make``); otherwise ``dataset`` is map-style. ``identity`` is what a position counts in.
    """

    def __init__(
        self,
        config: TrainConfig,
        accelerator: Any,
        skips: SkipLog,
        feature_extractor: Any,
        cache_fingerprint: dict[str, Any] | None = None,
    ):
        from .cached import CachedDataset, CachedShards, read_index

        self.config, self.accelerator = config, accelerator
        self.extra: dict[str, Any] = {}
        data = config.data
        self.dataset: Any = None
        if data.cache_dir is not None and read_index(data.cache_dir).get("source") == "shards":
            cache = CachedShards(data.cache_dir, config.dropout, config.seed, cache_fingerprint)
            digest = hashlib.sha256(json.dumps(cache_fingerprint, sort_keys=True).encode())
            self._stream(cache.sizes, cache.read, cache.make, "cache-shards", digest.hexdigest())
            self._cache_skips(skips, [], cache.skipped)
        elif data.cache_dir is not None:
            self.dataset = CachedDataset(
                data.cache_dir, config.dropout, config.seed, cache_fingerprint
            )
            skipped = [tuple(s) for s in self.dataset.skipped]
            self._cache_skips(skips, skipped, len(skipped))
            self.identity = {"kind": "cache", "records": len(self.dataset)}
        elif data.manifest is not None and is_dataset(data.manifest):
            shards = ShardSet.read(data.manifest)
            builder = SampleBuilder(data, config.dropout, feature_extractor)
            make = ShardSamples(builder, shards, config.seed)
            self._stream(shards.sizes, TarReader(shards), make, "shards", shards.digest)
            logger.info(
                "data: %d samples in %d shards of %s", len(self), len(shards.shards), shards.root
            )
        else:
            from .launch import manifest_lines

            lines, n_bad, _ = manifest_lines(config, accelerator, skips)
            self.extra["manifest_skipped"] = n_bad
            self.dataset = ManifestDataset(
                lines, data, config.dropout, feature_extractor, seed=config.seed
            )
            self.identity = {"kind": "manifest", "records": len(self.dataset)}
        streams = accelerator.num_processes * max(1, data.num_workers)
        if self.streamed and len(self) < streams:  # every stream needs a sample
            raise InputError(
                "data.num_workers",
                f"{len(self)} samples cannot feed {streams} data streams (processes × "
                "workers); lower it",
                data.num_workers,
            )

    def _stream(self, sizes: Any, read: Any, make: Any, kind: str, digest: Any) -> None:
        self.sizes, self.read, self.make = list(sizes), read, make
        self.identity = {"kind": kind, "samples": sum(self.sizes), "digest": str(digest)}

    def _cache_skips(self, skips: SkipLog, shown: list[Any], count: int) -> None:
        self.extra["cache_skipped"] = count
        skips.report(shown, "when caching")
        skips.check(count, len(self) + count, "cache", runtime=False)
        logger.info("data: %d cached records (%d skipped when caching)", len(self), count)

    @property
    def streamed(self) -> bool:
        return self.dataset is None

    def __len__(self) -> int:
        return sum(self.sizes) if self.streamed else len(self.dataset)

    # ---- positions -------------------------------------------------------------------------------
    def layout(self) -> dict[str, Any]:
        acc, data = self.accelerator, self.config.data
        return stream_layout(
            acc.num_processes,
            data.num_workers,
            self.config.seed,
            data.shuffle_buffer,
            self.identity["digest"],
        )

    def inexact(self, state: TrainState) -> list[str]:
        """Why the checkpoint's data position does not carry over exactly (empty: it does)."""
        if state.data is not None and state.data != self.identity:
            return [f"the data changed ({state.data} → {self.identity}): the position is lost"]
        if self.streamed and state.stream is not None:
            saved = state.stream.get("layout")
            if saved != self.layout():
                diff = sorted(k for k in self.layout() if saved.get(k) != self.layout()[k])
                return [
                    f"the shard streams differ ({', '.join(diff)}): each stream starts the epoch "
                    "after the furthest one reached"
                ]
        return []

    def positions(self, state: TrainState) -> dict[int, Position]:
        from .streams import fresh_positions

        if state.stream is None:
            return {}
        if state.stream.get("layout") != self.layout():
            return fresh_positions(state.stream)
        return {int(k): tuple(v) for k, v in state.stream["positions"].items()}

    def offset(self, state: TrainState) -> int:
        """Which worker's batch is next, for a resumed DataLoader (its turns start at 0)."""
        if state.stream is None or state.stream.get("layout") != self.layout():
            return 0
        return int(state.stream.get("batches", 0)) % max(1, self.config.data.num_workers)

    def stream_state(self, positions: dict[int, Position], batches: int) -> dict[str, Any]:
        """Every stream's position (``positions``: this process's streams) and the batches each
        process consumed (collective)."""
        from accelerate.utils import gather_object

        every = positions
        if self.accelerator.num_processes > 1:
            every = {k: v for part in gather_object([positions]) for k, v in part.items()}
        return {
            "layout": self.layout(),
            "positions": {str(k): list(v) for k, v in every.items()},
            "batches": batches,
        }

    # ---- iteration -------------------------------------------------------------------------------
    def loader(self, state: TrainState) -> torch.utils.data.DataLoader:
        from torch.utils.data import DataLoader

        from .sampler import ShardedStream

        config, acc = self.config, self.accelerator
        common = dict(
            batch_size=config.batch_size,
            collate_fn=collate_samples,
            num_workers=config.data.num_workers,
            pin_memory=acc.device.type == "cuda",
            # its own generator: starting the workers must not draw from the training RNG
            generator=torch.Generator().manual_seed(config.seed),
            worker_init_fn=ignore_stop_signals,
        )
        if self.streamed:
            stream = ShardStream(
                self.sizes,
                self.read,
                self.make,
                rank=acc.process_index,
                world_size=acc.num_processes,
                workers=config.data.num_workers,
                seed=config.seed,
                buffer=config.data.shuffle_buffer,
                positions=self.positions(state),
                offset=self.offset(state),
            )
            return DataLoader(stream, **common)
        sampler = ShardedStream(
            len(self.dataset),
            config.batch_size,
            rank=acc.process_index,
            world_size=acc.num_processes,
            seed=config.seed,
            start=state.position,
        )
        return DataLoader(self.dataset, sampler=sampler, **common)
