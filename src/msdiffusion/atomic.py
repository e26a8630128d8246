"""Atomic writes: a file or a folder appears under its name only once it is complete.

Everything is written to a temporary name in the target's folder, flushed, then moved into place
with ``os.replace`` (atomic on POSIX and Windows); on any error the temporary file is removed. A
crash mid-write leaves either the old file or none — never a half-written one that looks done.

A folder is swapped in whole, its files and entries fsynced first. On Linux the new folder and
the old one trade names in one step (``renameat2`` with ``RENAME_EXCHANGE``), so the name always
holds a complete folder, whenever the process is killed. Where that is not supported (other
systems, some network filesystems) the old folder is moved aside to a fresh ``.old-<name>.*``
name, the new one renamed into place, then the old one removed; a process killed between the two
renames leaves the name empty and the old folder aside, and the next write of that folder (or
``recover_dir``) puts it back first. Leftovers of earlier runs never block a write.

Files and folders get the permissions a plain ``open`` / ``mkdir`` would give them (0666 / 0777
less the process's umask), not the owner-only ones of their temporary names — nor those of a
writer that puts a file of its own in place (safetensors' ``save_file`` writes owner-only): results
on a shared server are as readable as the user's umask says.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
import threading
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
    "recover_dir",
    "fsync_dir",
    "fsync_tree",
    "check_writable_folder",
]

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask (read by setting it and setting it back, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _as_created(path: str | os.PathLike[str], mode: int) -> None:
    """Give ``path`` the permissions ``mode`` less the umask, as ``open``/``mkdir`` would."""
    os.chmod(path, mode & ~_umask())


def _tree_as_created(folder: Path) -> None:
    """Every folder and file in ``folder`` (itself included; links left alone) as ``mkdir`` and
    ``open`` would make them."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for names, mode in ((dirs, 0o777), (files, 0o666)):
            for name in names:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, mode & ~mask)


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
    _as_created(tmp, 0o666)  # mkstemp makes it owner-only
    try:
        yield tmp
        _as_created(tmp, 0o666)  # again: the writer may have put an owner-only file there
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


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """Flush every file and folder under ``path`` to disk (a folder about to be renamed into
    place: its contents must be durable before its name is)."""
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                try:
                    os.fsync(handle.fileno())
                except OSError:  # platforms that cannot fsync a file opened for reading
                    pass
        fsync_dir(folder)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the platform or the filesystem does not support it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # libc without renameat2 (glibc < 2.28, musl)
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(b))


def _asides(path: Path) -> list[Path]:
    """Folders an interrupted swap of ``path`` moved aside, newest first."""
    found = [p for p in path.parent.glob(f".old-{path.name}*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def recover_dir(path: str | os.PathLike[str]) -> bool:
    """Undo a swap that was killed between its two renames: when ``path`` is missing and its old
    version lies aside (``.old-<name>*``), move it back. Returns True if it did."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return False
    asides = _asides(path)
    if not asides:
        return False
    os.replace(asides[0], path)
    fsync_dir(path.parent)
    return True


def replace_dir(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Put the complete folder ``tmp`` at ``path``, replacing a folder already there; its
    contents get the permissions the umask gives."""
    tmp, path = Path(tmp), Path(path)
    _tree_as_created(tmp)
    fsync_tree(tmp)
    recover_dir(path)
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # it holds the old folder now
    else:
        aside = Path(tempfile.mkdtemp(prefix=f".old-{path.name}.", dir=path.parent))
        os.replace(path, aside)  # onto the fresh empty folder: a leftover can never be in the way
        os.replace(tmp, path)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_dir(path.parent)
    for stale in _asides(path):  # debris of earlier interrupted swaps, now that path is complete
        shutil.rmtree(stale, ignore_errors=True)


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


def check_writable_folder(path: str | os.PathLike[str], argument: str = "--out") -> Path:
    """``path`` as an output folder: a folder (or not there yet) inside which this process can
    create files — checked before any work starts by creating and removing a probe file in the
    nearest folder that exists (permissions, read-only file systems); nothing is left behind.
    Raises ``InputError`` naming ``argument`` otherwise."""
    from .errors import InputError

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(argument, "is a file, not a folder", str(folder))
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(argument, f"lies inside {existing}, which is a file", str(folder))
    try:
        fd, probe = tempfile.mkstemp(prefix=".msdiffusion-probe-", dir=existing)
    except OSError as err:
        reason = (err.strerror or err.__class__.__name__).lower()
        raise InputError(argument, f"cannot write in {existing} ({reason})", str(folder)) from None
    os.close(fd)
    os.unlink(probe)
    return folder
