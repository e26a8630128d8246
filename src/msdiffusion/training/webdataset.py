"""The shard datasets ``msdiffusion data build`` writes, as training reads them
(docs/training-data.md, "Shards").

A dataset folder holds ``index.json`` (``format`` ``msdiffusion-shards/1``; ``shards``: in order,
each with its ``path`` relative to the folder and its ``samples`` count) and the shards: POSIX
tars in the WebDataset layout — the members of one sample are consecutive and named
``KEY.<member>``, ``KEY`` without dots: ``KEY.json`` (the record, whose paths name members of its
own sample: ``"image": "jpg"``, ``"reference": "ref0.jpg"``, ``"reference_mask":
"ref0.mask.png"``), the target, the reference crops, the masks. A shard is read front to back
(it may stream from any storage); the index's counts plan the epochs without opening a shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["SHARDS_FORMAT", "ShardSet", "is_shard_set", "read_shard_set", "iter_shard"]

SHARDS_FORMAT = "msdiffusion-shards/1"
INDEX_NAME = "index.json"
RECORD_MEMBER = "json"


@dataclass(frozen=True)
class ShardSet:
    """A dataset's shards (absolute paths) and their sample counts, in index order."""

    root: Path
    shards: tuple[Path, ...]
    sizes: tuple[int, ...]
    digest: str  # SHA-256 of index.json: the dataset's identity in caches and checkpoints

    @property
    def samples(self) -> int:
        return sum(self.sizes)


def _index_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path / INDEX_NAME if path.is_dir() else path


def is_shard_set(path: str | os.PathLike[str]) -> bool:
    """A dataset folder (or its index.json), as opposed to a JSONL manifest."""
    file = _index_file(path)
    return file.name == INDEX_NAME and file.is_file()


def read_shard_set(path: str | os.PathLike[str], argument: str = "data.manifest") -> ShardSet:
    """Read a dataset's ``index.json`` (``path``: the folder or the file)."""
    file = _index_file(path)
    try:
        raw = file.read_bytes()
        data = json.loads(raw)
    except OSError:
        raise InputError(argument, f"has no readable {INDEX_NAME}", str(path)) from None
    except ValueError as err:
        raise InputError(argument, f"{INDEX_NAME} is not valid JSON ({err})", str(file)) from None
    if not isinstance(data, dict) or data.get("format") != SHARDS_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(argument, f"{INDEX_NAME} must have format {SHARDS_FORMAT!r}", got)
    try:
        entries = [(file.parent / s["path"], int(s["samples"])) for s in data["shards"]]
    except (KeyError, TypeError, ValueError):
        raise InputError(
            argument, f"{INDEX_NAME}: every shard needs a path and a samples count", str(file)
        ) from None
    if not any(n > 0 for _, n in entries):
        raise InputError(argument, "has no samples", str(file))
    return ShardSet(
        file.parent,
        tuple(p for p, _ in entries),
        tuple(n for _, n in entries),
        hashlib.sha256(raw).hexdigest(),
    )


def iter_shard(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {member: bytes})`` per sample of one tar, in order (members grouped by key)."""
    key: str | None = None
    files: dict[str, bytes] = {}
    with open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            stem, dot, member = name.partition(".")
            if not dot:
                continue
            if stem != key and key is not None:
                yield key, files
                files = {}
            key = stem
            handle = tar.extractfile(info)
            files[member] = handle.read() if handle is not None else b""
    if key is not None:
        yield key, files
