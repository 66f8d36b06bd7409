"""Cache (keep/evict) policies a strategy composes with: LRU (per layer or global), LFU, Belady.

Pure bookkeeping over `ExpertKey = (layer, expert)`; the engine owns the slots and only asks
`victim(layer, candidates)` when no slot is free. `candidates` are the resident experts that
are not locked by the layer being computed (a lazy `Candidates` view: `in` is cheap, iteration
walks them). Every policy exists once here and serves live runs and replay alike.
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
        if key in self.order:
            self.order.move_to_end(key)

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
            pools = []
            if self.per_layer.get(layer, 0) >= self.quota.get(layer, 0):
                pools.append(lambda k: k[0] == layer)
            pools.append(lambda k: self.per_layer.get(k[0], 0) > self.quota.get(k[0], 0))
            for keep in pools:
                for k in self.order:
                    if k in cand and keep(k):
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
    """Least frequently used, ties to the least recently used, then the smaller key. Counts
    persist across evictions, as in frequency-based pinning (KTransformers / Fiddler style).
    Victims come from a lazy heap, so an eviction does not scan every resident expert."""

    def __init__(self) -> None:
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
