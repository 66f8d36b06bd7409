"""The independent unit of every statistic: identical repetitions are copies, not samples."""
from __future__ import annotations

import numpy as np
import pytest

from moebench.offload.records import distinct_samples, pair_samples
from moebench.stats import distinct_repetitions, paired_ratio, ratio_of_sums, summarize


def _request(prompt: str, rep: int, tpot: float) -> dict:
    return {"kind": "request", "prompt_id": prompt, "repetition": rep, "tpot_ms": tpot,
            "ttft_ms": 1.0, "e2e_ms": tpot * 4, "n_out": 5}


def _run(tpots: list[float], reps: int, jitter: float = 0.0) -> list[dict]:
    return [_request(f"p{i}", r, t * (1 + jitter * r)) for r in range(reps) for i, t in enumerate(tpots)]


BASE = [1.0, 1.3, 0.9, 1.7, 1.1, 1.25, 0.95]
CAND = [0.8, 1.2, 0.85, 1.2, 1.0, 1.0, 0.9]


def test_identical_repetitions_are_collapsed_and_differing_ones_kept() -> None:
    obs = {("a", 0): 1, ("b", 0): 2, ("a", 1): 1, ("b", 1): 2, ("a", 2): 1, ("b", 2): 3}
    assert distinct_repetitions(obs) == [0, 2]           # rep 1 repeats rep 0 everywhere
    kept, reps = distinct_samples(_run(BASE, 3))
    assert reps.to_dict() == {"run": 3, "distinct": 1, "collapsed": 2} and reps.unit == "prompt"
    assert kept == _run(BASE, 1)
    kept, reps = distinct_samples(_run(BASE, 3, jitter=0.01))     # a measured clock varies
    assert reps.to_dict() == {"run": 3, "distinct": 3, "collapsed": 0} and len(kept) == 21


def test_three_identical_repetitions_give_the_statistics_of_one() -> None:
    """The bug this guards: pooling bit-identical repetitions as if independent (p 5.6e-09 with
    3 repetitions against 0.0117 with 1, and intervals that narrow with nothing measured)."""
    one = pair_samples(_run(BASE, 1), _run(CAND, 1), "request", "tpot_ms")
    three = pair_samples(_run(BASE, 3), _run(CAND, 3), "request", "tpot_ms")
    assert three.paired and three.collapsed == 2 and three.unit == "prompt pairs"
    assert (three.base, three.cand) == (one.base, one.cand) and len(three.keys) == 7
    a, b = paired_ratio(one.base, one.cand), paired_ratio(three.base, three.cand)
    assert (a.p_value, a.ci95, a.n_pairs) == (b.p_value, b.ci95, b.n_pairs)
    # what pooling the copies would have claimed: far smaller p
    pooled = paired_ratio([x["tpot_ms"] for x in _run(BASE, 3)], [x["tpot_ms"] for x in _run(CAND, 3)])
    assert pooled.p_value < a.p_value / 10


def test_measured_repetitions_pair_by_prompt_and_repetition() -> None:
    pairs = pair_samples(_run(BASE, 2, jitter=0.02), _run(CAND, 2, jitter=0.03), "request", "tpot_ms")
    assert pairs.paired and pairs.collapsed == 0 and len(pairs.keys) == 14
    assert pairs.unit == "prompt × repetition pairs"
    for k, b, c in zip(pairs.keys, pairs.base, pairs.cand):           # same prompt, same repetition
        (_, prompt), rep = k
        i = int(prompt[1:])
        assert b == pytest.approx(BASE[i] * (1 + 0.02 * rep)) and c == pytest.approx(CAND[i] * (1 + 0.03 * rep))


def test_runs_of_different_prompts_do_not_pair() -> None:
    other = [dict(r, prompt_id="q" + r["prompt_id"]) for r in _run(CAND, 1)]
    pairs = pair_samples(_run(BASE, 1), other, "request", "tpot_ms")
    assert not pairs.paired and pairs.unit == "prompt (unpaired)"


def test_summaries_record_their_unit() -> None:
    assert summarize([1.0, 2.0, 3.0, 4.0, 5.0], unit="prompt")["unit"] == "prompt"
    assert "unit" not in summarize([1.0, 2.0])


def test_hit_rate_interval_is_over_clusters_not_accesses() -> None:
    hits, acts = [8, 2, 7, 1, 9, 3], [10] * 6
    value, ci, method = ratio_of_sums(hits, acts, seed=0)
    assert value == pytest.approx(30 / 60) and method.startswith("cluster bootstrap")
    # 60 accesses treated as independent would give a Wilson half-width near 0.12; six very
    # different requests give a much wider interval
    assert ci[1] - ci[0] > 0.3
    v, ci2, m2 = ratio_of_sums([5, 5, 5, 5, 5], [10] * 5)
    assert v == 0.5 and ci2 == [0.5, 0.5] and m2.startswith("exact")
    assert ratio_of_sums([1, 2], [2, 2])[1] is None                        # under 5 clusters
    assert ratio_of_sums([], []) == (None, None, "insufficient samples")
    assert np.isclose(ratio_of_sums([0, 4, 4, 4, 4, 4], [0, 8, 8, 8, 8, 8])[0], 0.5)  # empty clusters skipped
