"""Atomic, resumable checkpoints: ``<output_dir>/checkpoints/step-NNNNNNNN``.

A checkpoint is written into a hidden temporary folder and renamed into place once every process
has written its part; the trainer state (step, data position, counters) is written last. So a
crash at any point mid-save leaves the previous checkpoint as the latest: an incomplete folder
is hidden (``.tmp-…``), and a folder without its state file is not a checkpoint. The last ``keep``
checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json, replace_dir
from ..errors import CheckpointError

__all__ = ["TrainState", "CheckpointManager", "STATE_NAME"]

STATE_NAME = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8,})$")


@dataclass
class TrainState:
    """What a resume needs beyond the accelerate state (weights, optimizer, scheduler, RNG)."""

    step: int = 0  # optimizer steps done
    position: int = 0  # samples consumed from the global stream (see sampler.ShardedStream)
    samples_drawn: int = 0  # records tried at load time, all processes
    samples_skipped: int = 0  # of which skipped (bad at load time), all processes
    world_size: int = 1
    batch_size: int = 1  # per process
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class CheckpointManager:
    """Lists, writes and prunes the checkpoints of one run."""

    def __init__(self, root: str | os.PathLike[str], keep: int = 3):
        self.root, self.keep = Path(root), keep

    def path_for(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def complete(self) -> list[tuple[int, Path]]:
        """(step, folder) of every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _NAME.match(entry.name)
            if match and (entry / STATE_NAME).is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1][1] if done else None

    def resolve(self, spec: str) -> Path | None:
        """``"latest"`` → the newest complete checkpoint (None if there is none); a path → that
        checkpoint (an error if it is not a complete one)."""
        if spec == "latest":
            return self.latest()
        path = Path(spec)
        if not (path / STATE_NAME).is_file():
            raise CheckpointError(
                f"resume: {spec!r} is not a complete checkpoint folder "
                f"(no {STATE_NAME}); use 'latest' or a step-NNNNNNNN folder"
            )
        return path

    @staticmethod
    def read_state(path: Path) -> TrainState:
        try:
            return TrainState.from_json(json.loads((path / STATE_NAME).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"unreadable trainer state in {path} ({err})") from None

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
        write their parts), then the main process writes the state and renames into place."""
        tmp = self.root / f".tmp-step-{step:08d}"
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        write(tmp)
        barrier()
        final = self.path_for(step)
        if is_main:
            atomic_write_json(tmp / STATE_NAME, state.to_json())
            replace_dir(tmp, final)  # a step re-saved after resuming from an earlier checkpoint
            self.prune()
        barrier()
        return final

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
