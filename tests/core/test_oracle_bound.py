"""The oracle is the lossless bound it claims to be: on random traces, tight budgets included,
every step of the run ends no later than under any lossless demand-fetch policy (so the run's
time, and with one request its TPOT, is at or below theirs), and its hit rate is at or above
Belady's (which has the fewest misses of any demand-fetch policy, on every prefix)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.builders import make_shape, make_trace, replay

LOSSLESS_DEMAND = ("sync", "lru", "lru-global", "lfu", "pin", "belady")


@st.composite
def cases(draw: st.DrawFn) -> tuple:
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(3, 8))
    k = draw(st.integers(1, min(3, experts)))
    n_steps = draw(st.integers(2, 10))
    hot = draw(st.integers(k, experts))            # skew: most steps draw from a few experts
    steps = [[sorted(draw(st.sets(st.integers(0, hot - 1), min_size=k, max_size=k)))
              for _ in range(layers)] for _ in range(n_steps)]
    n_slots = draw(st.integers(k, layers * experts))
    profile = draw(st.sampled_from(["a6000-pcie4", "t4-pcie3", "h100-pcie5"]))
    requests = draw(st.sampled_from([1, 2]))
    return make_shape(layers, experts, k), make_trace(steps, requests), n_slots, profile


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_oracle_bounds_every_lossless_demand_policy(case: tuple) -> None:
    shape, trace, n_slots, profile = case
    oracle = replay(trace, "oracle", shape, n_slots, profile)
    for name in LOSSLESS_DEMAND:
        other = replay(trace, name, shape, n_slots, profile)
        assert oracle["ends"][-1] <= other["ends"][-1] * (1 + 1e-12), name
        if len(oracle["tpot"]) == 1:
            assert oracle["tpot"][0] <= other["tpot"][0] * (1 + 1e-12), name
    belady = replay(trace, "belady", shape, n_slots, profile)
    assert oracle["hits"] >= belady["hits"]
    assert oracle["acts"] == belady["acts"]


def test_oracle_prefetches_what_belady_would_fetch_and_nothing_more() -> None:
    """Same copies as Belady's MIN (no extra traffic), issued earlier: fewer stalls."""
    shape = make_shape(2, 6, 2)
    steps = [[[0, 1], [2, 3]], [[0, 2], [3, 4]], [[1, 5], [0, 4]], [[0, 1], [2, 3]]] * 3
    trace = make_trace(steps)
    oracle, belady = replay(trace, "oracle", shape, 5), replay(trace, "belady", shape, 5)
    o, b = oracle["engine"].protocol, belady["engine"].protocol
    assert o.sched.prefetch_issued > 0 and b.sched.prefetch_issued == 0
    assert o.cache.peak_resident <= 5 and b.cache.peak_resident <= 5
    # every copy the oracle makes is one Belady makes (prefetched instead of demand-fetched); the
    # ones into free slots it makes before timing, as pinning does
    preloaded = sum(1 for f in oracle["engine"].strategy.plan if f.victim is None)
    o_copies = preloaded + o.sched.prefetch_issued \
        + sum(r["demand_bytes"] for r in oracle["rows"]) // shape.expert_bytes
    b_copies = sum(r["demand_bytes"] for r in belady["rows"]) // shape.expert_bytes
    assert o_copies == b_copies
    assert oracle["hits"] > belady["hits"]
    assert sum(oracle["tpot"].values()) < sum(belady["tpot"].values())


def test_a_budget_below_a_prefill_layer_is_one_sentence_for_the_oracle_too() -> None:
    """A prompt that touches more experts of a layer than the budget holds: the oracle's planner
    says so like every other strategy, instead of failing inside its eviction search."""
    import pytest

    from moebench.errors import UserError
    from moebench.offload.profile import load_profile
    from moebench.replay.engine import replay_one
    from moebench.replay.traces import trace_from_rows

    shape = make_shape(moe_layers=2, num_experts=8, top_k=2)
    rows = [{"step": 0, "layer": m, "experts": [0, 1], "used": list(range(6))} for m in range(2)]
    rows += [{"step": 1, "layer": m, "experts": [2, 3]} for m in range(2)]
    with pytest.raises(UserError, match="needs 6 at once"):
        replay_one(trace_from_rows(rows, source="t"), "oracle", shape=shape,
                   profile=load_profile("a6000-pcie4"), budget="2/layer")
