"""A resumable stream over shards: every process, and every DataLoader worker of it, reads its own
shards front to back — the way shard datasets are meant to be read at scale.

With W processes of K workers there are S = W·K *streams* (stream ``rank·K + worker``). A
shard's samples form one *unit*; with fewer shards than streams each shard is read as P parts
(sample ``l`` of a shard in part ``l mod P``), so every stream has work. Epoch e permutes the
units (seeded by the seed and e) and stream s takes units s, s + S, s + 2S, … of that order;
within a unit, samples pass a shuffle buffer seeded by (seed, e, shard, part). Each stream runs
through its epochs on its own, endlessly; a sample's crops and dropouts are seeded by
(seed, e, shard, index in shard), whatever stream reads it.

A stream's position is ``(epoch, unit, taken)``: the unit it is in and how many of that unit's
samples it has passed on (used or skipped). Every sample carries its stream's position after it;
the trainer keeps the position of the last batch it consumed from each stream and saves them all
in the checkpoint, with the number of batches each process consumed (a DataLoader takes its
workers' batches in turn, starting with worker 0: ``offset`` lets worker 0 serve the stream whose
turn is next). A resume restarts each stream there — re-reading the current unit up to that
point without decoding it — so it continues exactly, as long as the streams are the same (the
same process and worker counts, seed, buffer and dataset; otherwise see ``fresh_positions``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .records import SampleError

__all__ = ["ShardStream", "stream_layout", "fresh_positions", "Position", "Broken"]

Position = tuple[int, int, int]  # (epoch, unit in the stream's epoch plan, samples taken from it)
MAX_CONSECUTIVE_SKIPS = 32
MAX_IDLE_EPOCHS = 1000


@dataclass(frozen=True)
class Broken:
    """Where a shard broke off: its ``lost`` samples (of this unit) count as skipped."""

    reason: str
    lost: int


def stream_layout(
    world_size: int, workers: int, seed: int, buffer: int, dataset: str
) -> dict[str, Any]:
    """What the positions are relative to; a checkpoint's positions apply only if it matches."""
    return {
        "world_size": world_size,
        "workers": max(1, workers),
        "seed": seed,
        "buffer": buffer,
        "dataset": dataset,
    }


def fresh_positions(saved: dict[str, Any]) -> dict[int, Position]:
    """Positions for streams that cannot continue the saved ones (another layout): every stream
    (key -1) starts at the epoch after the furthest one any saved stream reached (nothing of that
    epoch is repeated; the rest of the saved epochs is not seen)."""
    epochs = [int(p[0]) for p in saved.get("positions", {}).values()]
    return {} if not epochs else {-1: (max(epochs) + 1, 0, 0)}


class ShardStream(IterableDataset):
    """Samples of one process: ``read(shard)`` yields ``(key, raw)`` per sample of a shard, in
    order; ``make(raw, key, shard, index, epoch)`` turns one into a sample dict (or raises
    SampleError). Items carry ``stream`` ``(stream, epoch, unit, taken)`` and ``skipped``."""

    def __init__(
        self,
        sizes: list[int] | tuple[int, ...],
        read: Callable[[int], Iterator[tuple[str, Any]]],
        make: Callable[[Any, str, int, int, int], dict[str, Any]],
        *,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 1,
        seed: int = 0,
        buffer: int = 500,
        positions: dict[int, Position] | None = None,
        offset: int = 0,
    ):
        self.read, self.make = read, make
        self.rank, self.workers, self.seed, self.buffer = rank, max(1, workers), seed, buffer
        self.streams = world_size * self.workers
        self.sizes = list(sizes)  # what each shard should hold (its index entry)
        shards = [i for i, n in enumerate(sizes) if n > 0]
        if sum(sizes) < self.streams:
            raise ValueError(
                f"{sum(sizes)} samples cannot feed {self.streams} streams "
                f"({world_size} processes × {self.workers} workers); lower data.num_workers"
            )
        parts = max(1, math.ceil(self.streams / len(shards)))
        self.units = [(i, p, parts) for i in shards for p in range(parts)]
        self.positions, self.offset = dict(positions or {}), offset

    def plan(self, stream: int, epoch: int) -> list[tuple[int, int, int]]:
        """The units stream ``stream`` reads in ``epoch``, in order."""
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.units))
        return [self.units[j] for j in order[stream :: self.streams]]

    def unit(self, unit: tuple[int, int, int], epoch: int) -> Iterator[tuple[int, str, Any]]:
        """``(index in shard, key, raw)`` of one unit, through its shuffle buffer; a shard that
        breaks off (truncated, unreadable) ends its unit with a ``Broken`` item."""
        shard, part, parts = unit
        rng = np.random.default_rng([self.seed, epoch, shard, part])
        held: list[tuple[int, str, Any]] = []
        broken, index = None, -1
        try:
            for index, (key, raw) in enumerate(self.read(shard)):
                if index % parts != part:
                    continue
                if len(held) < self.buffer:
                    held.append((index, key, raw))
                    continue
                j = int(rng.integers(len(held)))
                out, held[j] = held[j], (index, key, raw)
                yield out
        except Exception as err:  # the reader on untrusted bytes: the rest of the shard is lost
            broken = f"unreadable after sample {index + 1} ({err!r})"[:300]
        for j in rng.permutation(len(held)):
            yield held[j]
        lost = sum(1 for i in range(index + 1, self.sizes[shard]) if i % parts == part)
        if lost:  # a reader error, or a tar cut at a block boundary (it reads as a shorter one)
            reason = broken or f"ended after {index + 1} of its {self.sizes[shard]} samples"
            yield (-1, "", Broken(f"shard {shard}: {reason}", lost))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"built for {self.workers} workers, run by {info.num_workers}")
        stream = self.rank * self.workers + (worker + self.offset) % self.workers
        epoch, first, taken = self.positions.get(stream, self.positions.get(-1, (0, 0, 0)))
        skipped: list[tuple[str | None, str]] = []
        idle = 0
        while True:
            read_any = False
            for u, unit in enumerate(self.plan(stream, epoch)):
                if u < first:
                    continue
                for n, (index, key, raw) in enumerate(self.unit(unit, epoch)):
                    read_any = True
                    if n < taken:  # already passed on before the resume
                        continue
                    taken = n + 1
                    if isinstance(raw, Broken):  # one skip per sample lost
                        skipped.extend([(None, raw.reason)] * raw.lost)
                        continue
                    try:
                        sample = self.make(raw, key, unit[0], index, epoch)
                    except SampleError as err:
                        skipped.append((err.record_id or key or None, str(err)))
                        if len(skipped) >= MAX_CONSECUTIVE_SKIPS:
                            raise RuntimeError(
                                f"{len(skipped)} consecutive samples could not be loaded "
                                f"(last: {skipped[-1]}); is the data there?"
                            ) from None
                        continue
                    sample["skipped"], skipped = skipped, []
                    sample["stream"] = (stream, epoch, u, taken)
                    yield sample
                taken = 0
            idle = 0 if read_any else idle + 1
            if idle >= MAX_IDLE_EPOCHS:
                raise RuntimeError(f"stream {stream} found no sample in {idle} epochs")
            epoch, first = epoch + 1, 0
