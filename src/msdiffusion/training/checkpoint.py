"""Atomic, verified, resumable checkpoints: ``<output_dir>/checkpoints/step-NNNNNNNN``.

A checkpoint is written into a hidden temporary folder; once every process has written its part
the main process fsyncs each file, records its size and SHA-256 in ``trainer_state.json`` (the
step, data position and counters, written last) and swaps the folder into place. So a crash at
any point mid-save leaves the previous checkpoint as the latest (an incomplete folder is hidden,
``.tmp-…``; a folder without its state file is not a checkpoint), and a checkpoint damaged later
(a truncated file, a disk error) fails its verification instead of half-loading.

The folder holds one lineage. Resuming from a checkpoint that is not the newest (a rollback, or
the fallback past a damaged one) moves the newer ones — a branch being abandoned — into
``checkpoints/abandoned/``, so ``latest`` is always the newest checkpoint of the run that goes on,
and pruning (the last ``keep`` are kept) counts only those. Nothing is deleted but pruned
checkpoints of the current lineage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json, fsync_dir, recover_dir, replace_dir
from ..errors import CheckpointError

__all__ = ["TrainState", "CheckpointManager", "STATE_NAME", "ABANDONED", "file_digest"]

STATE_NAME = "trainer_state.json"
ABANDONED = "abandoned"
_NAME = re.compile(r"^step-(\d{8,})$")


@dataclass
class TrainState:
    """What a resume needs beyond the accelerate state (weights, optimizer, scheduler, RNG)."""

    step: int = 0  # optimizer steps done
    position: int = 0  # samples consumed from the global stream (see sampler.ShardedStream)
    samples_drawn: int = 0  # records tried at load time, all processes
    samples_skipped: int = 0  # of which skipped (bad at load time), all processes
    boxes_emptied: int = 0  # subject boxes the crop left empty (kept as the zero box)
    subjects_dropped: int = 0  # subjects past data.max_subjects
    world_size: int = 1
    batch_size: int = 1  # per process
    parent: str | None = None  # the checkpoint this run continued from (None: a fresh start)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # each resume and what changed
    data: dict[str, Any] | None = None  # what the data position counts in (inputs.py)
    stream: dict[str, Any] | None = None  # shard streams: every stream's position (streams.py)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def file_digest(path: Path) -> str:
    """SHA-256 of a file, flushing it to disk on the way (it was just written)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
        try:
            os.fsync(handle.fileno())
        except OSError:  # platforms that cannot fsync a file opened for reading
            pass
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STATE_NAME)


class CheckpointManager:
    """Lists, writes, verifies, sets aside and prunes the checkpoints of one run."""

    def __init__(self, root: str | os.PathLike[str], keep: int = 3):
        self.root, self.keep = Path(root), keep

    def path_for(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def complete(self) -> list[tuple[int, Path]]:
        """(step, folder) of every complete checkpoint of the lineage, oldest first."""
        if not self.root.is_dir():
            return []
        for entry in list(self.root.iterdir()):  # a swap killed between its renames
            if entry.name.startswith(".old-step-"):
                recover_dir(self.root / entry.name.removeprefix(".old-").split(".")[0])
        found = []
        for entry in self.root.iterdir():
            match = _NAME.match(entry.name)
            if match and (entry / STATE_NAME).is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1][1] if done else None

    def candidates(self, spec: str) -> list[Path]:
        """``"latest"`` → every complete checkpoint, newest first (the first good one is used);
        a path → that checkpoint (an error if it is not a complete one)."""
        if spec == "latest":
            return [path for _, path in reversed(self.complete())]
        path = Path(spec)
        if not (path / STATE_NAME).is_file():
            raise CheckpointError(
                f"resume: {spec!r} is not a complete checkpoint folder "
                f"(no {STATE_NAME}); use 'latest' or a step-NNNNNNNN folder"
            )
        return [path]

    def resolve(self, spec: str) -> Path | None:
        """The checkpoint ``spec`` names first (None: "latest" and there is none)."""
        found = self.candidates(spec)
        return found[0] if found else None

    @staticmethod
    def read_state(path: Path) -> TrainState:
        try:
            return TrainState.from_json(json.loads((path / STATE_NAME).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise CheckpointError(f"unreadable trainer state in {path} ({err})") from None

    @staticmethod
    def verify(path: Path) -> list[str]:
        """What is wrong with checkpoint ``path``: missing, truncated or changed files (against the
        sizes and SHA-256 sums in its state file). Checkpoints written before sums were recorded
        are checked for empty files only."""
        try:
            recorded = json.loads((path / STATE_NAME).read_text()).get("files")
        except (OSError, ValueError) as err:
            return [f"{STATE_NAME} is unreadable ({err.__class__.__name__})"]
        if recorded is None:
            return [f"{p.relative_to(path)} is empty" for p in _files(path) if not p.stat().st_size]
        problems = []
        for rel, want in sorted(recorded.items()):
            file = path / rel
            if not file.is_file():
                problems.append(f"{rel} is missing")
            elif file.stat().st_size != want["size"]:
                problems.append(f"{rel} has {file.stat().st_size} bytes, not {want['size']}")
            elif file_digest(file) != want["sha256"]:
                problems.append(f"{rel} does not match its SHA-256")
        return problems

    def save(
        self,
        step: int,
        state: TrainState,
        write: Callable[[Path], None],
        *,
        is_main: bool = True,
        barrier: Callable[[], None] = lambda: None,
    ) -> Path:
        """Write checkpoint ``step``: ``write(tmp_dir)`` runs on every process (collective saves
        write their parts), then the main process records the files' sums, writes the state and
        swaps the folder into place."""
        tmp = self.root / f".tmp-step-{step:08d}"
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        write(tmp)
        barrier()
        final = self.path_for(step)
        if is_main:
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": file_digest(p)}
                for p in _files(tmp)
            }
            atomic_write_json(tmp / STATE_NAME, {**state.to_json(), "files": files})
            replace_dir(tmp, final)  # a step re-saved after resuming from an earlier checkpoint
            self.prune()
        barrier()
        return final

    def set_aside(self, paths: list[Path], reason: str) -> list[Path]:
        """Move checkpoints out of the lineage into ``abandoned/`` (never deleted); returns
        where they went."""
        moved = []
        target_root = self.root / ABANDONED
        for path in paths:
            target_root.mkdir(parents=True, exist_ok=True)
            target, n = target_root / f"{path.name}-{reason}", 1
            while target.exists():
                n += 1
                target = target_root / f"{path.name}-{reason}-{n}"
            os.replace(path, target)
            moved.append(target)
        if moved:
            fsync_dir(self.root)
        return moved

    def continue_from(self, step: int, damaged: list[Path]) -> list[Path]:
        """The run goes on from checkpoint ``step``: the damaged checkpoints and every later one
        (a branch being abandoned) leave the lineage. Returns where they went."""
        later = [path for s, path in self.complete() if s > step and path not in damaged]
        return self.set_aside(damaged, "damaged") + self.set_aside(later, "abandoned")

    def prune(self) -> list[Path]:
        """Delete complete checkpoints beyond the last ``keep``, and stale temporary folders."""
        removed = []
        for _, path in self.complete()[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        for entry in self.root.iterdir():
            if entry.name.startswith((".tmp-step-", ".old-step-")) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed
