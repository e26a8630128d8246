"""Intervals on synthetic data with a known truth: the bootstrap over samples covers it about 95 %
of the time where an interval over images does not; post-stratification removes the bias of an
equal-per-group subset; the paired test holds its level and finds a real shift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msdiffusion.evaluation.stats import cluster_means, paired, summarize


def _run(
    rng: np.random.Generator,
    mu: float,
    samples: int = 40,
    images: int = 5,
    between: float = 0.5,
    within: float = 0.1,
) -> tuple[dict[str, list[float]], float]:
    """Images of a sample share its effect (prompt, subjects): strongly correlated."""
    effects = mu + between * rng.standard_normal(samples)
    return {
        f"s{i}": list(e + within * rng.standard_normal(images)) for i, e in enumerate(effects)
    }, mu


def test_bootstrap_over_samples_covers_the_truth_where_images_do_not():
    rng = np.random.default_rng(0)
    trials, ours, naive = 200, 0, 0
    for t in range(trials):
        per_image, truth = _run(rng, mu=0.3)
        means = cluster_means((s, v) for s, vals in per_image.items() for v in vals)
        summary = summarize(means, resamples=1000, seed=t)
        ours += summary["ci_low"] <= truth <= summary["ci_high"]
        flat = np.array([v for vals in per_image.values() for v in vals])
        half = 1.96 * flat.std(ddof=1) / math.sqrt(len(flat))  # images as if independent
        naive += abs(flat.mean() - truth) <= half
    assert 0.88 <= ours / trials <= 0.99  # percentile intervals run a little narrow
    assert naive / trials < 0.75  # far too narrow: 5 correlated images are not 5 samples


def test_post_stratification_weights_a_subset_like_the_benchmark():
    rng = np.random.default_rng(1)
    weights = {"big": 0.9, "small": 0.1}  # shares of the full benchmark
    truth = 0.9 * 1.0 + 0.1 * 0.0
    covered, trials, bias = 0, 150, []
    for t in range(trials):
        # a --limit style subset: as many samples of each group, whatever its size
        values = {f"big{i}": 1.0 + 0.3 * rng.standard_normal() for i in range(15)}
        values |= {f"small{i}": 0.3 * rng.standard_normal() for i in range(15)}
        strata = {k: "big" if k.startswith("big") else "small" for k in values}
        s = summarize(values, strata=strata, weights=weights, resamples=1000, seed=t)
        covered += s["ci_low"] <= truth <= s["ci_high"]
        unweighted = summarize(values, resamples=200, seed=t)["mean"]
        assert abs(unweighted - 0.5) < 0.3 and abs(s["mean"] - truth) < 0.3
        bias += (unweighted - truth, s["mean"] - truth)
    assert covered / trials >= 0.88
    assert abs(np.mean(bias[1::2])) < 0.02 < 0.3 < abs(np.mean(bias[0::2]))  # only one unbiased
    # a complete run (samples in proportion) gives exactly the plain mean
    full = {f"big{i}": float(i) for i in range(9)} | {"small0": 100.0}
    strata = {k: k.rstrip("0123456789") for k in full}
    assert summarize(full, strata=strata, weights=weights)["mean"] == pytest.approx(
        sum(full.values()) / 10
    )


def test_one_sample_per_group_still_has_spread_and_summaries_are_deterministic():
    values = {"a": 0.2, "b": 0.4, "c": 0.9}
    strata = {"a": "x", "b": "y", "c": "z"}
    s = summarize(values, strata=strata, weights={"x": 0.5, "y": 0.25, "z": 0.25})
    assert s["mean"] == pytest.approx(0.5 * 0.2 + 0.25 * 0.4 + 0.25 * 0.9)
    assert s["ci_high"] - s["ci_low"] > 0.1
    assert summarize(values, seed=3) == summarize(values, seed=3)
    assert summarize({})["mean"] is None and summarize({})["samples"] == 0
    single = summarize({"a": 0.7})
    assert (single["mean"], single["ci_low"], single["ci_high"]) == (0.7, 0.7, 0.7)
    assert cluster_means([("a", 1.0), ("a", 3.0), ("b", None), ("c", float("nan"))]) == {"a": 2.0}


def test_paired_test_holds_its_level_and_finds_a_shift():
    rng = np.random.default_rng(2)
    rejections, trials = 0, 200
    for t in range(trials):
        base = {f"s{i}": float(v) for i, v in enumerate(rng.standard_normal(50))}
        noise = {k: v + 0.3 * float(rng.standard_normal()) for k, v in base.items()}
        rejections += paired(base, noise, resamples=500, seed=t)["p_value"] < 0.05
    assert rejections / trials <= 0.1  # no difference: rejected about 5 % of the time
    base = {f"s{i}": float(v) for i, v in enumerate(rng.standard_normal(50))}
    better = {k: v + 0.1 + 0.05 * float(rng.standard_normal()) for k, v in base.items()}
    d = paired(base, better)
    assert d["ci_low"] > 0 and d["p_value"] < 0.01
    assert d["mean"] == pytest.approx(np.mean([better[k] - base[k] for k in base]))
    same = paired(base, dict(base))
    assert same["mean"] == 0.0 and same["p_value"] == 1.0
    only = paired(base, {"s0": base["s0"] + 1.0, "other": 5.0})  # common samples only
    assert only["samples"] == 1 and only["mean"] == pytest.approx(1.0)
