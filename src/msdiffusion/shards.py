"""Training data as WebDataset shards: the format, and a reader (docs/training-data.md).

A dataset folder written by ``msdiffusion data build``::

    DATASET/index.json               shard list, counts, config fingerprint (``read_index``)
    DATASET/shards/shard-000000.tar  training samples (POSIX tar, WebDataset layout)
    DATASET/raw/raw-000000.tar       raw model outputs of the same inputs (``data refilter``)

In a shard, the files of one sample share a key (``<input key>-<target number>``, no dots) and
follow each other: ``KEY.json`` (the record), ``KEY.jpg`` (the target; ``.png`` when the build's
``image_format`` is png), and per subject ``k``: ``KEY.ref{k}.jpg`` (its reference crop) and,
when it has one, ``KEY.ref{k}.mask.png`` (its mask, L, 0/255, the reference's size). The record is
a manifest record (``manifest`` checks it) whose paths name members of the same sample:
``"image": "jpg"``, ``"reference": "ref0.jpg"``, ``"reference_mask": "ref0.mask.png"``.

This module only reads; it imports neither the data-building nor the training code, so both
(and any other reader) can use it. ``webdataset`` (the ``data`` extra) is imported on use.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = [
    "FORMAT",
    "INDEX_NAME",
    "RECORD",
    "RAW_RECORD",
    "ShardIndex",
    "ShardSample",
    "shard_path",
    "raw_path",
    "target_member",
    "reference_member",
    "mask_member",
    "read_index",
    "iter_samples",
    "iter_tar",
    "is_dataset",
    "shard_files",
    "scan_shards",
]

FORMAT = "msdiffusion-shards/1"
INDEX_NAME = "index.json"
RECORD = "json"  # the member holding the sample's record
RAW_RECORD = "raw.json"  # the member holding a raw record's data


def shard_path(number: int) -> str:
    return f"shards/shard-{number:06d}.tar"


def raw_path(number: int) -> str:
    return f"raw/raw-{number:06d}.tar"


def target_member(fmt: str) -> str:
    return fmt


def reference_member(k: int, fmt: str) -> str:
    return f"ref{k}.{fmt}"


def mask_member(k: int) -> str:
    return f"ref{k}.mask.png"


@dataclass
class ShardIndex:
    """``index.json``: what a training run needs to plan its epochs and split its shards."""

    root: Path
    shards: list[dict[str, Any]]  # {"path", "raw", "samples", "subjects", "inputs", "bytes"}
    samples: int
    config_fingerprint: str
    data: dict[str, Any] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        return [self.root / s["path"] for s in self.shards]


def is_dataset(path: str | Path) -> bool:
    path = Path(path)
    return (path / INDEX_NAME).is_file() or (path.name == INDEX_NAME and path.is_file())


def read_index(path: str | Path) -> ShardIndex:
    """Read ``DATASET/index.json`` (``path``: the folder or the file)."""
    path = Path(path)
    file = path / INDEX_NAME if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise InputError(
            "dataset", f"has no {INDEX_NAME} (not a finished build?)", str(path)
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError("dataset", f"{INDEX_NAME} is not valid JSON ({err})", str(file)) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(
            "dataset",
            f"{INDEX_NAME} must have format {FORMAT!r}",
            data.get("format") if isinstance(data, dict) else type(data).__name__,
        )
    return ShardIndex(
        file.parent,
        list(data["shards"]),
        int(data["samples"]),
        str(data["config_fingerprint"]),
        data,
    )


@dataclass
class ShardSample:
    """One sample of a shard: its key, its record (paths are member names) and its files."""

    key: str
    record: dict[str, Any]
    files: dict[str, bytes]  # member name (without the key) → bytes
    shard: str = ""

    def open(self, member: str) -> Any:
        """A member as a PIL image (``sample.open(record["image"])``)."""
        import io

        from PIL import Image

        if member not in self.files:
            raise InputError(f"{self.key}.{member}", "no such member in the shard", self.shard)
        return Image.open(io.BytesIO(self.files[member]))


def iter_tar(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {member: bytes})`` per sample of one tar, in order (WebDataset's grouping).

    Read with ``webdataset``'s tar iterator; a member's key is its name up to the first dot.
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(path, "rb") as stream:
        source = [{"url": str(path), "stream": stream}]
        for sample in group_by_keys(tar_file_expander(source)):
            key = sample.pop("__key__")
            sample.pop("__url__", None)
            sample.pop("__local_path__", None)
            yield key, {k: v for k, v in sample.items() if not k.startswith("__")}


def iter_samples(shards: Iterable[str | Path]) -> Iterator[ShardSample]:
    """Every training sample of ``shards`` (tar paths), in order."""
    for path in shards:
        for key, files in iter_tar(path):
            if RECORD not in files:
                raise InputError(f"{path}", f"sample {key!r} has no {RECORD} member", sorted(files))
            yield ShardSample(key, json.loads(files[RECORD]), files, str(path))


def tar_members(path: str | Path) -> list[str]:
    """Member names of a tar, in order (headers only: fast)."""
    with tarfile.open(path, "r:") as tar:
        return tar.getnames()


def shard_files(path: str | Path) -> tuple[Path, list[Path]]:
    """A dataset folder, its ``index.json`` or one ``.tar`` → (where, the training shards)."""
    path = Path(path)
    if path.suffix == ".tar":
        if not path.is_file():
            raise InputError("shard", "file does not exist", str(path))
        return path, [path]
    index = read_index(path)
    return index.root, index.paths()


def scan_shards(path: str | Path, *, open_images: bool = True, decode: bool = False) -> Any:
    """Check every sample of a dataset's shards like a manifest's records (``data check``).

    Returns the manifest module's ``ManifestScan``: records, problems (``line`` is the sample's
    position in the dataset, from 1), image sizes. A member named by the record but missing from
    the sample is a ``missing file``; masks must have their reference's size.
    """
    from .manifest import ManifestScan, RecordProblem, parse_record

    where, shards = shard_files(path)
    for shard in shards:
        if not shard.is_file():
            raise InputError("dataset", "lists a shard that does not exist", str(shard))
    records, problems, sizes = [], [], []
    seen: dict[str, int] = {}
    total = 0
    every = ((shard, key, files) for shard in shards for key, files in iter_tar(shard))
    for total, (shard, key, files) in enumerate(every, start=1):
        sample = ShardSample(key, {}, files, str(shard))
        try:
            sample.record = _decoded_record(sample, RecordProblem)
            record = parse_record(sample.record, total)
            if record.id in seen:
                raise RecordProblem(
                    "duplicate", "id", f"repeats sample {seen[record.id]}", record.id
                )
            seen[record.id] = total
            for name, member in record.paths():
                if member not in sample.files:
                    raise RecordProblem(
                        "missing file",
                        name,
                        "no such member in the sample",
                        f"{sample.key}.{member} in {sample.shard}",
                    )
            if open_images:
                size = _size(sample, record.image, "image", decode, RecordProblem)
                for i, s in enumerate(record.subjects):
                    ref = _size(
                        sample, s.reference, f"subjects[{i}].reference", decode, RecordProblem
                    )
                    if s.reference_mask is not None:
                        mask = _size(
                            sample,
                            s.reference_mask,
                            f"subjects[{i}].reference_mask",
                            decode,
                            RecordProblem,
                        )
                        if mask != ref:
                            raise RecordProblem(
                                "mask size",
                                f"subjects[{i}].reference_mask",
                                f"must be the reference's size {ref}",
                                mask,
                            )
                sizes.append(size)
        except RecordProblem as err:
            problems.append(err.located(total, sample.key))
            continue
        records.append(record)
    return ManifestScan(Path(where), records, problems, total, sizes)


def _decoded_record(sample: ShardSample, problem: Any) -> Any:
    """A sample's record member as JSON, or a problem saying why it is not (missing, not UTF-8,
    not JSON)."""
    raw = sample.files.get(RECORD)
    if raw is None:
        raise problem("schema", RECORD, "no record member in the sample", sample.key)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise problem(
            "encoding", RECORD, f"is not valid UTF-8 (byte {raw[err.start]:#04x})", sample.key
        ) from None
    except (ValueError, RecursionError) as err:
        raise problem(
            "schema", RECORD, f"is not valid JSON ({err.__class__.__name__})", sample.key
        ) from None


def _size(
    sample: ShardSample, member: str, name: str, decode: bool, problem: Any
) -> tuple[int, int]:
    try:
        with sample.open(member) as image:
            if decode:
                image.load()
            return image.size
    except Exception as err:  # any failure of the decoder on these bytes (a decompression bomb, …)
        raise problem(
            "unreadable image",
            name,
            f"is not a readable image ({err.__class__.__name__})",
            f"{sample.key}.{member}",
        ) from None
