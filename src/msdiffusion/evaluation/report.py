"""Reports: ``report.json`` + ``report.md``, a bar chart per metric, a grid of samples, and
``compare`` across runs.

Every table names the model behind each number; counts of skipped images (missing, corrupt, no
reference) sit next to the averages they were left out of.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import InputError
from .metrics import apply_convention, summarize
from .runs import RunInputs

__all__ = ["METRICS", "build_report", "write_report", "compare_runs", "summary_table"]

REPORT_FORMAT = "msdiffusion-eval-report"
# metric -> (label, model roles, what it compares)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "clip_t": ("CLIP-T", ("clip",), "whole output vs prompt"),
    "clip_i": ("CLIP-I", ("clip",), "whole output vs references"),
    "dino": ("DINO", ("dino",), "whole output vs references"),
    "clip_i_box": ("CLIP-I box", ("clip",), "crop at the layout box vs reference"),
    "dino_box": ("DINO box", ("dino",), "crop at the layout box vs reference"),
    "m_dino_box": ("M-DINO box", ("dino",), "product over subjects of DINO box"),
    "clip_i_det": ("CLIP-I det", ("clip", "detector"), "crop at the detected box vs reference"),
    "dino_det": ("DINO det", ("dino", "detector"), "crop at the detected box vs reference"),
    "m_dino_det": ("M-DINO det", ("dino", "detector"), "product over subjects of DINO det"),
    "layout_iou": ("IoU", ("detector",), "detected box vs requested box"),
    "toy_identity": (
        "Identity",
        ("toy",),
        "box content retrieved among the sample's and "
        "distractor references (1 = right, chance = 1/candidates)",
    ),
    "toy_identity_all": (
        "Identity (all)",
        ("toy",),
        "every subject of the image right at once (product of the subjects' identity scores)",
    ),
    "toy_layout": ("Layout", ("toy",), "share of each subject's pixels inside its box"),
    "toy_background": ("Background", ("toy",), "the prompt's background outside the boxes"),
}
# What a benchmark's headline table shows first (the report has them all).
HEADLINE = {
    "msbench": (
        "clip_t",
        "clip_i_det",
        "dino_det",
        "m_dino_det",
        "clip_i_box",
        "dino_box",
        "m_dino_box",
        "layout_iou",
    ),
    "dreambench": ("clip_t", "clip_i", "dino", "layout_iou"),
    "toy": ("toy_identity", "toy_identity_all", "toy_layout", "toy_background"),
}


def _model_names(models: dict[str, Any], roles: Sequence[str]) -> str:
    return " + ".join(models[r]["model"] for r in roles if models.get(r))


def _summaries(rows: Sequence[dict[str, Any]], convention: dict[str, Any]) -> dict[str, Any]:
    return {
        m: summarize([apply_convention(m, r.get(m), **convention) for r in rows]) for m in METRICS
    }


def build_report(
    inputs: RunInputs,
    rows: list[dict[str, Any]],
    skipped: dict[str, list[str]],
    models: dict[str, Any],
    scoring: dict[str, Any],
    *,
    percent: bool = False,
    clip_t_weight: float | None = None,
) -> dict[str, Any]:
    """The report as a dict (what ``report.json`` holds)."""
    from ..version import __version__

    bench, meta = inputs.benchmark, inputs.meta
    convention = {"percent": percent, "clip_t_weight": clip_t_weight}
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    groups = {
        g: {
            "images": len(by_group[g]),
            "samples": len({r["sample_id"] for r in by_group[g]}),
            "metrics": _summaries(by_group[g], convention),
        }
        for g in bench.groups
        if g in by_group
    }
    macro = {
        m: summarize(
            [
                g["metrics"][m]["mean"]
                for g in groups.values()
                if g["metrics"][m]["mean"] is not None
            ]
        )["mean"]
        for m in METRICS
    }
    weak = sum(
        1
        for r in rows
        for s in r["subjects"]
        if s.get("det_score") is not None and s["det_score"] < scoring["weak_detection"]
    )
    # Our runs are expected to cover their plan (index.jsonl); external ones the whole benchmark.
    planned = {r.sample_id for r in inputs.records} if meta else {s.id for s in bench.runnable}
    scored = {r["sample_id"] for r in rows}
    generation = (meta or {}).get("generation")
    return {
        "format": REPORT_FORMAT,
        "msdiffusion_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(),
        "benchmark": {
            "name": bench.name,
            "data_dir": str(bench.data_dir),
            "definition": bench.definition,
            "options": bench.options,
            "samples": len(bench.samples),
            "runnable_samples": len(bench.runnable),
            "missing_references": bench.missing,
            "skipped_samples": len(bench.skipped),
        },
        "run": {
            "path": str(inputs.run.root),
            "kind": "msdiffusion" if meta else "external",
            "generation": generation,
            "images_per_sample": (meta or {}).get("images_per_sample"),
            "samples_planned": (meta or {}).get("samples"),
        },
        "seeds": (
            {
                "base_seed": generation["seed"],
                "rule": "image k of a sample: sha256('<base>:<sample_id>') mod (2^31-1000) + k",
                "per_image": "scores.jsonl / index.jsonl",
            }
            if generation
            else None
        ),
        "models": models,
        "scoring": scoring,
        "convention": convention,
        "counts": {
            "images_listed": len(inputs.records),
            "images_scored": len(rows),
            "skipped": {k: len(v) for k, v in skipped.items()},
            "skipped_examples": {k: v[:20] for k, v in skipped.items() if v},
            "samples_scored": len(scored),
            "samples_expected": len(planned),
            "samples_without_images": len(planned - scored),
            "weak_detections": weak,
        },
        "metrics": {
            m: {"label": label, "models": _model_names(models, roles), "description": desc}
            for m, (label, roles, desc) in METRICS.items()
        },
        "overall": _summaries(rows, convention),
        "overall_macro": macro,
        "groups": groups,
    }


def _fmt(v: float | None, percent: bool) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if percent else f"{v:.4f}"


def _columns(report: dict[str, Any]) -> list[str]:
    first = HEADLINE.get(report["benchmark"]["name"], tuple(METRICS))
    rest = [m for m in METRICS if m not in first]
    return [m for m in (*first, *rest) if report["overall"][m]["n"]]


def summary_table(report: dict[str, Any], columns: Sequence[str] | None = None) -> str:
    """Markdown table: overall and per group, one column per metric (model named in a note)."""
    cols = list(columns or _columns(report))
    pct = report["convention"]["percent"]
    head = "| group | images | " + " | ".join(METRICS[m][0] for m in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    rows = [("**all**", report["counts"]["images_scored"], report["overall"])]
    rows += [(g, v["images"], v["metrics"]) for g, v in report["groups"].items()]
    for name, n, metrics in rows:
        lines.append(
            f"| {name} | {n} | " + " | ".join(_fmt(metrics[m]["mean"], pct) for m in cols) + " |"
        )
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    b, c, run = report["benchmark"], report["counts"], report["run"]
    conv = report["convention"]
    scale = (
        "raw cosines"
        if not conv["percent"] and conv["clip_t_weight"] is None
        else ", ".join(
            x
            for x in (
                conv["percent"] and "similarities ×100",
                conv["clip_t_weight"] and f"CLIP-T = {conv['clip_t_weight']}·max(cos, 0)",
            )
            if x
        )
    )
    out = [
        f"# {b['name']} evaluation — {Path(run['path']).name}",
        "",
        f"msdiffusion {report['msdiffusion_version']} · {report['created'][:19]}Z · "
        f"{scale} · IoU as a fraction",
        "",
    ]
    out += ["## Models", "", "| role | model | revision |", "|---|---|---|"]
    out += [
        f"| {role} | `{m['model']}` | {m.get('revision') or 'local'} |"
        for role, m in report["models"].items()
        if m
    ]
    out += ["", "| metric | models | compares |", "|---|---|---|"]
    out += [
        f"| {v['label']} | {v['models']} | {v['description']} |"
        for k, v in report["metrics"].items()
        if report["overall"][k]["n"]
    ]
    out += ["", "## Results (mean over images)", "", summary_table(report), ""]
    sk = c["skipped"]
    out += [
        "## Counts",
        "",
        f"- images listed {c['images_listed']}, scored **{c['images_scored']}** "
        f"({c['samples_scored']} samples); skipped: {sk['missing']} missing, "
        f"{sk['corrupt']} corrupt or truncated, {sk['no_reference']} without reference",
        f"- benchmark: {b['samples']} samples, {b['runnable_samples']} runnable with this data "
        f"({b['skipped_samples']} skipped; missing references: "
        f"{', '.join(b['missing_references']) or 'none'})",
        f"- samples expected {c['samples_expected']} ("
        + ("the run's plan" if run["kind"] == "msdiffusion" else "every runnable sample")
        + f"), without any scored image: **{c['samples_without_images']}**",
        f"- weak detections (score < {report['scoring']['weak_detection']}): "
        f"{c['weak_detections']}",
    ]
    for kind, examples in c.get("skipped_examples", {}).items():
        out.append(f"- {kind}: {', '.join(examples[:5])}{' …' if len(examples) > 5 else ''}")
    gen = run.get("generation")
    out += ["", "## Run", ""]
    if gen:
        out.append(
            "- generation: " + ", ".join(f"{k}={v}" for k, v in gen.items() if v not in (None, ""))
        )
        out.append(
            f"- images per sample: {run['images_per_sample']}; seeds: "
            f"{report['seeds']['rule']} (base {report['seeds']['base_seed']})"
        )
    else:
        out.append("- external images (bring-your-own); seeds unknown")
    out += [
        "",
        "Charts: `charts/<metric>.png` · samples: `grid.png` · per image: `scores.jsonl`",
        "",
    ]
    return "\n".join(out)


def write_report(
    root: Path,
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    inputs: RunInputs,
    *,
    grid_cells: int = 16,
) -> None:
    """``report.json``, ``report.md``, ``charts/<metric>.png``, ``grid.png`` under ``root``."""
    from PIL import Image

    from ..charts import bar_chart
    from .drawing import sample_grid

    atomic_write_json(root / "report.json", report)
    atomic_write_text(root / "report.md", _markdown(report))
    groups = list(report["groups"])
    fmt = "{:.1f}" if report["convention"]["percent"] else "{:.3f}"
    for m in _columns(report):
        values = [report["overall"][m]["mean"]] + [
            report["groups"][g]["metrics"][m]["mean"] for g in groups
        ]
        bar_chart(
            f"{METRICS[m][0]} | {report['benchmark']['name']}",
            ["all"] + groups,
            {"mean": values},
            root / "charts" / f"{m}.png",
            subtitle=report["metrics"][m]["models"],
            value_format=fmt,
        )
    # First image of the first sample of each group, then of other samples, then any image.
    picks: list[dict[str, Any]] = []
    for key in (lambda r: r["group"], lambda r: r["sample_id"], id):
        seen = {key(r) for r in picks}
        for r in rows:
            if len(picks) < grid_cells and key(r) not in seen and r not in picks:
                picks.append(r)
                seen.add(key(r))
    cells = []
    for r in picks[:grid_cells]:
        sample = inputs.benchmark.get(r["sample_id"])
        with Image.open(inputs.run.resolve(r["image"])) as im:
            image = im.convert("RGB")
        refs = []
        for sub in sample.subjects:
            with Image.open(inputs.benchmark.path(sub.image)) as ref:
                refs.append(ref.convert("RGB"))
        cells.append(
            {
                "image": image,
                "subjects": r["subjects"],
                "references": refs,
                "caption": f"[{r['group']}] {sample.prompt}",
            }
        )
    if cells:
        sample_grid(cells, root / "grid.png")


# ----------------------------------------------------------------------------------------------
# compare


def _read_scored(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
        rows = [
            json.loads(line)
            for line in (run / "scores.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (OSError, ValueError) as err:
        raise InputError(
            "runs",
            "each run needs report.json and scores.jsonl (run `msdiffusion eval score RUN` first)",
            str(run),
        ) from err
    if report.get("format") != REPORT_FORMAT:
        raise InputError("runs", "report.json is not an msdiffusion evaluation report", str(run))
    return report, rows


def compare_runs(
    runs: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    names: Sequence[str] | None = None,
    common_only: bool = True,
    allow_different_models: bool = False,
    percent: bool = False,
    clip_t_weight: float | None = None,
) -> dict[str, Any]:
    """Several scored runs side by side: one row per run, overall and per group.

    By default only samples scored in *every* run count (like for like); runs of different
    benchmarks are refused, and so are runs scored with different models unless allowed.
    Writes ``compare.json``, ``compare.md`` and ``charts/<metric>.png`` to ``out`` if given.
    """
    if len(runs) < 2:
        raise InputError("runs", "compare needs at least two runs", list(map(str, runs)))
    paths = [Path(r) for r in runs]
    names = list(names) if names else [p.name or str(p) for p in paths]
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise InputError("names", "need one distinct name per run", names)
    loaded = [_read_scored(p) for p in paths]
    benches = {rep["benchmark"]["name"] for rep, _ in loaded}
    if len(benches) > 1:
        raise InputError("runs", "are of different benchmarks", sorted(benches))
    model_sets = [
        {k: (v or {}).get("model") for k, v in rep["models"].items()} for rep, _ in loaded
    ]
    if any(m != model_sets[0] for m in model_sets) and not allow_different_models:
        raise InputError(
            "runs",
            "were scored with different models (numbers would not "
            "compare); rescore or pass --allow-different-models",
            model_sets,
        )
    common = set.intersection(*({r["sample_id"] for r in rows} for _, rows in loaded))
    if common_only and not common:
        raise InputError("runs", "have no scored sample in common", names)
    convention = {"percent": percent, "clip_t_weight": clip_t_weight}
    bench = loaded[0][0]["benchmark"]["name"]
    groups = list(
        dict.fromkeys(
            r["group"]
            for _, rows in loaded
            for r in rows
            if not common_only or r["sample_id"] in common
        )
    )
    table: dict[str, Any] = {}
    for name, (rep, rows) in zip(names, loaded, strict=True):
        kept = [r for r in rows if not common_only or r["sample_id"] in common]
        table[name] = {
            "images": len(kept),
            "samples": len({r["sample_id"] for r in kept}),
            "overall": _summaries(kept, convention),
            "groups": {
                g: _summaries([r for r in kept if r["group"] == g], convention) for g in groups
            },
            "models": rep["models"],
            "run": rep["run"]["path"],
        }
    cols = [
        m
        for m in (*HEADLINE.get(bench, ()), *METRICS)
        if any(t["overall"][m]["n"] for t in table.values())
    ]
    cols = list(dict.fromkeys(cols))
    result = {
        "format": "msdiffusion-eval-compare",
        "benchmark": bench,
        "runs": table,
        "common_only": common_only,
        "common_samples": len(common),
        "convention": convention,
        "models": {k: v for k, v in model_sets[0].items()},
        "metrics": cols,
    }
    result["markdown"] = _compare_markdown(result, cols, groups)
    if out is not None:
        out = Path(out)
        atomic_write_json(
            out / "compare.json", {k: v for k, v in result.items() if k != "markdown"}
        )
        atomic_write_text(out / "compare.md", result["markdown"])
        from ..charts import bar_chart

        fmt = "{:.1f}" if percent else "{:.3f}"
        for m in cols:
            series = {
                n: [t["overall"][m]["mean"]] + [t["groups"][g][m]["mean"] for g in groups]
                for n, t in table.items()
            }
            bar_chart(
                f"{METRICS[m][0]} | {bench}",
                ["all"] + groups,
                series,
                out / "charts" / f"{m}.png",
                value_format=fmt,
                subtitle=_model_names(loaded[0][0]["models"], METRICS[m][1]),
            )
    return result


def _compare_markdown(result: dict[str, Any], cols: list[str], groups: list[str]) -> str:
    pct = result["convention"]["percent"]
    models = ", ".join(f"{k}: `{v}`" for k, v in result["models"].items() if v)
    scope = (
        f"samples scored in every run ({result['common_samples']})"
        if result["common_only"]
        else "all scored samples of each run"
    )
    lines = [f"# {result['benchmark']}: comparison", "", f"Models — {models}. Scope: {scope}.", ""]
    header = "| run | images | " + " | ".join(METRICS[m][0] for m in cols) + " |"
    sep = "|" + "---|" * (len(cols) + 2)
    lines += ["## All", "", header, sep]
    for name, t in result["runs"].items():
        lines.append(
            f"| {name} | {t['images']} | "
            + " | ".join(_fmt(t["overall"][m]["mean"], pct) for m in cols)
            + " |"
        )
    for g in groups:
        lines += ["", f"## {g}", "", header, sep]
        for name, t in result["runs"].items():
            n = t["groups"][g]["clip_t"]["n"]
            lines.append(
                f"| {name} | {n} | "
                + " | ".join(_fmt(t["groups"][g][m]["mean"], pct) for m in cols)
                + " |"
            )
    return "\n".join(lines) + "\n"
