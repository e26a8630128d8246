"""Reports: ``report.json`` + ``report.md``, a bar chart per metric, a grid of samples and one of
the worst samples.

Every table names the model behind each number and gives its 95 % interval (bootstrap over
samples, :mod:`~msdiffusion.evaluation.stats`); the protocol the numbers are measured against and
every deviation from it head the report; counts of skipped images (missing, corrupt, no reference)
and of missing subjects sit next to the averages they were left out of.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json, atomic_write_text
from .breakdowns import Aggregator, benchmark_weights
from .catalog import METRICS, model_names
from .markdown import headline, report_markdown, summary_table
from .protocols import Protocol
from .runs import RunInputs

__all__ = ["METRICS", "REPORT_FORMAT", "build_report", "write_report", "summary_table", "headline"]

REPORT_FORMAT = "msdiffusion-eval-report"
SEED_RULE = "image k of a sample: sha256('<base>:<sample_id>') mod (2^31-1000) + k"


def _detection(rows: Sequence[dict[str, Any]], threshold: float | None) -> dict[str, Any] | None:
    found = [s["detected"] for r in rows for s in r.get("subjects", []) if "detected" in s]
    if not found:
        return None
    return {
        "threshold": threshold,
        "subjects": len(found),
        "detected": sum(found),
        "missing": len(found) - sum(found),
        "rate": sum(found) / len(found),
        "unit": "subject of an image",
    }


def _protocol_block(
    protocol: Protocol, bench: str, meta: dict[str, Any] | None, scoring_deviations: dict[str, Any]
) -> dict[str, Any]:
    from .generate import recorded_deviations

    generation = recorded_deviations(meta, protocol) if meta else None
    # external images: only the scoring can be checked (how they were made is theirs to say)
    comparable = not scoring_deviations and not generation
    return {
        "name": protocol.name,
        "description": protocol.description,
        "headline": list(protocol.headline.get(bench, ())),
        "deviations": {"generation": generation, "scoring": scoring_deviations},
        "comparable": comparable,
        "settings": protocol.to_dict(),
    }


def build_report(
    inputs: RunInputs,
    rows: list[dict[str, Any]],
    skipped: dict[str, list[str]],
    models: dict[str, Any],
    scoring: dict[str, Any],
    protocol: Protocol,
    scoring_deviations: dict[str, Any],
) -> dict[str, Any]:
    """The report as a dict (what ``report.json`` holds)."""
    from ..version import __version__

    bench, meta = inputs.benchmark, inputs.meta
    convention = {"percent": scoring["percent"], "clip_t_weight": scoring["clip_t_weight"]}
    agg = Aggregator(rows, bench, convention, resamples=scoring["resamples"], seed=scoring["seed"])
    metrics = list(METRICS)
    # Our runs are expected to cover their plan (index.jsonl); external ones the whole benchmark.
    planned = {r.sample_id for r in inputs.records} if meta else {s.id for s in bench.runnable}
    planned_groups = [g for g in bench.groups if any(bench.get(i).group == g for i in planned)]
    weights = benchmark_weights(bench, planned_groups)
    groups = agg.by(lambda r: r["group"], metrics, order=bench.groups)
    scored = {r["sample_id"] for r in rows}
    generation = (meta or {}).get("generation")
    block = _protocol_block(protocol, bench.name, meta, scoring_deviations)
    return {
        "format": REPORT_FORMAT,
        "msdiffusion_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(),
        "protocol": block,
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
                "rule": SEED_RULE,
                "per_image": "scores.jsonl / index.jsonl",
            }
            if generation
            else None
        ),
        "models": models,
        "scoring": scoring,
        "convention": convention,
        "interval": {
            "method": "bootstrap over samples (percentile); a sample's images move together",
            "level": 0.95,
            "resamples": scoring["resamples"],
            "seed": scoring["seed"],
        },
        "weighting": {
            "scheme": "overall = the groups' means weighted by their share of the benchmark's "
            "samples (its definition); groups, subject counts, categories and "
            "subjects: the mean over their samples",
            "weights": weights,
            "subset": len(scored)
            < sum(r["samples"] for r in bench.counts() if r["group"] in weights),
            "samples_scored": len(scored),
            "samples_in_benchmark": sum(
                r["samples"] for r in bench.counts() if r["group"] in weights
            ),
            "groups_without_samples": [g for g in weights if g not in groups],
        },
        "counts": {
            "images_listed": len(inputs.records),
            "images_scored": len(rows),
            "skipped": {k: len(v) for k, v in skipped.items()},
            "skipped_examples": {k: v[:20] for k, v in skipped.items() if v},
            "samples_scored": len(scored),
            "samples_expected": len(planned),
            "samples_without_images": len(planned - scored),
        },
        "detection": _detection(rows, scoring.get("detection_threshold")),
        "metrics": {
            m: {"label": label, "models": model_names(models, roles), "description": desc}
            for m, (label, roles, desc) in METRICS.items()
        },
        "overall": agg.overall(metrics, weights),
        "overall_macro": {m: _macro(groups, m) for m in metrics},
        "groups": groups,
        "breakdowns": {
            "subjects": agg.by(lambda r: str(r.get("n_subjects") or len(r["subjects"])), metrics),
            "category": agg.by_subject(lambda s: s.category or "–", metrics),
            "subject": agg.by_subject(lambda s: s.name, metrics),
        },
        "worst": agg.worst(protocol.worst_by.get(bench.name, ""), scoring["worst"]),
    }


def _macro(groups: dict[str, Any], metric: str) -> float | None:
    means = [
        g["metrics"][metric]["mean"]
        for g in groups.values()
        if g["metrics"][metric]["mean"] is not None
    ]
    return sum(means) / len(means) if means else None


def _cells(
    rows: Sequence[dict[str, Any]], inputs: RunInputs, captions: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Grid cells of ``rows``: the image, its subjects (boxes, detections), references, caption."""
    from PIL import Image

    cells = []
    for k, r in enumerate(rows):
        sample = inputs.benchmark.get(r["sample_id"])
        with Image.open(inputs.run.resolve(r["image"])) as im:
            image = im.convert("RGB")
        refs = []
        for sub in sample.subjects:
            with Image.open(inputs.benchmark.path(sub.image)) as ref:
                refs.append(ref.convert("RGB"))
        text = captions[k] if captions else f"[{r['group']}] {sample.prompt}"
        cells.append(
            {"image": image, "subjects": r["subjects"], "references": refs, "caption": text}
        )
    return cells


def write_report(
    root: Path,
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    inputs: RunInputs,
    *,
    grid_cells: int = 16,
) -> None:
    """``report.json``, ``report.md``, ``charts/<metric>.png``, ``grid.png`` and ``worst.png``
    under ``root``."""
    from ..charts import bar_chart
    from .drawing import sample_grid

    atomic_write_json(root / "report.json", report)
    atomic_write_text(root / "report.md", report_markdown(report))
    groups = list(report["groups"])
    fmt = "{:.1f}" if report["convention"]["percent"] else "{:.3f}"
    for m in (m for m in METRICS if report["overall"][m]["n"]):  # a chart per metric
        parts = [report["overall"][m]] + [report["groups"][g]["metrics"][m] for g in groups]
        bar_chart(
            f"{METRICS[m][0]} | {report['benchmark']['name']} | {report['protocol']['name']}"
            " protocol",
            ["all (weighted)"] + groups,
            {"mean": [p["mean"] for p in parts]},
            root / "charts" / f"{m}.png",
            subtitle=report["metrics"][m]["models"],
            value_format=fmt,
            intervals={"mean": [_interval(p) for p in parts]},
        )
    # First image of the first sample of each group, then of other samples, then any image.
    picks: list[dict[str, Any]] = []
    for key in (lambda r: r["group"], lambda r: r["sample_id"], id):
        seen = {key(r) for r in picks}
        for r in rows:
            if len(picks) < grid_cells and key(r) not in seen and r not in picks:
                picks.append(r)
                seen.add(key(r))
    if picks:
        sample_grid(_cells(picks[:grid_cells], inputs), root / "grid.png")
    by_image = {r["image"]: r for r in rows}
    worst = [w for w in report["worst"] if w["images"]]  # each sample's worst image
    if worst:
        captions = [
            f"{METRICS[w['metric']][0]} {fmt.format(w['images'][0]['value'] or 0.0)} · "
            f"[{w['group']}] {w['prompt']}"
            for w in worst
        ]
        sample_grid(
            _cells([by_image[w["images"][0]["image"]] for w in worst], inputs, captions),
            root / "worst.png",
        )


def _interval(summary: dict[str, Any]) -> tuple[float, float] | None:
    if summary.get("ci_low") is None:
        return None
    return summary["ci_low"], summary["ci_high"]
