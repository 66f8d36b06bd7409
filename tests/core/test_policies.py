"""Cache policies (LRU global and per layer, LFU, LFRU, ARC, Least-Stale, Belady's MIN) and their
lazy heap, torch-free.

Hand-built orders first, then hypothesis against brute-force models of each definition (ARC:
against a transcription of the paper's pseudocode).
"""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moebench.offload.cache import Candidates
from moebench.offload.policies import (ARCPolicy, BeladyPolicy, CachePolicy, LazyHeap, LeastStalePolicy,
                                       LFRUPolicy, LFUPolicy, LRUPolicy)

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


# ---------------------------------------------------------------------------------------------
# the engine's call order, for the policies that read it (LFRU, ARC, Least-Stale)
# ---------------------------------------------------------------------------------------------
def demand(policy, resident: dict, keys: list, n_slots: int, hint: bool = True) -> list[bool]:
    """One layer's demand fetches in the engine's order (tests/core/test_cache.py checks the engine
    makes these calls): hits `on_access(k, True)`; a miss evicts `victim` among the unlocked
    residents when full, then `on_insert(k)`, `on_access(k, False)`. Returns hit per key."""
    if hint:
        policy.expect(list(keys))
    locked = set(keys)
    hits = []
    for k in keys:
        if k in resident:
            policy.on_access(k, True)
            hits.append(True)
            continue
        if len(resident) >= n_slots:
            v = policy.victim(k[0], Candidates(resident, locked))
            assert v in resident and v not in locked
            del resident[v]
            policy.on_evict(v)
        resident[k] = len(resident)
        policy.on_insert(k)
        policy.on_access(k, False)
        hits.append(False)
    return hits


# ---------------------------------------------------------------------------------------------
# LFU, counts="resident"
# ---------------------------------------------------------------------------------------------
def test_lfu_resident_counts_are_forgotten_on_eviction() -> None:
    p = LFUPolicy(counts="resident")
    a, b = (0, 0), (0, 1)
    insert_all(p, [a, b])
    for _ in range(3):
        p.on_access(a, True)
    p.on_access(b, True)
    p.on_evict(a)
    assert a not in p.count
    p.on_insert(a)
    p.on_access(a, False)                             # the access it was fetched for: count 1
    assert p.count[a] == 1
    assert p.victim(0, [a, b]) == b                   # both 1: b used less recently
    with pytest.raises(ValueError):
        LFUPolicy(counts="forever")


# ---------------------------------------------------------------------------------------------
# LFRU (vLLM PR 37190): score = freq / (clock - last + 1)
# ---------------------------------------------------------------------------------------------
def test_lfru_hand_computed_scores_and_victim() -> None:
    """One layer, 3 slots. Clock ticks once per insertion and once per hit."""
    p = LFRUPolicy(scope="layer", n_slots=3, moe_layers=1)
    res: dict = {}
    x, y, w, z = (0, 1), (0, 2), (0, 3), (0, 4)
    demand(p, res, [x], 3)                            # clock 1: x f1 l1
    demand(p, res, [y], 3)                            # clock 2: y f1 l2
    demand(p, res, [w], 3)                            # clock 3: w f1 l3
    for _ in range(3):
        demand(p, res, [x], 3)                        # clock 4..6: x f4 l6
    demand(p, res, [w], 3)                            # clock 7: w f2 l7
    for _ in range(2):
        demand(p, res, [x], 3)                        # clock 8, 9: x f6 l9
    assert p.clock[0] == 9 and p.freq == {x: 6, y: 1, w: 2}
    assert p.last == {x: 9, y: 2, w: 7}
    assert p.score(x) == 6 / 1 and p.score(y) == 1 / 8 and p.score(w) == 2 / 3
    # y: least frequent and least recent: LFRU, LFU and LRU all take it
    assert p.victim(0, list(res)) == y
    assert demand(p, res, [z], 3) == [False]          # y out; clock 10: z f1 l10
    assert y not in p.freq                            # counters dropped on eviction
    for _ in range(8):
        demand(p, res, [x], 3)                        # clock 11..18: x f14 l18
    # now w: 2/(18-7+1) = 0.167, z: 1/(18-10+1) = 0.111: z is evicted, though w is older (LRU
    # would take w) and z's count is the lowest only by one (LFU would take z as well)
    assert p.score(w) == 2 / 12 and p.score(z) == 1 / 9
    assert p.victim(0, list(res)) == z
    for _ in range(20):
        demand(p, res, [z], 3)                        # clock 19..38: z f21 l38
    # w: 2/32 = 0.0625 < x: 14/21: w goes, though x is older than z and less recent than z
    assert p.victim(0, list(res)) == w
    assert p.victim(0, [x, z]) == x                   # x: 14/21 = 0.67 < z: 21/1


def test_lfru_victim_differs_from_lru_and_lfu() -> None:
    """a: 4 uses long ago, b: 1 use recently, c: 2 uses at middle age. LRU takes a, LFU takes b,
    LFRU takes c (lowest freq/age)."""
    p = LFRUPolicy(scope="global", n_slots=4, moe_layers=1)
    res: dict = {}
    a, b, c, d = (0, 0), (0, 1), (0, 2), (0, 3)
    demand(p, res, [a], 4)                            # 1
    for _ in range(3):
        demand(p, res, [a], 4)                        # 2..4: a f4 l4
    demand(p, res, [c], 4)                            # 5
    demand(p, res, [c], 4)                            # 6: c f2 l6
    demand(p, res, [d], 4)                            # 7
    for _ in range(20):
        demand(p, res, [d], 4)                        # 8..27: d f21 l27
    demand(p, res, [b], 4)                            # 28: b f1 l28
    demand(p, res, [d], 4)                            # 29
    scores = {k: p.score(k) for k in (a, b, c)}
    assert scores == {a: 4 / 26, b: 1 / 2, c: 2 / 24}
    assert p.victim(0, [a, b, c]) == c


def test_lfru_ties_go_to_the_first_loaded() -> None:
    """Equal scores (1/2 == 2/4) go to the expert loaded first, as the PR's scan in load order."""
    p = LFRUPolicy(scope="global", n_slots=4, moe_layers=1)
    res: dict = {}
    x, y, z = (0, 5), (0, 2), (0, 0)
    demand(p, res, [y], 4)                            # 1: y f1 l1
    demand(p, res, [x], 4)                            # 2: x f1 l2
    demand(p, res, [y], 4)                            # 3: y f2 l3
    demand(p, res, [z], 4)                            # 4: z
    demand(p, res, [z], 4)                            # 5: z
    demand(p, res, [z], 4)                            # 6: z; x = 1/5, y = 2/4
    assert p.score(x) == 1 / 5 and p.score(y) == 2 / 4
    assert p.victim(0, [x, y]) == x
    q = LFRUPolicy(scope="global", n_slots=4, moe_layers=1)
    res = {}
    demand(q, res, [y], 4)                            # 1: y f1 l1
    demand(q, res, [y], 4)                            # 2: y f2 l2
    demand(q, res, [x], 4)                            # 3: x f1 l3
    demand(q, res, [z], 4)                            # 4: z; x = 1/2, y = 2/3
    assert q.victim(0, [x, y]) == x
    demand(q, res, [z], 4)                            # 5: x = 1/3, y = 2/4
    assert q.victim(0, [x, y]) == x
    # a tie: set the counters to x f1 l5, y f2 l3 at clock 6 (1/2 == 2/4)
    for k, f, last in ((x, 1, 5), (y, 2, 3)):
        del q.groups[-1][q.freq[k]][k]
        q.freq[k], q.last[k] = f, last
        q.groups[-1].setdefault(f, {})[k] = None
    q.groups[-1] = {f: dict(sorted(g.items(), key=lambda kv: q.last[kv[0]])) for f, g in q.groups[-1].items() if g}
    q.clock[-1] = 6
    assert q.score(x) == q.score(y) == 0.5
    assert q.loaded[y] < q.loaded[x]
    assert q.victim(0, [x, y]) == y                   # y was loaded first


def test_lfru_layer_scope_clocks_are_per_layer() -> None:
    p = LFRUPolicy(scope="layer", n_slots=4, moe_layers=2)
    res: dict = {}
    demand(p, res, [(0, 0), (0, 1)], 4)               # layer 0 clock 2
    demand(p, res, [(1, 0), (1, 1)], 4)               # layer 1 clock 2
    for _ in range(10):
        demand(p, res, [(1, 0)], 4)                   # layer 1 clock 12; layer 0 untouched
    assert p.clock == {0: 2, 1: 12}
    assert p.score((0, 0)) == 1 / 2 and p.score((0, 1)) == 1 / 1
    # layer 0 at its quota (2): its own lowest score, (0, 0), not layer 1's (1, 1) at 1/11
    assert p.victim(0, list(res)) == (0, 0)
    assert p.victim(1, list(res)) == (1, 1)
    g = LFRUPolicy(scope="global", n_slots=4, moe_layers=2)
    res = {}
    demand(g, res, [(0, 0), (0, 1)], 4)
    demand(g, res, [(1, 0), (1, 1)], 4)
    for _ in range(10):
        demand(g, res, [(1, 0)], 4)
    # one clock: (0, 0) = 1/14 is the lowest everywhere
    assert g.victim(1, list(res)) == (0, 0)


def test_lfru_layer_under_quota_takes_from_a_layer_over_quota() -> None:
    p = LFRUPolicy(scope="layer", n_slots=4, moe_layers=2)
    res: dict = {}
    demand(p, res, [(0, 0), (0, 1), (0, 2)], 4)       # a prefill: layer 0 holds 3 of its 2
    demand(p, res, [(1, 0)], 4)
    demand(p, res, [(0, 1)], 4)
    demand(p, res, [(0, 2)], 4)
    assert demand(p, res, [(1, 1)], 4) == [False]     # layer 1 under quota: layer 0 gives
    assert (0, 0) not in res and (1, 0) in res
    assert p.quotas.held == {0: 2, 1: 2}


def test_lfru_counts_a_demand_miss_once() -> None:
    p = LFRUPolicy(scope="global", n_slots=2, moe_layers=1)
    p.on_insert((0, 0))
    p.on_access((0, 0), False)                        # the access it was fetched for
    assert p.freq[(0, 0)] == 1 and p.clock[-1] == 1
    p.on_access((0, 0), True)
    assert p.freq[(0, 0)] == 2 and p.clock[-1] == 2 and p.last[(0, 0)] == 2


def lfru_scan(p: LFRUPolicy, layer: int, cand: set):
    """The PR's victim scan (`for k in residents: score < best`), in load order, over the pools
    of the per-layer quota rule (global scope: one pool)."""
    order = sorted(cand, key=lambda k: p.loaded[k])
    pools = [None] if p.scope == "global" else p.quotas.pools(layer)
    for pool in pools:
        best, best_score = None, math.inf
        for k in order:
            if pool is not None and k[0] not in pool:
                continue
            s = p.freq[k] / (p.clock[p._domain(k)] - p.last[k] + 1)
            if s < best_score:
                best, best_score = k, s
        if best is not None:
            return best
    return None


lfru_op = st.one_of(
    st.tuples(st.just("layer"), st.lists(key_st, min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("victim"), st.sets(key_st, min_size=1), st.integers(0, 2)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["layer", "global"]), st.integers(3, 8), st.lists(lfru_op, min_size=1, max_size=40))
def test_lfru_victim_is_the_prs_scan(scope: str, n_slots: int, ops: list) -> None:
    p = LFRUPolicy(scope=scope, n_slots=n_slots, moe_layers=3)
    res: dict = {}
    for op in ops:
        if op[0] == "layer":
            keys = [(op[1][0][0], e) for _, e in op[1]]   # one layer's experts
            keys = list(dict.fromkeys(keys))
            demand(p, res, keys, n_slots)
        else:
            cand = op[1] & set(res)
            if not cand:
                continue
            view = Candidates(res, set(res) - cand)
            assert p.victim(op[2], view) == lfru_scan(p, op[2], cand)


# ---------------------------------------------------------------------------------------------
# ARC (Megiddo & Modha, FAST 2003)
# ---------------------------------------------------------------------------------------------
class PaperARC:
    """A transcription of the paper's Fig. 4 pseudocode (lists LRU first). `request` returns hit."""

    def __init__(self, c: int):
        self.c, self.p = c, 0.0
        self.t1: list = []
        self.t2: list = []
        self.b1: list = []
        self.b2: list = []

    def replace(self, x) -> None:
        if self.t1 and ((x in self.b2 and len(self.t1) == self.p) or len(self.t1) > self.p):
            self.b1.append(self.t1.pop(0))
        else:
            self.b2.append(self.t2.pop(0))

    def request(self, x) -> bool:
        c = self.c
        if x in self.t1 or x in self.t2:                          # case I
            (self.t1 if x in self.t1 else self.t2).remove(x)
            self.t2.append(x)
            return True
        if x in self.b1:                                          # case II
            d = 1.0 if len(self.b1) >= len(self.b2) else len(self.b2) / len(self.b1)
            self.p = min(self.p + d, float(c))
            self.replace(x)
            self.b1.remove(x)
            self.t2.append(x)
            return False
        if x in self.b2:                                          # case III
            d = 1.0 if len(self.b2) >= len(self.b1) else len(self.b1) / len(self.b2)
            self.p = max(self.p - d, 0.0)
            self.replace(x)
            self.b2.remove(x)
            self.t2.append(x)
            return False
        l1 = len(self.t1) + len(self.b1)                          # case IV
        total = l1 + len(self.t2) + len(self.b2)
        if l1 == c:
            if len(self.t1) < c:
                self.b1.pop(0)
                self.replace(x)
            else:
                self.t1.pop(0)
        elif total >= c:
            if total == 2 * c:
                self.b2.pop(0)
            self.replace(x)
        self.t1.append(x)
        return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 5), st.lists(st.integers(0, 9), min_size=1, max_size=120))
def test_arc_is_the_papers_algorithm_access_for_access(c: int, seq: list) -> None:
    paper, p = PaperARC(c), ARCPolicy(n_slots=c)
    res: dict = {}
    for e in seq:
        want = paper.request((0, e))
        assert demand(p, res, [(0, e)], c) == [want]
        assert list(p.t1) == paper.t1 and list(p.t2) == paper.t2
        assert list(p.b1) == paper.b1 and list(p.b2) == paper.b2
        assert p.p == paper.p
        assert set(res) == set(paper.t1) | set(paper.t2)


def test_arc_p_grows_on_a_b1_ghost_hit_and_shrinks_on_a_b2_ghost_hit() -> None:
    c = 2
    p = ARCPolicy(n_slots=c)
    res: dict = {}
    a, b, x = (0, 0), (0, 1), (0, 2)
    demand(p, res, [a], c)
    demand(p, res, [a], c)                            # second use: a -> T2
    demand(p, res, [b], c)                            # T1 = [b], T2 = [a]
    demand(p, res, [x], c)                            # |T1| = 1 > p = 0: b -> B1
    assert list(p.t1) == [x] and list(p.t2) == [a] and list(p.b1) == [b] and p.p == 0
    assert demand(p, res, [b], c) == [False]          # B1 ghost hit: p += 1 (|B1| >= |B2|)
    assert p.p == 1
    # REPLACE with p = 1: |T1| = 1 is not > p, so T2's LRU (a) goes to B2; b enters T2
    assert list(p.t1) == [x] and list(p.t2) == [b] and list(p.b2) == [a] and not p.b1
    assert demand(p, res, [a], c) == [False]          # B2 ghost hit: p -= 1
    assert p.p == 0
    assert list(p.t1) == [] and list(p.t2) == [b, a] and list(p.b1) == [x]
    # a full T1 (|T1| = c, B1 empty) loses its LRU outright, as the paper's case IV(A)
    q = ARCPolicy(n_slots=2)
    res = {}
    for e in (0, 1, 2):
        demand(q, res, [(0, e)], 2)
    assert list(q.t1) == [(0, 1), (0, 2)] and not q.b1 and not q.b2
    # the step is |B2| / |B1| when B1 is the shorter list
    q = ARCPolicy(n_slots=4)
    q.b1.update({(1, 0): None})
    q.b2.update({(1, 1): None, (1, 2): None, (1, 3): None})
    q._adapt((1, 0))
    assert q.p == 3.0


def test_arc_never_evicts_a_locked_expert_and_falls_back_to_the_other_list() -> None:
    p = ARCPolicy(n_slots=3)
    res: dict = {}
    demand(p, res, [(0, 0)], 3)
    demand(p, res, [(0, 0)], 3)                       # (0,0) in T2
    demand(p, res, [(1, 0), (1, 1)], 3)               # T1 = [(1,0), (1,1)]
    # layer 1 needs (1, 2): T1 preferred (|T1| = 2 > p = 0), but all of T1 is locked
    hits = demand(p, res, [(1, 0), (1, 1), (1, 2)], 3)
    assert hits == [True, True, False]
    assert (0, 0) not in res and (0, 0) in p.b2


def test_arc_without_the_hint_adapts_at_insertion() -> None:
    """Same sequence as above, no `expect`: the B1 ghost hit adapts p only at `on_insert`, after
    REPLACE chose with the old p = 0 (|T1| = 1 > 0: x goes instead of a)."""
    p = ARCPolicy(n_slots=2)
    res: dict = {}
    for e in (0, 0, 1, 2):
        demand(p, res, [(0, e)], 2, hint=False)
    demand(p, res, [(0, 1)], 2, hint=False)
    assert p.p == 1
    assert list(p.t1) == [] and list(p.t2) == [(0, 0), (0, 1)] and list(p.b1) == [(0, 2)]


# ---------------------------------------------------------------------------------------------
# Least-Stale (SpecMD): order="cycle" (least stale layer first) and order="tiers" (tinyserve)
# ---------------------------------------------------------------------------------------------
def test_least_stale_cycle_evicts_the_layer_that_ran_most_recently() -> None:
    p = LeastStalePolicy(order="cycle", moe_layers=4)
    res: dict = {}
    for m in range(4):
        p.at_layer(m)
        demand(p, res, [(m, 0), (m, 1)], 8)
    assert p.cycle_order(1) == [1, 0, 3, 2]
    p.at_layer(1)                                     # layer 1 runs, (1, 0) executes
    every = [k for k in res if k != (1, 0)]
    assert p.victim(1, every) == (1, 1)               # its own unused expert: a cycle away
    rest = [k for k in every if k[0] != 1]
    assert p.victim(1, rest) == (0, 0)                # then layer 0 (ran just before), LRU first
    assert p.victim(1, [k for k in rest if k[0] != 0]) == (3, 0)   # layer 3 before layer 2
    assert p.victim(1, [(2, 1), (2, 0)]) == (2, 0)    # layer 2, the next to run, last
    demand(p, res, [(2, 0)], 8)                       # a use moves it to its layer's MRU end
    assert p.victim(1, [(2, 1), (2, 0)]) == (2, 1)
    # without at_layer: the layer of the expert being fetched is the running one
    q = LeastStalePolicy(order="cycle", moe_layers=4)
    insert_all(q, [(0, 0), (2, 0), (3, 0)])
    assert q.victim(3, [(0, 0), (2, 0)]) == (2, 0)
    assert q.victim(0, [(0, 0), (2, 0), (3, 0)]) == (0, 0)
    with pytest.raises(ValueError):
        LeastStalePolicy(order="lifo")


def test_least_stale_cycle_beats_lru_on_a_hand_made_cycle() -> None:
    """Two layers, top-1, 3 slots; each layer alternates two experts. LRU misses every access (a
    cyclic pattern one larger than the cache). Least-Stale, hand-counted: step 0 misses both;
    step 1 misses both (layer 1 evicts its own unused (1,0)); from step 2 on layer 0 hits (both
    its experts stay) and layer 1 misses, evicting its other expert: one hit per step."""
    seq = [((0, t % 2), (1, t % 2)) for t in range(8)]

    def run(policy) -> list[int]:
        res: dict = {}
        hits = []
        for step in seq:
            if isinstance(policy, LeastStalePolicy):
                policy.begin_pass()
            for key in step:
                if isinstance(policy, LeastStalePolicy):
                    policy.at_layer(key[0])
                hits.append(int(demand(policy, res, [key], 3)[0]))
        return hits

    assert run(LRUPolicy(scope="global", n_slots=3, moe_layers=2)) == [0] * 16
    assert run(LeastStalePolicy(order="cycle", moe_layers=2)) == [0, 0, 0, 0] + [1, 0] * 6
    assert run(LeastStalePolicy(order="tiers", moe_layers=2)) == [0] * 16


def test_least_stale_tiers_evicts_stale_before_fresh_fifo_in_each_tier() -> None:
    p = LeastStalePolicy(order="tiers", moe_layers=2)
    res: dict = {}
    p.begin_pass()                                    # pass 1
    demand(p, res, [(0, 3), (0, 1)], 6)
    demand(p, res, [(1, 2), (1, 0)], 6)
    p.begin_pass()                                    # pass 2: all four stale
    assert list(p.stale) == [(0, 3), (0, 1), (1, 2), (1, 0)] and not p.fresh
    demand(p, res, [(0, 1), (0, 4)], 6)               # (0,1) back to fresh, (0,4) new
    assert list(p.fresh) == [(0, 1), (0, 4)]
    every = list(res)
    assert p.victim(1, every) == (0, 3)               # oldest stale
    assert p.victim(1, [k for k in every if k != (0, 3)]) == (1, 2)
    assert p.victim(1, [(0, 1), (0, 4)]) == (0, 1)    # no stale candidate: the oldest fresh
    p.on_access((0, 1), True)                         # a fresh expert used again keeps its place
    assert list(p.fresh) == [(0, 1), (0, 4)]
    p.begin_pass()                                    # pass 3: stale = old stale, then pass 2's
    assert list(p.stale) == [(0, 3), (1, 2), (1, 0), (0, 1), (0, 4)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 8), st.lists(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=2,
                                                     unique=True), min_size=3, max_size=3),
                                   min_size=1, max_size=30))
def test_least_stale_tiers_is_global_lru_when_each_expert_runs_once_per_pass(n_slots: int,
                                                                             steps: list) -> None:
    ls, lru = LeastStalePolicy(order="tiers", moe_layers=3), LRUPolicy(scope="global", n_slots=n_slots,
                                                                     moe_layers=3)
    r1: dict = {}
    r2: dict = {}
    for step in steps:
        ls.begin_pass()
        for m, experts in enumerate(step):
            keys = [(m, e) for e in experts]
            assert demand(ls, r1, keys, n_slots) == demand(lru, r2, keys, n_slots)
            assert set(r1) == set(r2)


def test_least_stale_strategy_marks_passes_and_layers() -> None:
    from types import SimpleNamespace

    from moebench.offload.events import LayerEvent, StrategyContext
    from moebench.strategies.least_stale import LeastStaleStrategy
    from moebench.strategy import build_strategy

    s = build_strategy("least-stale", {"order": "tiers"})
    assert isinstance(s, LeastStaleStrategy)
    shape = SimpleNamespace(moe_layers=2, num_experts=4, top_k=1)
    s.setup(StrategyContext(shape=shape, n_slots=4, is_resident=lambda k: False))
    passes = []
    s.policy.begin_pass = lambda: passes.append(1)
    seen = []
    s.policy.at_layer = seen.append
    for request, step in ((-1, 0), (-1, 0), (0, 0), (0, 1)):
        for m in range(2):
            s.before_attention(LayerEvent(step=step, layer=m, phase="decode", n_tokens=1,
                                          request=request), None)
    assert len(passes) == 4                           # two warm-up prefills in a row count twice
    assert seen == [0, 1] * 4


# ---------------------------------------------------------------------------------------------
# every new policy: never a locked or non-candidate key, whatever the call sequence
# ---------------------------------------------------------------------------------------------
NEW_POLICIES = ["lfu-resident", "lfru", "lfru-global", "arc", "least-stale", "least-stale-tiers"]


def make_new(kind: str):
    return {"lfu-resident": lambda: LFUPolicy(counts="resident"),
            "lfru": lambda: LFRUPolicy(scope="layer", n_slots=6, moe_layers=3),
            "lfru-global": lambda: LFRUPolicy(scope="global", n_slots=6, moe_layers=3),
            "arc": lambda: ARCPolicy(n_slots=6),
            "least-stale": lambda: LeastStalePolicy(order="cycle", moe_layers=3),
            "least-stale-tiers": lambda: LeastStalePolicy(order="tiers", moe_layers=3)}[kind]()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NEW_POLICIES), st.lists(policy_op, min_size=1, max_size=60))
def test_new_policies_victim_is_always_a_candidate(kind: str, ops: list) -> None:
    policy = make_new(kind)
    resident: dict = {}
    for op in ops:
        if op[0] == "insert":
            if op[1] in resident:
                continue
            resident[op[1]] = len(resident)
            policy.on_insert(op[1])
        elif op[0] == "access":
            if op[1] in resident:
                policy.on_access(op[1], True)
        elif op[0] == "evict":
            if op[1] in resident:
                del resident[op[1]]
                policy.on_evict(op[1])
        elif op[0] == "now":
            if isinstance(policy, LeastStalePolicy):
                policy.begin_pass()
                policy.at_layer(op[1] % 3)
            policy.expect([(op[1] % 3, e) for e in range(2)])
        else:
            _, subset, as_view, layer = op
            cand = subset & set(resident)
            if not cand:
                continue
            view = Candidates(resident, set(resident) - cand) if as_view else sorted(cand)
            assert policy.victim(layer, view) in cand


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NEW_POLICIES + ["lru", "lfu"]), st.integers(2, 7),
       st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=2, unique=True), min_size=1, max_size=60))
def test_new_policies_under_the_engine_order_keep_the_budget_and_the_locks(kind: str, n_slots: int,
                                                                           layers: list) -> None:
    policy = make_new(kind) if kind in NEW_POLICIES else (
        LRUPolicy(scope="global", n_slots=n_slots, moe_layers=3) if kind == "lru" else LFUPolicy())
    res: dict = {}
    for i, experts in enumerate(layers):
        m = i % 3
        if m == 0 and isinstance(policy, LeastStalePolicy):
            policy.begin_pass()
        if isinstance(policy, LeastStalePolicy):
            policy.at_layer(m)
        demand(policy, res, [(m, e) for e in experts], n_slots)   # asserts: victim unlocked
        assert len(res) <= n_slots
