"""Aggregating per-image scores: overall (weighted like the benchmark), per combination type,
subject count, category and subject, and the worst samples — each number with its interval.

Every value is first averaged within its sample (over the sample's images — and, for the
per-category and per-subject tables, over its subjects of that category or name), then summarised
over samples by :func:`msdiffusion.evaluation.stats.summarize`: a sample counts once, and the
bootstrap moves its images together.

The overall row is *post-stratified*: the mean of each combination type's mean, weighted by the
type's share of the full benchmark (its sample count in the definition). On a complete run this
is exactly the mean over samples; on a subset (``--limit`` takes the same number from every type)
it estimates what the full benchmark would give instead of over-weighting the small types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..benchmarks import Benchmark, BenchSubject
from .catalog import METRICS, SUBJECT_METRICS
from .metrics import apply_convention
from .stats import cluster_means, summarize

__all__ = ["Aggregator", "benchmark_weights", "image_values"]

Row = dict[str, Any]


def image_values(
    rows: Iterable[Row], metric: str, convention: dict[str, Any]
) -> tuple[dict[str, float], int]:
    """Per sample, the mean of ``metric`` (with the reporting convention) over its images; and
    how many images had a value."""
    pairs = [
        (r["sample_id"], apply_convention(metric, float(r[metric]), **convention))
        for r in rows
        if r.get(metric) is not None
    ]
    return cluster_means(pairs), len(pairs)


def benchmark_weights(bench: Benchmark, groups: Iterable[str]) -> dict[str, float]:
    """Each group's share of the benchmark's samples (its definition), over ``groups``."""
    counts = {r["group"]: r["samples"] for r in bench.counts() if r["group"] != "total"}
    chosen = {g: counts[g] for g in dict.fromkeys(groups) if counts.get(g)}
    total = sum(chosen.values())
    return {g: n / total for g, n in chosen.items()}


class Aggregator:
    """Summaries of a run's rows. ``convention``: :func:`apply_convention`'s keywords."""

    def __init__(
        self,
        rows: Sequence[Row],
        bench: Benchmark,
        convention: dict[str, Any],
        *,
        resamples: int,
        seed: int,
    ):
        self.rows, self.bench, self.convention = list(rows), bench, convention
        self.resamples, self.seed = resamples, seed
        self.group_of = {r["sample_id"]: r["group"] for r in self.rows}

    # -- values ---------------------------------------------------------------------------------
    def _value(self, metric: str, value: Any) -> float | None:
        if value is None:
            return None
        return apply_convention(metric, float(value), **self.convention)

    def image_values(
        self, metric: str, rows: Sequence[Row] | None = None
    ) -> tuple[dict[str, float], int]:
        return image_values(self.rows if rows is None else rows, metric, self.convention)

    def _subject_pairs(
        self, metric: str, key: Callable[[BenchSubject], str | None]
    ) -> dict[str, list[tuple[str, float]]]:
        """One pass over the rows: ``key(subject)`` -> [(sample id, the subject's value)]."""
        field = SUBJECT_METRICS[metric]
        out: dict[str, list[tuple[str, float]]] = {}
        for r in self.rows:
            sample = self.bench.get(r["sample_id"])
            for n, entry in enumerate(r.get("subjects", [])):
                value = self._value(metric, entry.get(field))
                part = key(sample.subjects[n]) if value is not None else None
                if part is not None:
                    out.setdefault(part, []).append((r["sample_id"], value))
        return out

    def _summary(
        self, values: dict[str, float], n: int, weights: dict[str, float] | None = None
    ) -> dict[str, Any]:
        strata = self.group_of if weights is not None else None
        return summarize(
            values,
            strata=strata,
            weights=weights,
            images=n,
            resamples=self.resamples,
            seed=self.seed,
        )

    # -- tables ---------------------------------------------------------------------------------
    def overall(self, metrics: Sequence[str], weights: dict[str, float]) -> dict[str, Any]:
        """Every metric over all rows, post-stratified by group with ``weights``."""
        return {m: self._summary(*self.image_values(m), weights) for m in metrics}

    def by(
        self, key: Callable[[Row], str], metrics: Sequence[str], order: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Rows split by ``key(row)``: per part its images, samples and metric summaries."""
        parts: dict[str, list[Row]] = {}
        for r in self.rows:
            parts.setdefault(key(r), []).append(r)
        names = [k for k in (order or sorted(parts)) if k in parts]
        return {
            k: {
                "images": len(parts[k]),
                "samples": len({r["sample_id"] for r in parts[k]}),
                "metrics": {m: self._summary(*self.image_values(m, parts[k])) for m in metrics},
            }
            for k in names
        }

    def by_subject(
        self, key: Callable[[BenchSubject], str], metrics: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Subject-level metrics split by ``key(subject)`` (its category, or its name)."""
        metrics = [m for m in metrics if m in SUBJECT_METRICS]
        pairs = {m: self._subject_pairs(m, key) for m in metrics}
        names = sorted({name for parts in pairs.values() for name in parts})
        out = {}
        for name in names:
            summaries = {
                m: self._summary(cluster_means(pairs[m].get(name, [])), len(pairs[m].get(name, [])))
                for m in metrics
            }
            samples = max((s["samples"] for s in summaries.values()), default=0)
            out[name] = {"samples": samples, "metrics": summaries}
        return out

    def worst(self, metric: str, count: int) -> list[dict[str, Any]]:
        """The ``count`` samples with the lowest mean ``metric``, worst first, with their
        images (each with its own value)."""
        if metric not in METRICS or count <= 0:
            return []
        values, _ = self.image_values(metric)
        ranked = sorted(values, key=lambda c: (values[c], c))[:count]
        out = []
        for sample_id in ranked:
            images = [
                {
                    "image": r["image"],
                    "index": r.get("index"),
                    "value": self._value(metric, r.get(metric)),
                }
                for r in self.rows
                if r["sample_id"] == sample_id
            ]
            sample = self.bench.get(sample_id)
            out.append(
                {
                    "sample_id": sample_id,
                    "group": sample.group,
                    "prompt": sample.prompt,
                    "metric": metric,
                    "value": values[sample_id],
                    "images": sorted(images, key=lambda i: (i["value"] is None, i["value"] or 0.0)),
                }
            )
        return out
