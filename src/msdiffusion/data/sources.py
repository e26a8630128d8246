"""Input files → targets: listing, keys, sidecar captions, and the video/image front ends.

* Inputs are the files under the input folder (recursively, hidden ones excluded) with a video or
  image extension, in sorted order of their relative paths. Each has a ``key`` (a readable stem
  plus a hash of the relative path) that names its outputs and its part file.
* Sidecar captions (optional): ``<file>.txt`` next to the file, or ``captions.json``
  (``{"relative/path.jpg": "caption"}``) / ``captions.jsonl`` (``{"file": ..., "caption": ...}``
  per line) at the input folder's root. A video's sidecar caption is used for all of its shots.
* A video becomes one target per usable shot (``shots.py``); an image becomes one target.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..errors import InputError
from .config import BuildConfig
from .media import IMAGE_EXTENSIONS, load_rgb
from .samples import Target
from .shots import choose_pair, find_cuts, split_shots
from .stats import Stats
from .video import VIDEO_EXTENSIONS, decode_video

__all__ = ["list_inputs", "file_key", "SidecarCaptions", "video_targets", "image_target"]


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
    """``clips/My Video.mp4`` → ``My_Video-1a2b3c4d``: unique per path, safe as a file name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(rel).stem).strip("._")[:40] or "file"
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


def video_targets(
    path: Path, rel: str, key: str, cfg: BuildConfig, stats: Stats, caption: str | None
) -> list[Target]:
    """Decode, drop bad frames, split shots and choose each shot's target and references.

    Raises ``media.BadInput`` for a file that yields no frame.
    """
    v = cfg.video
    with stats.timed("decode"):
        video = decode_video(
            path,
            sample_fps=v.sample_fps,
            max_frames=v.max_frames,
            max_side=cfg.max_image_side,
            stats=stats,
        )
    kept: list[int] = []
    for i, (brightness, sharpness) in enumerate(video.quality):  # measured while decoding
        if min(video.size) < v.min_side:
            stats.skip("frame:too_small")
        elif brightness < v.min_brightness:
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
        stats.add("targets")
        target = members[pair.target]
        refs = [members[j] for j in pair.references]
        targets.append(
            Target(
                key=key,
                index=number,
                image=video.frame(target),
                caption=caption,
                stats=stats,
                references=[video.frame(j) for j in refs],
                reference_times=[round(video.times[j], 4) for j in refs],
                meta={
                    "source": rel,
                    "kind": "video",
                    "shot": number,
                    "shot_start": round(shot[0], 4),
                    "shot_end": round(shot[1], 4),
                    "target_time": round(video.times[target], 4),
                },
            )
        )
    return targets


def image_target(
    path: Path, rel: str, key: str, cfg: BuildConfig, stats: Stats, caption: str | None
) -> Target:
    """Load one image as a target (odd modes converted; ``BadInput`` for unusable files)."""
    with stats.timed("decode"):
        image = load_rgb(
            path, max_side=cfg.max_image_side, max_pixels=cfg.max_input_pixels, stats=stats
        )
    stats.add("targets")
    return Target(
        key=key,
        index=0,
        image=image,
        caption=caption,
        stats=stats,
        meta={"source": rel, "kind": "image"},
    )
