"""`LayerProtocol.hit_layer` (an all-hit decode layer in one call) stands for the general
sequence `route`, `prepare`, `compute_experts`, `after_experts`: every replay policy gives the
same samples and result with it turned off, batched too; it is taken where it may be (hits of
a warm cache) and never where a strategy decides after routing. The live engine's version of
this check is tests/engine/test_hit_layer_live.py."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from moebench.models.presets import model_shape
from moebench.offload.profile import load_profile
from moebench.offload.cache import access_hook
from moebench.offload.events import Prefetch, Routing, distinct
from moebench.offload.protocol import LayerProtocol, decides
from moebench.replay import engine as replay_engine
from moebench.replay import policies
from moebench.replay.engine import replay_one
from moebench.replay.policies import policy_names
from moebench.replay.synth import SynthSpec, synthesize
from moebench.replay.traces import compose_batches
from moebench.strategy import REGISTRY, Strategy, build_strategy
from tests.core.builders import hit_layers_counted

SHAPE = model_shape("tiny-qwen3-moe")
PROFILE = load_profile("a6000-pcie4")


def _trace(batch: int = 1):
    t = synthesize(SHAPE.moe_layers, SHAPE.num_experts, SHAPE.top_k,
                   SynthSpec(steps=24, requests=4, zipf=1.2, reuse=0.7, seed=5))
    return compose_batches(t, batch) if batch > 1 else t


def _run(trace, policy: str, budget: str, fast: bool, monkeypatch) -> tuple[str, int]:
    taken = hit_layers_counted(monkeypatch, fast)
    run = replay_one(trace, policy, shape=SHAPE, profile=PROFILE, budget=budget)
    doc = {"samples": run.samples, "result": {k: v for k, v in (run.result or {}).items()
                                              if k not in ("created", "run_id", "timestamp")}}
    return json.dumps(doc, sort_keys=True, default=repr), sum(taken)


POLICIES = [p for p in policy_names() if p not in ("belady-per-request",)]


@pytest.mark.parametrize("budget", ["0.25", "0.75"])
@pytest.mark.parametrize("policy", POLICIES)
def test_every_replay_policy_gives_the_same_run_with_and_without_hit_layer(policy, budget, monkeypatch):
    trace = _trace()
    slow, taken_off = _run(trace, policy, budget, False, monkeypatch)
    fast, taken_on = _run(trace, policy, budget, True, monkeypatch)
    assert taken_off == 0
    assert fast == slow
    if budget == "0.75" and policy in ("lru", "lru-global", "lfu", "lfru", "least-stale",
                                       "all-resident"):
        assert taken_on > 0                 # the comparison is not vacuous for a keeping cache


def test_batched_replays_give_the_same_run_with_and_without_hit_layer(monkeypatch):
    trace = _trace(batch=2)
    for policy in ("lru", "lfu", "arc", "all-resident"):
        slow, _ = _run(trace, policy, "0.75", False, monkeypatch)
        fast, taken = _run(trace, policy, "0.75", True, monkeypatch)
        assert fast == slow, policy
        if policy in ("lru", "all-resident"):
            assert taken > 0, policy       # (a batch's union is all resident less often)


def test_it_is_taken_for_a_warm_cache_and_never_for_a_strategy_that_decides_after_routing(monkeypatch):
    trace = _trace()
    _, resident = _run(trace, "all-resident", "all", True, monkeypatch)
    decode_layers = sum(1 for s in range(trace.n_steps) if int(trace.step[s]) >= 1) * SHAPE.moe_layers
    assert resident == decode_layers               # every decode layer of an all-resident run
    _, lru = _run(trace, "lru", "0.5", True, monkeypatch)
    assert 0 < lru < decode_layers                 # the hits of a partly warm cache, not the misses
    assert _run(trace, "oracle", "0.5", True, monkeypatch)[1] == 0   # prefetches after routing


def test_only_a_decision_of_the_strategys_own_is_called():
    class Plain(Strategy):
        name = "plain"
        reads = frozenset({"routing"})

    class Prefetching(Plain):
        def after_routing(self, ev, executed, s, u):
            return ()

    class Mixin:
        def after_routing(self, ev, executed, s, u):
            return ()

    class Mixed(Mixin, Plain):
        pass

    plain, pre = Plain(), Prefetching()
    assert not decides(plain, "after_routing") and not decides(plain, "before_attention")
    assert decides(pre, "after_routing") and decides(Mixed(), "after_routing")
    plain.choose = lambda ev, true, s, u: true      # set on the instance: called
    assert decides(plain, "choose")
    assert decides(object(), "choose")              # not a Strategy: assumed to decide
    assert decides(build_strategy("speculative"), "after_routing")
    assert not decides(build_strategy("lru"), "after_routing")
    wrapped = Plain()
    default = wrapped.after_routing
    wrapped.after_routing = functools.wraps(default)(lambda *a: default(*a))   # copies the mark
    assert decides(wrapped, "after_routing")
    wrapped.on_access = functools.wraps(wrapped.on_access)(lambda k, h: None)
    assert access_hook(wrapped) == wrapped.on_access    # the wrapper, not the policy's own


class Late(Strategy):
    """Takes on a prefetching `after_routing` from its second prompt on (set per request), and
    wraps its inherited `on_access` with `functools.wraps` in setup."""

    name = "late"
    reads = frozenset({"routing"})

    def setup(self, ctx):
        super().setup(ctx)
        self.accesses = 0
        inner = self.on_access

        @functools.wraps(inner)
        def counting(key, hit):
            self.accesses += 1
            inner(key, hit)

        self.on_access = counting
        self.prefetched = 0

    def begin_request(self, request):
        if request >= 1 and "after_routing" not in vars(self):
            def after_routing(ev, executed, s, u):
                self.prefetched += 1
                nxt = (ev.layer + 1) % self.ctx.moe_layers
                return [Prefetch(nxt, tuple(range(self.ctx.num_experts))[:2], "late")]
            self.after_routing = after_routing


def test_decisions_taken_on_after_setup_or_wrapped_are_called(monkeypatch):
    trace = _trace()
    with REGISTRY.registered("late", Late):
        runs = []
        for fast in (False, True):
            monkeypatch.setattr(LayerProtocol, "fast_hits", fast)
            strategy = build_strategy("late")
            real = policies.build_policy
            monkeypatch.setattr(replay_engine, "build_policy", lambda name, t=None: strategy)
            run = replay_one(trace, "late", shape=SHAPE, profile=PROFILE, budget="0.5")
            monkeypatch.setattr(replay_engine, "build_policy", real)
            runs.append((json.dumps(run.samples, sort_keys=True), strategy.accesses, strategy.prefetched))
    (slow, acc_off, pre_off), (fast, acc_on, pre_on) = runs
    decode_acts = sum(s["activations"] for s in json.loads(slow) if s["kind"] == "step")
    assert acc_off >= decode_acts > 0 and acc_on == acc_off     # the wrapper saw every access
    assert pre_off > 0 and pre_on == pre_off                    # the late after_routing ran
    assert fast == slow


def test_one_dimensional_routing_ids_are_read_flat():
    assert Routing(np.array([3, 1, 3]), np.array([0.5, 0.3, 0.2])).experts() == [3, 1]
    assert distinct(np.array([[3, 1], [1, 4]])) == [3, 1, 4]


def test_routing_ids_are_read_once_per_layer_when_hit_layer_declines(monkeypatch):
    """On CUDA each read of routing ids is a device-to-host copy in the measured path: a layer
    `hit_layer` looks at and declines (a miss) hands `route` what it read."""
    from moebench.offload import events, protocol

    reads = []
    real = events.distinct

    def counting(ids):
        reads.append(1)
        return real(ids)

    monkeypatch.setattr(events, "distinct", counting)
    monkeypatch.setattr(protocol, "distinct", counting)
    trace = _trace()
    taken = hit_layers_counted(monkeypatch, True)
    replay_one(trace, "lru", shape=SHAPE, profile=PROFILE, budget="0.25")
    assert 0 < sum(taken) < len(taken)                  # some layers taken, some declined
    assert len(reads) == trace.n_steps * SHAPE.moe_layers
