"""Atomic file writes: a file appears under its name only once it is complete.

Everything is written to a temporary name in the target's folder, flushed, then moved into place
with ``os.replace`` (atomic on POSIX and Windows); on any error the temporary file is removed. A
crash mid-write leaves either the old file or none — never a half-written one that looks done.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_open", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "atomic_save_image"]


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
