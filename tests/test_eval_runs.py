"""Run-folder mechanics: atomic writes, truncation checks, sharding, index formats, the
bring-your-own layout and per-image seeds."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from msdiffusion.benchmarks import load_benchmark
from msdiffusion.errors import InputError
from msdiffusion.evaluation.generate import GenerationConfig, image_seed, plan_images
from msdiffusion.evaluation.runs import RunFolder, is_complete_image, shard
from msdiffusion.evaluation.standin import write_standin


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_truncated_images_are_not_complete(tmp_path, fmt, ext):
    data = _encoded(fmt)
    good, cut = tmp_path / f"good.{ext}", tmp_path / f"cut.{ext}"
    good.write_bytes(data)
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert is_complete_image(good)
    assert not is_complete_image(cut)
    assert not is_complete_image(tmp_path / "absent.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all, really")
    assert not is_complete_image(tmp_path / "junk.png")


def test_shards_are_disjoint_and_complete():
    items = list(range(23))
    for count in (1, 2, 3, 5):
        parts = [shard(items, i, count) for i in range(count)]
        assert sorted(x for p in parts for x in p) == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(InputError):
        shard(items, 2, 2)


def test_index_files_in_every_accepted_form(tmp_path):
    run = RunFolder(tmp_path)
    entries = [
        {"sample_id": "a/b/0", "image": "x.png"},
        {"sample_id": "a/b/1", "image": "y.png", "index": 3},
    ]
    forms = {
        "lines.jsonl": "\n".join(json.dumps(e) for e in entries),
        "list.json": json.dumps(entries),
        "obj.json": json.dumps({"images": entries}),
    }
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        recs = run.read_index(tmp_path / name)
        assert [(r.sample_id, r.index) for r in recs] == [("a/b/0", 0), ("a/b/1", 3)]
    (tmp_path / "one.jsonl").write_text(json.dumps(entries[0]))
    assert len(run.read_index(tmp_path / "one.jsonl")) == 1
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png"}')
    with pytest.raises(InputError, match="sample_id and image"):
        run.read_index(tmp_path / "bad.jsonl")
    (tmp_path / "worse.jsonl").write_text("{nope")
    with pytest.raises(InputError, match="JSON"):
        run.read_index(tmp_path / "worse.jsonl")


def test_bring_your_own_layout_is_discovered(tmp_path):
    for rel in (
        "images/object/dog/3/0.png",
        "images/object/dog/3/1.jpg",
        "images/live/cat/0/seed7.png",
        "images/live/cat/0/seed9.png",
        "images/live/cat/0/notes.txt",
    ):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    recs = sorted((r.sample_id, r.index, r.image) for r in RunFolder(tmp_path).discover())
    assert recs == [
        ("live/cat/0", 0, "images/live/cat/0/seed7.png"),
        ("live/cat/0", 1, "images/live/cat/0/seed9.png"),
        ("object/dog/3", 0, "images/object/dog/3/0.png"),
        ("object/dog/3", 1, "images/object/dog/3/1.jpg"),
    ]
    with pytest.raises(InputError, match="images/"):
        RunFolder(tmp_path / "empty").discover()


def test_seeds_depend_only_on_base_sample_and_index(tmp_path):
    assert image_seed(0, "a/b/0", 1) == image_seed(0, "a/b/0", 0) + 1
    assert image_seed(0, "a/b/0", 0) != image_seed(0, "a/b/1", 0)
    assert image_seed(0, "a/b/0", 0) != image_seed(1, "a/b/0", 0)
    assert 0 <= image_seed(123, "x", 999) < 2**31
    bench = load_benchmark("msbench", write_standin(tmp_path, benchmarks=("msbench",)))
    run, cfg = RunFolder(tmp_path / "run"), GenerationConfig(images_per_sample=2)
    small = {(r.sample_id, r.index): r.seed for r in plan_images(bench.select(limit=3), cfg, run)}
    big = {(r.sample_id, r.index): r.seed for r in plan_images(bench.select(limit=40), cfg, run)}
    assert all(big[k] == v for k, v in small.items())  # a subset never changes seeds
    with pytest.raises(InputError, match="images_per_sample"):
        GenerationConfig(images_per_sample=0)
