"""Writing the shards: items in input order → WebDataset tars, one pair per group of inputs.

Inputs are cut into groups of ``shards.inputs_per_shard`` consecutive files of the sorted input
list; group ``n`` becomes ``shards/shard-<n>.tar`` (training samples) and ``raw/raw-<n>.tar``
(raw records), written with ``webdataset.TarWriter`` under temporary names, renamed into place,
and then marked done by ``shards/shard-<n>.json`` (its counts, failures, target hashes and
histograms). A shard is done exactly when its marker exists, so a build killed at any moment
resumes by redoing only the shards without one — the resume unit. Tar headers carry fixed
times and owners and the samples come in input order: a shard's bytes depend only on its inputs
and the settings, not on when or where it was built.

Near-duplicate removal runs here, in input order, against every earlier shard's targets, so it is
the same whether or not the build was interrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..atomic import atomic_write_json
from ..errors import MSDiffusionError
from ..shards import raw_path, shard_path
from .config import BuildConfig
from .dedup import HashIndex
from .item import Item
from .report import RecordSummary
from .stats import Stats

__all__ = ["ShardPlan", "ShardWriter", "entry_path", "read_entry"]

TAR_OWNER = "msdiffusion"


def entry_path(root: Path, number: int) -> Path:
    return root / shard_path(number).replace(".tar", ".json")


def read_entry(root: Path, number: int) -> dict[str, Any]:
    return json.loads(entry_path(root, number).read_text())


@dataclass
class ShardPlan:
    """Which inputs (by position in the input list) go to which shard."""

    inputs: int
    per_shard: int

    @property
    def count(self) -> int:
        return max(1, -(-self.inputs // self.per_shard))

    def of(self, order: int) -> int:
        return order // self.per_shard

    def orders(self, number: int) -> range:
        return range(number * self.per_shard, min((number + 1) * self.per_shard, self.inputs))


def _tar(path: Path) -> tuple[IO[bytes], Any]:
    from webdataset import TarWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "wb")
    return stream, TarWriter(
        stream, encoder=False, mtime=0.0, user=TAR_OWNER, group=TAR_OWNER, mode=0o444
    )


def _close(stream: IO[bytes], tar: Any, tmp: Path, final: Path) -> int:
    tar.close()
    stream.flush()
    os.fsync(stream.fileno())
    stream.close()
    os.replace(tmp, final)
    return final.stat().st_size


@dataclass
class _Open:
    """The shard being written."""

    number: int
    expected: range
    streams: dict[str, tuple[IO[bytes], Any, Path, Path]]
    stats: Stats = field(default_factory=Stats)
    without_raw: Stats = field(default_factory=Stats)  # items that left no raw record
    summary: RecordSummary = field(default_factory=RecordSummary)
    failed: list[dict[str, Any]] = field(default_factory=list)
    hashes: list[list[Any]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    samples: int = 0
    subjects: int = 0
    raw_records: int = 0


class ShardWriter:
    """Writes shards into dataset folder ``root`` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        cfg: BuildConfig,
        plan: ShardPlan,
        *,
        raw: bool = True,
        base: Callable[[int], tuple[Stats, list[dict[str, Any]]]] | None = None,
    ):
        """``raw``: also write the raw tars (a build; a refilter reads its source's instead).
        ``base(number)``: counts and failures a shard starts with (a refilter: those of the
        source shard's items that left no raw record)."""
        self.root, self.cfg, self.plan, self.raw, self.base = root, cfg, plan, raw, base
        self.hashes = HashIndex(cfg.dedup.max_distance)
        self.hashed_upto = 0  # hashes of shards below this number are in ``self.hashes``
        for folder in ("shards", "raw"):
            for tmp in (root / folder).glob(".*.tmp"):  # an interrupted shard's leftovers
                tmp.unlink()

    def done(self, number: int) -> bool:
        return entry_path(self.root, number).is_file()

    def pending(self) -> list[int]:
        return [n for n in range(self.plan.count) if not self.done(n)]

    def _catch_up_hashes(self, number: int) -> None:
        """Feed the hashes of the finished shards below ``number`` (in order) to the index."""
        for n in range(self.hashed_upto, number):
            if self.done(n):
                for _, value in read_entry(self.root, n)["hashes"]:
                    self.hashes.add(int(value, 16))
        self.hashed_upto = max(self.hashed_upto, number)

    def _open(self, number: int) -> _Open:
        self._catch_up_hashes(number)
        streams = {}
        names = {"shard": shard_path(number)}
        if self.raw:
            names["raw"] = raw_path(number)
        for role, rel in names.items():
            final = self.root / rel
            tmp = final.with_name(f".{final.name}.tmp")
            streams[role] = (*_tar(tmp), tmp, final)
        shard = _Open(number, self.plan.orders(number), streams)
        if self.base is not None:
            stats, failed = self.base(number)
            shard.stats.merge(stats)
            shard.without_raw.merge(stats)
            shard.failed.extend(failed)
            shard.seen.update(shard.expected)  # the source shard saw every input
        return shard

    def _add(self, shard: _Open, item: Item) -> None:
        shard.seen.add(item.order)
        shard.stats.merge(item.stats)
        if item.failure is not None:
            shard.failed.append({"input": item.input, "index": item.index, **item.failure})
            shard.stats.skip(f"failed:{item.failure['stage']}")
        if item.raw_files is not None:
            shard.streams["raw"][1].write({"__key__": item.sample_key, **item.raw_files})
            shard.raw_records += 1
        elif self.raw:
            shard.without_raw.merge(item.stats)
        else:  # a refilter: the item comes from a raw record
            shard.raw_records += 1
        stats = item.select_stats
        if item.sample_files is not None:
            assert item.phash is not None
            if self.hashes.near(item.phash):
                stats.skip("sample:near_duplicate_target")
            else:
                self.hashes.add(item.phash)
                record = json.loads(item.sample_files["json"])
                shard.streams["shard"][1].write({"__key__": item.sample_key, **item.sample_files})
                shard.hashes.append([item.sample_key, f"{item.phash:016x}"])
                shard.summary.add(record)
                shard.samples += 1
                shard.subjects += len(record["subjects"])
                stats.add("samples")
                stats.add("subjects", len(record["subjects"]))
        shard.stats.merge(stats)

    def _finish(self, shard: _Open) -> dict[str, Any]:
        missing = [o for o in shard.expected if o not in shard.seen]
        if missing:  # every input yields at least its file item: something lost rows
            raise MSDiffusionError(
                f"shard {shard.number}: no result for {len(missing)} inputs "
                f"(first: input #{missing[0]}); re-run to resume"
            )
        sizes = {role: _close(*streams) for role, streams in shard.streams.items()}
        entry = {
            "shard": shard.number,
            "path": shard_path(shard.number),
            "raw": raw_path(shard.number) if self.raw else None,
            "inputs": [shard.expected.start, shard.expected.stop],
            "samples": shard.samples,
            "subjects": shard.subjects,
            "raw_records": shard.raw_records,
            "bytes": sizes["shard"],
            "raw_bytes": sizes.get("raw"),
            "failed": shard.failed,
            "config_fingerprint": self.cfg.fingerprint(),
            "stats": shard.stats.to_dict(),
            "stats_without_raw": shard.without_raw.to_dict(),
            "summary": shard.summary.to_dict(),
            "hashes": shard.hashes,
        }
        atomic_write_json(entry_path(self.root, shard.number), entry, indent=None)
        return entry

    def write(self, items: Iterable[Item], numbers: list[int]) -> Iterator[dict[str, Any]]:
        """Consume ``items`` (input order) of shards ``numbers`` (ascending); yield each finished
        shard's entry — also for a shard no item belongs to (a refilter of an empty shard)."""
        todo = iter(numbers)
        shard: _Open | None = None

        def advance_to(number: int | None) -> Iterator[dict[str, Any]]:
            nonlocal shard
            while shard is None or number is None or shard.number < number:
                if shard is not None:
                    yield self._finish(shard)
                    shard = None
                upcoming = next(todo, None)
                if upcoming is None:
                    if number is not None:
                        raise MSDiffusionError(f"an item of shard {number} was not expected")
                    return
                shard = self._open(upcoming)
            if shard.number > number:
                raise MSDiffusionError("items arrived out of input order")

        for item in items:
            yield from advance_to(self.plan.of(item.order))
            assert shard is not None
            self._add(shard, item)
        yield from advance_to(None)
