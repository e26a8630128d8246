"""Atomic writes: a file or a folder appears under its name only once it is complete.

Everything is written to a temporary name in the target's folder, flushed, then moved into place
with ``os.replace`` (atomic on POSIX and Windows); on any error the temporary file is removed. A
crash mid-write leaves either the old file or none — never a half-written one that looks done.
A folder is swapped in whole: the old one is moved aside, the new one renamed into its place,
then the old one removed — the name holds the old folder or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_image",
    "atomic_dir",
    "replace_dir",
    "fsync_dir",
]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` when the block succeeds.

    For writers that take a file name (``safetensors.save_file``, ``torch.save``, ``Image.save``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """``open`` for writing (``"w"`` text as UTF-8, or ``"wb"``); fsynced, then moved into place."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes new files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        encoding = "utf-8" if mode == "w" else None
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_save_image(image: Any, path: str | os.PathLike[str], **params: Any) -> None:
    """Save a PIL image (format from the suffix: PNG, JPEG, WebP) atomically."""
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise ValueError(f"cannot tell the image format of {path} (use {sorted(formats)})")
    with atomic_path(path) as tmp:
        image.save(tmp, format=formats[suffix], **params)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform / filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Put the complete folder ``tmp`` at ``path``, replacing a folder already there (moved aside
    to ``.old-<name>`` first, removed last)."""
    tmp, path = Path(tmp), Path(path)
    fsync_dir(tmp)
    if path.exists():
        old = path.with_name(f".old-{path.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` when the block succeeds
    and is removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
