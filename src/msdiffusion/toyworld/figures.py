"""The learning proof's evidence: the box-swap test, picture grids, loss curves and the report.

Used by ``msdiffusion.toyworld.learn``; every picture is drawn from the evaluation runs' own
images (same seeds across variants), every number read from their ``report.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..charts import PALETTE, line_chart
from .metrics import classify_pixels, colour_histogram, identity_score
from .world import BACKGROUNDS, held_out_subjects, render, sample_scene

__all__ = ["swap_test", "write_learning_report", "comparison_grid", "world_picture"]

CELL = 128  # pixels per image in the grids (64² images, nearest-neighbour ×2)
_INK, _BG = (30, 30, 30), (255, 255, 255)


def _big(image: Image.Image, side: int = CELL) -> Image.Image:
    return image.convert("RGB").resize((side, side), Image.Resampling.NEAREST)


def _boxes(image: Image.Image, subjects: Sequence[dict[str, Any]]) -> Image.Image:
    im = image.copy()
    d = ImageDraw.Draw(im)
    for n, s in enumerate(subjects):
        x0, y0, x1, y1 = s["box"]
        w, h = im.size
        d.rectangle([x0 * w, y0 * h, x1 * w - 1, y1 * h - 1], outline=PALETTE[n], width=2)
        d.text((x0 * w + 3, y0 * h + 2), s["phrase"], fill=PALETTE[n])
    return im


def _layout_cell(entry: dict[str, Any]) -> Image.Image:
    """The requested layout: the background's colour with each box and phrase drawn."""
    return _boxes(
        Image.new("RGB", (CELL, CELL), BACKGROUNDS[entry["background"]]), entry["subjects"]
    )


def _reference_cell(root: Path, entry: dict[str, Any]) -> Image.Image:
    cell = Image.new("RGB", (CELL, CELL), _BG)
    refs = [Image.open(root / s["image"]).convert("RGB") for s in entry["subjects"]]
    side = CELL // 2 if len(refs) > 1 else CELL
    for k, ref in enumerate(refs):
        ref.thumbnail((side - 4, side - 4))
        x, y = (k % 2) * side + 2, (k // 2) * side + 2
        cell.paste(ref, (x, y))
        ImageDraw.Draw(cell).rectangle(
            [x - 1, y - 1, x + ref.width, y + ref.height], outline=PALETTE[k], width=2
        )
    return cell


def _grid(rows: list[list[Image.Image]], header: Sequence[str], path: Path) -> None:
    head = 18
    grid = Image.new("RGB", (len(header) * (CELL + 4) + 4, head + len(rows) * (CELL + 4) + 4), _BG)
    d = ImageDraw.Draw(grid)
    for c, name in enumerate(header):
        d.text((4 + c * (CELL + 4), 3), name, fill=_INK)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            grid.paste(cell, (4 + c * (CELL + 4), head + 4 + r * (CELL + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def comparison_grid(
    bench: Path,
    runs: dict[str, Path],
    labels: dict[str, str],
    sample_ids: Sequence[str],
    path: Path,
) -> None:
    """reference | layout | one column per variant, image 0 of each sample (same seeds)."""
    spec = json.loads((bench / "toy" / "spec.json").read_text())
    entries = {e["sample_id"]: e for e in spec["samples"]}
    rows = []
    for sid in sample_ids:
        entry = entries[sid]
        row = [_reference_cell(bench / "toy", entry), _layout_cell(entry)]
        for run in runs.values():
            image = run / "images" / sid / "0.png"
            row.append(
                _big(Image.open(image))
                if image.exists()
                else Image.new("RGB", (CELL, CELL), (200, 200, 200))
            )
        rows.append(row)
    _grid(rows, ["references", "layout", *[labels[k] for k in runs]], path)


def _grid_samples(run: Path, per_group: int) -> list[str]:
    """The first ``per_group`` evaluated samples of each group (benchmark order)."""
    ids = [
        json.loads(line)["sample_id"]
        for line in (run / "index.jsonl").read_text().splitlines()
        if line.strip()
    ]
    chosen: dict[str, list[str]] = {}
    for sid in dict.fromkeys(ids):
        group = chosen.setdefault(sid.split("/")[0], [])
        if len(group) < per_group:
            group.append(sid)
    return [sid for group in sorted(chosen) for sid in chosen[group]]


def world_picture(path: Path, seed: int = 0) -> None:
    """Training scenes with their captions' subjects, and held-out references (a strip)."""
    cells = [_big(render(sample_scene(seed, "train", i))[0]) for i in range(6)]
    cells += [_big(image) for image, _, _ in held_out_subjects(4, seed)]
    _grid([cells], ["training scenes"] + [""] * 5 + ["held-out references"] + [""] * 3, path)


def swap_test(base: Path, adapter: Path, bench: Path, settings: Any, out: Path) -> dict[str, Any]:
    """Generate 2-subject samples again with the boxes exchanged (same seed): does each
    identity move with its box? Scores identity retrieval of each subject at its new box and at
    its old one."""
    import torch

    from ..layout import Subject
    from ..loading import load_pipeline

    model = load_pipeline(
        "toy",
        base=str(base / "base"),
        image_encoder=str(base / "image_encoder"),
        adapter=str(adapter),
    )
    spec = json.loads((bench / "toy" / "spec.json").read_text())
    samples = [e for e in spec["samples"] if e["group"] == "2-subject"][: settings.swap_samples]
    root = bench / "toy"
    at_new, at_old, original = [], [], []
    pictures = []
    for n, entry in enumerate(samples):
        refs = [Image.open(root / s["image"]).convert("RGB") for s in entry["subjects"]]
        cands = [colour_histogram(classify_pixels(r)) for r in refs]
        cands += [
            colour_histogram(classify_pixels(Image.open(root / d["image"]).convert("RGB")))
            for d in entry["distractors"]
        ]
        boxes = [s["box"] for s in entry["subjects"]]
        images = []
        for order in ((0, 1), (1, 0)):
            subjects = [
                Subject(image=refs[k], box=boxes[order[k]], phrase=s["phrase"])
                for k, s in enumerate(entry["subjects"])
            ]
            out_im = model.pipe(
                entry["prompt"],
                subjects=subjects,
                scale=settings.scale,
                num_inference_steps=settings.eval_steps,
                guidance_scale=settings.guidance_scale,
                generator=torch.Generator().manual_seed(1000 + n),
            ).images[0]
            images.append(out_im)
        labels = [classify_pixels(im) for im in images]
        for k in range(2):
            original.append(identity_score(colour_histogram(labels[0], boxes[k]), cands, k))
            at_new.append(identity_score(colour_histogram(labels[1], boxes[1 - k]), cands, k))
            at_old.append(identity_score(colour_histogram(labels[1], boxes[k]), cands, k))
        if n < 4:
            swapped = [dict(s, box=boxes[1 - k]) for k, s in enumerate(entry["subjects"])]
            pictures.append(
                [
                    _reference_cell(root, entry),
                    _boxes(_big(images[0]), entry["subjects"]),
                    _boxes(_big(images[1]), swapped),
                ]
            )
    _grid(pictures, ["references", "boxes as given", "boxes swapped"], out / "swap.png")

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    return {
        "samples": len(samples),
        "identity_original": mean(original),
        "identity_at_new_box": mean(at_new),
        "identity_at_old_box": mean(at_old),
        "candidates": spec["candidates"],
        "picture": str(out / "swap.png"),
    }


# ---- the report -------------------------------------------------------------------------------


def _metric(report: dict[str, Any], group: str | None, key: str) -> float | None:
    if group is None:
        return report["overall"][key]["mean"]
    g = report["groups"].get(group)
    return g["metrics"][key]["mean"] if g else None


def _multi(report: dict[str, Any], key: str) -> float | None:
    """Mean over the 2- and 3-subject groups (image-weighted)."""
    total, n = 0.0, 0
    for group in ("2-subject", "3-subject"):
        g = report["groups"].get(group)
        if g and g["metrics"][key]["mean"] is not None:
            total += g["metrics"][key]["mean"] * g["images"]
            n += g["images"]
    return total / n if n else None


def _fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _losses(out: Path) -> dict[str, list[tuple[float, float]]]:
    curves: dict[str, list[tuple[float, float]]] = {}
    for run in sorted((out / "adapters").glob("*/logs/metrics.jsonl")):
        name = run.parents[1].name
        points = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
        curves[name] = _smooth([(p["step"], p["loss"]) for p in points])
    return curves


def _smooth(points: list[tuple[float, float]], k: int = 8) -> list[tuple[float, float]]:
    return [
        (
            x,
            sum(y for _, y in points[max(0, i - k + 1) : i + 1])
            / len(points[max(0, i - k + 1) : i + 1]),
        )
        for i, (x, _) in enumerate(points)
    ]


def _base_losses(base: Path) -> dict[str, list[tuple[float, float]]]:
    log = base / "base_log.jsonl"
    if not log.exists():
        return {}
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {
        phase: _smooth([(e["step"], e["loss"]) for e in entries if e["phase"] == phase], 4)
        for phase in ("vae", "image_encoder", "unet")
    }


def _base_minutes(base: Path) -> dict[str, float]:
    """Wall-clock minutes of each base phase from its log; a resumed phase restarts its clock,
    so its runs are summed."""
    log = base / "base_log.jsonl"
    if not log.exists():
        return {}
    totals: dict[str, float] = {}
    last: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        phase, seconds = entry["phase"], float(entry["seconds"])
        if phase in last and seconds < last[phase]:  # a new run of the phase
            totals[phase] = totals.get(phase, 0.0) + last[phase]
        last[phase] = seconds
    return {phase: (totals.get(phase, 0.0) + last[phase]) / 60 for phase in last}


def write_learning_report(
    target: Path,
    *,
    out: Path,
    settings: Any,
    reports: dict[str, Any],
    labels: dict[str, str],
    swap: dict[str, Any] | None,
    stages: dict[str, float],
    machine: dict[str, Any],
) -> None:
    """The markdown report with its pictures in ``<target stem>/`` beside it; ``labels`` names
    each variant of ``reports``."""
    figures = target.parent / target.stem
    figures.mkdir(parents=True, exist_ok=True)
    world_picture(figures / "world.png")
    runs = {k: out / "eval" / k for k in reports}
    comparison_grid(
        out / "bench",
        runs,
        labels,
        _grid_samples(next(iter(runs.values())), settings.grid_per_group),
        figures / "grid.png",
    )
    curves = _losses(out)
    if curves:
        line_chart(
            "Adapter training loss (moving average)",
            curves,
            figures / "adapter_loss.png",
            y_label="ε-MSE",
            subtitle="msdiffusion train on the toy manifest",
        )
    base_curves = _base_losses(out / "base")
    if base_curves.get("unet"):
        line_chart(
            "Base UNet loss (min-SNR weighted, moving average)",
            {"unet": base_curves["unet"]},
            figures / "base_loss.png",
            y_label="loss",
        )
    if swap and Path(swap["picture"]).exists():
        Image.open(swap["picture"]).save(figures / "swap.png")
    chance = 1.0 / next(iter(reports.values()))["models"]["toy"]["candidates"]
    rel = figures.name
    lines = [
        "# The toy world: adapters trained here learn identity and layout",
        "",
        f"Setting **{settings.name}** — reproduce with `make learn"
        + (" SETTING=full`" if settings.name == "full" else "`")
        + ". Every number below comes "
        "from `msdiffusion eval score` on images generated by `msdiffusion eval generate toy`; "
        "every adapter was trained by `msdiffusion train` on the world's manifest.",
        "",
        "## The world",
        "",
        f"![training scenes and held-out references]({rel}/world.png)",
        "",
        "Subjects are silhouettes named by a phrase ("
        + ", ".join(
            f"*{c}*" for c in ("ball", "star", "ring", "vase", "kite", "tent", "cross", "moon")
        )
        + "); their "
        "identity — a body colour, a second colour and a pattern (stripes, checks, dots) — is "
        "not in the caption, so it can only come from the reference. Eight colours make 28 "
        "colour pairs; 8 of them are held out of every training scene, and the benchmark uses "
        "only those: every evaluated identity is one the model has never seen. References "
        "are another frame of the subject (other size, rotation, place and background), cropped "
        "to it.",
        "",
        "## Results (the form of the paper's Table 3)",
        "",
        f"Identity: retrieval of each box's content among the sample's references and "
        f"distractors ({round(1 / chance)} candidates, chance {chance:.3f}). Identity (all): every "
        "subject of the image right at once. Layout: share of each subject's pixels inside its "
        "box. Background: the prompt's background outside the boxes.",
        "",
        "| model | identity, 1 subject | identity, 2–3 subjects | identity (all), 2–3 "
        "| layout | background |",
        "|---|---|---|---|---|---|",
    ]
    for key, rep in reports.items():
        lines.append(
            f"| {labels[key]} | {_fmt(_metric(rep, '1-subject', 'toy_identity'))} | "
            f"{_fmt(_multi(rep, 'toy_identity'))} | "
            f"{_fmt(_multi(rep, 'toy_identity_all'))} | "
            f"{_fmt(_metric(rep, None, 'toy_layout'))} | "
            f"{_fmt(_metric(rep, None, 'toy_background'))} |"
        )
    lines.append(
        f"| chance | {chance:.3f} | {chance:.3f} | ≤ {chance**2:.3f} | – | "
        f"{1 / len(BACKGROUNDS):.3f} |"
    )
    first = next(iter(reports.values()))
    lines += [
        "",
        f"{first['counts']['images_scored']} images per model "
        f"({settings.eval_images} per sample, {settings.eval_steps} Euler steps, "
        f"guidance {settings.guidance_scale}, γ = {settings.scale}).",
        "",
    ]
    lines += [
        "Per group:",
        "",
        "| model | group | images | identity | identity (all) | layout | background |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, rep in reports.items():
        for group, g in rep["groups"].items():
            m = g["metrics"]
            lines.append(
                f"| {labels[key]} | {group} | {g['images']} | "
                f"{_fmt(m['toy_identity']['mean'])} | "
                f"{_fmt(m['toy_identity_all']['mean'])} | "
                f"{_fmt(m['toy_layout']['mean'])} | "
                f"{_fmt(m['toy_background']['mean'])} |"
            )
    lines += [
        "",
        "## Pictures (the same seeds in every column)",
        "",
        f"![reference, layout and each model]({rel}/grid.png)",
        "",
    ]
    if swap:
        lines += [
            "## Swapping two subjects' boxes",
            "",
            f"{swap['samples']} two-subject samples, generated again with the two boxes "
            "exchanged (same seed). Identity retrieved at the subject's *new* box: "
            f"**{_fmt(swap['identity_at_new_box'])}**; at its old box: "
            f"{_fmt(swap['identity_at_old_box'])} (as given: "
            f"{_fmt(swap['identity_original'])}; chance {chance:.3f}).",
            "",
            f"![boxes as given and swapped]({rel}/swap.png)",
            "",
        ]
    lines += ["## Training", ""]
    if curves:
        lines += [f"![adapter loss]({rel}/adapter_loss.png)", ""]
    if base_curves.get("unet"):
        lines += [f"![base loss]({rel}/base_loss.png)", ""]
    lines += [
        f"Adapters: {settings.adapter_steps} steps, batch {settings.batch_size}, AdamW "
        f"lr {settings.learning_rate:g} constant, the released dropouts (image / text / "
        "both 0.05 each, grounding 0.1), on "
        f"{settings.records} training records.",
        "",
    ]
    lines += [
        "## Machine and times",
        "",
        f"{machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch "
        f"thread{'' if machine['torch_threads'] == 1 else 's'} per process), Python "
        f"{machine['python']}, torch {machine['torch']}, CPU only.",
        "",
        "| stage | minutes |",
        "|---|---|",
    ]
    if "base" not in stages:  # trained outside this run: the phases' own clocks
        names = {"vae": "VAE", "image_encoder": "image encoder", "unet": "UNet + text encoders"}
        lines += [
            f"| base: {names.get(phase, phase)} | {minutes:.1f} |"
            for phase, minutes in _base_minutes(out / "base").items()
        ]
    lines += [f"| {name} | {seconds / 60:.1f} |" for name, seconds in stages.items()]
    lines.append("")
    notes = out / "NOTES.md"
    if notes.exists():  # what happened in this run that the settings do not say
        lines += ["## Notes on this run", "", notes.read_text(encoding="utf-8").strip(), ""]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
