"""Samples: box transforms under resize/crop, references, dropout frequencies, padding collation,
bad records at load time, and the sharded resumable stream."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessorPil

from msdiffusion.training.config import DataConfig, DropoutConfig
from msdiffusion.training.dataset import ManifestDataset, collate_samples
from msdiffusion.training.demo import build_demo_manifest
from msdiffusion.training.dropout import draw_dropouts
from msdiffusion.training.records import ManifestLines, SampleError
from msdiffusion.training.sampler import ShardedStream
from msdiffusion.training.streams import ShardStream
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
    data = DataConfig(manifest=str(demo), resolution=64, crop="random")
    lines = ManifestLines.index(demo)
    return ManifestDataset(lines, data, DropoutConfig(**dropout), _features(), seed=3)


def test_samples_are_deterministic_and_dropouts_apply(demo):
    ds = _dataset(demo, image=0.0, text=0.0, both=0.0, grounding=0.0)
    a, b = ds[(2, 5)], ds[(2, 5)]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["caption"] == b["caption"]
    assert a["pixel_values"].shape == (3, 64, 64)
    assert a["pixel_values"].min() >= -1 and a["pixel_values"].max() <= 1
    s = len(ds.lines.record(5).subjects)
    assert a["reference_pixels"].shape == (s, 3, 32, 32) and a["boxes"].shape == (s, 4)
    assert a["reference_pixels"].abs().sum() > 0 and a["caption"] != ""
    dropped = _dataset(demo, image=0.0, text=0.0, both=1.0, grounding=1.0)[(2, 5)]
    assert dropped["caption"] == "" and dropped["reference_pixels"].abs().sum() == 0
    assert dropped["drop_grounding"] and torch.equal(dropped["boxes"], a["boxes"])  # boxes kept


def test_collate_pads_subjects_per_batch(demo):
    ds = _dataset(demo, image=0.0, text=0.0, both=0.0, grounding=0.0)
    records = [ds.lines.record(i) for i in range(len(ds))]
    one = next(i for i, r in enumerate(records) if len(r.subjects) == 1)
    two = next(i for i, r in enumerate(records) if len(r.subjects) == 2)
    batch = collate_samples([ds[(0, one)], ds[(0, two)]])
    assert batch["valid"].tolist() == [[True, False], [True, True]]  # padded to 2, not to 4
    assert batch["reference_pixels"].shape == (2, 2, 3, 32, 32)
    assert batch["reference_pixels"][0, 1].abs().sum() == 0 and batch["boxes"][0, 1].sum() == 0
    assert batch["phrases"][0][1] == "" and batch["time_ids"].shape == (2, 6)


def test_bad_records_are_replaced_and_reported_emptied_boxes_kept(demo, bomb_png):
    """Every decode failure is a reported skip (the next record is loaded instead); a box the crop
    empties is kept, as the zero box, and counted; subjects past the cap are dropped, counted."""
    lines = [json.loads(x) for x in demo.read_text().splitlines()]
    (demo.parent / lines[1]["image"]).write_bytes(b"\x89PNG garbage")  # corrupt after the check
    lines[2]["subjects"][0]["box"] = [0.0, 0.0, 0.01, 0.01]  # a 1-px sliver: empty after crop
    (demo.parent / "bomb.png").write_bytes(bomb_png)
    lines[3]["image"] = "bomb.png"
    lines[5]["subjects"] = [lines[5]["subjects"][0]] * 6  # past the released cap of 4
    raw = [json.dumps(x).encode() for x in lines]
    raw[4] = b'{"id": "caf\xe9"}'  # not UTF-8
    demo.write_bytes(b"\n".join(raw) + b"\n")
    ds = _dataset(demo, image=0.0, text=0.0, both=0.0, grounding=0.0)
    sample = ds[(0, 1)]
    assert sample["id"] == lines[2]["id"]  # record 1 skipped, the emptied box's record loaded
    assert dict(sample["skipped"]).keys() == {lines[1]["id"]}
    assert "not a readable image" in sample["skipped"][0][1]
    assert sample["boxes"][0].tolist() == [0.0, 0.0, 0.0, 0.0] and sample["boxes_emptied"] == 1
    assert sample["phrases"][0] == lines[2]["subjects"][0]["phrase"]  # the subject is still there
    sample = ds[(0, 3)]
    assert sample["id"] == lines[5]["id"]  # the bomb and the bad line skipped
    reasons = [reason for _, reason in sample["skipped"]]
    assert "DecompressionBombError" in reasons[0] and "not valid UTF-8" in reasons[1]
    assert len(sample["boxes"]) == 4 and sample["subjects_dropped"] == 2
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
    # another batch size after a resume: the same order from the same position on
    whole = take(ShardedStream(n, 3, seed=1, start=6), 9)
    halves = [take(ShardedStream(n, 3, rank=r, world_size=3, seed=1, start=6), 3) for r in range(3)]
    assert whole == [k for r in range(3) for k in halves[r]]


# ---- shard streams -------------------------------------------------------------------------------

SIZES = [5, 3, 0, 4]  # 12 samples in 4 shards, one of them empty


def _read(shard: int):
    return ((f"s{shard}-{j}", j) for j in range(SIZES[shard]))


def _make(raw, key, shard, index, epoch):
    if key == "s1-1":
        raise SampleError("unreadable", key)
    return {"id": key, "epoch": epoch, "index": index}


def _ids_and_streams(items):
    return {"id": [x["id"] for x in items], "stream": [x["stream"] for x in items]}


def _shard_stream(stream: int, streams: int, **kw) -> ShardStream:
    return ShardStream(SIZES, _read, _make, rank=stream, world_size=streams, seed=5, **kw)


def test_shard_streams_split_the_shards_and_resume_exactly():
    streams = 4
    taken = [
        list(itertools.islice(iter(_shard_stream(s, streams, buffer=2)), 40)) for s in range(4)
    ]
    first = [x["id"] for s in taken for x in s if x["epoch"] == 0]
    assert sorted(first) == sorted(
        f"s{i}-{j}" for i in (0, 1, 3) for j in range(SIZES[i]) if (i, j) != (1, 1)
    )  # every sample once, the bad one skipped
    skipped = [x["skipped"] for s in taken for x in s if x["skipped"]]
    assert [k for k, _ in skipped[0]] == ["s1-1"]
    for s in range(streams):  # a stream restarted from any item's position continues exactly
        for cut in (1, 5, 17):
            stream, *position = taken[s][cut - 1]["stream"]
            assert stream == s
            resumed = _shard_stream(s, streams, buffer=2, positions={s: tuple(position)})
            again = list(itertools.islice(iter(resumed), 10))
            assert [x["id"] for x in again] == [x["id"] for x in taken[s][cut : cut + 10]]
    one = [x["id"] for x in itertools.islice(iter(_shard_stream(0, 1, buffer=100)), 11)]
    assert sorted(one) == sorted(first) and one != sorted(one)  # shuffled, within an epoch
    with pytest.raises(ValueError, match="cannot feed"):
        ShardStream([1, 1], _read, _make, world_size=3)


def test_shard_stream_workers_each_read_their_own_units():
    from torch.utils.data import DataLoader

    stream = ShardStream(SIZES, _read, _make, rank=1, world_size=2, workers=2, seed=5)
    loader = DataLoader(stream, batch_size=3, num_workers=2, collate_fn=_ids_and_streams)
    batches = list(itertools.islice(iter(loader), 4))
    owners = [{s for s, *_ in b["stream"]} for b in batches]
    assert owners == [{2}, {3}, {2}, {3}]  # batches alternate between the workers' streams
    mine = {x for b in batches for x in b["id"]}
    solo = [_shard_stream(s, 4, buffer=500) for s in (2, 3)]
    expected = {x["id"] for st in solo for x in itertools.islice(iter(st), 6)}
    assert mine == expected


def test_a_truncated_shard_is_a_counted_skip_never_a_crash(demo, tmp_path):
    from msdiffusion.shards import iter_tar
    from msdiffusion.training.demo import demo_shards
    from msdiffusion.training.records import ShardSet

    shards = ShardSet.read(demo_shards(demo, tmp_path / "ds", samples_per_shard=4))
    tar = shards.shards[0]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # breaks off mid-sample

    def make(raw, key, shard, index, epoch):
        return {"id": key}

    stream = ShardStream(shards.sizes, lambda i: iter_tar(shards.shards[i]), make, buffer=1)
    items = list(itertools.islice(iter(stream), 8))  # an epoch (3 + 4 samples), and one more
    reasons = [reason for x in items for _, reason in x["skipped"]]
    assert reasons == ["shard 0: ended after 3 of its 4 samples"]  # a tar cut at a block boundary
    assert len({x["id"] for x in items[:7]}) == 7
    tar.write_bytes(tar.read_bytes()[:-700])  # cut inside a member: the reader stops there too
    items = list(itertools.islice(iter(stream), 8))
    assert [r for x in items for _, r in x["skipped"]] == [
        "shard 0: ended after 3 of its 4 samples"
    ]
