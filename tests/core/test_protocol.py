"""`LayerProtocol` driven directly (no replay engine, no torch): a tiny recording strategy over a
hand-made shape and a `SimTimeline` whose compute charges are recorded.

The profile has round figures: a copy of one expert (10**9 bytes) takes 1.0 s, and a predictor
cost of 10**12 FLOPs takes 1.0 s (1 TFLOPS, no launch overhead).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moebench.errors import UserError
from moebench.offload import costs
from moebench.offload.cache import ExpertCache
from moebench.offload.clock import SimTimeline
from moebench.offload.events import Prefetch, Routing
from moebench.offload.profile import HardwareProfile
from moebench.offload.protocol import LayerProtocol
from moebench.offload.shapes import ModelShape
from moebench.strategy import Strategy

EB = 10**9
PROFILE = HardwareProfile(name="unit", h2d_bandwidth_gbps=1.0, h2d_latency_us=0.0,
                          mem_bandwidth_gbps=1000.0, peak_tflops=1.0, launch_overhead_us=0.0,
                          mem_efficiency=1.0, attention_us=100.0, router_us=10.0,
                          expert_us=50.0, lm_head_us=200.0)
ONE_SECOND = (1e12, 0.0, 0)        # a prediction_cost of exactly 1.0 s on PROFILE


def make_shape(moe_layer_ids=(0, 1), num_layers=None, num_experts=4, top_k=2) -> ModelShape:
    return ModelShape(name="unit-moe", arch="qwen3_moe", hidden=64,
                      num_layers=num_layers or len(moe_layer_ids), moe_layer_ids=tuple(moe_layer_ids),
                      num_experts=num_experts, top_k=top_k, expert_width=32, vocab=128, q_heads=2,
                      kv_heads=1, head_dim=32, dtype="bfloat16", expert_bytes=EB,
                      dense_mlp_width=64)


class RecordingTimeline(SimTimeline):
    def __init__(self, profile):
        super().__init__(profile)
        self.charges: list[float] = []

    def compute(self, seconds):
        self.charges.append(seconds)
        super().compute(seconds)


class Recorder(Strategy):
    """Logs every hook; prefetches and router use come from tables keyed by (step, layer)."""

    name = "recorder"
    reads = frozenset({"routing"})

    def __init__(self, *, before=None, after=None, router=True, cost=None, residents=(),
                 choose=None):
        super().__init__()
        self.log: list[tuple] = []
        self.before, self.after = before or {}, after or {}
        self.router, self.cost, self.residents, self._choose = router, cost, residents, choose

    def initial_residents(self, n_slots):
        return list(self.residents)

    def before_attention(self, ev, h):
        self.log.append(("before_attention", ev.layer))
        return self.before.get((ev.step, ev.layer), ())

    def uses_router(self, ev):
        self.log.append(("uses_router", ev.layer))
        return self.router(ev) if callable(self.router) else self.router

    def choose(self, ev, true, s, u):
        self.log.append(("choose", ev.layer))
        return self._choose(ev, true) if self._choose else true

    def after_routing(self, ev, executed, s, u):
        self.log.append(("after_routing", ev.layer))
        return self.after.get((ev.step, ev.layer), ())

    def prediction_cost(self, ev):
        self.log.append(("prediction_cost", ev.layer))
        return self.cost

    def victim(self, layer, candidates):
        self.log.append(("victim", layer))
        return super().victim(layer, candidates)

    def on_access(self, key, hit):
        self.log.append(("on_access", key, hit))
        super().on_access(key, hit)

    def on_insert(self, key):
        self.log.append(("on_insert", key))
        super().on_insert(key)

    def on_evict(self, key):
        self.log.append(("on_evict", key))
        super().on_evict(key)


class Dropper(Recorder):
    """A keep-nothing strategy: its traits say keeps_experts False."""

    name = "dropper"

    @classmethod
    def traits_for(cls, params):
        return dataclasses.replace(super().traits_for(params), keeps_experts=False)


class Planner(Recorder):
    """Same prefetches, but they are plans, not predictions of this step."""

    name = "planner"
    scores_predictions = False


def make_protocol(strategy, shape, n_slots, *, charge=True):
    tl = RecordingTimeline(PROFILE)
    cache = ExpertCache(n_slots, shape.expert_bytes)
    p = LayerProtocol(strategy, shape=shape, profile=PROFILE, timeline=tl, cache=cache,
                      charge=charge)
    p.setup()
    return p, tl, cache


def routing(ids, weights=None):
    ids = list(ids)
    w = weights or [1.0 / len(ids)] * len(ids)
    return Routing(np.asarray([ids], dtype=np.int64), np.asarray([w], dtype=np.float64))


def run_step(p, shape, phase, position, routes, *, n_tokens=1, weights=None, between=None):
    """One step, decoder layer by decoder layer, as the replay engine drives it; `routes[m]` is
    MoE layer m's top-k (one token), `weights[m]` its gate weights. Returns (StepStats, outcomes)."""
    moe_of = {i: m for m, i in enumerate(shape.moe_layer_ids)}
    weights = weights or {}
    p.begin_step(phase, position, n_tokens)
    outs = {}
    for i in range(shape.num_layers):
        m = moe_of.get(i)
        if m is None:
            p.dense_layer()
            continue
        p.before_attention(m, None)
        true = routing(routes[m], weights.get(m))
        _, experts, prefetches = p.route(m, true, None, None)
        ids, w = list(routes[m]), list(weights.get(m) or [1.0 / len(routes[m])] * len(routes[m]))
        outs[m] = p.prepare(m, experts, prefetches, lambda ids=ids, w=w: (ids, w))
        p.compute_experts(m, outs[m], experts)
        p.after_experts(m)
        if between is not None:
            between(m)
    return p.end_step(), outs


def strategy_log(strategy, kinds=None):
    return [e for e in strategy.log if kinds is None or e[0] in kinds]


# ---------------------------------------------------------------------------------------------
# hook order
# ---------------------------------------------------------------------------------------------
def test_hook_order_per_layer() -> None:
    shape = make_shape()
    s = Recorder(after={(1, 0): [Prefetch(1, (3,))]}, cost=ONE_SECOND)
    p, tl, cache = make_protocol(s, shape, n_slots=3)
    run_step(p, shape, "decode", 1, {0: [0, 1], 1: [3, 2]})
    assert s.log == [
        ("before_attention", 0), ("uses_router", 0), ("choose", 0), ("after_routing", 0),
        ("prediction_cost", 0),
        ("on_insert", (0, 0)), ("on_access", (0, 0), False),
        ("on_insert", (0, 1)), ("on_access", (0, 1), False),
        ("on_insert", (1, 3)),                                   # the prefetch, after demand
        ("before_attention", 1), ("uses_router", 1), ("choose", 1), ("after_routing", 1),
        ("on_access", (1, 3), False),                            # still copying: not a hit
        ("victim", 1), ("on_evict", (0, 0)), ("on_insert", (1, 2)), ("on_access", (1, 2), False),
    ]


def test_before_attention_prefetch_is_issued_before_the_layers_demand() -> None:
    shape = make_shape(moe_layer_ids=(0,))
    s = Recorder(before={(1, 0): [Prefetch(0, (2,))]})
    p, tl, cache = make_protocol(s, shape, n_slots=4)
    st, outs = run_step(p, shape, "decode", 1, {0: [2, 0]})
    assert strategy_log(s, {"on_insert", "on_access"}) == [
        ("on_insert", (0, 2)), ("on_access", (0, 2), False),
        ("on_insert", (0, 0)), ("on_access", (0, 0), False)]
    out = outs[0]
    assert (out.hits, out.late, out.misses) == (0, 1, 1)
    assert st.prefetch_bytes == EB and st.demand_bytes == EB and st.h2d_bytes == 2 * EB
    assert st.late == 1 and st.layer_late == [1] and st.layer_misses == [1] and st.misses == 1
    row = st.row()
    assert (row["hits"], row["late"], row["misses"], row["activations"]) == (0, 1, 1, 2)
    # the late prefetch's copy was partly done when compute needed it: its stall is charged to
    # it and is less than a full copy; the demand fetch queued behind it waits in full
    assert 0 < st.late_stall_s < st.stall_s


# ---------------------------------------------------------------------------------------------
# charges
# ---------------------------------------------------------------------------------------------
def expected_charges(shape, *, n_tokens, context, routes, router_layers):
    """What the protocol should charge for one step, in order (prediction charges excluded)."""
    moe_of = {i: m for m, i in enumerate(shape.moe_layer_ids)}
    out = []
    for i in range(shape.num_layers):
        m = moe_of.get(i)
        if m is None:
            out.append(costs.attention_seconds(shape, PROFILE, n_tokens, context)
                       + costs.dense_mlp_seconds(shape, PROFILE, n_tokens))
            continue
        out.append(costs.attention_seconds(shape, PROFILE, n_tokens, context))
        if m in router_layers:
            out.append(costs.router_seconds(shape, PROFILE, n_tokens))
        n = len(set(routes[m]))
        tpe = max(1, (n_tokens * shape.top_k) // n)
        out.append(n * costs.expert_seconds(shape, PROFILE, tpe))
    out.append(costs.lm_head_seconds(shape, PROFILE))
    return out


def nonzero(charges):
    return [c for c in charges if c != 0.0]


def test_router_is_charged_only_where_uses_router_is_true() -> None:
    shape = make_shape(moe_layer_ids=(1, 2), num_layers=3)
    routes = {0: [0, 1], 1: [2, 3]}
    for router, layers in ((True, {0, 1}), (False, set()), (lambda ev: ev.layer == 1, {1})):
        s = Recorder(router=router, residents=[(0, 0), (0, 1), (1, 2), (1, 3)])
        p, tl, cache = make_protocol(s, shape, n_slots=4)
        p.prefill_warm()
        run_step(p, shape, "decode", 1, routes)
        want = expected_charges(shape, n_tokens=1, context=0, routes=routes, router_layers=layers)
        assert nonzero(tl.charges) == want, router


def test_the_router_charge_is_the_calibrated_floor_at_batch_one() -> None:
    shape = make_shape(moe_layer_ids=(0,))
    assert costs.router_seconds(shape, PROFILE, 1) == pytest.approx(10e-6, rel=1e-12)
    assert costs.attention_seconds(shape, PROFILE, 1, 0) == pytest.approx(100e-6, rel=1e-12)


def test_no_charges_on_a_measured_clock() -> None:
    shape = make_shape()
    s = Recorder(after={(1, 0): [Prefetch(1, (3,))]}, cost=ONE_SECOND)
    p, tl, cache = make_protocol(s, shape, n_slots=4, charge=False)
    st, outs = run_step(p, shape, "decode", 1, {0: [0, 1], 1: [3, 2]})
    assert tl.charges == []
    assert ("prediction_cost", 0) not in s.log
    assert st.compute_s == 0.0 and st.latency_s == st.stall_s == sum(o.stall_s for o in outs.values())


def test_prediction_cost_is_charged_once_per_non_empty_prefetch() -> None:
    shape = make_shape(moe_layer_ids=(0, 1, 2))
    s = Recorder(before={(1, 0): [Prefetch(1, (0,)), Prefetch(1, ())]},
                 after={(1, 0): [Prefetch(1, (1,)), Prefetch(2, (0, 1))], (1, 1): [Prefetch(2, ())]},
                 cost=ONE_SECOND, residents=[(m, e) for m in range(3) for e in range(4)])
    p, tl, cache = make_protocol(s, shape, n_slots=12)
    p.prefill_warm()
    routes = {0: [0, 1], 1: [0, 1], 2: [0, 1]}
    st, _ = run_step(p, shape, "decode", 1, routes)
    assert strategy_log(s, {"prediction_cost"}) == [("prediction_cost", 0)] * 3
    # one charge per hook: 1.0 s for the before-attention prefetch, 2.0 s after routing
    big = [c for c in tl.charges if c >= 0.5]
    assert big == [1.0, 2.0]
    base = expected_charges(shape, n_tokens=1, context=0, routes=routes, router_layers={0, 1, 2})
    assert st.compute_s == pytest.approx(sum(base) + 3.0, rel=1e-12)


def test_a_free_predictor_is_not_charged() -> None:
    shape = make_shape()
    s = Recorder(after={(1, 0): [Prefetch(1, (2, 3))]}, cost=None,
                 residents=[(0, 0), (0, 1), (1, 2), (1, 3)])
    p, tl, cache = make_protocol(s, shape, n_slots=4)
    p.prefill_warm()
    routes = {0: [0, 1], 1: [2, 3]}
    run_step(p, shape, "decode", 1, routes)
    assert ("prediction_cost", 0) in s.log
    assert nonzero(tl.charges) == expected_charges(shape, n_tokens=1, context=0, routes=routes,
                                                   router_layers={0, 1})


# ---------------------------------------------------------------------------------------------
# keep-nothing strategies
# ---------------------------------------------------------------------------------------------
def test_keeps_experts_false_releases_the_layer_after_its_experts() -> None:
    shape = make_shape()
    s = Dropper(before={(1, 0): [Prefetch(0, (3,))]}, after={(1, 0): [Prefetch(1, (0, 1))]})
    assert s.traits.keeps_experts is False
    p, tl, cache = make_protocol(s, shape, n_slots=6)
    seen = {}

    def between(m):
        seen[m] = sorted(cache.resident())

    run_step(p, shape, "decode", 1, {0: [0, 1], 1: [1, 2]}, between=between)
    # after layer 0: nothing of layer 0 (the unused prefetch of (0, 3) included), the
    # prefetches for layer 1 still there
    assert seen[0] == [(1, 0), (1, 1)]
    assert seen[1] == []
    assert cache.prefetched == set()
    # (0, 3) and (1, 0) were prefetched and dropped unused
    assert p.sched.wasted_bytes == 2 * EB
    assert p.sched.prefetch_issued == 3 and p.sched.prefetch_used == 1


def test_keeps_experts_true_keeps_them() -> None:
    shape = make_shape()
    s = Recorder()
    p, tl, cache = make_protocol(s, shape, n_slots=6)
    run_step(p, shape, "decode", 1, {0: [0, 1], 1: [1, 2]})
    assert sorted(cache.resident()) == [(0, 0), (0, 1), (1, 1), (1, 2)]
    st, outs = run_step(p, shape, "decode", 2, {0: [0, 1], 1: [1, 2]})
    assert st.hits == 4 and st.activations == 4 and st.demand_bytes == 0


# ---------------------------------------------------------------------------------------------
# prediction scoring
# ---------------------------------------------------------------------------------------------
GUESSES = {(1, 0): [Prefetch(1, (0, 1, 3), source="guess")],
           (2, 0): [Prefetch(1, (2, 1), source="guess")]}
ROUTES = {0: [0, 1], 1: [1, 2]}
WEIGHTS = {1: [0.75, 0.25]}


def test_prediction_scores_recall_precision_exact_top1() -> None:
    shape = make_shape()
    s = Recorder(after=dict(GUESSES) | {(0, 0): [Prefetch(1, (3,), source="guess")]})
    p, tl, cache = make_protocol(s, shape, n_slots=8)
    run_step(p, shape, "prefill", 0, ROUTES, weights=WEIGHTS)
    assert p.pred_stats == {}                              # prefill is not scored
    run_step(p, shape, "decode", 1, ROUTES, weights=WEIGHTS)
    run_step(p, shape, "decode", 2, ROUTES, weights=WEIGHTS)
    acc = p.pred_stats[1]["guess"]
    # step 1: {0,1,3} vs {1,2}: recall 1/2, precision 1/3, not exact, top1 (1) in, gw 0.75
    # step 2: {1,2} vs {1,2}: all 1
    assert acc["n"] == 2 and acc["exact"] == 1 and acc["top1"] == 2 and acc["predicted"] == 5
    assert acc["recall"] == pytest.approx(1.5)
    assert acc["precision"] == pytest.approx(1 / 3 + 1)
    assert acc["gw_recall"] == pytest.approx(1.75)
    pred = p.prediction()
    src = pred["predictors"]["guess"]
    assert src["recall_at_k"] == pytest.approx(0.75)
    assert src["precision"] == pytest.approx((1 / 3 + 1) / 2)
    assert src["exact_set_match"] == pytest.approx(0.5)
    assert src["top1_hit"] == pytest.approx(1.0)
    assert src["gate_weighted_recall"] == pytest.approx(0.875)
    assert [r["layer"] for r in src["per_layer"]] == [1]
    assert src["per_layer"][0]["mean_predicted"] == pytest.approx(2.5)
    assert pred["prefetches_issued"] == p.sched.prefetch_issued
    assert pred["prefetches_used"] == p.sched.prefetch_used
    assert [r["layer"] for r in pred["per_layer"]] == [0, 1]
    assert sum(r["prefetches_issued"] for r in pred["per_layer"]) == pred["prefetches_issued"]


def test_precision_and_recall_are_both_against_the_true_router_not_the_executed_experts() -> None:
    shape = make_shape()
    # a lossy strategy that executes its own guess at layer 1 (like speculative): the guess
    # {1, 3} half-matches the router's {1, 2}; scored against what it executed, precision would
    # read 1.0 while recall reads 0.5 with equal set sizes
    guess = (1, 3)
    executes_guess = (lambda ev, true: routing(list(guess)) if ev.layer == 1 else true)
    s = Recorder(after={(1, 0): [Prefetch(1, guess, source="guess")]}, choose=executes_guess)
    p, tl, cache = make_protocol(s, shape, n_slots=8)
    run_step(p, shape, "decode", 1, ROUTES, weights=WEIGHTS)
    assert set(ROUTES[1]) == {1, 2}
    acc = p.pred_stats[1]["guess"]
    assert acc["recall"] == pytest.approx(0.5) and acc["exact"] == 0
    assert acc["precision"] == pytest.approx(0.5)


def test_scores_predictions_false_suppresses_scoring() -> None:
    shape = make_shape()
    s = Planner(after=dict(GUESSES))
    p, tl, cache = make_protocol(s, shape, n_slots=8)
    run_step(p, shape, "decode", 1, ROUTES, weights=WEIGHTS)
    run_step(p, shape, "decode", 2, ROUTES, weights=WEIGHTS)
    assert p.pred_stats == {}
    assert p.predicted(1) == {}
    pred = p.prediction()
    assert pred is not None and pred["predictors"] == {}
    assert pred["prefetches_issued"] == p.sched.prefetch_issued > 0


def test_no_prefetches_no_prediction_section() -> None:
    shape = make_shape()
    p, tl, cache = make_protocol(Recorder(), shape, n_slots=8)
    run_step(p, shape, "decode", 1, ROUTES)
    assert p.prediction() is None


# ---------------------------------------------------------------------------------------------
# reset_counters
# ---------------------------------------------------------------------------------------------
def test_reset_counters_zeroes_the_run_counters_but_keeps_the_cache() -> None:
    shape = make_shape()
    s = Recorder(after=dict(GUESSES))
    p, tl, cache = make_protocol(s, shape, n_slots=4)
    run_step(p, shape, "decode", 1, ROUTES, weights=WEIGHTS)
    run_step(p, shape, "decode", 2, ROUTES, weights=WEIGHTS)
    sched = p.sched
    assert sched.prefetch_issued > 0 and p.pred_stats and sched.layer_counts
    resident = dict(cache.slot_of)
    p.reset_counters()
    assert (sched.prefetch_issued, sched.prefetch_used, sched.wasted_bytes) == (0, 0, 0)
    assert sched.layer_counts == {} and p.pred_stats == {}
    assert p.prediction() is None
    assert cache.slot_of == resident                       # the warm cache stays warm


def test_after_reset_counters_used_never_exceeds_issued() -> None:
    shape = make_shape()
    s = Recorder(after={(1, 0): [Prefetch(1, (3,), source="guess")]})
    p, tl, cache = make_protocol(s, shape, n_slots=8)
    run_step(p, shape, "decode", 1, ROUTES)                # warm-up: (1, 3) prefetched, unused
    assert (1, 3) in cache.prefetched
    p.reset_counters()
    run_step(p, shape, "decode", 2, {0: [0, 1], 1: [3, 2]})   # measured: no prefetch issued
    assert p.sched.prefetch_used <= p.sched.prefetch_issued


# ---------------------------------------------------------------------------------------------
# end_step: the step's clock
# ---------------------------------------------------------------------------------------------
def test_end_step_latency_is_the_sum_of_the_charges_when_nothing_is_copied() -> None:
    shape = make_shape(moe_layer_ids=(1, 2), num_layers=3)
    routes = {0: [0, 1], 1: [2, 3]}
    s = Recorder(residents=[(0, 0), (0, 1), (1, 2), (1, 3)])
    p, tl, cache = make_protocol(s, shape, n_slots=4)
    p.prefill_warm()
    st, outs = run_step(p, shape, "prefill", 0, routes, n_tokens=3)
    want = expected_charges(shape, n_tokens=3, context=0, routes=routes, router_layers={0, 1})
    assert nonzero(tl.charges) == want
    assert st.latency_s == pytest.approx(sum(want), rel=1e-12)
    assert st.compute_s == pytest.approx(sum(want), rel=1e-12)
    assert st.stall_s == 0.0 and st.copy_busy_s == 0.0 and st.h2d_bytes == 0
    assert st.phase == "prefill" and st.position == 0
    assert st.hits == 0 and st.activations == 0            # prefill: no hit accounting
    assert p.context == 3
    # the next decode step's attention reads the 3 cached tokens
    tl.charges.clear()
    st, outs = run_step(p, shape, "decode", 1, routes)
    want = expected_charges(shape, n_tokens=1, context=3, routes=routes, router_layers={0, 1})
    assert nonzero(tl.charges) == want
    assert st.latency_s == pytest.approx(sum(want), rel=1e-12)
    assert st.hits == 4 and st.activations == 4 and st.layer_hits == [2, 2]
    assert p.context == 4


def test_end_step_latency_is_compute_plus_stall_with_copies() -> None:
    shape = make_shape()
    s = Recorder(after={(1, 0): [Prefetch(1, (3,))]}, cost=ONE_SECOND)
    p, tl, cache = make_protocol(s, shape, n_slots=3)
    st, outs = run_step(p, shape, "decode", 1, {0: [0, 1], 1: [3, 2]})
    assert st.compute_s == pytest.approx(sum(tl.charges), rel=1e-12)
    assert st.stall_s == pytest.approx(sum(o.stall_s for o in outs.values()), rel=1e-12)
    assert st.latency_s == pytest.approx(st.compute_s + st.stall_s, rel=1e-12)
    assert st.copy_busy_s == 4.0                           # 3 demand copies + 1 prefetch, 1 s each
    assert st.demand_bytes == 3 * EB and st.prefetch_bytes == EB and st.h2d_bytes == 4 * EB
    assert st.late == 1 and st.hits == 0 and st.activations == 4
    # layer 0's demand copies are issued after its routing (and its predictor's 1.0 s), so it
    # waits for both in full; its prefetch for layer 1 queues behind them
    assert outs[0].stall_s == pytest.approx(2.0, rel=1e-12)


class _ExpertWaits(Recorder):
    def expert_granular_waits(self):
        return True


@pytest.mark.parametrize("granular", [False, True])
def test_expert_granular_waits_run_resident_experts_while_a_miss_loads(granular: bool) -> None:
    """Layer 0 needs experts 0 (resident) and 1 (a miss: a 1 s copy on PROFILE). Layer-granular
    waits stall the whole copy before both experts run; expert-granular waits run expert 0's
    50 us while the copy lands, so the stall is 50 us shorter and the step ends 50 us earlier."""
    shape = make_shape(moe_layer_ids=(0,))
    s = (_ExpertWaits if granular else Recorder)(residents=[(0, 0)])
    p, tl, cache = make_protocol(s, shape, n_slots=4)
    p.prefill_warm()
    st, outs = run_step(p, shape, "decode", 1, {0: [0, 1]})
    assert (outs[0].hits, outs[0].misses) == (1, 1)
    assert p.expert_groups(outs[0], [0, 1]) == [[0, 1]] and not outs[0].pending  # waited for
    copy = 1.0
    expert = PROFILE.expert_us * 1e-6
    want_stall = copy - expert if granular else copy
    assert st.stall_s == pytest.approx(want_stall)
    assert st.late_stall_s == 0.0
    layer_granular_latency = None if granular else st.latency_s
    if granular:
        p2, _, _ = make_protocol(Recorder(residents=[(0, 0)]), shape, n_slots=4)
        p2.prefill_warm()
        layer_granular_latency = run_step(p2, shape, "decode", 1, {0: [0, 1]})[0].latency_s
        assert st.latency_s == pytest.approx(layer_granular_latency - expert)


def test_expert_groups_put_resident_experts_first_then_late_then_misses() -> None:
    from moebench.offload.cache import LayerOutcome
    out = LayerOutcome(pending=[(3, None, True), (1, None, False)])
    assert LayerProtocol.expert_groups(out, [1, 2, 3, 4]) == [[2, 4], [3], [1]]
    assert LayerProtocol.expert_groups(LayerOutcome(), [1, 2]) == [[1, 2]]


class _OnHost(Recorder):
    uses_host = True

    def __init__(self, host=(), **kw):
        super().__init__(**kw)
        self._host = set(host)

    def host_experts(self, ev, experts):
        return [e for e in experts if e in self._host]


def test_a_host_computed_expert_runs_on_the_host_while_the_device_computes() -> None:
    """Layer 0 runs expert 0 (resident) on the device and expert 1 on the host: no copy is made,
    the activation goes out and back over the link, the host computes while the device runs
    expert 0, and the device waits for the rest of the host's result."""
    from dataclasses import replace

    from moebench.offload.profile import HostProfile

    host = HostProfile(name="h", mem_bandwidth_gbps=1.0, peak_tflops=1.0, mem_efficiency=1.0,
                       launch_overhead_us=0.0)
    prof = replace(PROFILE, host=host)
    shape = make_shape(moe_layer_ids=(0,))
    s = _OnHost(host=[1], residents=[(0, 0)])
    tl = RecordingTimeline(prof)
    cache = ExpertCache(4, shape.expert_bytes)
    p = LayerProtocol(s, shape=shape, profile=prof, timeline=tl, cache=cache, charge=True)
    p.setup()
    p.prefill_warm()
    st, outs = run_step(p, shape, "decode", 1, {0: [0, 1]})
    out = outs[0]
    assert out.host == [1] and (out.hits, out.misses) == (1, 0)
    assert st.h2d_bytes == 0 and not cache.is_resident((0, 1))            # nothing was copied
    assert (st.hits, st.host, st.activations) == (1, 1, 2) and st.layer_host == [1]
    act = costs.activation_bytes(shape, 1)
    want_host = costs.host_expert_seconds(shape, prof, 1)
    assert st.host_s == pytest.approx(want_host) and want_host > 0
    # the result lands at d2h + host + h2d; the device computed expert 0 (50 us) meanwhile
    expert = PROFILE.expert_us * 1e-6
    lands = prof.copy_seconds(act) + want_host + prof.copy_seconds(act)
    assert st.host_stall_s == pytest.approx(max(0.0, lands - expert))
    assert st.row()["host"] == 1 and st.row()["host_ms"] == pytest.approx(want_host * 1e3)


def test_a_profile_without_host_figures_refuses_a_host_computing_strategy() -> None:
    shape = make_shape(moe_layer_ids=(0,))
    with pytest.raises(UserError, match="has no host figures"):
        make_protocol(_OnHost(), shape, n_slots=4)
    make_protocol(_OnHost(), shape, n_slots=4, charge=False)   # the CUDA clock measures it


class _LowBit(Recorder):
    def __init__(self, bits=8, refresh=True, **kw):
        super().__init__(**kw)
        self.bits, self.refresh = bits, refresh

    def miss_precision(self, ev, experts):
        return {e: self.bits for e in experts if not self.ctx.is_resident(ev.layer, e)}

    def refresh_low_precision(self):
        return self.refresh


@pytest.mark.parametrize("bits", [8, 4])
def test_a_low_precision_miss_copies_fewer_bytes_then_the_full_copy_follows(bits: int) -> None:
    shape = make_shape(moe_layer_ids=(0,))
    s = _LowBit(bits=bits)
    p, tl, cache = make_protocol(s, shape, n_slots=4)
    st, outs = run_step(p, shape, "decode", 1, {0: [0, 1]})
    low = costs.lowbit_bytes(shape, bits)
    params = shape.expert_bytes / shape.bytes_per_param
    assert low == int(params * bits / 8 + -(-params // costs.LOWBIT_GROUP) * 2) < shape.expert_bytes
    assert outs[0].misses == 2 and st.demand_bytes == 2 * low
    # after the layer ran, both slots get the full-precision copy, off the critical path
    assert st.prefetch_bytes == 2 * shape.expert_bytes and not cache.low
    # the next token's access waits for the full copy if it has not landed: late, not a hit
    st2, outs2 = run_step(p, shape, "decode", 2, {0: [0, 1]})
    assert outs2[0].misses == 0 and outs2[0].hits + outs2[0].late == 2


def test_resident_low_keeps_the_low_precision_copy() -> None:
    shape = make_shape(moe_layer_ids=(0,))
    p, tl, cache = make_protocol(_LowBit(bits=4, refresh=False), shape, n_slots=4)
    st, _ = run_step(p, shape, "decode", 1, {0: [0, 1]})
    assert st.prefetch_bytes == 0 and cache.low == {(0, 0): 4, (0, 1): 4}
