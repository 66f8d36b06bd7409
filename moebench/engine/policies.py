"""Cache (keep/evict) policies a strategy composes with: LRU (per-layer or global), LFU, Belady.

Pure bookkeeping over `ExpertKey = (layer, expert)`; the engine owns the slots and only asks
`victim(layer, candidates)` when no slot is free. `candidates` are the resident experts that
are not locked by the layer being computed.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

ExpertKey = tuple[int, int]


class LRUPolicy:
    """Least recently used. `scope="layer"`: each MoE layer owns `n_slots // layers` slots
    (mixtral-offloading's per-layer LRU); `scope="global"`: the budget flows to the layers
    that need it."""

    def __init__(self, *, scope: str = "global", n_slots: int, moe_layers: int):
        self.scope = scope
        self.order: OrderedDict[ExpertKey, None] = OrderedDict()
        self.per_layer: dict[int, int] = {}
        base, extra = divmod(n_slots, max(1, moe_layers))
        self.quota = {layer: base + (1 if layer < extra else 0) for layer in range(moe_layers)}

    def on_access(self, key: ExpertKey) -> None:
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
        cand = candidates   # supports `in` cheaply (engine.cache.Candidates) or is a sequence
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


class LFUPolicy:
    """Least frequently used (ties: least recently used). Counts persist across evictions,
    as in frequency-based pinning (KTransformers / Fiddler style hot experts)."""

    def __init__(self, **_: object):
        self.count: dict[ExpertKey, int] = {}
        self.last: dict[ExpertKey, int] = {}
        self.t = 0

    def on_access(self, key: ExpertKey) -> None:
        self.t += 1
        self.count[key] = self.count.get(key, 0) + 1
        self.last[key] = self.t

    def on_insert(self, key: ExpertKey) -> None:
        self.last.setdefault(key, self.t)

    def on_evict(self, key: ExpertKey) -> None:
        pass

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        return min(candidates, key=lambda k: (self.count.get(k, 0), self.last.get(k, 0), k))


class BeladyPolicy:
    """Belady's MIN: evict the candidate whose next use lies furthest in the future (never used
    again beats everything). Needs the future, so only the oracle can use it: `next_use(key)`
    answers "at which position of the recorded trace is `key` needed next" (inf for never).
    Ties go to the larger key so the choice is deterministic."""

    def __init__(self, next_use: Callable[[ExpertKey], float]):
        self.next_use = next_use

    def on_access(self, key: ExpertKey) -> None:
        pass

    def on_insert(self, key: ExpertKey) -> None:
        pass

    def on_evict(self, key: ExpertKey) -> None:
        pass

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        return max(candidates, key=lambda k: (self.next_use(k), k))
