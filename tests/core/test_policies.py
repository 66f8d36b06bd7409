"""Cache policies (LRU global and per layer, LFU, Belady's MIN) and their lazy heap, torch-free.

Hand-built orders first, then hypothesis against brute-force models of each definition.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moebench.offload.cache import Candidates
from moebench.offload.policies import BeladyPolicy, CachePolicy, LazyHeap, LFUPolicy, LRUPolicy

INF = math.inf


def insert_all(policy, keys):
    for k in keys:
        policy.on_insert(k)


# ---------------------------------------------------------------------------------------------
# LRU, global
# ---------------------------------------------------------------------------------------------
def test_lru_global_evicts_least_recent_first() -> None:
    p = LRUPolicy(scope="global", n_slots=4, moe_layers=2)
    insert_all(p, [(1, 0), (0, 0), (0, 1), (1, 1)])
    every = [(1, 0), (0, 0), (0, 1), (1, 1)]
    assert p.victim(0, every) == (1, 0)
    p.on_evict((1, 0))
    assert p.victim(0, every[1:]) == (0, 0)


def test_lru_global_access_refreshes() -> None:
    p = LRUPolicy(scope="global", n_slots=3, moe_layers=1)
    insert_all(p, [(0, 0), (0, 1), (0, 2)])
    p.on_access((0, 0), True)
    assert p.victim(0, [(0, 0), (0, 1), (0, 2)]) == (0, 1)
    p.on_access((0, 1), False)                         # a miss counts as a use too
    assert p.victim(0, [(0, 0), (0, 1), (0, 2)]) == (0, 2)


def test_lru_global_skips_non_candidates() -> None:
    p = LRUPolicy(scope="global", n_slots=3, moe_layers=1)
    insert_all(p, [(0, 0), (0, 1), (0, 2)])
    assert p.victim(0, [(0, 2), (0, 1)]) == (0, 1)
    resident = {(0, 0): 0, (0, 1): 1, (0, 2): 2}
    assert p.victim(0, Candidates(resident, {(0, 0)})) == (0, 1)


# ---------------------------------------------------------------------------------------------
# LRU, per layer
# ---------------------------------------------------------------------------------------------
def test_lru_layer_quotas_split_the_slots() -> None:
    assert LRUPolicy(scope="layer", n_slots=4, moe_layers=2).quota == {0: 2, 1: 2}
    assert LRUPolicy(scope="layer", n_slots=5, moe_layers=2).quota == {0: 3, 1: 2}
    assert LRUPolicy(scope="layer", n_slots=7, moe_layers=3).quota == {0: 3, 1: 2, 2: 2}


def test_lru_layer_under_quota_evicts_from_a_layer_over_quota() -> None:
    p = LRUPolicy(scope="layer", n_slots=4, moe_layers=2)
    insert_all(p, [(1, 0), (0, 0), (0, 1), (0, 2)])   # layer 0 holds 3 of its 2; (1, 0) oldest
    every = [(1, 0), (0, 0), (0, 1), (0, 2)]
    assert p.victim(1, every) == (0, 0)               # global LRU would take (1, 0)
    p.on_access((0, 0), True)
    assert p.victim(1, every) == (0, 1)


def test_lru_layer_at_quota_evicts_its_own_lru() -> None:
    p = LRUPolicy(scope="layer", n_slots=4, moe_layers=2)
    insert_all(p, [(1, 0), (1, 1), (0, 0), (0, 1)])
    every = [(1, 0), (1, 1), (0, 0), (0, 1)]
    assert p.victim(0, every) == (0, 0)               # global LRU would take (1, 0)
    assert p.victim(1, every) == (1, 0)
    p.on_access((0, 0), True)
    assert p.victim(0, every) == (0, 1)
    # its own experts all locked: fall back to the global order
    assert p.victim(0, [(1, 0), (1, 1)]) == (1, 0)


def test_lru_layer_counts_follow_insert_and_evict() -> None:
    p = LRUPolicy(scope="layer", n_slots=4, moe_layers=2)
    insert_all(p, [(0, 0), (0, 1), (1, 0)])
    assert p.per_layer == {0: 2, 1: 1}
    p.on_evict((0, 0))
    p.on_evict((7, 7))                                # unknown key: nothing changes
    assert p.per_layer == {0: 1, 1: 1}
    assert list(p.order) == [(0, 1), (1, 0)]


# ---------------------------------------------------------------------------------------------
# LFU
# ---------------------------------------------------------------------------------------------
def test_lfu_evicts_least_count_first() -> None:
    p = LFUPolicy()
    a, b, c = (0, 0), (0, 1), (1, 0)
    insert_all(p, [a, b, c])
    for k, n in ((a, 2), (b, 1), (c, 3)):
        for _ in range(n):
            p.on_access(k, True)
    assert p.victim(0, [a, b, c]) == b
    assert p.victim(0, [a, c]) == a
    p.on_access(a, True)
    p.on_access(a, True)
    assert p.victim(0, [a, c]) == c                   # a: 4, c: 3


def test_lfu_ties_go_to_the_least_recent_then_the_smaller_key() -> None:
    p = LFUPolicy()
    a, b = (0, 5), (0, 3)
    insert_all(p, [a, b])
    assert p.victim(0, [a, b]) == (0, 3)              # same count, same time: smaller key
    p.on_access(a, True)
    p.on_access(b, True)
    assert p.victim(0, [a, b]) == a                   # count 1 each: a used less recently
    p.on_access(a, True)
    assert p.victim(0, [a, b]) == b


def test_lfu_counts_persist_across_eviction() -> None:
    p = LFUPolicy()
    a, b = (0, 0), (0, 1)
    insert_all(p, [a, b])
    for _ in range(3):
        p.on_access(a, True)
    p.on_access(b, True)
    p.on_evict(a)
    assert p.victim(0, [b]) == b
    p.on_insert(a)                                    # back: its 3 uses are remembered
    assert p.count[a] == 3
    assert p.victim(0, [a, b]) == b


def test_lfu_never_returns_an_evicted_key_from_its_heap() -> None:
    p = LFUPolicy()
    a, b = (0, 0), (0, 1)
    insert_all(p, [a, b])
    p.on_access(b, True)
    p.on_evict(a)
    # a stale heap entry for a (count 0) must not win over a resident candidate
    assert p.victim(0, [b]) == b


# ---------------------------------------------------------------------------------------------
# Belady
# ---------------------------------------------------------------------------------------------
def next_use_from(uses: dict) -> callable:
    def next_use(key, t):
        return min((p for p in uses.get(key, ()) if p >= t), default=INF)
    return next_use


def test_belady_evicts_the_furthest_next_use_and_never_used_again_first() -> None:
    uses = {(0, 1): [3, 7], (0, 2): [5], (0, 3): [], (0, 4): [1]}
    p = BeladyPolicy(next_use_from(uses))
    insert_all(p, [(0, 1), (0, 2), (0, 3), (0, 4)])
    assert p.nu == {(0, 1): 3, (0, 2): 5, (0, 3): INF, (0, 4): 1}
    every = [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert p.victim(0, every) == (0, 3)               # never used again beats any
    assert p.victim(0, [(0, 1), (0, 2), (0, 4)]) == (0, 2)
    assert p.victim(0, [(0, 1), (0, 4)]) == (0, 1)


def test_belady_ties_go_to_the_larger_key() -> None:
    uses = {(0, 4): [5], (1, 0): [5], (0, 9): [5], (0, 1): [], (2, 0): []}
    p = BeladyPolicy(next_use_from(uses))
    insert_all(p, list(uses))
    assert p.victim(0, [(0, 4), (1, 0), (0, 9)]) == (1, 0)
    assert p.victim(0, [(0, 4), (0, 9)]) == (0, 9)
    assert p.victim(0, [(0, 1), (2, 0), (1, 0)]) == (2, 0)   # both never: larger key


def test_belady_respects_now() -> None:
    uses = {(0, 1): [4, 9], (0, 2): [6], (0, 3): [4, 5]}
    p = BeladyPolicy(next_use_from(uses))
    p.now = 4
    insert_all(p, [(0, 1), (0, 2), (0, 3)])           # inserted at 4: the use at 4 counts
    assert p.nu == {(0, 1): 4, (0, 2): 6, (0, 3): 4}
    assert p.victim(0, [(0, 1), (0, 2), (0, 3)]) == (0, 2)
    p.on_access((0, 1), True)                         # used at 4: next use after it, 9
    p.on_access((0, 3), True)                         # -> 5
    assert p.nu[(0, 1)] == 9 and p.nu[(0, 3)] == 5
    assert p.victim(0, [(0, 1), (0, 2), (0, 3)]) == (0, 1)
    p.now = 9
    p.on_access((0, 1), True)                         # nothing after 9
    assert p.nu[(0, 1)] == INF
    p.on_evict((0, 2))
    assert (0, 2) not in p.nu
    assert p.victim(0, [(0, 1), (0, 3)]) == (0, 1)


def test_belady_through_the_candidates_view() -> None:
    uses = {(0, 1): [3], (0, 2): [9], (0, 3): []}
    p = BeladyPolicy(next_use_from(uses))
    insert_all(p, list(uses))
    resident = {k: i for i, k in enumerate(uses)}
    assert p.victim(0, Candidates(resident, {(0, 3)})) == (0, 2)
    assert p.victim(0, Candidates(resident, set())) == (0, 3)


def test_base_policy_takes_the_first_candidate() -> None:
    assert CachePolicy().victim(0, [(1, 2), (0, 0)]) == (1, 2)


# ---------------------------------------------------------------------------------------------
# LazyHeap against a brute-force min / max
# ---------------------------------------------------------------------------------------------
KEYS = [(m, e) for m in range(3) for e in range(4)]
key_st = st.sampled_from(KEYS)
heap_op = st.one_of(
    st.tuples(st.just("set"), key_st, st.tuples(st.integers(-3, 3), st.integers(0, 3))),
    st.tuples(st.just("kill"), key_st),
    st.tuples(st.just("best"), st.sets(key_st)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, -1]), st.lists(heap_op, min_size=1, max_size=40))
def test_lazy_heap_matches_brute_force(sign: int, ops: list) -> None:
    prio: dict = {}
    live: set = set()
    heap = LazyHeap(lambda k: prio[k], sign=sign)
    for op in ops:
        if op[0] == "set":
            _, k, p = op
            prio[k] = p
            live.add(k)
            heap.push(k)
        elif op[0] == "kill":
            live.discard(op[1])
        else:
            ok = op[1]
            pool = [(prio[k], k) for k in live if k in ok]
            want = None
            if pool:
                want = (min(pool) if sign > 0 else max(pool))[1]
            assert heap.best(ok.__contains__, live.__contains__) == want
            # asking again gives the same answer: only stale entries were dropped
            assert heap.best(ok.__contains__, live.__contains__) == want
            heap.sweep(live)


def test_lazy_heap_sweep_drops_stale_entries() -> None:
    prio = {(0, 0): (0,), (0, 1): (5,)}
    heap = LazyHeap(lambda k: prio[k])
    for i in range(3000):
        prio[(0, 0)] = (i,)
        heap.push((0, 0))
    heap.push((0, 1))
    heap.sweep([(0, 0), (0, 1)])
    assert len(heap.heap) == 2
    assert heap.best(lambda k: True, lambda k: True) == (0, 1)


def test_member_of_a_plain_list_builds_a_set_lazily() -> None:
    ok = LazyHeap.member_of([(0, 1), (2, 3)])
    assert ok((2, 3)) and not ok((0, 0))
    view = Candidates({(0, 1): 0, (0, 2): 1}, {(0, 2)})
    ok = LazyHeap.member_of(view)
    assert ok((0, 1)) and not ok((0, 2))


# ---------------------------------------------------------------------------------------------
# every policy: the victim is among the candidates, and is the one its definition names
# ---------------------------------------------------------------------------------------------
policy_op = st.one_of(
    st.tuples(st.just("insert"), key_st),
    st.tuples(st.just("access"), key_st),
    st.tuples(st.just("evict"), key_st),
    st.tuples(st.just("now"), st.integers(0, 12)),
    st.tuples(st.just("victim"), st.sets(key_st, min_size=1), st.booleans(), st.integers(0, 2)),
)


class Model:
    """Brute-force definitions of each policy's order, over the same calls."""

    def __init__(self, kind: str, next_use):
        self.kind, self.next_use = kind, next_use
        self.order: list = []          # LRU: least recent first
        self.count: dict = {}
        self.last: dict = {}
        self.t = 0
        self.nu: dict = {}
        self.now = 0

    def insert(self, k):
        self.order.append(k)
        self.last.setdefault(k, self.t)
        self.nu[k] = self.next_use(k, self.now)

    def access(self, k):
        self.order.remove(k)
        self.order.append(k)
        self.t += 1
        self.count[k] = self.count.get(k, 0) + 1
        self.last[k] = self.t
        self.nu[k] = self.next_use(k, self.now + 1)

    def evict(self, k):
        self.order.remove(k)
        self.nu.pop(k)

    def victim(self, cand: set):
        if self.kind == "lru":
            return next(k for k in self.order if k in cand)
        if self.kind == "lfu":
            return min(cand, key=lambda k: (self.count.get(k, 0), self.last.get(k, 0), k))
        if self.kind == "belady":
            return max(cand, key=lambda k: (self.nu[k], k))
        return None                    # lru-layer: only membership is checked


def belady_uses(key, t):
    """A fixed future: key (m, e) is used at positions congruent to m + e mod 4 (never if e == 3)."""
    m, e = key
    if e == 3:
        return INF
    r = (m + e) % 4
    return float(t + (r - t) % 4)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["lru", "lru-layer", "lfu", "belady"]),
       st.lists(policy_op, min_size=1, max_size=40))
def test_victim_is_a_candidate_and_follows_the_definition(kind: str, ops: list) -> None:
    if kind == "lru":
        policy = LRUPolicy(scope="global", n_slots=6, moe_layers=3)
    elif kind == "lru-layer":
        policy = LRUPolicy(scope="layer", n_slots=6, moe_layers=3)
    elif kind == "lfu":
        policy = LFUPolicy()
    else:
        policy = BeladyPolicy(belady_uses)
    model = Model(kind, belady_uses)
    resident: dict = {}
    for op in ops:
        if op[0] == "insert":
            if op[1] in resident:
                continue
            resident[op[1]] = len(resident)
            policy.on_insert(op[1])
            model.insert(op[1])
        elif op[0] == "access":
            if op[1] not in resident:
                continue
            policy.on_access(op[1], True)
            model.access(op[1])
        elif op[0] == "evict":
            if op[1] not in resident:
                continue
            del resident[op[1]]
            policy.on_evict(op[1])
            model.evict(op[1])
        elif op[0] == "now":
            if kind == "belady":
                policy.now = model.now = op[1]
        else:
            _, subset, as_view, layer = op
            cand = subset & set(resident)
            if not cand:
                continue
            if as_view:
                view = Candidates(resident, set(resident) - cand)
            else:
                view = sorted(cand)
            v = policy.victim(layer, view)
            assert v in cand
            want = model.victim(cand)
            if want is not None:
                assert v == want, (kind, v, want)


@pytest.mark.parametrize("kind", ["lru", "lru-layer", "lfu", "belady"])
def test_victim_of_a_single_candidate(kind: str) -> None:
    policy = {"lru": LRUPolicy(scope="global", n_slots=2, moe_layers=1),
              "lru-layer": LRUPolicy(scope="layer", n_slots=2, moe_layers=1),
              "lfu": LFUPolicy(), "belady": BeladyPolicy(belady_uses)}[kind]
    insert_all(policy, [(0, 0), (0, 1)])
    assert policy.victim(0, [(0, 1)]) == (0, 1)
