"""`ExpertCache` and `SlotScheduler` on hand-built cases (torch-free).

The clock is a `SimTimeline` over a hand-made profile with round numbers: 1 GB/s and no latency,
so a copy of one expert (10**9 bytes) takes exactly 1.0 s and every expected stall is exact.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moebench.errors import UserError
from moebench.offload.cache import Candidates, ExpertCache, SlotScheduler
from moebench.offload.clock import SimTimeline
from moebench.offload.events import Prefetch
from moebench.offload.policies import BeladyPolicy, LFUPolicy, LRUPolicy
from moebench.offload.profile import HardwareProfile

EB = 10**9   # one expert: 1.0 s over the 1 GB/s link of PROFILE

PROFILE = HardwareProfile(name="unit", h2d_bandwidth_gbps=1.0, h2d_latency_us=0.0,
                          mem_bandwidth_gbps=1000.0, peak_tflops=1.0, launch_overhead_us=0.0,
                          mem_efficiency=1.0)


def test_profile_copy_is_exactly_one_second() -> None:
    assert PROFILE.copy_seconds(EB) == 1.0


# ---------------------------------------------------------------------------------------------
# fakes
# ---------------------------------------------------------------------------------------------
class FakeStrategy:
    """The strategy half `SlotScheduler` talks to: a victim rule and a log of the bookkeeping."""

    def __init__(self, victim=None):
        self._victim = victim or (lambda layer, cand: cand[0])
        self.log: list[tuple] = []
        self.victims: list[tuple] = []

    def victim(self, layer, candidates):
        v = self._victim(layer, candidates)
        self.victims.append((layer, v))
        return v

    def on_access(self, key, hit):
        self.log.append(("access", key, hit))

    def on_insert(self, key):
        self.log.append(("insert", key))

    def on_evict(self, key):
        self.log.append(("evict", key))


class RecordingMover:
    def __init__(self):
        self.loads: list[tuple] = []

    def load(self, key, slot):
        self.loads.append((key, slot))


class RecordingTimeline(SimTimeline):
    def __init__(self, profile):
        super().__init__(profile)
        self.tickets: list = []

    def copy(self, nbytes, do_copy=None):
        t = super().copy(nbytes, do_copy)
        self.tickets.append(t)
        return t


def newest(layer, candidates):
    """The most recently inserted candidate (the worst choice for a prefetch that did not lock)."""
    return list(candidates)[-1]


def never(layer, candidates):
    raise AssertionError("victim asked while a slot was free")


def make_sched(n_slots, victim=None, mover=None):
    cache = ExpertCache(n_slots, EB, mover=mover)
    tl = RecordingTimeline(PROFILE)
    strat = FakeStrategy(victim)
    return cache, tl, strat, SlotScheduler(cache, tl, strat)


def noop(key, unused_prefetch=False):
    pass


# ---------------------------------------------------------------------------------------------
# ExpertCache
# ---------------------------------------------------------------------------------------------
def test_empty_budget_is_refused() -> None:
    with pytest.raises(UserError):
        ExpertCache(0, EB)


def test_insert_uses_free_slots_before_asking_for_a_victim() -> None:
    cache = ExpertCache(3, 7)
    slots = [cache.insert((0, e), set(), never, noop) for e in range(3)]
    assert sorted(slots) == [0, 1, 2]
    assert cache.budget_bytes == 21 and cache.resident_bytes == 21 and cache.peak_resident == 3
    evicted = []
    slot = cache.insert((1, 0), set(), lambda layer, cand: cand[0], lambda k, _: evicted.append(k))
    assert evicted == [(0, 0)]                       # the victim's slot is reused
    assert slot == slots[0]
    assert cache.key_of[slot] == (1, 0) and not cache.is_resident((0, 0))
    assert cache.resident_bytes <= cache.budget_bytes and cache.peak_resident == 3


def test_insert_never_exceeds_the_budget() -> None:
    cache = ExpertCache(2, 5)
    for i in range(10):
        cache.insert((i % 3, i), set(), lambda layer, cand: cand[0], noop)
        assert cache.resident_bytes <= cache.budget_bytes
        assert len(cache.slot_of) + len(cache.free) == cache.n_slots
    assert cache.peak_resident == 2


def test_insert_returns_none_when_every_resident_is_locked() -> None:
    cache = ExpertCache(2, 1)
    cache.insert((0, 0), set(), never, noop)
    cache.insert((0, 1), set(), never, noop)
    before = dict(cache.slot_of)
    assert cache.insert((0, 2), {(0, 0), (0, 1)}, never, noop) is None
    assert cache.slot_of == before
    # one unlocked resident: that one goes
    assert cache.insert((0, 2), {(0, 0)}, lambda layer, cand: cand[0], noop) == before[(0, 1)]


@pytest.mark.parametrize("bad", [(0, 0), (5, 5)], ids=["locked", "not-resident"])
def test_a_victim_outside_the_candidates_is_refused(bad) -> None:
    cache = ExpertCache(2, 1)
    cache.insert((0, 0), set(), never, noop)
    cache.insert((0, 1), set(), never, noop)
    before = dict(cache.slot_of)
    evicted = []
    with pytest.raises(RuntimeError, match="invalid victim"):
        cache.insert((0, 2), {(0, 0)}, lambda layer, cand: bad, lambda k, _: evicted.append(k))
    assert cache.slot_of == before and evicted == [] and not cache.free


def test_evict_frees_the_slot_for_reuse() -> None:
    cache = ExpertCache(2, 1)
    s0 = cache.insert((0, 0), set(), never, noop)
    cache.insert((0, 1), set(), never, noop)
    cache.ticket[(0, 0)] = object()
    cache.prefetched.add((0, 0))
    cache.evict((0, 0))
    assert not cache.is_resident((0, 0)) and s0 not in cache.key_of
    assert (0, 0) not in cache.ticket and (0, 0) not in cache.prefetched
    assert cache.insert((3, 3), set(), never, noop) == s0      # no victim needed
    assert cache.key_of[s0] == (3, 3)
    cache.clear()
    assert cache.resident() == [] and sorted(cache.free) == [0, 1] and cache.resident_bytes == 0


def test_candidates_exclude_locked_keys() -> None:
    resident = {(0, 0): 0, (0, 1): 1, (1, 2): 2}
    c = Candidates(resident, {(0, 1)})
    assert list(c) == [(0, 0), (1, 2)]
    assert len(c) == 2
    assert (0, 0) in c and (1, 2) in c
    assert (0, 1) not in c and (9, 9) not in c
    assert c[0] == (0, 0) and c[1] == (1, 2)
    resident.pop((0, 0))                              # a live view, not a copy
    assert list(c) == [(1, 2)] and c[0] == (1, 2) and len(c) == 1


# ---------------------------------------------------------------------------------------------
# SlotScheduler.prepare: hit / late / miss, ordering, stalls
# ---------------------------------------------------------------------------------------------
def test_miss_then_hit() -> None:
    cache, tl, strat, sched = make_sched(4)
    out = sched.prepare(0, [0])
    assert (out.hits, out.late, out.misses) == (0, 0, 1)
    assert out.stall_s == 1.0 and out.demand_bytes == EB and tl.now == 1.0
    assert strat.log == [("insert", (0, 0)), ("access", (0, 0), False)]
    assert cache.key_of[out.slots[0]] == (0, 0)
    assert (0, 0) not in cache.ticket                 # the copy is complete once prepare returns
    strat.log.clear()
    out = sched.prepare(0, [0])
    assert (out.hits, out.late, out.misses) == (1, 0, 0)
    assert out.stall_s == 0.0 and out.demand_bytes == 0 and tl.now == 1.0
    assert strat.log == [("access", (0, 0), True)]


def test_prefetch_in_flight_is_late_and_waits_only_the_rest_of_the_copy() -> None:
    cache, tl, strat, sched = make_sched(4)
    assert sched.prefetch([Prefetch(1, (2,))], set()) == (EB, 0)   # 0.0 -> 1.0
    tl.compute(0.25)
    out = sched.prepare(1, [2])
    assert (out.hits, out.late, out.misses) == (0, 1, 0)
    assert out.stall_s == 0.75 and tl.now == 1.0
    assert out.demand_bytes == 0
    assert strat.log[-1] == ("access", (1, 2), False)
    assert sched.prefetch_used == 1


def test_prefetch_complete_is_a_hit() -> None:
    cache, tl, strat, sched = make_sched(4)
    sched.prefetch([Prefetch(1, (3,))], set())
    tl.compute(1.0)                                   # exactly when the copy lands: ready
    out = sched.prepare(1, [3])
    assert (out.hits, out.late, out.misses) == (1, 0, 0) and out.stall_s == 0.0
    assert strat.log[-1] == ("access", (1, 3), True)
    assert sched.prefetch_used == 1 and sched.layer_counts[1]["used"] == 1


def test_a_demand_copy_queues_behind_a_copy_already_on_the_engine() -> None:
    cache, tl, strat, sched = make_sched(4)
    sched.prefetch([Prefetch(1, (0,))], set())        # copy engine busy until 1.0
    out = sched.prepare(0, [0])
    assert out.misses == 1 and out.stall_s == 2.0 and tl.now == 2.0


def test_demand_fetches_are_issued_before_the_layers_prefetches() -> None:
    mover = RecordingMover()
    cache, tl, strat, sched = make_sched(4, mover=mover)
    out = sched.prepare(0, [0, 1], [Prefetch(1, (0, 1))])
    assert [k for k, _ in mover.loads] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    done = {k: t.done_at for (k, _), t in zip(mover.loads, tl.tickets)}
    assert done == {(0, 0): 1.0, (0, 1): 2.0, (1, 0): 3.0, (1, 1): 4.0}
    assert max(done[(0, 0)], done[(0, 1)]) < min(done[(1, 0)], done[(1, 1)])
    assert out.stall_s == 2.0 and tl.now == 2.0       # the layer waits for its own copies only
    assert out.misses == 2 and out.demand_bytes == 2 * EB and out.prefetch_bytes == 2 * EB
    assert cache.ticket[(1, 0)].done_at == 3.0 and cache.ticket[(1, 1)].done_at == 4.0
    # the mover was given the slot the cache assigned
    assert all(cache.slot_of[k] == s for k, s in mover.loads)


# ---------------------------------------------------------------------------------------------
# SlotScheduler.prefetch
# ---------------------------------------------------------------------------------------------
def test_prefetch_skips_resident_keys() -> None:
    cache, tl, strat, sched = make_sched(4)
    sched.prepare(1, [0])
    n_tickets = len(tl.tickets)
    assert sched.prefetch([Prefetch(1, (0, 1)), Prefetch(1, (1,))], set()) == (EB, 0)
    assert len(tl.tickets) == n_tickets + 1
    assert sched.prefetch_issued == 1 and sched.layer_counts[1]["issued"] == 1
    assert cache.prefetched == {(1, 1)}               # the demand-fetched (1, 0) is not "prefetched"


def test_prefetch_locks_what_it_inserted() -> None:
    # the victim rule picks the newest candidate: a prefetch that did not lock its own insertions
    # would evict (1, 0) to make room for (1, 1)
    cache, tl, strat, sched = make_sched(2, victim=newest)
    sched.prepare(0, [0, 1])
    assert sched.prefetch([Prefetch(1, (0, 1))], set()) == (2 * EB, 0)
    assert set(cache.slot_of) == {(1, 0), (1, 1)}
    assert [v for _, v in strat.victims] == [(0, 1), (0, 0)]


def test_prefetch_respects_the_callers_locks_and_drops_what_has_no_slot() -> None:
    cache, tl, strat, sched = make_sched(2, victim=newest)
    sched.prepare(0, [0, 1])
    assert sched.prefetch([Prefetch(1, (0, 1))], {(0, 0)}) == (EB, 1)
    assert set(cache.slot_of) == {(0, 0), (1, 0)}
    assert sched.prefetch_issued == 1


def test_prepare_counts_dropped_prefetches() -> None:
    cache, tl, strat, sched = make_sched(2)
    out = sched.prepare(0, [0, 1], [Prefetch(1, (0, 2))])
    assert out.dropped_prefetches == 2 and out.prefetch_bytes == 0
    assert sched.prefetch_issued == 0 and set(cache.slot_of) == {(0, 0), (0, 1)}


def test_prefetch_used_is_counted_once() -> None:
    cache, tl, strat, sched = make_sched(4)
    sched.prefetch([Prefetch(1, (0,))], set())
    sched.prepare(1, [0])
    sched.prepare(1, [0])
    assert sched.prefetch_used == 1 and sched.layer_counts[1]["used"] == 1
    assert (1, 0) not in cache.prefetched
    # evicted after its use: not wasted
    sched.release(1, [0])
    assert sched.wasted_bytes == 0


def test_wasted_bytes_counted_when_a_prefetched_expert_is_evicted_unused() -> None:
    cache, tl, strat, sched = make_sched(1)
    sched.prefetch([Prefetch(1, (0,))], set())
    sched.prepare(0, [0])                             # evicts the unused prefetch of (1, 0)
    assert not cache.is_resident((1, 0))
    assert sched.wasted_bytes == EB
    assert sched.layer_counts[1]["wasted_bytes"] == EB


def test_wasted_bytes_counted_when_a_prefetched_expert_is_released_unused() -> None:
    cache, tl, strat, sched = make_sched(4)
    sched.prefetch([Prefetch(1, (0, 1))], set())
    sched.prepare(1, [0])
    sched.release(1, [0, 1])
    assert sched.wasted_bytes == EB                   # (1, 1) only: (1, 0) was used
    assert sched.layer_counts[1] == {"issued": 2, "used": 1, "wasted_bytes": EB}


def test_release_drops_a_layers_experts() -> None:
    cache, tl, strat, sched = make_sched(4)
    sched.prepare(0, [0, 1])
    sched.prepare(1, [0])
    strat.log.clear()
    sched.release(0, [0, 1, 5])                       # 5 is not resident: ignored
    assert set(cache.slot_of) == {(1, 0)}
    assert len(cache.free) == 3
    assert strat.log == [("evict", (0, 0)), ("evict", (0, 1))]
    assert sched.wasted_bytes == 0
    out = sched.prepare(0, [0])
    assert out.misses == 1                            # gone, fetched again


def test_a_layer_needing_more_experts_than_slots_is_a_user_error() -> None:
    cache, tl, strat, sched = make_sched(2)
    with pytest.raises(UserError, match="raise --cache-budget"):
        sched.prepare(0, [0, 1, 2])
    assert cache.resident() == [] and tl.tickets == []


def test_exactly_as_many_experts_as_slots_fit() -> None:
    cache, tl, strat, sched = make_sched(2, victim=newest)
    sched.prepare(1, [5])
    out = sched.prepare(0, [0, 1])
    assert out.misses == 2 and set(cache.slot_of) == {(0, 0), (0, 1)}


# ---------------------------------------------------------------------------------------------
# property: the budget holds and every executed expert is resident when prepare returns
# ---------------------------------------------------------------------------------------------
@st.composite
def schedules(draw: st.DrawFn) -> tuple:
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 6))
    k = draw(st.integers(1, min(3, experts)))
    n_slots = draw(st.integers(k, layers * experts))
    policy = draw(st.sampled_from(["lru", "lru-layer", "lfu", "belady", "random"]))
    expert_ids = st.integers(0, experts - 1)
    layer_ids = st.integers(0, layers - 1)
    requests = st.lists(st.tuples(layer_ids, st.lists(expert_ids, max_size=3)), max_size=3)
    op = st.one_of(
        st.tuples(st.just("prepare"), layer_ids,
                  st.lists(expert_ids, min_size=1, max_size=k, unique=True), requests),
        st.tuples(st.just("prefetch"), requests),
        st.tuples(st.just("compute"), st.sampled_from([0.0, 0.5, 1.0, 2.5])),
        st.tuples(st.just("release"), layer_ids),
    )
    ops = draw(st.lists(op, min_size=1, max_size=25))
    seed = draw(st.integers(0, 2**16))
    return layers, experts, k, n_slots, policy, ops, seed


class PolicyStrategy:
    def __init__(self, policy):
        self.policy = policy

    def victim(self, layer, candidates):
        v = self.policy.victim(layer, candidates)
        assert v in candidates
        return v

    def on_access(self, key, hit):
        self.policy.on_access(key, hit)

    def on_insert(self, key):
        self.policy.on_insert(key)

    def on_evict(self, key):
        self.policy.on_evict(key)


class RandomVictim:
    def __init__(self, seed):
        import random
        self.rng = random.Random(seed)

    def victim(self, layer, candidates):
        return self.rng.choice(list(candidates))

    def on_access(self, key, hit):
        pass

    def on_insert(self, key):
        pass

    def on_evict(self, key):
        pass


def check_cache(cache: ExpertCache) -> None:
    assert cache.resident_bytes <= cache.budget_bytes
    assert cache.peak_resident <= cache.n_slots
    assert len(cache.slot_of) == len(cache.key_of)
    assert all(cache.key_of[s] == k for k, s in cache.slot_of.items())
    assert not set(cache.free) & set(cache.key_of)
    assert len(cache.free) + len(cache.slot_of) == cache.n_slots
    assert sorted(cache.free + list(cache.key_of)) == list(range(cache.n_slots))
    assert cache.prefetched <= set(cache.slot_of)
    assert set(cache.ticket) <= set(cache.slot_of)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules())
def test_budget_holds_and_executed_experts_are_resident(case: tuple) -> None:
    layers, experts, k, n_slots, policy, ops, seed = case
    if policy == "lru":
        strat = PolicyStrategy(LRUPolicy(scope="global", n_slots=n_slots, moe_layers=layers))
    elif policy == "lru-layer":
        strat = PolicyStrategy(LRUPolicy(scope="layer", n_slots=n_slots, moe_layers=layers))
    elif policy == "lfu":
        strat = PolicyStrategy(LFUPolicy())
    elif policy == "belady":
        strat = PolicyStrategy(BeladyPolicy(lambda key, t: float((key[0] * 7 + key[1] * 3 + seed) % 5)))
    else:
        strat = RandomVictim(seed)
    cache = ExpertCache(n_slots, EB)
    tl = SimTimeline(PROFILE)
    sched = SlotScheduler(cache, tl, strat)
    for op in ops:
        if op[0] == "prepare":
            _, layer, ids, reqs = op
            out = sched.prepare(layer, ids, [Prefetch(m, tuple(es)) for m, es in reqs])
            assert out.hits + out.late + out.misses == len(ids)
            assert out.demand_bytes == out.misses * EB
            assert set(out.slots) == set(ids)
            assert len(set(out.slots.values())) == len(ids)
            for e in ids:
                assert cache.is_resident((layer, e))
                assert cache.key_of[out.slots[e]] == (layer, e)
                assert (layer, e) not in cache.ticket     # complete: compute may read it
        elif op[0] == "prefetch":
            nbytes, dropped = sched.prefetch([Prefetch(m, tuple(es)) for m, es in op[1]], set())
            assert nbytes % EB == 0 and dropped >= 0
        elif op[0] == "compute":
            tl.compute(op[1])
        else:
            sched.release(op[1], list(range(experts)))
            assert not any(m == op[1] for m, _ in cache.slot_of)
        check_cache(cache)
    assert sched.prefetch_used <= sched.prefetch_issued
