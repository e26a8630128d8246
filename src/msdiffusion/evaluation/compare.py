"""Comparing scored runs: side by side with intervals, differences with a paired test, and the
paper's reported numbers as a reference row.

- Like for like: by default only samples scored in *every* run count; runs of different
  benchmarks are refused; runs whose scorers differ — by **identity** (weights SHA-256,
  preprocessing, dtype, detector query) or by scoring settings (detection threshold, DreamBench
  references) — are refused unless allowed. Paths do not matter: two runs scored with
  ``--models tiny`` (each with its own copy of the same tiny models) compare.
- Differences: each run minus the first (the baseline), over the common samples, weighted like
  the benchmark; 95 % bootstrap interval over samples and a two-sided sign-flip permutation test
  (:func:`~msdiffusion.evaluation.stats.paired`).
- Reference: :data:`~msdiffusion.evaluation.protocols.PAPER_REPORTED`, in the columns of the
  nearest metric here, marked as reported — never a reproduction.

Writes ``compare.json``, ``compare.md`` and ``charts/<metric>.png`` to ``out`` if given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import InputError
from .breakdowns import image_values
from .catalog import METRICS, model_names
from .markdown import fmt, fmt_summary, table
from .metrics import apply_convention
from .protocols import PAPER_REPORTED
from .report import REPORT_FORMAT
from .stats import DEFAULT_RESAMPLES, paired, summarize

__all__ = ["REFERENCE_NAME", "compare_runs", "scorer_identity"]

REFERENCE_NAME = "MS-Diffusion, paper (reported)"
_SETTINGS = ("detection_threshold",)  # scoring settings outside the scorers' identity


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
    if "protocol" not in report:
        raise InputError(
            "runs",
            "was scored by an older msdiffusion (no scorer identities); "
            "score it again with `msdiffusion eval score`",
            str(run),
        )
    return report, rows


def scorer_identity(report: dict[str, Any]) -> dict[str, Any]:
    """What decides a run's numbers besides its images: per role the scorer's identity
    (weights, preprocessing, dtype, query), the scoring settings and the references."""
    used = {role: (info or {}).get("identity") for role, info in report["models"].items() if info}
    settings = {k: report["scoring"].get(k) for k in _SETTINGS if used.get("detector")}
    references = report["benchmark"]["definition"].get("scoring_references")
    return {"scorers": used, "settings": settings, "references": references}


def _differences(identities: list[dict[str, Any]], names: list[str]) -> list[str]:
    """One line per part that is not the same in every run."""
    out = []
    roles = dict.fromkeys(r for i in identities for r in i["scorers"])
    for role in roles:
        seen = [i["scorers"].get(role) for i in identities]
        if any(s != seen[0] for s in seen):
            what = sorted(
                {
                    k
                    for s in seen
                    if s
                    for k, v in s.items()
                    if any((o or {}).get(k) != v for o in seen)
                }
            ) or ["absent"]
            out.append(f"{role} ({', '.join(what)})")
    for part in ("settings", "references"):
        seen = [i[part] for i in identities]
        if any(s != seen[0] for s in seen):
            out.append(
                f"{part}: " + ", ".join(f"{n}={s}" for n, s in zip(names, seen, strict=True))
            )
    return out


def _subtitle(loaded: list[tuple[dict[str, Any], list]], names: list[str], metric: str) -> str:
    """Every run's models for ``metric`` (once, if they are the same for all)."""
    roles = METRICS[metric][1]
    per_run = [model_names(rep["models"], roles) or "–" for rep, _ in loaded]
    if len(set(per_run)) == 1:
        return f"every run: {per_run[0]}"
    return "\n".join(f"{n}: {m}" for n, m in zip(names, per_run, strict=True))


def compare_runs(
    runs: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    names: Sequence[str] | None = None,
    common_only: bool = True,
    allow_different_models: bool = False,
    percent: bool = False,
    clip_t_weight: float | None = None,
    reference: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Several scored runs side by side (module docstring); returns the comparison, with its
    markdown under ``"markdown"``."""
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
    identities = [scorer_identity(rep) for rep, _ in loaded]
    differ = _differences(identities, names)
    if differ and not allow_different_models:
        raise InputError(
            "runs",
            "were scored differently (numbers would not compare): "
            + "; ".join(differ)
            + " — rescore, or pass --allow-different-models",
            names,
        )
    common = set.intersection(*({r["sample_id"] for r in rows} for _, rows in loaded))
    if common_only and not common:
        raise InputError("runs", "have no scored sample in common", names)
    convention = {"percent": percent, "clip_t_weight": clip_t_weight}
    bench = loaded[0][0]["benchmark"]["name"]
    kept = [[r for r in rows if not common_only or r["sample_id"] in common] for _, rows in loaded]
    groups = list(dict.fromkeys(r["group"] for rows in kept for r in rows))
    strata = {r["sample_id"]: r["group"] for rows in kept for r in rows}
    weights = loaded[0][0]["weighting"]["weights"]
    present = [m for m in METRICS if any(r.get(m) is not None for rows in kept for r in rows)]
    cols = [m for m in loaded[0][0]["protocol"]["headline"] if m in present] or present

    def summary(values: tuple[dict[str, float], int], w: dict[str, float] | None) -> Any:
        return summarize(
            values[0],
            strata=strata if w else None,
            weights=w,
            images=values[1],
            resamples=resamples,
            seed=seed,
        )

    table_: dict[str, Any] = {}
    values = [{m: image_values(rows, m, convention) for m in cols} for rows in kept]
    for name, (rep, _), rows, vals in zip(names, loaded, kept, values, strict=True):
        table_[name] = {
            "images": len(rows),
            "samples": len({r["sample_id"] for r in rows}),
            "overall": {m: summary(vals[m], weights) for m in cols},
            "groups": {
                g: {
                    m: summary(
                        image_values([r for r in rows if r["group"] == g], m, convention), None
                    )
                    for m in cols
                }
                for g in groups
            },
            "models": rep["models"],
            "run": rep["run"]["path"],
            "protocol": rep["protocol"]["name"],
            "comparable": rep["protocol"]["comparable"],
        }
    diffs = {
        name: {
            m: paired(
                values[0][m][0],
                vals[m][0],
                strata=strata,
                weights=weights,
                resamples=resamples,
                seed=seed,
            )
            for m in cols
        }
        for name, vals in zip(names[1:], values[1:], strict=True)
    }
    ref = (
        {m: apply_convention(m, v, **convention) for m, v in PAPER_REPORTED[bench].items()}
        if reference and bench in PAPER_REPORTED
        else None
    )
    result = {
        "format": "msdiffusion-eval-compare",
        "benchmark": bench,
        "runs": table_,
        "baseline": names[0],
        "differences": diffs,
        "reference": ref,
        "reference_name": REFERENCE_NAME if ref else None,
        "common_only": common_only,
        "common_samples": len(common),
        "convention": convention,
        "scorers_differ": differ,
        "metrics": cols,
        "weights": weights,
        "interval": {
            "method": "bootstrap over samples (percentile)",
            "level": 0.95,
            "resamples": resamples,
            "seed": seed,
        },
        "subtitles": {m: _subtitle(loaded, names, m) for m in cols},
    }
    result["markdown"] = _markdown(result, groups)
    if out is not None:
        _write(Path(out), result, groups)
    return result


def _write(out: Path, result: dict[str, Any], groups: list[str]) -> None:
    from ..charts import bar_chart

    atomic_write_json(out / "compare.json", {k: v for k, v in result.items() if k != "markdown"})
    atomic_write_text(out / "compare.md", result["markdown"])
    fmt_ = "{:.1f}" if result["convention"]["percent"] else "{:.3f}"
    for m in result["metrics"]:
        series, intervals = {}, {}
        for name, t in result["runs"].items():
            parts = [t["overall"][m]] + [t["groups"][g][m] for g in groups]
            series[name] = [p["mean"] for p in parts]
            intervals[name] = [
                (p["ci_low"], p["ci_high"]) if p["ci_low"] is not None else None for p in parts
            ]
        ref = result["reference"] or {}
        bar_chart(
            f"{METRICS[m][0]} | {result['benchmark']}",
            ["all (weighted)"] + groups,
            series,
            out / "charts" / f"{m}.png",
            value_format=fmt_,
            subtitle=result["subtitles"][m],
            intervals=intervals,
            references={result["reference_name"]: ref[m]} if m in ref else None,
        )


def _markdown(result: dict[str, Any], groups: list[str]) -> str:
    pct = result["convention"]["percent"]
    cols = result["metrics"]
    scope = (
        f"samples scored in every run ({result['common_samples']})"
        if result["common_only"]
        else "all scored samples of each run"
    )
    lines = [
        f"# {result['benchmark']}: comparison",
        "",
        f"Scope: {scope}. Mean [95 % interval], {result['interval']['method']}, "
        f"{result['interval']['resamples']} resamples; overall weighted like the benchmark.",
        "",
    ]
    if result["scorers_differ"]:
        lines += ["**Scored differently** (allowed): " + "; ".join(result["scorers_differ"]), ""]
    roles = [r for r in dict.fromkeys(r for t in result["runs"].values() for r in t["models"])]
    lines += [
        "Scorers"
        + (
            " — the same in every run by weights and preprocessing, wherever they were loaded from:"
            if not result["scorers_differ"]
            else ":"
        ),
        "",
        table(
            ["role", *result["runs"]],
            [
                (role, *(_model_cell(t["models"].get(role)) for t in result["runs"].values()))
                for role in roles
            ],
        ),
        "",
    ]
    header = ["run", "protocol", "samples", "images", *(METRICS[m][0] for m in cols)]
    rows = [
        (
            name,
            t["protocol"] + ("" if t["comparable"] else " (deviations)"),
            t["samples"],
            t["images"],
            *(fmt_summary(t["overall"][m], pct) for m in cols),
        )
        for name, t in result["runs"].items()
    ]
    if result["reference"]:
        rows.append(
            (
                f"*{result['reference_name']}*",
                "—",
                "—",
                "—",
                *(
                    f"*{fmt(result['reference'].get(m), pct)}*" if m in result["reference"] else ""
                    for m in cols
                ),
            )
        )
    lines += ["## All", "", table(header, rows), ""]
    if result["reference"]:
        lines += [
            "The paper's row is the number it reports, **not reproduced here**: its scoring "
            "code is not published, so it sits in the columns of the nearest definitions "
            "(CLIP-I, DINO: whole image; M-DINO: detected crops).",
            "",
        ]
    base = result["baseline"]
    if result["differences"]:
        lines += [
            f"## Differences from {base}",
            "",
            "Δ = run − baseline over the common samples [95 % interval] (p: two-sided "
            "sign-flip permutation test).",
            "",
        ]
        lines.append(
            table(
                ["run", *(METRICS[m][0] for m in cols)],
                [
                    (name, *(_fmt_diff(d[m], pct) for m in cols))
                    for name, d in result["differences"].items()
                ],
            )
        )
        lines.append("")
    for g in groups:
        lines += [
            f"## {g}",
            "",
            table(
                ["run", "samples", *(METRICS[m][0] for m in cols)],
                [
                    (
                        name,
                        t["groups"][g][cols[0]]["samples"] if cols else 0,
                        *(fmt_summary(t["groups"][g][m], pct) for m in cols),
                    )
                    for name, t in result["runs"].items()
                ],
            ),
            "",
        ]
    return "\n".join(lines)


def _model_cell(info: dict[str, Any] | None) -> str:
    if not info:
        return "–"
    weights = (info.get("weights_sha256") or "")[:12]
    return f"`{info['model']}`" + (f" ({weights})" if weights else "")


def _fmt_diff(d: dict[str, Any], pct: bool) -> str:
    if d.get("mean") is None:
        return "–"
    sign = "+" if d["mean"] >= 0 else ""
    return (
        f"{sign}{fmt(d['mean'], pct)} [{fmt(d['ci_low'], pct)}, {fmt(d['ci_high'], pct)}] "
        f"p={d['p_value']:.3g}"
    )
