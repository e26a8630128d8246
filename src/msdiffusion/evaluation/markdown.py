"""Markdown for reports and comparisons: every value with its 95 % interval, every table with
the models behind it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .catalog import METRICS, SUBJECT_METRICS

__all__ = ["fmt", "fmt_summary", "headline", "report_markdown", "summary_table", "table"]


def fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if percent else f"{value:.3f}"


def fmt_summary(summary: dict[str, Any] | None, percent: bool = False) -> str:
    """``0.698 [0.690, 0.706]`` — the mean and its 95 % interval."""
    if not summary or summary.get("mean") is None:
        return "–"
    if summary.get("ci_low") is None:
        return fmt(summary["mean"], percent)
    return (
        f"{fmt(summary['mean'], percent)} [{fmt(summary['ci_low'], percent)}, "
        f"{fmt(summary['ci_high'], percent)}]"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def headline(report: dict[str, Any]) -> list[str]:
    """The metrics a report's tables show: the protocol's headline ones the run has values for
    (every metric it has, if none; the "every metric" table has them all)."""
    present = [m for m in METRICS if report["overall"][m]["n"]]
    first = [m for m in report["protocol"].get("headline", ()) if m in present]
    return first or present


def summary_table(report: dict[str, Any], columns: Sequence[str] | None = None) -> str:
    """Overall (weighted like the benchmark) and per group: mean [95 % interval] per metric."""
    cols = list(columns or headline(report))
    pct = report["convention"]["percent"]
    rows = [
        (
            "**all** (weighted)",
            report["counts"]["samples_scored"],
            report["counts"]["images_scored"],
            report["overall"],
        )
    ]
    rows += [(g, v["samples"], v["images"], v["metrics"]) for g, v in report["groups"].items()]
    return table(
        ["group", "samples", "images", *(METRICS[m][0] for m in cols)],
        [(name, s, n, *(fmt_summary(ms[m], pct) for m in cols)) for name, s, n, ms in rows],
    )


def _breakdown(
    parts: dict[str, Any], cols: Sequence[str], pct: bool, first: str, images: bool = True
) -> str:
    cols = [m for m in cols if any(p["metrics"].get(m, {}).get("n") for p in parts.values())]
    head = [first, "samples", *(["images"] if images else []), *(METRICS[m][0] for m in cols)]
    return table(
        head,
        [
            (
                k,
                p["samples"],
                *([p["images"]] if images else []),
                *(fmt_summary(p["metrics"].get(m), pct) for m in cols),
            )
            for k, p in parts.items()
        ],
    )


def _deviation_lines(block: dict[str, Any]) -> list[str]:
    out = []
    for part in ("generation", "scoring"):
        devs = block["deviations"][part]
        if devs is None:
            out.append(f"- {part}: unknown (images made elsewhere)")
        elif devs:
            out.append(
                f"- {part}: "
                + "; ".join(
                    f"{k} = {v['run']!r} (protocol: {v['protocol']!r})" for k, v in devs.items()
                )
            )
        else:
            out.append(f"- {part}: as the protocol")
    return out


def _protocol_section(report: dict[str, Any]) -> list[str]:
    block = report["protocol"]
    external = block["deviations"]["generation"] is None
    verdict = (
        "**with deviations** — these numbers are not comparable with runs that follow the protocol"
        if not block["comparable"]
        else "scored as the protocol says; the images were made elsewhere, how is theirs to state"
        if external
        else "every setting as the protocol: the numbers are comparable with other runs of it"
    )
    lines = [f"Protocol **{block['name']}** ({block['description']}): {verdict}.", ""]
    return lines + _deviation_lines(block) + [""]


def _models_section(report: dict[str, Any]) -> list[str]:
    rows = []
    for role, m in report["models"].items():
        if not m:
            continue
        weights = (m.get("weights_sha256") or "")[:12] or "–"
        pre = m.get("preprocessing")
        if isinstance(pre, dict):
            pre = ", ".join(
                f"{k} {v}" for k, v in pre.items() if k not in ("image_mean", "image_std")
            )
        rows.append((role, f"`{m['model']}`", m.get("revision") or "local", weights, pre or "–"))
    lines = [
        "## Models",
        "",
        table(["role", "model", "revision", "weights (sha256)", "preprocessing"], rows),
        "",
    ]
    lines += [
        table(
            ["metric", "models", "compares"],
            [
                (v["label"], v["models"], v["description"])
                for k, v in report["metrics"].items()
                if report["overall"][k]["n"]
            ],
        ),
        "",
    ]
    return lines


def _results_section(report: dict[str, Any]) -> list[str]:
    pct = report["convention"]["percent"]
    w, iv = report["weighting"], report["interval"]
    subset = (
        f"a subset: {w['samples_scored']} of the {w['samples_in_benchmark']} samples, "
        "so the weighting matters"
        if w["subset"]
        else "every sample"
    )
    lines = [
        "## Results",
        "",
        f"Mean [95 % interval]; intervals: {iv['method']}, {iv['resamples']} resamples. "
        f"Weighting: {w['scheme']} — this run scores {subset}.",
        "",
    ]
    if w["groups_without_samples"]:
        lines += [
            f"Groups without a scored sample (left out, the others' weights renormalised): "
            f"{', '.join(w['groups_without_samples'])}.",
            "",
        ]
    lines += [summary_table(report), ""]
    cols = headline(report)
    b = report["breakdowns"]
    lines += ["### By subject count", "", _breakdown(b["subjects"], cols, pct, "subjects"), ""]
    sub_cols = [m for m in cols if m in SUBJECT_METRICS]
    if sub_cols:
        note = "subject-level: each subject's own score, averaged within a sample first"
        lines += [
            f"### By category ({note})",
            "",
            _breakdown(b["category"], sub_cols, pct, "category", images=False),
            "",
            "### By subject",
            "",
            _breakdown(b["subject"], sub_cols, pct, "subject", images=False),
            "",
        ]
    lines += [
        "### Every metric (overall)",
        "",
        table(
            ["metric", "mean [95 % interval]", "samples", "images", "std over samples"],
            [
                (METRICS[m][0], fmt_summary(s, pct), s["samples"], s["n"], fmt(s["std"], pct))
                for m, s in report["overall"].items()
                if s["n"]
            ],
        ),
        "",
    ]
    return lines


def _worst_section(report: dict[str, Any]) -> list[str]:
    if not report["worst"]:
        return []
    pct = report["convention"]["percent"]
    metric = METRICS[report["worst"][0]["metric"]][0]
    rows = [
        (
            k + 1,
            f"`{w['sample_id']}`",
            w["prompt"],
            fmt(w["value"], pct),
            ", ".join(f"[{fmt(i['value'], pct)}]({i['image']})" for i in w["images"]),
        )
        for k, w in enumerate(report["worst"])
    ]
    return [
        f"## Worst samples by {metric}",
        "",
        "Pictures: `worst.png` (each sample's worst image,"
        " requested boxes thick, detections thin).",
        "",
        table(["#", "sample", "prompt", metric, "images (value)"], rows),
        "",
    ]


def _counts_section(report: dict[str, Any]) -> list[str]:
    b, c, run = report["benchmark"], report["counts"], report["run"]
    sk = c["skipped"]
    lines = [
        "## Counts",
        "",
        f"- images listed {c['images_listed']}, scored **{c['images_scored']}** "
        f"({c['samples_scored']} samples); skipped: {sk['missing']} missing, "
        f"{sk['corrupt']} corrupt or truncated, {sk['no_reference']} without reference",
        f"- benchmark: {b['samples']} samples, {b['runnable_samples']} runnable with this "
        f"data ({b['skipped_samples']} skipped; missing references: "
        f"{', '.join(b['missing_references']) or 'none'})",
        f"- samples expected {c['samples_expected']} ("
        + ("the run's plan" if run["kind"] == "msdiffusion" else "every runnable sample")
        + f"), without any scored image: **{c['samples_without_images']}**",
    ]
    det = report.get("detection")
    if det:
        lines.append(
            f"- detection (threshold {det['threshold']}): {det['detected']} of "
            f"{det['subjects']} subjects found, counting each subject of each image "
            f"({det['rate']:.1%}); **{det['missing']} missing**, each counted as 0 in "
            "M-DINO, CLIP-I/DINO det and IoU"
        )
    for kind, examples in c.get("skipped_examples", {}).items():
        lines.append(f"- {kind}: {', '.join(examples[:5])}{' …' if len(examples) > 5 else ''}")
    return lines + [""]


def _run_section(report: dict[str, Any]) -> list[str]:
    run = report["run"]
    gen = run.get("generation")
    lines = ["## Run", ""]
    if gen:
        lines.append(
            "- generation: "
            + ", ".join(f"{k}={v!r}" for k, v in gen.items() if v not in (None, ""))
        )
        lines.append(
            f"- images per sample: {run['images_per_sample']}; seeds: "
            f"{report['seeds']['rule']} (base {report['seeds']['base_seed']})"
        )
    else:
        lines.append("- external images (bring-your-own); seeds unknown")
    settings = report["protocol"]["settings"]
    for part in ("generation", "scoring"):
        if settings[part]:
            lines.append(
                f"- protocol {settings['name']}, {part}: "
                + ", ".join(f"{k}={v!r}" for k, v in settings[part].items())
            )
    return lines + [
        "",
        "Charts: `charts/<metric>.png` · samples: `grid.png` · worst: `worst.png`"
        " · per image: `scores.jsonl`",
        "",
    ]


def report_markdown(report: dict[str, Any]) -> str:
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
        f"# {report['benchmark']['name']} evaluation — {Path(report['run']['path']).name}",
        "",
        f"msdiffusion {report['msdiffusion_version']} · {report['created'][:19]}Z · "
        f"{scale} · IoU and rates as fractions",
        "",
    ]
    out += _protocol_section(report) + _results_section(report) + _worst_section(report)
    out += _models_section(report) + _counts_section(report) + _run_section(report)
    return "\n".join(out)
