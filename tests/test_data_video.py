"""Data pipeline, video front end: decoding, sampling, cuts, shots, frame quality, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter
from test_data_helpers import Shape, Shot, make_video, standard_shots

from msdiffusion.data.media import BadInput
from msdiffusion.data.shots import choose_pair, find_cuts, frame_quality, split_shots
from msdiffusion.data.stats import Stats
from msdiffusion.data.video import decode_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4", standard_shots())


def test_sampling_rate_and_cut_detection(video):
    stats = Stats()
    decoded = decode_video(video, sample_fps=4.0, max_frames=100, max_side=1024, stats=stats)
    assert len(decoded.frame_times) == 55  # 5.5 s at 10 fps, every frame decoded
    # 4 per second: the first frame at or after each multiple of 0.25 s (frames are 0.1 s apart)
    assert decoded.times == pytest.approx([np.ceil(2.5 * k - 1e-9) / 10 for k in range(22)])
    assert decoded.frame(3).size == (192, 144) and decoded.frame(3).mode == "RGB"
    assert len(decoded.quality) == 22 and decoded.quality[-1][0] < 0.06  # the dark shot
    assert stats.counts["frames_decoded"] == 55 and stats.counts["frames_sampled"] == 22
    cuts = find_cuts(decoded.frame_times, decoded.diffs, threshold=0.12)
    assert cuts == pytest.approx([2.0, 4.0])  # the two hard cuts, nothing inside the shots
    inside = np.delete(decoded.diffs, [0, 20, 40])
    assert inside.max() < 0.05 and decoded.diffs[[20, 40]].min() > 0.2
    # a spike is needed: the same jump inside sustained fast motion is not a cut
    busy = np.full(30, 0.2)
    busy[15] = 0.3
    assert find_cuts(np.arange(30) / 10, busy, threshold=0.12) == []
    busy[15] = 0.7
    assert find_cuts(np.arange(30) / 10, busy, threshold=0.12) == [pytest.approx(1.5)]
    assert split_shots(0.0, 5.5, cuts) == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.5)]
    # a lower rate and a frame cap
    few = decode_video(video, sample_fps=1.0, max_frames=3, max_side=64, stats=Stats())
    assert few.times == pytest.approx([0.0, 1.0, 2.0])
    assert max(few.frame(0).size) == 64  # stored frames are limited to max_side


def test_time_gap_rule():
    times = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    pair = choose_pair(times, (0.0, 2.0), min_gap=1.0, max_gap=None, max_references=2)
    assert pair.target == 4  # the middle frame (1.0 s) has a frame 1 s away (0.0 s)
    assert pair.references == (0,)
    pair = choose_pair(times, (0.0, 2.0), min_gap=0.5, max_gap=None, max_references=2)
    assert times[pair.target] == 1.0 and [times[j] for j in pair.references] == [0.0, 0.25]
    pair = choose_pair(times, (0.0, 2.0), min_gap=0.5, max_gap=0.6, max_references=3)
    assert all(0.5 <= abs(times[j] - times[pair.target]) <= 0.6 for j in pair.references)
    # short shot: the target moves off-centre to keep the gap; too short: no pair at all
    pair = choose_pair([0.0, 0.5, 1.0], (0.0, 1.2), min_gap=1.0, max_gap=None, max_references=1)
    assert (pair.target, pair.references) == (2, (0,))  # 1.0 s is nearer the middle than 0.0 s
    assert choose_pair([0.0, 0.5], (0.0, 1.0), min_gap=1.0, max_gap=None, max_references=1) is None
    assert choose_pair([0.3], (0.0, 1.0), min_gap=0.1, max_gap=None, max_references=1) is None


def test_frame_quality_dark_and_blurry():
    rng = np.random.default_rng(0)
    sharp = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    blurry = sharp.filter(ImageFilter.GaussianBlur(6))
    dark = Image.fromarray((np.asarray(sharp) * 0.04).astype(np.uint8))
    b_sharp, s_sharp = frame_quality(sharp)
    b_blur, s_blur = frame_quality(blurry)
    b_dark, _ = frame_quality(dark)
    assert 0.4 < b_sharp < 0.6 and b_dark < 0.06
    assert s_blur < 30 < s_sharp  # 30: the default min_sharpness
    # resolution does not change the measure much (shrunk to 256 px first)
    big = sharp.resize((1600, 1200), Image.Resampling.NEAREST)
    assert frame_quality(big)[1] > 30


def test_bad_videos_raise_bad_input_or_keep_partial(tmp_path, video):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.mkv"
    text.write_text("not a video at all\n" * 50)
    for path, reason in ((empty, "empty"), (garbage, "unreadable"), (text, "unreadable")):
        with pytest.raises(BadInput) as err:
            decode_video(path, sample_fps=2, max_frames=10, max_side=256, stats=Stats())
        assert err.value.reason == reason
    # a file cut in the middle: the frames before the cut are used and the file is flagged
    data = video.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    try:
        stats = Stats()
        part = decode_video(truncated, sample_fps=2, max_frames=100, max_side=256, stats=stats)
    except BadInput as bad:  # an mp4 without its index cannot be opened at all: also fine
        assert bad.reason in ("unreadable", "no_frames")
    else:
        assert 0 < len(part) < 11
    # a tiny, tail-less stream: an MPEG-TS cut mid-frame decodes what it has
    ts = make_video(
        tmp_path / "clip.ts",
        [Shot(1.0, (100, 100, 100), (Shape("red", "square", (40, 40), (80, 60), 20, 30),))],
    )
    cut = tmp_path / "cut.ts"
    cut.write_bytes(ts.read_bytes()[: ts.stat().st_size * 2 // 3])
    stats = Stats()
    part = decode_video(cut, sample_fps=10, max_frames=100, max_side=256, stats=stats)
    assert 0 < len(part) < 10


def test_rotation_metadata_is_applied(tmp_path):
    shots = standard_shots()[:1]
    plain = decode_video(
        make_video(tmp_path / "plain.mp4", shots),
        sample_fps=2,
        max_frames=2,
        max_side=1024,
        stats=Stats(),
    )
    stats = Stats()
    turned = decode_video(
        make_video(tmp_path / "turned.mp4", shots, rotation=-90),
        sample_fps=2,
        max_frames=2,
        max_side=1024,
        stats=stats,
    )
    assert turned.size == (144, 192) and turned.frame(0).size == (144, 192)  # portrait
    want = np.asarray(plain.frame(0).transpose(Image.Transpose.ROTATE_270), dtype=float)
    assert np.abs(np.asarray(turned.frame(0), dtype=float) - want).mean() < 2  # 90° clockwise
    assert stats.converted["video_rotated"] == 1


def test_small_videos_decode_and_too_small_ones_are_reported(tmp_path):
    shots = [Shot(1.0, (100, 100, 100), (Shape("red", "square", (30, 30), (60, 40), 16, 20),))]
    narrow = make_video(tmp_path / "narrow.mp4", shots, size=(120, 100))  # chroma < 64 wide
    video = decode_video(
        narrow, sample_fps=2, max_frames=10, max_side=256, stats=Stats(), min_side=64
    )
    assert video.size == (120, 100) and len(video.diffs) == 10
    tiny = make_video(tmp_path / "tiny.mp4", shots, size=(96, 48))
    with pytest.raises(BadInput) as err:
        decode_video(tiny, sample_fps=2, max_frames=10, max_side=256, stats=Stats(), min_side=64)
    assert err.value.reason == "too_small" and "96x48" in str(err.value)
