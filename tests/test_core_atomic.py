"""Atomic writes: complete files or none, no temporaries left behind."""

import pytest
from PIL import Image

from msdiffusion.atomic import atomic_open, atomic_save_image, atomic_write_json


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
