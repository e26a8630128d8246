"""The build report: what happened at every stage, and a picture to check the samples by eye.

``report.json`` (machine-readable) and ``report.md`` hold the stage funnel, the skip reasons per
unit (file, frame, shot, sample, subject, detection, mask), the inputs converted on the way in,
histograms (subjects per sample, box sizes and aspects, match similarity, phrases) and the seconds
spent per step, and the failed inputs. ``report_grid.png`` draws random samples (fixed by the
seed): the target with its subjects' boxes and phrases, next to each subject's reference crop with
its mask tinted. Histograms are kept per shard (``RecordSummary.to_dict``) and added up.
"""

from __future__ import annotations

import bisect
import json
import math
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..atomic import atomic_save_image, atomic_write_text
from ..charts import PALETTE, font
from .config import BuildConfig
from .stats import STAGES, Stats

__all__ = ["RecordSummary", "write_report", "draw_grid"]

AREA_BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)
ASPECT_BINS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, float("inf"))
SIMILARITY_BINS = (-1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0001)


def _bin_names(edges: tuple[float, ...]) -> list[str]:
    return [
        f"{a:g}–{b:g}" if math.isfinite(b) else f"≥{a:g}"
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


def _bin(value: float, edges: tuple[float, ...]) -> int:
    """Index of the bin holding ``value`` (the last bin includes its right edge)."""
    return min(max(bisect.bisect_right(edges, value) - 1, 0), len(edges) - 2)


class RecordSummary:
    """Histograms of records, accumulated one record at a time and added up across shards."""

    def __init__(self) -> None:
        self.samples = self.subjects = 0
        self.per_sample: Counter[str] = Counter()
        self.phrases: Counter[str] = Counter()
        self.caption_source: Counter[str] = Counter()
        self.augmented: Counter[str] = Counter()
        self.bins = {
            name: [0] * (len(edges) - 1)
            for name, edges in (
                ("box_area_fraction", AREA_BINS),
                ("box_aspect_normalised", ASPECT_BINS),
                ("match_similarity", SIMILARITY_BINS),
            )
        }

    def add(self, record: dict[str, Any]) -> None:
        self.samples += 1
        subjects = record["subjects"]
        self.subjects += len(subjects)
        self.per_sample[str(len(subjects))] += 1
        self.caption_source[record.get("meta", {}).get("caption_source", "?")] += 1
        metas = record.get("meta", {}).get("subjects") or [{}] * len(subjects)
        for s, meta in zip(subjects, metas, strict=False):
            x0, y0, x1, y1 = s["box"]
            w, h = x1 - x0, y1 - y0
            self.bins["box_area_fraction"][_bin(w * h, AREA_BINS)] += 1
            self.bins["box_aspect_normalised"][
                _bin(max(w, h) / max(min(w, h), 1e-9), ASPECT_BINS)
            ] += 1
            if "similarity" in meta:
                self.bins["match_similarity"][_bin(meta["similarity"], SIMILARITY_BINS)] += 1
            self.phrases[s["phrase"].lower()] += 1
            self.augmented[str(s["augmented"]).lower()] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "subjects": self.subjects,
            "per_sample": dict(self.per_sample),
            "phrases": dict(self.phrases),
            "caption_source": dict(self.caption_source),
            "augmented": dict(self.augmented),
            "bins": self.bins,
        }

    def merge(self, data: dict[str, Any]) -> RecordSummary:
        """Add a ``to_dict`` of another summary into this one."""
        self.samples += data["samples"]
        self.subjects += data["subjects"]
        for name in ("per_sample", "phrases", "caption_source", "augmented"):
            getattr(self, name).update(data[name])
        for name, counts in data["bins"].items():
            self.bins[name] = [a + b for a, b in zip(self.bins[name], counts, strict=True)]
        return self

    def histograms(self) -> dict[str, dict[str, int]]:
        """Subjects per sample, box area/aspect (normalised coordinates), match similarity
        (video input), the 20 commonest phrases, caption sources, augmented subjects."""
        edges = {
            "box_area_fraction": AREA_BINS,
            "box_aspect_normalised": ASPECT_BINS,
            "match_similarity": SIMILARITY_BINS,
        }
        out = {
            "subjects_per_sample": dict(sorted(self.per_sample.items(), key=lambda kv: int(kv[0])))
        }
        for name, counts in self.bins.items():
            if name != "match_similarity" or any(counts):
                out[name] = dict(zip(_bin_names(edges[name]), counts, strict=True))
        out["top_phrases"] = dict(self.phrases.most_common(20))
        out["caption_source"] = dict(self.caption_source)
        out["augmented_subjects"] = dict(self.augmented)
        return out


def write_report(
    root: Path,
    summary: RecordSummary,
    stats: Stats,
    cfg: BuildConfig,
    mode: str,
    picked: list[Any],
    failed: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write report.json, report.md and report_grid.png into ``root``; return the report."""
    files = stats.counts.get("files", 0)
    busy = sum(stats.seconds.values())
    report: dict[str, Any] = {
        "mode": mode,
        "samples": summary.samples,
        "subjects": summary.subjects,
        "funnel": [
            {"stage": k, "meaning": m, "count": int(stats.counts.get(k, 0))}
            for k, m in STAGES
            if mode == "videos" or not k.startswith(("frames", "shots"))
        ],
        "skipped": dict(sorted(stats.skipped.items())),
        "converted": dict(sorted(stats.converted.items())),
        "histograms": summary.histograms(),
        "seconds": {k: round(v, 3) for k, v in sorted(stats.seconds.items())},
        "throughput": {
            "processing_seconds": round(busy, 3),
            "files_per_processing_second": round(files / busy, 4) if busy else None,
            "samples_per_processing_second": round(summary.samples / busy, 4) if busy else None,
            "frames_decoded_per_decode_second": (
                round(stats.counts["frames_decoded"] / stats.seconds["decode"], 1)
                if stats.seconds.get("decode") and stats.counts.get("frames_decoded")
                else None
            ),
            **{
                f"{step}_images_per_second": round(
                    stats.counts[f"images:{step}"] / stats.seconds[step], 2
                )
                for step in ("caption", "detect", "features", "segment")
                if stats.seconds.get(step) and stats.counts.get(f"images:{step}")
            },
        },
        "model_images": {
            step: int(stats.counts.get(f"images:{step}", 0))
            for step in ("caption", "detect", "features", "segment")
        },
        "failed_inputs": len(failed),
        "failed": failed[:20],
        "config_fingerprint": cfg.fingerprint(),
        "grid": "report_grid.png",
        **(extra or {}),
    }
    atomic_write_text(root / "report.json", json.dumps(report, indent=2))
    atomic_write_text(root / "report.md", _markdown(report))
    atomic_save_image(draw_grid(picked), root / "report_grid.png")
    return report


def _bar(count: int, top: int, width: int = 30) -> str:
    return "█" * (round(width * count / top) if top else 0)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Data build report ({report['mode']})",
        "",
        f"**{report['samples']} samples, {report['subjects']} subjects.** "
        f"Random samples: ![grid]({report['grid']})",
        "",
        "## Funnel",
        "",
        "| stage | count | meaning |",
        "|---|---:|---|",
    ]
    lines += [f"| {row['stage']} | {row['count']} | {row['meaning']} |" for row in report["funnel"]]
    for title, table in (
        ("Skipped (unit:reason)", report["skipped"]),
        ("Inputs converted or partly used", report["converted"]),
        ("Seconds per step (summed over processes)", report["seconds"]),
        ("Images through each model", report["model_images"]),
        ("Throughput", report["throughput"]),
        (
            f"Failed inputs ({report['failed_inputs']}; all in failed.jsonl)",
            {f"{f['input']} #{f['index']} [{f['stage']}]": f["reason"] for f in report["failed"]},
        ),
    ):
        lines += ["", f"## {title}", ""]
        if not table:
            lines.append("(none)")
            continue
        lines += ["| | |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in table.items()]
    lines += ["", "## Histograms"]
    for name, hist in report["histograms"].items():
        top = max(hist.values(), default=0)
        lines += ["", f"### {name}", "", "```"]
        lines += [f"{k:>14} {v:>7} {_bar(v, top)}" for k, v in hist.items()] or ["(empty)"]
        lines.append("```")
    return "\n".join(lines) + "\n"


def _fit(image: Image.Image, side: int) -> Image.Image:
    """Scale (up or down) so the long side is ``side``."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def _cell(
    record: dict[str, Any], open_image: Callable[[str], Image.Image], font: Any
) -> Image.Image:
    target_side, ref_side, pad = 320, 112, 6
    cell = Image.new(
        "RGB", (target_side + 2 * (ref_side + pad) + 3 * pad, target_side + 70), (250, 250, 250)
    )
    draw = ImageDraw.Draw(cell)
    target = _fit(open_image(record["image"]).convert("RGB"), target_side)
    cell.paste(target, (pad, pad))
    tw, th = target.size
    for k, s in enumerate(record["subjects"]):
        colour = PALETTE[k % len(PALETTE)]
        x0, y0, x1, y1 = s["box"]
        rect = (pad + x0 * tw, pad + y0 * th, pad + x1 * tw, pad + y1 * th)
        draw.rectangle(rect, outline=colour, width=3)
        label = s["phrase"] + (" (aug)" if s["augmented"] else "")
        draw.rectangle(
            (rect[0], rect[1], rect[0] + draw.textlength(label, font=font) + 4, rect[1] + 14),
            fill=colour,
        )
        draw.text((rect[0] + 2, rect[1]), label, fill=(255, 255, 255), font=font)
        ref = open_image(s["reference"]).convert("RGB")
        if s.get("reference_mask"):
            mask = open_image(s["reference_mask"]).convert("L").resize(ref.size)
            tint = Image.new("RGB", ref.size, colour)
            ref = Image.composite(Image.blend(ref, tint, 0.35), ref, mask)
        if s.get("reference_box"):
            rd = ImageDraw.Draw(ref)
            bx0, by0, bx1, by1 = s["reference_box"]
            rd.rectangle(
                (bx0 * ref.width, by0 * ref.height, bx1 * ref.width - 1, by1 * ref.height - 1),
                outline=colour,
                width=max(1, ref.width // 60),
            )
        ref = _fit(ref, ref_side)
        col, row = k % 2, k // 2
        x, y = target_side + 2 * pad + col * (ref_side + pad), pad + row * (ref_side + 16)
        if y + ref_side + 14 > target_side + pad:
            continue  # more subjects than fit: boxes still drawn on the target
        cell.paste(ref, (x, y))
        draw.text((x, y + ref.height + 1), s["phrase"][:18], fill=colour, font=font)
    caption = "\n".join(textwrap.wrap(record["caption"], 80)[:3])
    draw.text((pad, target_side + 2 * pad), caption, fill=(20, 20, 20), font=font)
    draw.text((pad, target_side + 52), record["id"], fill=(120, 120, 120), font=font)
    return cell


def draw_grid(samples: list[Any], columns: int = 3) -> Image.Image:
    """A sheet of sample cells (``samples``: ``shards.ShardSample``s)."""
    records = [s.record for s in samples]
    label_font = font(12)
    if not records:
        sheet = Image.new("RGB", (400, 60), (250, 250, 250))
        ImageDraw.Draw(sheet).text((10, 20), "no samples", fill=(0, 0, 0), font=label_font)
        return sheet
    cells = [_cell(s.record, s.open, label_font) for s in samples]
    cw, ch = cells[0].size
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (min(columns, len(cells)) * cw, rows * ch), (255, 255, 255))
    for i, cell in enumerate(cells):
        sheet.paste(cell, ((i % columns) * cw, (i // columns) * ch))
    return sheet
