"""Cache (keep/evict) policies a strategy composes with: LRU (per layer or global), LFU, LFRU,
ARC, Least-Stale, Belady.

Pure bookkeeping over `ExpertKey = (layer, expert)`; the engine owns the slots and only asks
`victim(layer, candidates)` when no slot is free. `candidates` are the resident experts that
are not locked by the layer being computed (a lazy `Candidates` view: `in` is cheap, iteration
walks them). Every policy exists once here and serves live runs and replay alike.

The engine's call order for one demand miss is `victim` (only when full) -> `on_evict(victim)`
-> `on_insert(key)` -> `on_access(key, False)`; a hit is `on_access(key, True)`; a prefetch is
`victim` -> `on_evict` -> `on_insert` and, later, its first use `on_access`. The policies whose
published form makes the insertion itself the first reference (LFRU, ARC) treat a key's first
access after its insertion as that same reference ("fresh"), so a demand miss is counted once.
"""
from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from moebench.offload.cache import Candidates
from moebench.offload.events import ExpertKey

NEVER = math.inf


class CachePolicy:
    """What a strategy's `victim` / `on_access` / `on_insert` / `on_evict` delegate to."""

    def on_access(self, key: ExpertKey, hit: bool) -> None:
        """`key` is executed (`hit`: it was resident with its copy complete)."""

    def on_insert(self, key: ExpertKey) -> None:
        """`key` got a slot (a demand fetch or a prefetch)."""

    def on_evict(self, key: ExpertKey) -> None:
        """`key` lost its slot."""

    def expect(self, keys: Sequence[ExpertKey]) -> None:
        """Optional hint from a strategy, after a layer's routing: the keys the engine is about
        to demand for it, in the order it will (`executed.experts()`). A policy whose victim
        depends on the incoming key (ARC) uses it; the others ignore it."""

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        return candidates[0]


class LRUPolicy(CachePolicy):
    """Least recently used. `scope="layer"`: each MoE layer owns `n_slots // layers` slots
    (mixtral-offloading's per-layer LRU); `scope="global"`: the budget flows to the layers
    that need it."""

    def __init__(self, *, scope: str = "global", n_slots: int, moe_layers: int):
        self.scope = scope
        self.order: OrderedDict[ExpertKey, None] = OrderedDict()
        self.per_layer: dict[int, int] = {}
        base, extra = divmod(n_slots, max(1, moe_layers))
        self.quota = {layer: base + (1 if layer < extra else 0) for layer in range(moe_layers)}

    def on_access(self, key: ExpertKey, hit: bool = True) -> None:
        try:
            self.order.move_to_end(key)
        except KeyError:      # not tracked (a strategy that keeps some keys out of the order)
            pass

    def on_insert(self, key: ExpertKey) -> None:
        self.order[key] = None
        self.order.move_to_end(key)
        self.per_layer[key[0]] = self.per_layer.get(key[0], 0) + 1

    def on_evict(self, key: ExpertKey) -> None:
        if self.order.pop(key, 0) is None:
            self.per_layer[key[0]] -= 1

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        cand = candidates
        if self.scope == "layer":
            per, quota = self.per_layer, self.quota
            if per.get(layer, 0) >= quota.get(layer, 0):     # this layer is at its quota
                for k in self.order:
                    if k[0] == layer and k in cand:
                        return k
            over = {m for m, n in per.items() if n > quota.get(m, 0)}
            for k in self.order:                             # else a layer above its quota
                if k[0] in over and k in cand:
                    return k
        for k in self.order:
            if k in cand:
                return k
        return candidates[0]


class LazyHeap:
    """Candidates ordered by a priority that changes on access, without scanning them all:
    every change pushes an entry; `best(ok, live)` returns the smallest current entry (`live`
    key whose `prio(key)` still equals it) that `ok` accepts, leaving the heap as it was except
    for stale entries. `sign=-1` makes it a max-heap. Stale entries are swept when they pile up."""

    def __init__(self, prio: Any, sign: int = 1):
        self.prio, self.sign = prio, sign
        self.heap: list = []

    def _entry(self, key: ExpertKey, p: Any) -> tuple:
        return (p, key) if self.sign > 0 else (tuple(-x for x in p), (-key[0], -key[1]))

    def _decode(self, entry: tuple) -> tuple[Any, ExpertKey]:
        p, k = entry
        return (p, k) if self.sign > 0 else (tuple(-x for x in p), (-k[0], -k[1]))

    def push(self, key: ExpertKey) -> None:
        heapq.heappush(self.heap, self._entry(key, self.prio(key)))

    def best(self, ok: Any, live: Any) -> ExpertKey | None:
        held, found = [], None
        while self.heap:
            p, key = self._decode(self.heap[0])
            if not live(key) or self.prio(key) != p:
                heapq.heappop(self.heap)          # stale
                continue
            if ok(key):
                found = key
                break
            held.append(heapq.heappop(self.heap))
        for e in held:
            heapq.heappush(self.heap, e)
        return found

    @staticmethod
    def member_of(candidates: list) -> Any:
        """`k in candidates`, building the set once, and only if asked (the engine's lazy
        `Candidates` view answers `in` directly)."""
        if isinstance(candidates, Candidates):
            return candidates.__contains__
        box: list = []

        def ok(k: ExpertKey) -> bool:
            if not box:
                box.append(set(candidates))
            return k in box[0]
        return ok

    def sweep(self, keys: Any) -> None:
        if len(self.heap) > 8 * len(keys) + 1024:
            self.heap = [self._entry(k, self.prio(k)) for k in keys]
            heapq.heapify(self.heap)


class LFUPolicy(CachePolicy):
    """Least frequently used, ties to the least recently used, then the smaller key. Every
    access counts (the access a demand miss is fetched for included). `counts="persist"`
    (default): counts persist across evictions ("perfect" LFU, as in frequency-based pinning);
    `counts="resident"`: a key's count and recency are forgotten when it is evicted (in-cache
    LFU, tinyserve's `LFUPolicy`). Victims come from a lazy heap, so an eviction does not scan
    every resident expert."""

    def __init__(self, counts: str = "persist") -> None:
        if counts not in ("persist", "resident"):
            raise ValueError(f"LFUPolicy counts must be 'persist' or 'resident', not {counts!r}")
        self.counts = counts
        self.count: dict[ExpertKey, int] = {}
        self.last: dict[ExpertKey, int] = {}
        self.resident: set[ExpertKey] = set()
        self.t = 0
        self.order = LazyHeap(lambda k: (self.count.get(k, 0), self.last.get(k, 0)))

    def on_access(self, key: ExpertKey, hit: bool = True) -> None:
        self.t += 1
        self.count[key] = self.count.get(key, 0) + 1
        self.last[key] = self.t
        self.order.push(key)

    def on_insert(self, key: ExpertKey) -> None:
        self.last.setdefault(key, self.t)
        self.resident.add(key)
        self.order.push(key)
        self.order.sweep(self.last.keys())

    def on_evict(self, key: ExpertKey) -> None:
        self.resident.discard(key)
        if self.counts == "resident":
            self.count.pop(key, None)
            self.last.pop(key, None)

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        found = self.order.best(LazyHeap.member_of(candidates), self.resident.__contains__)
        if found is not None:
            return found
        return min(candidates, key=lambda k: (self.count.get(k, 0), self.last.get(k, 0), k))


class BeladyPolicy(CachePolicy):
    """Belady's MIN: evict the candidate whose next use lies furthest in the future (never used
    again beats everything; ties to the larger key). `next_use(key, t)` is the first position
    `>= t` of the run's trace that executes `key` (inf for never); the owner moves `now` to the
    position being executed before each layer's calls.

    `nu[key]` is the next use after the key's last access (or, for a prefetched key not yet used,
    from its insertion): a resident key is not accessed in between, so that is its next use at
    eviction time. Victims come from a lazy max-heap instead of a scan of every resident."""

    def __init__(self, next_use: Callable[[ExpertKey, float], float]):
        self.next_use = next_use
        self.now = 0
        self.nu: dict[ExpertKey, float] = {}
        self.order = LazyHeap(lambda k: (self.nu.get(k, -1.0),), sign=-1)

    def _set(self, key: ExpertKey, t: int) -> None:
        self.nu[key] = self.next_use(key, t)
        self.order.push(key)

    def on_access(self, key: ExpertKey, hit: bool = True) -> None:
        self._set(key, self.now + 1)

    def on_insert(self, key: ExpertKey) -> None:
        self._set(key, self.now)
        self.order.sweep(self.nu.keys())

    def on_evict(self, key: ExpertKey) -> None:
        self.nu.pop(key, None)

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        found = self.order.best(LazyHeap.member_of(candidates), lambda k: k in self.nu)
        if found is None:                        # cannot happen: every resident has an entry
            nu = self.nu
            found = max(candidates, key=lambda k: (nu.get(k, NEVER), k))
        return found


class _Quotas:
    """Per-layer slot quotas, as `LRUPolicy(scope="layer")` splits them: each MoE layer owns
    `n_slots // layers` slots (the first `n_slots % layers` layers one more), a soft bound: a
    layer at or over its quota evicts its own, one under it takes a slot from a layer over its
    quota, and only when neither has an evictable expert does the choice go cache-wide."""

    def __init__(self, n_slots: int, moe_layers: int):
        base, extra = divmod(n_slots, max(1, moe_layers))
        self.quota = {layer: base + (1 if layer < extra else 0) for layer in range(moe_layers)}
        self.held: dict[int, int] = {}

    def add(self, layer: int) -> None:
        self.held[layer] = self.held.get(layer, 0) + 1

    def remove(self, layer: int) -> None:
        self.held[layer] -= 1

    def pools(self, layer: int) -> list[list[int] | None]:
        """Layer sets to search in turn for a victim of `layer`'s fetch (None: every layer)."""
        out: list[list[int] | None] = []
        if self.held.get(layer, 0) >= self.quota.get(layer, 0):
            out.append([layer])
        over = [m for m, n in self.held.items() if n > self.quota.get(m, 0)]
        if over:
            out.append(sorted(over))
        out.append(None)
        return out


class LFRUPolicy(CachePolicy):
    """LFRU, vLLM PR 37190's `CachedWeightProvider` eviction ("frequency-weighted LRU"):
    evict the resident expert with the lowest `freq / age`, `age = clock - last + 1`.

    As the PR does it: a key enters with `freq = 1` and `last = clock` after one clock tick;
    every later hit ticks the clock once, adds 1 to `freq` and sets `last`; nothing decays; an
    evicted key's counters are dropped (it re-enters at `freq = 1`). Ties go to the key loaded
    first (the PR's scan keeps the first minimum in load order).

    `scope="layer"` (the PR: one provider per MoE layer, its own clock and `N` slots per layer):
    every layer has its own clock and a quota of the slots (`_Quotas`); the victim is the
    lowest-scored evictable expert of the layer that must give a slot (scores of different
    layers are compared, each on its own clock, only when a quota cannot be kept).
    `scope="global"` (tinyserve's `LFRUPolicy`: one cache, one clock for all layers).

    A key's first access after its insertion is the reference the insertion already counted
    (a demand miss: the PR inserts on the miss). Keys of equal `freq` sit in one insertion-ordered
    dict per (clock, freq), oldest `last` first, so a victim is the best of each group's first
    evictable key: no scan of every resident expert."""

    def __init__(self, *, scope: str = "layer", n_slots: int, moe_layers: int):
        if scope not in ("layer", "global"):
            raise ValueError(f"LFRUPolicy scope must be 'layer' or 'global', not {scope!r}")
        self.scope = scope
        self.clock: dict[int, int] = {}
        self.freq: dict[ExpertKey, int] = {}
        self.last: dict[ExpertKey, int] = {}
        self.loaded: dict[ExpertKey, int] = {}
        self.groups: dict[int, dict[int, dict[ExpertKey, None]]] = {}
        self.fresh: set[ExpertKey] = set()
        self.quotas = _Quotas(n_slots, moe_layers)
        self._loads = 0

    def _domain(self, key: ExpertKey) -> int:
        return key[0] if self.scope == "layer" else -1

    def _tick(self, d: int) -> int:
        self.clock[d] = self.clock.get(d, 0) + 1
        return self.clock[d]

    def score(self, key: ExpertKey) -> float:
        """`freq / (clock - last + 1)` of a resident key (lower is evicted first)."""
        return self.freq[key] / (self.clock[self._domain(key)] - self.last[key] + 1)

    def on_insert(self, key: ExpertKey) -> None:
        if key in self.freq:
            return
        d = self._domain(key)
        self.freq[key] = 1
        self.last[key] = self._tick(d)
        self._loads += 1
        self.loaded[key] = self._loads
        self.groups.setdefault(d, {}).setdefault(1, {})[key] = None
        self.fresh.add(key)
        self.quotas.add(key[0])

    def on_access(self, key: ExpertKey, hit: bool = True) -> None:
        if key in self.fresh:
            self.fresh.discard(key)
            return
        f = self.freq.get(key)
        if f is None:
            return
        d = self._domain(key)
        groups = self.groups[d]
        del groups[f][key]
        if not groups[f]:
            del groups[f]
        self.freq[key] = f + 1
        self.last[key] = self._tick(d)
        groups.setdefault(f + 1, {})[key] = None

    def on_evict(self, key: ExpertKey) -> None:
        f = self.freq.pop(key, None)
        if f is None:
            return
        groups = self.groups[self._domain(key)]
        del groups[f][key]
        if not groups[f]:
            del groups[f]
        del self.last[key], self.loaded[key]
        self.fresh.discard(key)
        self.quotas.remove(key[0])

    def _best(self, domains: Any, ok: Any) -> ExpertKey | None:
        best, best_rank = None, None
        for d in domains:
            clock = self.clock.get(d, 0)
            for f, keys in self.groups.get(d, {}).items():
                for k in keys:                       # oldest `last` first: the group's minimum
                    if ok(k):
                        rank = (f / (clock - self.last[k] + 1), self.loaded[k])
                        if best_rank is None or rank < best_rank:
                            best, best_rank = k, rank
                        break
        return best

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        ok = LazyHeap.member_of(candidates)
        if self.scope == "global":
            found = self._best([-1], ok)
        else:
            found = None
            for pool in self.quotas.pools(layer):
                domains = pool if pool is not None else list(self.groups)
                found = self._best(domains, ok)
                if found is not None:
                    break
        if found is not None:
            return found
        return candidates[0]                         # untracked residents only (cannot happen)


class ARCPolicy(CachePolicy):
    """ARC, the Adaptive Replacement Cache (Megiddo & Modha, FAST 2003), for `n_slots` experts:
    resident lists T1 (seen once since entering) and T2 (seen again), ghost lists B1 / B2 of
    keys recently evicted from T1 / T2, and a target size `p` for T1 that a hit in B1 raises by
    `max(1, |B2| / |B1|)` and a hit in B2 lowers by `max(1, |B1| / |B2|)` (clamped to `[0, c]`).

    Adapted to moebench's engine, which decides insertion (every demand fetch and prefetch gets
    a slot, so there is no "do not cache" case) and asks only for a victim among the resident,
    unlocked experts:
    - REPLACE picks the list as the paper does (T1 when `|T1| > p`, or `|T1| = p` and the
      incoming key is in B2; else T2) and evicts that list's least recently used *candidate*;
      when every expert of that list is locked, the other list's. The evicted key enters B1 or
      B2 (MRU end); after each insertion the ghosts are trimmed to the paper's bounds
      (`|T1| + |B1| <= c`, all four `<= 2c`, B1's LRU first for the first bound, B2's for the
      second), which reproduces the paper's case IV deletions.
    - The incoming key is known to `victim` only through `expect(keys)` (the ARC strategy passes
      each layer's executed experts after routing): a ghost hit then adapts `p` before the
      victim is chosen, exactly as in the paper. Without the hint (a prefetch, or a plugin that
      does not call it) the adaptation happens at `on_insert`, after the victim was chosen.
    - A key enters T1 (or T2 from a ghost list) at `on_insert`; its first access after that is
      the reference that brought it in (no promotion); every later access moves it to T2's MRU
      end, as a hit does in the paper. A prefetched expert therefore enters like a miss and
      is promoted on its second use.
    With single-expert layers and no locking this is the paper's algorithm, access for access
    (tests/core/test_policies.py checks it against a transcription of the paper's pseudocode)."""

    def __init__(self, *, n_slots: int):
        self.c = n_slots
        self.p = 0.0
        self.t1: OrderedDict[ExpertKey, None] = OrderedDict()
        self.t2: OrderedDict[ExpertKey, None] = OrderedDict()
        self.b1: OrderedDict[ExpertKey, None] = OrderedDict()
        self.b2: OrderedDict[ExpertKey, None] = OrderedDict()
        self.fresh: set[ExpertKey] = set()
        self.expected: list[ExpertKey] = []
        self.adapted: set[ExpertKey] = set()     # ghost hits whose adaptation `victim` did

    def expect(self, keys: Sequence[ExpertKey]) -> None:
        self.expected = list(keys)
        self.adapted.clear()

    def _incoming(self, layer: int) -> ExpertKey | None:
        for k in self.expected:
            if k not in self.t1 and k not in self.t2:
                return k if k[0] == layer else None
        return None

    def _adapt(self, key: ExpertKey) -> None:
        n1, n2 = len(self.b1), len(self.b2)
        if key in self.b1:
            self.p = min(float(self.c), self.p + (1.0 if n1 >= n2 else n2 / n1))
        elif key in self.b2:
            self.p = max(0.0, self.p - (1.0 if n2 >= n1 else n1 / n2))

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        x = self._incoming(layer)
        if x is not None and x not in self.adapted and (x in self.b1 or x in self.b2):
            self._adapt(x)
            self.adapted.add(x)
        n1 = len(self.t1)
        from_t1 = n1 > 0 and (n1 > self.p or (x is not None and x in self.b2 and n1 == self.p))
        ok = LazyHeap.member_of(candidates)
        for lst in ((self.t1, self.t2) if from_t1 else (self.t2, self.t1)):
            for k in lst:
                if ok(k):
                    return k
        return candidates[0]                     # untracked residents only (cannot happen)

    def on_evict(self, key: ExpertKey) -> None:
        if key in self.t1:
            del self.t1[key]
            self.b1[key] = None
        elif key in self.t2:
            del self.t2[key]
            self.b2[key] = None
        self.fresh.discard(key)

    def on_insert(self, key: ExpertKey) -> None:
        if key in self.t1 or key in self.t2:
            return
        if key in self.b1 or key in self.b2:
            if key not in self.adapted:
                self._adapt(key)
            self.b1.pop(key, None)
            self.b2.pop(key, None)
            self.t2[key] = None
        else:
            self.t1[key] = None
        self.adapted.discard(key)
        self.fresh.add(key)
        self._trim()

    def _trim(self) -> None:
        c = self.c
        while len(self.t1) + len(self.b1) > c and self.b1:
            self.b1.popitem(last=False)
        while len(self.t1) + len(self.t2) + len(self.b1) + len(self.b2) > 2 * c and (self.b1 or self.b2):
            (self.b2 if self.b2 else self.b1).popitem(last=False)

    def on_access(self, key: ExpertKey, hit: bool = True) -> None:
        if key in self.fresh:
            self.fresh.discard(key)
            return
        if key in self.t1:
            del self.t1[key]
            self.t2[key] = None
        elif key in self.t2:
            self.t2.move_to_end(key)


class LeastStalePolicy(CachePolicy):
    """Least-Stale (SpecMD, Hoang et al., arXiv 2602.03921): MoE experts are accessed in a fixed
    layer cycle, one pass per token, so the experts of the layer that ran most recently are the
    furthest from being needed again, and recency (LRU) is the wrong signal: LRU evicts the
    layers about to run (their experts were used a whole cycle ago), which is the "collision
    miss" SpecMD counts.

    `order="cycle"` (default): evict the *least stale* expert: of the evictable experts, those of
    the layer that ran most recently in the cycle: the running layer `l`'s own unused experts
    (next possible use a whole cycle away), then layer `l-1`'s, `l-2`'s, ..., layer `l+1`'s (the
    next to run) last; within a layer, the least recently used (so an expert this pass used
    outlives one it did not). The running layer comes from `at_layer(layer)` (the Least-Stale
    strategy calls it in `before_attention`); until it is called, the layer of the expert being
    fetched. Per-layer LRU orders, so a victim costs at most one look per layer.

    `order="tiers"`: tinyserve's `LeastStalePolicy`: experts used or loaded in the current pass
    are fresh, the others stale; evict the oldest stale, else the oldest fresh; a stale expert
    used again becomes the newest fresh, a fresh one keeps its place; `begin_pass()` (called by
    the strategy at every new step) moves every fresh expert, in order, behind the stale ones.
    When every expert runs at most once per pass (moebench's protocol: one access per layer and
    step), this order is the global last-use order, i.e. global LRU."""

    def __init__(self, *, order: str = "cycle", moe_layers: int = 1):
        if order not in ("cycle", "tiers"):
            raise ValueError(f"LeastStalePolicy order must be 'cycle' or 'tiers', not {order!r}")
        self.order = order
        self.L = max(1, moe_layers)
        self.layer: int | None = None
        self.by_layer: dict[int, OrderedDict[ExpertKey, None]] = {}   # cycle: LRU first
        self.fresh: OrderedDict[ExpertKey, None] = OrderedDict()      # tiers
        self.stale: OrderedDict[ExpertKey, None] = OrderedDict()

    def begin_pass(self) -> None:
        """A new forward pass starts (`tiers`: every fresh expert becomes stale)."""
        for k in self.fresh:
            self.stale[k] = None
        self.fresh.clear()

    def at_layer(self, layer: int) -> None:
        """MoE layer `layer` is running (its `before_attention`)."""
        self.layer = layer

    def on_insert(self, key: ExpertKey) -> None:
        if self.order == "cycle":
            self.by_layer.setdefault(key[0], OrderedDict())[key] = None
            self.by_layer[key[0]].move_to_end(key)
        elif key not in self.fresh:
            self.stale.pop(key, None)
            self.fresh[key] = None

    def on_access(self, key: ExpertKey, hit: bool = True) -> None:
        if self.order == "cycle":
            keys = self.by_layer.get(key[0])
            if keys is not None and key in keys:
                keys.move_to_end(key)
        elif key in self.stale:
            del self.stale[key]
            self.fresh[key] = None

    def on_evict(self, key: ExpertKey) -> None:
        keys = self.by_layer.get(key[0])
        if keys is not None:
            keys.pop(key, None)
        self.fresh.pop(key, None)
        self.stale.pop(key, None)

    def cycle_order(self, layer: int) -> list[int]:
        """Layers from least to most stale while `layer` runs: `layer`, `layer - 1`, ...,
        `layer + 1` (mod the number of MoE layers)."""
        return [(layer - i) % self.L for i in range(self.L)]

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        ok = LazyHeap.member_of(candidates)
        if self.order == "cycle":
            running = self.layer if self.layer is not None else layer
            for m in self.cycle_order(running) + sorted(set(self.by_layer) - set(range(self.L))):
                for k in self.by_layer.get(m, ()):
                    if ok(k):
                        return k
        else:
            for tier in (self.stale, self.fresh):
                for k in tier:
                    if ok(k):
                        return k
        return candidates[0]                     # untracked residents only (cannot happen)
