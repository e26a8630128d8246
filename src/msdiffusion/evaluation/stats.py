"""Intervals and tests: bootstrap over samples (prompts), not images.

The images of one sample share its prompt, subjects and layout, so their scores are correlated: an
interval that treats them as independent is too narrow. Every estimate here is therefore computed
from *per-cluster means* (a cluster = a sample: the mean over its images, or over its images and
subjects) and every interval resamples whole clusters:

- :func:`summarize` — the mean over clusters, or, with strata and weights, the weighted mean of
  the strata means (post-stratification: a subset weighted like the full benchmark — each
  cluster of stratum g weighs w_g / n_g); its 95 % percentile interval from ``resamples``
  bootstrap draws of clusters, each carrying its weight (so a stratum with a single cluster still
  contributes its share of the spread);
- :func:`paired` — the difference of two runs over the clusters both have: the same (weighted)
  mean of per-cluster differences, its bootstrap interval, and a two-sided sign-flip permutation
  test (under "no difference" each cluster's difference is as likely negated).

Draws come from ``numpy.random.default_rng(seed)``: the same inputs give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "cluster_means", "paired", "summarize"]

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95
_CHUNK = 1 << 22  # cluster draws held at once


def cluster_means(pairs: Any) -> dict[str, float]:
    """``(cluster, value)`` pairs -> the mean value of each cluster (None / NaN values skipped;
    clusters without a value left out)."""
    sums: dict[str, list[float]] = {}
    for cluster, value in pairs:
        if value is None:
            continue
        value = float(value)
        if math.isnan(value):
            continue
        acc = sums.setdefault(cluster, [0.0, 0.0])
        acc[0] += value
        acc[1] += 1.0
    return {c: s / n for c, (s, n) in sums.items()}


def _weighted(
    values: Mapping[str, float],
    strata: Mapping[str, str] | None,
    weights: Mapping[str, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(values, cluster weights): with strata, each cluster of stratum g weighs w_g / n_g, so
    the weighted mean is the w-weighted mean of the strata means (strata without a weight, or
    without clusters, drop out and the others renormalise)."""
    v = np.fromiter(values.values(), float, len(values))
    if strata is None or weights is None:
        return v, np.ones_like(v)
    labels = [strata[c] for c in values]
    sizes: dict[str, int] = {}
    for g in labels:
        sizes[g] = sizes.get(g, 0) + 1
    u = np.array([float(weights.get(g, 0.0)) / sizes[g] for g in labels])
    return v, u


def _bootstrap(
    v: np.ndarray, u: np.ndarray, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """(resamples,) weighted means of clusters drawn with replacement (their weights travel
    with them). Chunked: ~_CHUNK draws held at once."""
    out = np.empty(resamples)
    step = max(1, _CHUNK // len(v))
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        idx = rng.integers(0, len(v), size=(rows, len(v)))  # (rows, n)
        uu = u[idx]
        total = uu.sum(axis=1)
        out[start : start + rows] = (uu * v[idx]).sum(axis=1) / np.where(total > 0, total, 1.0)
    return out


def summarize(
    values: Mapping[str, float],
    *,
    strata: Mapping[str, str] | None = None,
    weights: Mapping[str, float] | None = None,
    images: int | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Estimate and 95 % bootstrap interval from per-cluster means ``values`` (cluster -> mean).

    ``strata`` (cluster -> stratum) and ``weights`` (stratum -> weight): the estimate is the
    weighted mean of the strata means, renormalised over the strata present. Returns ``mean``,
    ``ci_low``, ``ci_high``, ``std`` (of the cluster means), ``samples`` (clusters) and ``n``
    (``images``: how many values went in; the cluster count if not given).
    """
    n = len(values)
    out: dict[str, Any] = {
        "mean": None,
        "ci_low": None,
        "ci_high": None,
        "std": None,
        "samples": n,
        "n": images if images is not None else n,
    }
    v, u = _weighted(values, strata, weights) if n else (np.empty(0), np.empty(0))
    if not n or u.sum() <= 0:
        return {**out, "samples": 0, "n": 0}
    draws = _bootstrap(v, u, resamples, np.random.default_rng(seed))
    alpha = (1 - LEVEL) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return {
        **out,
        "mean": float((u * v).sum() / u.sum()),
        "ci_low": float(low),
        "ci_high": float(high),
        "std": float(v.std(ddof=1)) if n > 1 else 0.0,
    }


def paired(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    strata: Mapping[str, str] | None = None,
    weights: Mapping[str, float] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """``b − a`` over the clusters both have: estimate, 95 % bootstrap interval, p-value.

    The p-value is the two-sided sign-flip permutation test of "no difference" with
    ``resamples`` random flips (add-one corrected, so never 0).
    """
    common = sorted(set(a) & set(b))
    diff = {c: b[c] - a[c] for c in common}
    summary = summarize(diff, strata=strata, weights=weights, resamples=resamples, seed=seed)
    if summary["mean"] is None:
        return {**summary, "p_value": None}
    v, u = _weighted(diff, strata, weights)
    u = u / u.sum()
    observed = abs(float((u * v).sum()))
    rng = np.random.default_rng(seed + 1)
    flipped = np.empty(resamples)
    step = max(1, _CHUNK // len(v))
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        signs = rng.integers(0, 2, size=(rows, len(v))) * 2 - 1  # (rows, n) of ±1
        flipped[start : start + rows] = (signs * (u * v)).sum(axis=1)
    extreme = int(np.sum(np.abs(flipped) >= observed - 1e-12))
    return {**summary, "p_value": (extreme + 1) / (resamples + 1)}
