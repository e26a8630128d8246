"""Input files → targets: listing, keys, sidecar captions, and the video/image front ends.

* Inputs are the files under the input folder (recursively, hidden ones excluded) with a video or
  image extension, in sorted order of their relative paths. Each has a ``key`` (a readable stem
  plus a hash of the relative path) that names its outputs and its part file.
* Sidecar captions (optional): ``<file>.txt`` next to the file, or ``captions.json``
  (``{"relative/path.jpg": "caption"}``) / ``captions.jsonl`` (``{"file": ..., "caption": ...}``
  per line) at the input folder's root. A video's sidecar caption is used for all of its shots.
* A video becomes one target per usable shot (``shots.py``); an image becomes one target.
* ``front_items``: one input → its file item and target items (``item.py``); a bad file is a
  counted skip, any other exception is retried and then recorded as a failure.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..errors import InputError
from .config import BuildConfig
from .faults import attempt
from .item import Item, encode_image
from .media import IMAGE_EXTENSIONS, BadInput, load_rgb
from .shots import choose_pair, find_cuts, split_shots
from .stats import Stats
from .video import VIDEO_EXTENSIONS, decode_video

__all__ = [
    "list_inputs",
    "file_key",
    "SidecarCaptions",
    "video_targets",
    "image_target",
    "front_items",
]


def list_inputs(root: Path, mode: str) -> list[str]:
    """Relative POSIX paths of the ``mode`` (``videos`` or ``images``) files under ``root``."""
    if not root.is_dir():
        raise InputError(f"--{mode}", "must be an existing folder", str(root))
    extensions = VIDEO_EXTENSIONS if mode == "videos" else IMAGE_EXTENSIONS
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in extensions:
            found.append(rel.as_posix())
    return sorted(found)


def file_key(rel: str) -> str:
    """``clips/My Video.mp4`` → ``My_Video-1a2b3c4d``: unique per path, safe as a file name and
    as a WebDataset key (no dots)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(rel).stem).strip("_")[:40] or "file"
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


class SidecarCaptions:
    """Captions supplied with the input (see the module docstring)."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root, self.enabled = root, enabled
        self.table: dict[str, str] = {}
        if not enabled:
            return
        as_json, as_jsonl = root / "captions.json", root / "captions.jsonl"
        if as_json.is_file():
            data = self._read_json(as_json)
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise InputError(
                    str(as_json),
                    'must map "relative/path" to a caption string',
                    type(data).__name__,
                )
            self.table.update(data)
        if as_jsonl.is_file():
            for n, line in enumerate(as_jsonl.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{as_jsonl}:{n}", f"not valid JSON ({err})", line) from None
                if not (
                    isinstance(row, dict)
                    and isinstance(row.get("file"), str)
                    and isinstance(row.get("caption"), str)
                ):
                    raise InputError(f"{as_jsonl}:{n}", 'needs "file" and "caption" strings', row)
                self.table[row["file"]] = row["caption"]

    @staticmethod
    def _read_json(path: Path) -> object:
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(str(path), f"not valid JSON ({err})", None, show_value=False) from None

    def get(self, rel: str) -> str | None:
        """The caption for input ``rel`` (folded to one line), or None."""
        if not self.enabled:
            return None
        caption = self.table.get(rel)
        if caption is None:
            text_file = (self.root / rel).with_suffix(".txt")
            if text_file.is_file():
                caption = text_file.read_text(errors="replace")
        caption = " ".join(caption.split()) if caption else None
        return caption or None


def front_items(
    order: int, rel: str, root: Path, mode: str, cfg: BuildConfig, caption: str | None
) -> list[Item]:
    """Decode input ``rel`` into its file item and target items (never raises).

    ``BadInput`` (empty, unreadable, too small, ...) is a counted skip; any other exception is
    retried ``cfg.faults.retries`` times, then the file item records the failure.
    """
    key = file_key(rel)
    front = video_targets if mode == "videos" else image_target

    def run() -> tuple[Stats, list[Item]]:
        stats = Stats()
        stats.add("files")
        try:
            targets = front(root / rel, order, rel, key, cfg, stats, caption)
        except BadInput as bad:
            stats.skip(f"file:{bad.reason}")
            return stats, []
        stats.add("files_ok")
        return stats, targets

    outcome = attempt(run, 1 + cfg.faults.retries)
    head = Item(order=order, input=rel, key=key, kind=mode[:-1], done=True)
    if outcome.error is not None:
        head.stats.add("files")
        head.fail("decode", outcome.error, outcome.attempts)
        return [head]
    head.stats, targets = outcome.value
    return [head, *targets]


def video_targets(
    path: Path, order: int, rel: str, key: str, cfg: BuildConfig, stats: Stats, caption: str | None
) -> list[Item]:
    """Decode, drop bad frames, split shots and choose each shot's target and references.

    Raises ``media.BadInput`` for a file that yields no frame or is too small.
    """
    v = cfg.video
    with stats.timed("decode"):
        video = decode_video(
            path,
            sample_fps=v.sample_fps,
            max_frames=v.max_frames,
            max_side=cfg.max_image_side,
            min_side=v.min_side,
            stats=stats,
        )
    kept: list[int] = []
    for i, (brightness, sharpness) in enumerate(video.quality):  # measured while decoding
        if brightness < v.min_brightness:
            stats.skip("frame:dark")
        elif sharpness < v.min_sharpness:
            stats.skip("frame:blurry")
        else:
            kept.append(i)
    stats.add("frames_kept", len(kept))
    step = float(video.frame_times[1] - video.frame_times[0]) if len(video.frame_times) > 1 else 0
    end = float(video.frame_times[-1]) + max(step, 1e-3)
    shots = split_shots(
        float(video.frame_times[0]),
        end,
        find_cuts(video.frame_times, video.diffs, v.cut_threshold, ratio=v.cut_ratio),
    )
    stats.add("shots", len(shots))
    targets = []
    for number, shot in enumerate(shots):
        if shot[1] - shot[0] < v.min_shot_s:
            stats.skip("shot:too_short")
            continue
        stats.add("shots_kept")
        members = [i for i in kept if shot[0] <= video.times[i] < shot[1]]
        times = [video.times[i] for i in members]
        pair = choose_pair(
            times, shot, min_gap=v.min_gap_s, max_gap=v.max_gap_s, max_references=v.max_references
        )
        if pair is None:
            stats.skip("shot:no_frame_pair_at_min_gap")
            continue
        target = members[pair.target]
        refs = [members[j] for j in pair.references]
        item = Item(
            order=order,
            input=rel,
            key=key,
            index=number,
            kind="video",
            frames=[video.encoded[target]] + [video.encoded[j] for j in refs],
            reference_times=[round(video.times[j], 4) for j in refs],
            caption=caption,
            meta={
                "source": rel,
                "kind": "video",
                "shot": number,
                "shot_start": round(shot[0], 4),
                "shot_end": round(shot[1], 4),
                "target_time": round(video.times[target], 4),
            },
        )
        item.stats.add("targets")
        targets.append(item)
    return targets


def image_target(
    path: Path, order: int, rel: str, key: str, cfg: BuildConfig, stats: Stats, caption: str | None
) -> list[Item]:
    """Load one image as a target (odd modes converted; ``BadInput`` for unusable files)."""
    with stats.timed("decode"):
        image = load_rgb(
            path, max_side=cfg.max_image_side, max_pixels=cfg.max_input_pixels, stats=stats
        )
    item = Item(
        order=order,
        input=rel,
        key=key,
        index=0,
        kind="image",
        frames=[encode_image(image, "png")],
        caption=caption,
        meta={"source": rel, "kind": "image"},
    )
    item.stats.add("targets")
    return [item]
