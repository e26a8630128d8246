"""Data pipeline, image input: odd modes, huge and broken files, image-only (augmented) builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_helpers import (
    COLOURS,
    ColourDetector,
    settings_for_tests,
    tiny_model_dirs,
)

from msdiffusion.data.build import build_dataset
from msdiffusion.data.config import BuildConfig
from msdiffusion.data.media import BadInput, load_rgb
from msdiffusion.data.models import Models, load_models
from msdiffusion.data.stats import Stats
from msdiffusion.shards import iter_samples, read_index

pytestmark = pytest.mark.usefixtures("single_thread")


def _load(path: Path, **kw) -> tuple[Image.Image, Stats]:
    stats = Stats()
    image = load_rgb(
        path, max_side=kw.get("max_side", 1024), max_pixels=kw.get("max_pixels", 10**8), stats=stats
    )
    return image, stats


def test_odd_modes_are_converted_and_counted(tmp_path):
    base = Image.new("RGB", (40, 30), (200, 40, 10))
    base.convert("CMYK").save(tmp_path / "cmyk.jpg")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0  # palette index 0 transparent → composited over white
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.fromarray(np.full((30, 40), 65535, np.uint16)).save(tmp_path / "deep.png")  # 16-bit
    rgba = Image.new("RGBA", (40, 30), (0, 0, 255, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    rgba.save(tmp_path / "alpha.png")
    Image.new("LA", (40, 30), (50, 255)).save(tmp_path / "grey_alpha.png")
    Image.new("1", (40, 30), 1).save(tmp_path / "bilevel.png")

    image, stats = _load(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB" and stats.converted == {"cmyk": 1}
    assert np.abs(np.asarray(image)[5, 5].astype(int) - (200, 40, 10)).max() < 20
    image, stats = _load(tmp_path / "palette.png")
    assert image.mode == "RGB" and stats.converted["palette"] == 1
    image, stats = _load(tmp_path / "deep.png")
    assert image.mode == "RGB" and stats.converted == {"16bit": 1}
    assert np.asarray(image).min() == 255  # full scale stays full scale (not clipped 65535 → 255)
    image, stats = _load(tmp_path / "alpha.png")
    pixels = np.asarray(image)
    assert stats.converted == {"alpha": 1}
    assert tuple(pixels[0, 0]) == (0, 0, 255) and tuple(pixels[0, 39]) == (255, 255, 255)
    image, stats = _load(tmp_path / "grey_alpha.png")
    assert tuple(np.asarray(image)[0, 0]) == (50, 50, 50) and stats.converted == {"alpha": 1}
    image, stats = _load(tmp_path / "bilevel.png")
    assert tuple(np.asarray(image)[0, 0]) == (255, 255, 255) and stats.converted == {"bilevel": 1}


def test_huge_broken_and_empty_images(tmp_path):
    Image.new("RGB", (900, 300), (10, 120, 30)).save(tmp_path / "big.png")
    image, stats = _load(tmp_path / "big.png", max_side=300)
    assert image.size == (300, 100) and stats.converted == {"downscaled": 1}
    Image.new("RGB", (2400, 1800), (10, 120, 30)).save(tmp_path / "big.jpg", quality=80)
    image, stats = _load(tmp_path / "big.jpg", max_side=256)  # JPEG draft decoding, then resize
    assert max(image.size) == 256
    with pytest.raises(BadInput) as err:  # over the pixel budget: never decoded
        _load(tmp_path / "big.png", max_pixels=100_000)
    assert err.value.reason == "too_large"
    data = (tmp_path / "big.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name, reason in (
        ("cut.jpg", "truncated"),
        ("empty.png", "empty"),
        ("text.jpg", "unreadable"),
    ):
        with pytest.raises(BadInput) as err:
            _load(tmp_path / name)
        assert err.value.reason == reason, name


def _scene(colours: list[str], size=(160, 120), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.normal(110, 8, (size[1], size[0], 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    for k, colour in enumerate(colours):
        x = 15 + 70 * k
        image.paste(COLOURS[colour], (x, 30 + 10 * k, x + 40, 80 + 10 * k))
    return image


@pytest.fixture(scope="module")
def image_models():
    dirs = tiny_model_dirs()
    cfg = BuildConfig.from_dict(
        {
            "models": {
                "captioner": {"kind": "blip", "path": dirs["blip"]},
                "detector": {"kind": "owlv2", "path": dirs["owlv2"]},
                "segmenter": {"kind": "sam", "path": dirs["sam"]},
                "batch_size": 3,
            }
        }
    )
    loaded = load_models(cfg.models, "cpu", need_features=False)
    assert loaded.features is None  # image-only input needs no feature encoder
    return Models(
        captioner=loaded.captioner,
        detector=ColourDetector(),
        features=None,
        segmenter=loaded.segmenter,
        batch_size=3,
    )


def test_image_only_build_flags_augmented_references(tmp_path, image_models):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    _scene(["red", "blue"]).save(photos / "a.png")
    _scene(["yellow"], seed=1).convert("CMYK").save(photos / "sub" / "b.jpg")
    rgba = _scene(["green", "red"], seed=2).convert("RGBA")
    rgba.save(photos / "c.png")
    _scene(["blue"], seed=3).save(photos / "d.png")  # no sidecar caption: the captioner runs
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "captions.json").write_text(
        json.dumps(
            {"a.png": "a red square next to a blue square", "sub/b.jpg": "one yellow square"}
        )
    )
    (photos / "c.txt").write_text("a green square and a red square\n")
    cfg = BuildConfig.from_dict(settings_for_tests(shards={"inputs_per_shard": 4}))
    result = build_dataset(
        photos,
        tmp_path / "ds",
        mode="images",
        cfg=cfg,
        engine="local",
        models=image_models,
        progress=False,
    )
    samples = {
        s.record["meta"]["source"]: s for s in iter_samples(read_index(result.index).paths())
    }
    records = {source: s.record for source, s in samples.items()}
    assert set(records) == {"a.png", "c.png", "sub/b.jpg"}  # d.png's random caption has no colour
    assert [s["phrase"] for s in records["a.png"]["subjects"]] == ["red square", "blue square"]
    assert records["sub/b.jpg"]["meta"]["caption_source"] == "sidecar"
    root = result.index.parent
    for source, record in records.items():
        target = samples[source].open(record["image"])
        assert target.mode == "RGB" and target.size == (160, 120)
        for s in record["subjects"]:
            assert s["augmented"] is True
            ref = samples[source].open(s["reference"])
            x0, y0, x1, y1 = s["reference_box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            if s["reference_mask"] is not None:
                assert samples[source].open(s["reference_mask"]).size == ref.size
            # the reference box frames the subject's colour in the augmented crop
            inside = (
                np.asarray(ref.convert("RGB"))[
                    int(y0 * ref.height) + 2 : int(y1 * ref.height) - 2,
                    int(x0 * ref.width) + 2 : int(x1 * ref.width) - 2,
                ]
                .reshape(-1, 3)
                .mean(0)
            )
            colour = np.array(COLOURS[s["phrase"].split()[0]], dtype=float)
            a, b = inside - inside.mean(), colour - colour.mean()  # chroma survives the jitter
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.9, (s["phrase"], inside)
    report = result.report
    assert report["skipped"]["file:unreadable"] == 1 and report["skipped"]["file:empty"] == 1
    assert report["converted"]["cmyk"] == 1 and report["converted"]["alpha"] == 1
    assert report["histograms"]["augmented_subjects"] == {"true": 5}
    assert (root / "report_grid.png").is_file() and (root / "report.md").is_file()
    # the same seed gives the same dataset, byte for byte
    again = build_dataset(
        photos,
        tmp_path / "ds2",
        mode="images",
        cfg=cfg,
        engine="local",
        models=image_models,
        progress=False,
    )
    for name in ("shards/shard-000000.tar", "shards/shard-000001.tar", "raw/raw-000000.tar"):
        assert (root / name).read_bytes() == (again.index.parent / name).read_bytes()
