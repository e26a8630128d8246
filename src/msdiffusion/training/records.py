"""Where a sample's record and files come from: a JSONL manifest read one line at a time, or the
members of one sample of a WebDataset shard (``msdiffusion.shards``: the format and its reader).

A manifest is indexed once per process by the byte offsets of its non-blank lines — a vectorised
pass over its bytes that parses nothing; 20 bytes per record stay in memory (parsed records take
about a hundred times that: ``benchmarks/manifest_index.py``). A
record is read (``os.pread``: no shared file position between forked workers) and parsed when
a sample needs it, so a bad line is that sample's problem, found when it is drawn.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..encoding import load_image
from ..errors import InputError
from ..manifest import Record, RecordProblem, decode_line, parse_record

__all__ = ["ManifestLines", "ShardSet", "FolderFiles", "MemberFiles", "SampleError"]

BLOCK = 1 << 24  # bytes indexed at a time
_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 11, 12, 13, 32]] = True  # what bytes.strip() removes: a line of only these is blank


class SampleError(Exception):
    """A record that cannot become a sample: one line saying why, and the record's id if known."""

    def __init__(self, reason: str, record_id: str | None = None):
        super().__init__(reason)
        self.record_id = record_id


class ManifestLines:
    """The non-blank lines of a JSONL manifest: ``record(i)`` reads and parses line ``i``.

    ``starts``/``lengths`` locate each line in the file (bytes, newline included), ``numbers`` are
    their 1-based line numbers (for messages).
    """

    def __init__(self, path: Path, starts: np.ndarray, lengths: np.ndarray, numbers: np.ndarray):
        self.path, self.starts, self.lengths, self.numbers = Path(path), starts, lengths, numbers
        self._fd: int | None = None
        self._pid = -1

    @classmethod
    def index(cls, path: str | os.PathLike[str], block: int = BLOCK) -> ManifestLines:
        """Locate every non-blank line of ``path`` (reads its bytes once, ``block`` bytes at a
        time; parses nothing)."""
        path = Path(path)
        starts, ends, numbers = [], [], []
        offset, number = 0, 0
        carry_start, carry_text = 0, 0  # the line running into the next block
        with open(path, "rb") as handle:
            while chunk := handle.read(block):
                data = np.frombuffer(chunk, dtype=np.uint8)
                newlines = np.flatnonzero(data == 10)
                text = ~_SPACE[data]  # (n,) bool: a byte that makes its line non-blank
                cuts = np.concatenate([[0], newlines + 1])
                cuts = cuts[cuts < len(data)]
                per_segment = np.add.reduceat(text, cuts, dtype=np.int64) if len(cuts) else []
                if len(newlines):
                    counts = np.asarray(per_segment[: len(newlines)], dtype=np.int64)
                    counts[0] += carry_text
                    line_starts = np.concatenate([[carry_start], offset + newlines[:-1] + 1])
                    keep = counts > 0
                    starts.append(line_starts[keep])
                    ends.append((offset + newlines + 1)[keep])
                    numbers.append((number + 1 + np.arange(len(newlines)))[keep])
                    number += len(newlines)
                    carry_start = offset + int(newlines[-1]) + 1
                    tail = len(cuts) > len(newlines)  # bytes after the last newline
                    carry_text = int(per_segment[-1]) if tail else 0
                else:
                    carry_text += int(per_segment[0])
                offset += len(data)
        if carry_text:  # a last line without its newline
            starts.append(np.array([carry_start]))
            ends.append(np.array([offset]))
            numbers.append(np.array([number + 1]))

        def joined(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

        begin = joined(starts)
        return cls(path, begin, (joined(ends) - begin).astype(np.int32), joined(numbers))

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def root(self) -> Path:
        return self.path.parent

    def select(self, keep: np.ndarray) -> ManifestLines:
        """The lines where ``keep`` (a bool mask, one per line) is True."""
        return ManifestLines(self.path, self.starts[keep], self.lengths[keep], self.numbers[keep])

    def raw(self, i: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():  # reopened in a spawned worker
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, int(self.lengths[i]), int(self.starts[i]))

    def record(self, i: int) -> Record:
        """Line ``i`` as a Record; raises RecordProblem (with line and id) when it is not one."""
        number = int(self.numbers[i])
        obj = decode_line(self.raw(i), number)
        if isinstance(obj, RecordProblem):
            raise obj
        try:
            return parse_record(obj, number)
        except RecordProblem as err:
            raw_id = obj.get("id") if isinstance(obj, dict) else None
            raise err.located(number, raw_id if isinstance(raw_id, str) else None) from None

    def __getstate__(self) -> dict[str, Any]:  # a file descriptor does not cross processes
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


@dataclass(frozen=True)
class ShardSet:
    """A shard dataset as training plans it: its shards (paths) and their sample counts, in index
    order, and the SHA-256 of its index.json (its identity in checkpoints and caches)."""

    root: Path
    shards: tuple[Path, ...]
    sizes: tuple[int, ...]
    digest: str

    @property
    def samples(self) -> int:
        return sum(self.sizes)

    @classmethod
    def read(cls, path: str | os.PathLike[str], argument: str = "data.manifest") -> ShardSet:
        from ..shards import INDEX_NAME, read_index

        try:
            index = read_index(path)
            sizes = tuple(int(s["samples"]) for s in index.shards)
        except InputError as err:
            raise InputError(argument, err.rule, err.value) from None
        except (KeyError, TypeError, ValueError):
            raise InputError(
                argument, "index.json: every shard needs a samples count", path
            ) from None
        if not sum(sizes):
            raise InputError(argument, "is a shard dataset without samples", str(path))
        if importlib.util.find_spec("webdataset") is None:
            raise InputError(
                argument,
                "is a shard dataset: reading it needs webdataset (pip install webdataset==1.0.2, "
                "part of the train extra)",
                str(path),
            )
        digest = hashlib.sha256((index.root / INDEX_NAME).read_bytes()).hexdigest()
        return cls(index.root, tuple(index.paths()), sizes, digest)


def _decode(opener: Any, name: str, mode: str) -> Image.Image:
    """An image from ``opener()``, as RGB or ``mode``; any decoder failure is a SampleError."""
    try:
        with opener() as handle:
            handle.load()
            return handle.convert(mode)
    except Exception as err:  # the decoder on untrusted bytes: corrupt, truncated, a bomb, …
        raise SampleError(f"{name}: is not a readable image ({err.__class__.__name__})") from None


class FolderFiles:
    """A manifest record's files: paths relative to the manifest's folder."""

    def __init__(self, root: Path):
        self.root = root

    def image(self, rel: str, name: str, mode: str = "RGB") -> Image.Image:
        path = self.root / rel
        if mode == "RGB":
            try:
                return load_image(path, name)
            except Exception as err:  # InputError (missing, unreadable) or the decoder's own
                raise SampleError(str(err)) from None
        if not path.is_file():
            raise SampleError(f"{name}: file does not exist (got {str(path)!r})")
        return _decode(lambda: Image.open(path), name, mode)


class MemberFiles:
    """A shard sample's files: the record names members of its own sample (``"jpg"``, …)."""

    def __init__(self, key: str, files: dict[str, bytes], shard: str = ""):
        self.key, self.files, self.shard = key, files, shard

    def image(self, member: str, name: str, mode: str = "RGB") -> Image.Image:
        if member not in self.files:
            raise SampleError(f"{name}: no member {self.key}.{member} in {self.shard}")
        data = self.files[member]
        return _decode(lambda: Image.open(io.BytesIO(data)), name, mode)
