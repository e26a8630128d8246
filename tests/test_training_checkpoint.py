"""Checkpoint atomicity: a save killed midway never looks complete; keep-last-K; resolving."""

from __future__ import annotations

from pathlib import Path

import pytest

from msdiffusion.errors import CheckpointError
from msdiffusion.training.checkpoint import STATE_NAME, CheckpointManager, TrainState


def _write(tmp: Path) -> None:
    (tmp / "weights.bin").write_bytes(b"x" * 100)


class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it on the way)."""


def test_a_killed_save_leaves_the_previous_checkpoint_latest(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=3)
    first = manager.save(100, TrainState(step=100, position=800), _write)
    assert manager.latest() == first and (first / STATE_NAME).is_file()

    def dies_midway(tmp: Path) -> None:
        _write(tmp)
        raise Killed

    with pytest.raises(Killed):
        manager.save(200, TrainState(step=200), dies_midway)
    assert manager.latest() == first  # the half-written one is invisible
    assert [p.name for p in manager.root.iterdir() if not p.name.startswith(".")] == [
        "step-00000100"
    ]
    assert manager.read_state(manager.resolve("latest")).position == 800
    # a folder that looks like a checkpoint but lacks its state is not one
    (manager.root / "step-00000300").mkdir()
    assert manager.latest() == first
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        manager.resolve(str(manager.root / "step-00000300"))
    # the next good save cleans the debris up
    manager.save(200, TrainState(step=200), _write)
    assert manager.latest().name == "step-00000200"
    assert not any(p.name.startswith(".tmp-") for p in manager.root.iterdir())


def test_keep_last_k_and_resave(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        manager.save(step, TrainState(step=step), _write)
    assert [s for s, _ in manager.complete()] == [3, 4]
    manager.save(4, TrainState(step=4, position=9), _write)  # re-saving after a resume
    assert manager.read_state(manager.latest()).position == 9
    assert manager.resolve("latest") == manager.path_for(4)
    assert CheckpointManager(tmp_path / "none").resolve("latest") is None
