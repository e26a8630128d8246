"""Samples: box transforms under resize/crop, references, dropout frequencies, padding collation,
bad records at load time, and the sharded resumable stream."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessorPil

from msdiffusion.manifest import scan_manifest
from msdiffusion.training.config import DataConfig, DropoutConfig
from msdiffusion.training.dataset import ManifestDataset, collate_samples
from msdiffusion.training.demo import build_demo_manifest
from msdiffusion.training.dropout import draw_dropouts
from msdiffusion.training.sampler import ShardedStream
from msdiffusion.training.transforms import (
    add_time_ids,
    crop_geometry,
    cut_reference,
    resize_and_crop,
    transform_box,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "subjects"


def _features() -> CLIPImageProcessorPil:  # the tiny preset's image preprocessing
    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture()
def demo(tmp_path) -> Path:
    return build_demo_manifest(
        tmp_path / "demo", EXAMPLES if EXAMPLES.is_dir() else None, num_records=8
    )


# ---- geometry ------------------------------------------------------------------------------------


def test_resize_crop_arithmetic():
    g = crop_geometry((100, 200), (50, 50), "center")  # (h, w): landscape → short side 50
    assert (g.resized_size, g.top, g.left) == ((50, 100), 0, 25)
    assert transform_box((0.5, 0.0, 1.0, 1.0), g) == (0.5, 0.0, 1.0, 1.0)  # clamped at the crop
    assert transform_box((0.0, 0.0, 0.2, 1.0), g) is None  # entirely cropped away
    assert transform_box((0.0, 0.0, 0.255, 1.0), g) is None  # 0.5 px left: empty
    assert add_time_ids(g) == (100, 200, 0, 25, 50, 50)
    g = crop_geometry((64, 48), (32, 64), "center")  # non-square target
    assert g.resized_size == (85, 64) and g.left == 0 and g.top == 26


@pytest.mark.parametrize("seed", range(4))
def test_boxes_follow_the_pixels(seed):
    """Paint a box into an image, transform both: the painted pixels land in the new box."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(80, 240)), int(rng.integers(80, 240))
    x0, y0 = rng.uniform(0.0, 0.5, 2)
    x1, y1 = x0 + rng.uniform(0.3, 0.5), y0 + rng.uniform(0.3, 0.5)
    box = (x0, y0, min(x1, 1.0), min(y1, 1.0))
    image = Image.new("RGB", (w, h), (0, 0, 0))
    ImageDraw.Draw(image).rectangle(
        (round(box[0] * w), round(box[1] * h), round(box[2] * w) - 1, round(box[3] * h) - 1),
        fill=(255, 255, 255),
    )
    g = crop_geometry((h, w), (64, 64), "random", rng)
    new = transform_box(box, g)
    out = np.asarray(resize_and_crop(image, g).convert("L")) > 127  # (64, 64)
    assert new is not None and out.any()
    rows, cols = np.nonzero(out)
    found = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    expected = [v * 64 for v in new]
    assert np.allclose(found, expected, atol=1.5), (found, expected)


def test_cut_reference_box_and_mask():
    ref = Image.new("RGB", (100, 50), (200, 100, 50))
    mask = Image.new("L", (100, 50), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 49, 49), fill=255)  # left half is the subject
    cut = cut_reference(ref, (0.25, 0.0, 0.75, 1.0), mask)
    assert cut.size == (50, 50)
    px = np.asarray(cut)
    assert (px[:, :25] == (200, 100, 50)).all() and (px[:, 25:] == 0).all()
    with pytest.raises(ValueError, match="mask size"):
        cut_reference(ref, None, Image.new("L", (10, 10)))


# ---- dropouts ------------------------------------------------------------------------------------


def test_dropout_frequencies_match_their_probabilities():
    config = DropoutConfig()  # 0.05 / 0.05 / 0.05, grounding 0.1
    n = 40_000
    draws = [draw_dropouts(np.random.default_rng([7, i]), config) for i in range(n)]
    buckets = Counter((d.image, d.text) for d in draws)
    tol = 4 * (0.05 * 0.95 / n) ** 0.5
    assert abs(buckets[(True, False)] / n - 0.05) < tol  # image only
    assert abs(buckets[(False, True)] / n - 0.05) < tol  # text only
    assert abs(buckets[(True, True)] / n - 0.05) < tol  # both
    grounding = np.array([d.grounding for d in draws])
    image = np.array([d.image for d in draws])
    assert abs(grounding.mean() - 0.1) < 4 * (0.1 * 0.9 / n) ** 0.5
    assert abs(grounding[image].mean() - 0.1) < 0.03  # independent of the image draw


# ---- samples and batches -------------------------------------------------------------------------


def _dataset(demo: Path, **dropout) -> ManifestDataset:
    scan = scan_manifest(demo)
    data = DataConfig(manifest=str(demo), resolution=64, crop="random")
    return ManifestDataset(
        scan.records, scan.root, data, DropoutConfig(**dropout), _features(), seed=3
    )


def test_samples_are_deterministic_and_dropouts_apply(demo):
    ds = _dataset(demo, image=0.0, text=0.0, both=0.0, grounding=0.0)
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["caption"] == b["caption"]
    assert a["pixel_values"].shape == (3, 64, 64)
    assert a["pixel_values"].min() >= -1 and a["pixel_values"].max() <= 1
    s = len(ds.records[5].subjects)
    assert a["reference_pixels"].shape == (s, 3, 32, 32) and a["boxes"].shape == (s, 4)
    assert a["reference_pixels"].abs().sum() > 0 and a["caption"] != ""
    dropped = _dataset(demo, image=0.0, text=0.0, both=1.0, grounding=1.0)[(2, 5)]
    assert dropped["caption"] == "" and dropped["reference_pixels"].abs().sum() == 0
    assert dropped["drop_grounding"] and torch.equal(dropped["boxes"], a["boxes"])  # boxes kept


def test_collate_pads_subjects_per_batch(demo):
    ds = _dataset(demo, image=0.0, text=0.0, both=0.0, grounding=0.0)
    one = next(i for i, r in enumerate(ds.records) if len(r.subjects) == 1)
    two = next(i for i, r in enumerate(ds.records) if len(r.subjects) == 2)
    batch = collate_samples([ds[(0, one)], ds[(0, two)]])
    assert batch["valid"].tolist() == [[True, False], [True, True]]  # padded to 2, not to 4
    assert batch["reference_pixels"].shape == (2, 2, 3, 32, 32)
    assert batch["reference_pixels"][0, 1].abs().sum() == 0 and batch["boxes"][0, 1].sum() == 0
    assert batch["phrases"][0][1] == "" and batch["time_ids"].shape == (2, 6)


def test_bad_records_at_load_time_are_replaced_and_reported(demo):
    lines = [json.loads(x) for x in demo.read_text().splitlines()]
    (demo.parent / lines[1]["image"]).write_bytes(b"\x89PNG garbage")  # corrupt after the check
    lines[2]["subjects"][0]["box"] = [0.0, 0.0, 0.01, 0.01]  # a 1-px sliver: empty after crop
    demo.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = _dataset(demo)
    sample = ds[(0, 1)]
    assert sample["id"] == lines[3]["id"]  # records 1 and 2 skipped, 3 loaded instead
    reasons = dict(sample["skipped"])
    assert "not a readable image" in reasons[lines[1]["id"]]
    assert "empty after cropping" in reasons[lines[2]["id"]]
    assert collate_samples([sample, ds[(0, 0)]])["skipped"] == sample["skipped"]


# ---- the stream ----------------------------------------------------------------------------------


def test_stream_shards_disjointly_and_resumes():
    def take(stream, n):
        it = iter(stream)
        return [next(it) for _ in range(n)]

    n, b, w = 10, 2, 2
    ranks = [take(ShardedStream(n, b, rank=r, world_size=w, seed=1), 10) for r in range(w)]
    epoch0 = [k for r in ranks for k in r if k[0] == 0]
    assert sorted(i for _, i in epoch0) == list(range(n))  # each sample once per epoch
    for step in range(5):  # the processes never share a sample within a global batch
        assert not {k for k in ranks[0][step * b : (step + 1) * b]} & {
            k for k in ranks[1][step * b : (step + 1) * b]
        }
    resumed = take(ShardedStream(n, b, rank=1, world_size=w, seed=1, start=3 * b * w), 4)
    assert resumed == ranks[1][3 * b : 3 * b + 4]
    assert take(ShardedStream(n, b, seed=2), 10) != take(ShardedStream(n, b, seed=1), 10)
    with pytest.raises(ValueError):
        ShardedStream(n, b, world_size=w, start=3)
