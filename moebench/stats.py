"""Statistics that refuse to over-claim: summaries, confidence intervals and paired comparisons.

Everything here is a pure function of its inputs (numpy + scipy, no torch, no files, no printing)
and every random draw comes from ``np.random.default_rng(seed)``, so the same samples and seed give
the same interval, bit for bit.

What each function answers
- ``summarize(samples)`` — mean, median, p90, p99 and a 95% CI *of the median* from
  ``scipy.stats.bootstrap`` (BCa, 9,999 resamples). BCa needs a jackknife acceleration that
  degenerates on heavily tied data; then the percentile interval is used and ``ci_method`` says
  so. Under 5 samples there is no interval ("insufficient samples"); constant samples have the
  exact interval ``[x, x]``.
- ``wilson_ci(k, n)`` — a proportion's interval (hit rate) that behaves near 0 and 1, unlike
  the normal approximation ``p ± z·sqrt(p(1-p)/n)``.
- ``paired_ratio(base, cand)`` — candidate/baseline ratio of medians when sample *i* of both
  came from the same prompt and repetition: the bootstrap resamples *pairs*, so prompt-to-prompt
  spread (large) cancels and only the strategy's effect (small) is left. The p-value is a
  two-sided Wilcoxon signed-rank test on ``log(cand / base)``.
- ``unpaired_ratio(base, cand)`` — the same ratio when samples do not pair: each median is
  bootstrapped independently and the p-value is Mann–Whitney U.
- ``distinct_repetitions(observations)`` — the repetitions worth counting: a repetition whose
  every observation equals an earlier repetition's (the simulated clock repeats itself bit for
  bit) measured nothing new and is dropped, so identical copies never narrow an interval.
- ``ratio_of_sums(num, den)`` — a proportion pooled over clusters (hit rate: hits / accesses
  per prompt) with a cluster bootstrap CI: the unit is the cluster, not the access.
- ``holm(p_values)`` — Holm–Bonferroni adjustment when several strategies are tested against
  one baseline.
- ``paired_accuracy_delta(base_ok, cand_ok)`` — Δaccuracy paired by item with McNemar's exact
  test; never the difference of two unpaired standard errors.

Deterministic data (the simulated clock) is a first-class case, not an accident: identical
samples give ratio 1 with CI ``[1, 1]`` and p = 1; a constant shift gives the exact ratio and an
exact sign-test p-value (``2 · 0.5**n``), which is significant at 0.05 from 6 pairs on.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_SAMPLES = 5
"""Fewer samples than this and no interval or p-value is reported."""

INSUFFICIENT = "insufficient samples"
EXACT_CONSTANT = "exact (constant samples)"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _as_array(samples: Sequence[float], what: str = "samples") -> np.ndarray:
    """A 1-D float array; NaN and infinity are errors (a NaN latency is a bug upstream)."""
    x = np.asarray(samples, dtype=float).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


def _bootstrap_ci(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    *,
    paired: bool,
    seed: int,
    n_resamples: int,
) -> tuple[tuple[float, float] | None, str]:
    """95% bootstrap CI: BCa first, percentile when BCa degenerates, ``None`` if both fail.

    Both attempts use a fresh ``default_rng(seed)``, so the percentile fallback sees the very
    resamples BCa saw. scipy warns (DegenerateDataWarning) and returns NaN when the jackknife
    acceleration is undefined; the warning is swallowed because ``ci_method`` reports it.
    """
    from scipy import stats as sps

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = sps.bootstrap(
                    data,
                    statistic,
                    n_resamples=n_resamples,
                    paired=paired,
                    vectorized=True,
                    confidence_level=0.95,
                    method=method,
                    rng=np.random.default_rng(seed),
                )
            except (ValueError, FloatingPointError, ZeroDivisionError):
                continue
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi) and lo <= hi:
            return (lo, hi), method.lower()
    return None, INSUFFICIENT


def _median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``np.median(x, axis=axis)``, bit for bit, for finite data: the middle order statistic, or
    the mean of the two middle ones (``(a + b) / 2``, as ``np.mean`` of two values is), taken from
    a full sort. ``np.median`` partitions at three ranks (the two middle ones and the maximum, for
    its NaN check), which on the bootstrap's ``[9999, n]`` resamples is several times slower."""
    s = np.sort(x, axis=axis)
    n = s.shape[axis]
    if n == 0:
        return np.median(x, axis=axis)          # (NaN, with numpy's own warning)
    k = n // 2
    hi = np.take(s, k, axis=axis)
    if n % 2:
        return hi
    return (np.take(s, k - 1, axis=axis) + hi) / 2


def _median_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return _median(x, axis=axis)


# ------------------------------------------------------------------------------------------
# one sample
# ------------------------------------------------------------------------------------------
def summarize(samples: Sequence[float], *, seed: int = 0, n_resamples: int = 9999,
              unit: str | None = None) -> dict:
    """Mean, median, p90, p99 and a 95% CI of the median, as the dict stored in result.json.

    ``unit`` names what one sample is (a prompt, a step); it is recorded as ``unit`` so every
    interval says what it is an interval over.

    ``ci_method`` is ``"bca"``, ``"percentile"`` (BCa degenerated), ``"insufficient samples"``
    (fewer than 5 samples: ``ci95`` is ``None``) or ``"exact (constant samples)"``.
    Percentiles are plain ``np.percentile`` values whenever there is at least one sample; only the
    interval is refused, because scipy cannot bound it.
    """
    x = _as_array(samples)
    n = int(x.size)
    tag = {} if unit is None else {"unit": unit}
    if n == 0:
        return {"mean": None, "median": None, "p90": None, "p99": None,
                "ci95": None, "ci_method": INSUFFICIENT, "n": 0, **tag}
    out = {
        "mean": float(np.mean(x)),
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "p99": float(np.percentile(x, 99)),
        "ci95": None,
        "ci_method": INSUFFICIENT,
        "n": n,
        **tag,
    }
    if n < MIN_SAMPLES:
        return out
    if np.all(x == x[0]):
        out["ci95"], out["ci_method"] = [float(x[0]), float(x[0])], EXACT_CONSTANT
        return out
    ci, method = _bootstrap_ci((x,), _median_stat, paired=False, seed=seed,
                               n_resamples=n_resamples)
    out["ci95"] = None if ci is None else [ci[0], ci[1]]
    out["ci_method"] = method
    return out


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for ``successes / n``; ``None`` when ``n == 0``.

    centre = (p + z²/2n) / (1 + z²/n),  half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    Unlike the normal interval it never leaves [0, 1] and is not zero-width at p = 0 or 1.
    """
    from scipy import stats as sps

    if n == 0:
        return None
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = float(sps.norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def ratio_of_sums(num: Sequence[float], den: Sequence[float], *, seed: int = 0,
                  n_resamples: int = 9999) -> tuple[float | None, list[float] | None, str]:
    """``sum(num) / sum(den)`` over clusters (one entry per cluster, e.g. per prompt) with a 95%
    cluster-bootstrap CI: whole clusters are resampled, because the items inside one cluster
    (the accesses of one request) are not independent. Returns ``(value, ci95, method)``; under
    5 clusters there is no interval; clusters that all have the same ratio give it exactly."""
    n_, d_ = _as_array(num, "numerators"), _as_array(den, "denominators")
    keep = d_ > 0
    n_, d_ = n_[keep], d_[keep]
    if d_.size == 0:
        return None, None, INSUFFICIENT
    value = float(n_.sum() / d_.sum())
    if d_.size < MIN_SAMPLES:
        return value, None, INSUFFICIENT
    if _is_constant(n_ / d_, 1.0):
        return value, [value, value], EXACT_CONSTANT

    def stat(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return a.sum(axis=axis) / b.sum(axis=axis)

    ci, method = _bootstrap_ci((n_, d_), stat, paired=True, seed=seed, n_resamples=n_resamples)
    return value, None if ci is None else [ci[0], ci[1]], f"cluster bootstrap ({method})"


def distinct_repetitions(observations: Mapping[tuple[Hashable, Hashable], Hashable]) -> list:
    """The repetitions to count, in first-seen order, from ``{(unit, repetition): observation}``.

    A repetition is dropped when its observation of every unit equals that of a repetition
    already kept: it is a copy (the simulated clock is deterministic), and counting it would
    multiply n without measuring anything. A repetition that differs anywhere is kept whole, so
    pairs by ``(unit, repetition)`` stay intact (CUDA-clock repetitions, where the clock varies).
    Observations must be hashable (a canonical encoding of a sample row, or a pair of them).
    """
    by_rep: dict[Hashable, dict[Hashable, Hashable]] = {}
    for (unit, rep), obs in observations.items():
        by_rep.setdefault(rep, {})[unit] = obs
    kept, seen = [], set()
    for rep, obs in by_rep.items():
        signature = frozenset(obs.items())
        if signature not in seen:
            seen.add(signature)
            kept.append(rep)
    return kept


# ------------------------------------------------------------------------------------------
# two samples: ratio of medians
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatioEstimate:
    """candidate / baseline ratio of medians (< 1 means the candidate is lower, e.g. faster).

    ``ci95`` and ``p_value`` are ``None`` when there are too few samples to say anything;
    ``method`` names the interval and the test used.
    """

    ratio: float | None
    ci95: tuple[float, float] | None
    p_value: float | None
    method: str
    n_pairs: int
    paired: bool


def _ratio_of_medians(b: np.ndarray, c: np.ndarray) -> float | None:
    if b.size == 0 or c.size == 0:
        return None
    mb = float(np.median(b))
    return float(np.median(c)) / mb if mb != 0 else None


def _ratio_stat(b: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
    return _median(c, axis=axis) / _median(b, axis=axis)


def _check_positive(x: np.ndarray, what: str) -> None:
    if np.any(x <= 0):
        raise ValueError(f"{what} must be positive for a ratio (got {float(x.min())})")


def _is_constant(values: np.ndarray, scale: float) -> bool:
    """All values equal up to float rounding relative to ``scale``."""
    return bool(np.ptp(values) <= 1e-9 * max(scale, 1e-300))


def paired_ratio(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    seed: int = 0,
    n_resamples: int = 9999,
) -> RatioEstimate:
    """Ratio of medians with a paired bootstrap CI and a Wilcoxon signed-rank p-value.

    ``baseline[i]`` and ``candidate[i]`` must come from the same prompt and repetition. The
    bootstrap resamples pair indices (both samples move together), so the between-prompt spread
    cancels. Deterministic data is handled exactly: all-identical pairs give ``[1, 1]`` and
    p = 1; a constant shift (same difference, or same ratio, for every pair) gives the exact ratio
    and an exact two-sided sign test, ``binomtest(n_up, n, 0.5)``.
    """
    from scipy import stats as sps

    b, c = _as_array(baseline, "baseline"), _as_array(candidate, "candidate")
    if b.size != c.size:
        raise ValueError(f"paired samples need equal lengths, got {b.size} and {c.size}")
    _check_positive(b, "baseline samples")
    _check_positive(c, "candidate samples")
    n = int(b.size)
    ratio = _ratio_of_medians(b, c)
    if n < MIN_SAMPLES:
        return RatioEstimate(ratio, None, None, INSUFFICIENT, n, True)

    log_ratio = np.log(c / b)
    if np.all(c == b):
        return RatioEstimate(ratio, (1.0, 1.0), 1.0, "exact (identical samples)", n, True)
    scale = float(np.max(np.abs(b)))
    if _is_constant(c - b, scale) or _is_constant(log_ratio, 1.0):
        # The simulator's world: every pair moved by the same amount, so there is no noise to
        # bootstrap. Only the count of pairs limits what can be claimed.
        n_up = int(np.sum(c > b))
        p = float(sps.binomtest(n_up, n, 0.5).pvalue)
        return RatioEstimate(ratio, (ratio, ratio), p, "exact (constant shift); sign test", n,
                             True)

    ci, ci_method = _bootstrap_ci((b, c), _ratio_stat, paired=True, seed=seed,
                                  n_resamples=n_resamples)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(sps.wilcoxon(log_ratio, alternative="two-sided").pvalue)
        p_value = p if math.isfinite(p) else None
    except ValueError:
        p_value = None
    return RatioEstimate(ratio, ci, p_value, f"paired bootstrap ({ci_method}); wilcoxon", n, True)


def unpaired_ratio(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    seed: int = 0,
    n_resamples: int = 9999,
) -> RatioEstimate:
    """Ratio of medians when samples do not pair: independent bootstraps, Mann–Whitney U p-value.

    Weaker than ``paired_ratio`` (prompt-to-prompt spread stays in the interval); use it only when
    the two runs did not measure the same prompts and repetitions. ``n_pairs`` is the smaller of
    the two sample counts.
    """
    from scipy import stats as sps

    b, c = _as_array(baseline, "baseline"), _as_array(candidate, "candidate")
    _check_positive(b, "baseline samples")
    _check_positive(c, "candidate samples")
    n = int(min(b.size, c.size))
    ratio = _ratio_of_medians(b, c)
    if n < MIN_SAMPLES:
        return RatioEstimate(ratio, None, None, INSUFFICIENT, n, False)
    if np.all(b == b[0]) and np.all(c == c[0]):
        same = bool(b[0] == c[0])
        p = 1.0 if same else float(sps.mannwhitneyu(c, b, alternative="two-sided").pvalue)
        return RatioEstimate(ratio, (ratio, ratio), p, "exact (constant samples); mann-whitney",
                             n, False)

    ci, ci_method = _bootstrap_ci((b, c), _ratio_stat, paired=False, seed=seed,
                                  n_resamples=n_resamples)
    try:
        p = float(sps.mannwhitneyu(c, b, alternative="two-sided").pvalue)
        p_value = p if math.isfinite(p) else None
    except ValueError:
        p_value = None
    return RatioEstimate(ratio, ci, p_value, f"unpaired bootstrap ({ci_method}); mann-whitney",
                         n, False)


# ------------------------------------------------------------------------------------------
# many tests
# ------------------------------------------------------------------------------------------
def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the input order; ``None`` passes through uncounted.

    Sort the m real p-values ascending; the i-th (from 0) becomes ``(m - i) · p``, made
    non-decreasing by a running maximum and capped at 1. Rejecting where adjusted p < α controls
    the family-wise error rate at α, and is never less powerful than plain Bonferroni.
    """
    present = [(i, float(p)) for i, p in enumerate(p_values) if p is not None]
    for _, p in present:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(present)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(present, key=lambda t: t[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


# ------------------------------------------------------------------------------------------
# accuracy, paired by item
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccuracyDelta:
    """Δaccuracy = candidate − baseline over the same items.

    ``b`` counts items the baseline got right and the candidate wrong, ``c`` the reverse; only
    these discordant items carry information, hence McNemar's exact test
    ``binomtest(b, b + c, 0.5)`` and the flip rate ``(b + c) / n``.
    """

    n: int
    base_acc: float | None
    cand_acc: float | None
    delta: float | None
    ci95: tuple[float, float] | None
    mcnemar_p: float | None
    b: int
    c: int
    flip_rate: float | None


def _mean_diff_stat(base: np.ndarray, cand: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(cand, axis=axis) - np.mean(base, axis=axis)


def paired_accuracy_delta(
    base_correct: Sequence[bool],
    cand_correct: Sequence[bool],
    *,
    seed: int = 0,
    n_resamples: int = 9999,
) -> AccuracyDelta:
    """Paired Δacc with a bootstrap CI over items and McNemar's exact p-value.

    The CI is ``None`` under 5 items and exactly ``[d, d]`` when every item's difference is the
    same (``[0, 0]`` for identical vectors). McNemar's p is 1.0 when no item flipped.
    """
    from scipy import stats as sps

    base = np.asarray(base_correct, dtype=bool).reshape(-1)
    cand = np.asarray(cand_correct, dtype=bool).reshape(-1)
    if base.size != cand.size:
        raise ValueError(f"paired items need equal lengths, got {base.size} and {cand.size}")
    n = int(base.size)
    b = int(np.sum(base & ~cand))
    c = int(np.sum(~base & cand))
    if n == 0:
        return AccuracyDelta(0, None, None, None, None, None, 0, 0, None)
    base_acc, cand_acc = float(base.mean()), float(cand.mean())
    delta = cand_acc - base_acc
    p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5).pvalue)

    diff = cand.astype(float) - base.astype(float)
    ci: tuple[float, float] | None
    if n < MIN_SAMPLES:
        ci = None
    elif np.all(diff == diff[0]):
        ci = (float(diff[0]), float(diff[0]))
    else:
        ci, _ = _bootstrap_ci((base.astype(float), cand.astype(float)), _mean_diff_stat,
                              paired=True, seed=seed, n_resamples=n_resamples)
    return AccuracyDelta(n, base_acc, cand_acc, delta, ci, p, b, c, (b + c) / n)
