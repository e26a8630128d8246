"""Atomic writes: complete files and folders or none, no temporaries left behind, with the
permissions the umask gives."""

import os
import stat

import pytest
import torch
from PIL import Image

from msdiffusion.atomic import (
    atomic_dir,
    atomic_open,
    atomic_path,
    atomic_save_image,
    atomic_write_json,
    atomic_write_text,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write('{"half": ')
            raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    atomic_save_image(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "x.png"]
    with pytest.raises(ValueError, match="image format"):
        atomic_save_image(Image.new("RGB", (4, 4)), tmp_path / "x.bmpx")


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "file.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_files_and_folders_get_the_umasks_permissions_whatever_the_writer_does(tmp_path):
    """mkstemp/mkdtemp make their temporaries owner-only, and some writers (safetensors'
    ``save_file``) put an owner-only file of their own in place: neither may reach the result."""
    from safetensors.torch import save_file

    previous = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "plain.txt", "x")
        with atomic_path(tmp_path / "weights.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        with atomic_dir(tmp_path / "adapter") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "adapter.safetensors"))
            (tmp / "sub").mkdir()
            (tmp / "sub" / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")
    }
    assert modes == {
        "plain.txt": 0o664,
        "weights.safetensors": 0o664,
        "adapter": 0o775,
        "adapter/adapter.safetensors": 0o664,
        "adapter/sub": 0o775,
        "adapter/sub/config.json": 0o664,
    }


def test_a_folder_is_swapped_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "first"  # the old folder, untouched
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # replaced, not merged
    assert [p.name for p in target.parent.iterdir()] == ["adapter"]  # no temporaries


def test_leftovers_of_earlier_swaps_never_block_a_folder_write(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    (tmp_path / ".old-adapter").write_text("a file where the aside folder would go")
    (tmp_path / ".adapter.old").mkdir()  # debris with another naming
    (tmp_path / ".adapter.old" / "x").write_text("x")
    for text in ("second", "third"):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text(text)
        assert (target / "a.txt").read_text() == text


def test_a_swap_killed_between_its_renames_is_recovered(tmp_path):
    """Without an atomic exchange a folder is swapped by two renames; a kill between them leaves
    the name empty and the old folder aside: the next write (or recover_dir) puts it back."""
    from msdiffusion.atomic import recover_dir

    target = tmp_path / "adapter"
    aside = tmp_path / ".old-adapter.k3x9"
    aside.mkdir()
    (aside / "a.txt").write_text("old")
    (tmp_path / ".adapter.q1w2").mkdir()  # the new folder, renamed no further
    assert recover_dir(target) and (target / "a.txt").read_text() == "old"
    assert not recover_dir(target)  # nothing left to do
    aside.mkdir()
    (aside / "a.txt").write_text("older")
    target.rename(tmp_path / ".old-adapter.z")  # killed again: the next write recovers first
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert not list(tmp_path.glob(".old-adapter*"))  # asides cleaned once the name is complete


KILL_LOOP = r"""
import sys
from pathlib import Path
from msdiffusion.atomic import atomic_dir

target, start = Path(sys.argv[1]), int(sys.argv[2])
for version in range(start, start + 10**6):
    with atomic_dir(target) as tmp:
        for name in ("config.json", "adapter.safetensors"):
            (tmp / name).write_text(f"{version}\n" * 2000)
    print(version, flush=True)
"""


def test_a_folder_write_killed_at_any_moment_leaves_a_complete_folder(tmp_path):
    """SIGKILL a process that rewrites a folder in a loop, at random moments: the folder is always
    there, complete (both files, one version)."""
    import random
    import subprocess
    import sys
    import time

    script = tmp_path / "loop.py"
    script.write_text(KILL_LOOP)
    target = tmp_path / "out" / "adapter"
    rng = random.Random(0)
    version = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(target), str(version)], stdout=subprocess.PIPE
        )
        assert proc.stdout.readline()  # at least one complete write
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        texts = {(target / n).read_text() for n in ("config.json", "adapter.safetensors")}
        assert len(texts) == 1 and sorted(p.name for p in target.iterdir()) == [
            "adapter.safetensors",
            "config.json",
        ]
        version = int(texts.pop().split("\n", 1)[0]) + 1000
