"""Atomic writes: complete files and folders or none, no temporaries left behind."""

import pytest
from PIL import Image

from msdiffusion.atomic import (
    atomic_dir,
    atomic_open,
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
