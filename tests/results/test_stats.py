"""moebench.stats on hand-checked values and seeded coverage loops."""
from __future__ import annotations

import math

import numpy as np
import pytest

from moebench.stats import (
    AccuracyDelta,
    RatioEstimate,
    holm,
    paired_accuracy_delta,
    paired_ratio,
    summarize,
    unpaired_ratio,
    wilson_ci,
)


# ---------------------------------------------------------------------------- summarize
def test_summarize_keys_and_values():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    s = summarize(x, n_resamples=999)
    assert set(s) == {"mean", "median", "p90", "p99", "ci95", "ci_method", "n"}
    assert s["n"] == 10
    assert s["mean"] == pytest.approx(5.5)
    assert s["median"] == pytest.approx(5.5)
    assert s["p90"] == pytest.approx(np.percentile(x, 90))
    assert s["p99"] == pytest.approx(np.percentile(x, 99))
    assert s["ci_method"] == "bca"
    lo, hi = s["ci95"]
    assert lo <= s["median"] <= hi


def test_summarize_is_deterministic_for_a_seed():
    x = np.random.default_rng(3).lognormal(0, 0.5, 30)
    assert summarize(x, seed=7, n_resamples=999) == summarize(x, seed=7, n_resamples=999)


def test_summarize_empty():
    s = summarize([])
    assert s["n"] == 0
    assert all(s[k] is None for k in ("mean", "median", "p90", "p99", "ci95"))


def test_summarize_too_few_samples_refuses_the_interval_only():
    s = summarize([1.0, 2.0, 3.0])
    assert s["ci95"] is None and s["ci_method"] == "insufficient samples"
    assert s["median"] == 2.0 and s["p99"] == pytest.approx(np.percentile([1, 2, 3], 99))


def test_summarize_constant_samples_are_exact():
    s = summarize([2.5] * 8)
    assert s["ci95"] == [2.5, 2.5]
    assert s["ci_method"] == "exact (constant samples)"


def test_summarize_falls_back_to_percentile_when_bca_degenerates():
    # Nine ties and one outlier: every jackknife median is 1, so BCa's acceleration is 0/0.
    s = summarize([1.0] * 9 + [5.0], n_resamples=999)
    assert s["ci_method"] == "percentile"
    assert s["ci95"] == [1.0, 1.0]


def test_summarize_rejects_nan():
    with pytest.raises(ValueError):
        summarize([1.0, float("nan"), 2.0])


@pytest.mark.parametrize("dist", ["normal", "lognormal"])
def test_median_ci_covers_the_true_median_about_95_percent(dist):
    hits = 0
    trials = 200
    for t in range(trials):
        rng = np.random.default_rng(10_000 + t)
        if dist == "normal":
            x, true_median = rng.normal(10.0, 2.0, 40), 10.0
        else:
            x, true_median = rng.lognormal(0.0, 0.5, 40), 1.0  # median of lognormal = e^mu
        lo, hi = summarize(x, seed=t, n_resamples=999)["ci95"]
        hits += lo <= true_median <= hi
    assert 0.88 <= hits / trials <= 0.99


# ---------------------------------------------------------------------------- wilson
def test_wilson_hand_checked_8_of_10():
    # p=0.8, z=1.959964: centre=(0.8+z²/20)/(1+z²/10)=0.71672, half=0.22658
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.490162, abs=1e-5)
    assert hi == pytest.approx(0.943318, abs=1e-5)


def test_wilson_edges():
    assert wilson_ci(0, 0) is None
    lo, hi = wilson_ci(0, 20)
    assert lo == 0.0 and 0 < hi < 0.2
    lo, hi = wilson_ci(20, 20)
    assert hi == 1.0 and 0.8 < lo < 1.0
    with pytest.raises(ValueError):
        wilson_ci(11, 10)


# ---------------------------------------------------------------------------- paired ratio
def test_paired_ratio_detects_a_noisy_shift():
    rng = np.random.default_rng(0)
    base = rng.lognormal(0.0, 0.3, 30)  # large prompt-to-prompt spread
    cand = base * 1.2 * rng.lognormal(0.0, 0.02, 30)  # small noise on the effect
    est = paired_ratio(base, cand, n_resamples=999)
    assert isinstance(est, RatioEstimate) and est.paired and est.n_pairs == 30
    assert est.ratio == pytest.approx(1.2, rel=0.03)
    assert est.ci95[0] > 1.1 and est.ci95[1] < 1.3
    assert est.p_value < 1e-6
    assert "bca" in est.method or "percentile" in est.method


def test_paired_ratio_identical_samples():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    est = paired_ratio(x, x)
    assert est.ratio == 1.0 and est.ci95 == (1.0, 1.0) and est.p_value == 1.0


def test_paired_ratio_constant_shift_is_exact_and_sign_tested():
    base = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    est6 = paired_ratio(base, [b + 0.1 for b in base])
    assert est6.ci95 == (est6.ratio, est6.ratio)
    assert est6.ratio == pytest.approx(3.6 / 3.5)
    assert est6.p_value == pytest.approx(2 * 0.5**6)  # 0.03125: significant
    est5 = paired_ratio(base[:5], [b + 0.1 for b in base[:5]])
    assert est5.p_value == pytest.approx(2 * 0.5**5)  # 0.0625: not significant
    mult = paired_ratio(base, [b * 1.1 for b in base])
    assert mult.ratio == pytest.approx(1.1) and mult.ci95 == (mult.ratio, mult.ratio)


def test_paired_ratio_too_few_and_bad_input():
    est = paired_ratio([1.0, 2.0, 3.0], [1.0, 2.0, 3.5])
    assert est.ci95 is None and est.p_value is None and est.method == "insufficient samples"
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_ratio([0.0] * 5, [1.0] * 5)


def test_unpaired_ratio():
    rng = np.random.default_rng(1)
    base = rng.normal(10.0, 0.5, 40)
    cand = rng.normal(12.0, 0.5, 40)
    est = unpaired_ratio(base, cand, n_resamples=999)
    assert not est.paired
    assert est.ci95[0] < est.ratio < est.ci95[1]
    assert 1.1 < est.ci95[0] and est.ci95[1] < 1.3
    assert est.p_value < 1e-6
    same = unpaired_ratio(base, base, n_resamples=999)
    assert same.ratio == 1.0 and same.p_value > 0.9
    assert unpaired_ratio([1.0] * 4, [1.0] * 9).method == "insufficient samples"


# ---------------------------------------------------------------------------- holm
def test_holm_hand_computed():
    # m=4: sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])


def test_holm_caps_at_one_and_handles_empty():
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []
    assert holm([None]) == [None]


# ---------------------------------------------------------------------------- accuracy
def test_mcnemar_hand_checked():
    base = [True] * 10 + [False] * 10
    cand = [False] + [True] * 9 + [True] * 9 + [False]  # b=1, c=9
    d = paired_accuracy_delta(base, cand, n_resamples=999)
    assert isinstance(d, AccuracyDelta)
    assert (d.b, d.c, d.n) == (1, 9, 20)
    assert d.mcnemar_p == pytest.approx(2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10)
    assert d.mcnemar_p == pytest.approx(0.021484375)
    assert d.delta == pytest.approx(0.4) and d.flip_rate == pytest.approx(0.5)
    assert d.ci95[0] <= d.delta <= d.ci95[1]


def test_accuracy_delta_identical_vectors():
    v = [True, False, True, True, False, True, False]
    d = paired_accuracy_delta(v, v)
    assert d.delta == 0.0 and d.ci95 == (0.0, 0.0) and d.mcnemar_p == 1.0
    assert d.b == d.c == 0 and d.flip_rate == 0.0


def test_accuracy_delta_small_and_mismatched():
    d = paired_accuracy_delta([True, False], [True, True])
    assert d.ci95 is None and d.delta == pytest.approx(0.5)
    with pytest.raises(ValueError):
        paired_accuracy_delta([True], [True, False])
