"""Replay-side policies: strategies that need only routing, some of them the future.

Each is a `Strategy` (decisions only) driven by the same `SlotScheduler` and `SimTimeline` the
live engine uses; the replay engine additionally hands the replay-only ones a `ReplayView`
(the schedule of groups to come, the cursor `g`, the cache) before every MoE layer.

| name | what it is |
|---|---|
| `sync`, `lru`, `all-resident` | the registry strategies themselves (same objects as `run`) |
| `lru-global` | registry `lru` with `scope=global` |
| `lfu` | least frequently used (counts persist across evictions), `LFUPolicy` |
| `pin` | frequency pinning: each layer's `(slots - k) // L` most used experts of the trace are made resident before timing and never evicted; the other slots are an LRU scratch area |
| `belady` | Belady's MIN: demand fetch, evict the expert used furthest in the future |
| `oracle` | perfect future knowledge: before each layer's attention, prefetch the next `lookahead` groups' experts in order of use, as long as a free slot or a resident expert needed *later* than the prefetched one exists; Belady eviction |
| `pred:<source>` | the prefetches a recorded predictor made (`predicted[source]` in the trace) replayed with a global LRU cache; issued after the previous layer's routing (`+N` in the source name: N layers ahead; `pre-attention` sources: before the layer's own attention) |

A *group* is one MoE layer of one step; groups are numbered in execution order (`g`).
"""
from __future__ import annotations

import heapq
import math
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from moebench.engine.policies import LFUPolicy
from moebench.errors import UserError
from moebench.strategy import ExpertKey, LayerEvent, Prefetch, Strategy, StrategyContext

NEVER = math.inf


class FutureIndex:
    """For each expert key, the sorted groups that execute it; `next_use(key, g)` is the first
    such group `>= g` (`inf` when none)."""

    def __init__(self, groups: Sequence[tuple[int, tuple[int, ...]]]):
        self.uses: dict[ExpertKey, list[int]] = {}
        for g, (layer, ids) in enumerate(groups):
            for e in ids:
                self.uses.setdefault((layer, e), []).append(g)

    def next_use(self, key: ExpertKey, g: int) -> float:
        uses = self.uses.get(key)
        if not uses:
            return NEVER
        i = bisect_left(uses, g)
        return uses[i] if i < len(uses) else NEVER


@dataclass
class ReplayView:
    """What a replay-only policy may look at. `g` / `s` are moved by the engine."""

    groups: list[tuple[int, tuple[int, ...]]]   # g -> (layer, executed ids)
    steps: list[int]                             # g -> trace step index
    future: FutureIndex
    trace: Any
    cache: Any
    counts: Any = None                           # [L, E] decode activations per expert
    g: int = 0
    s: int = 0


class ReplayOnly(Strategy):
    """Base of the policies that exist only in replay (they see `self.view`)."""

    replay_only: ClassVar[bool] = True
    view: ReplayView


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
        from moebench.engine.cache import Candidates

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


class LFUReplay(Strategy):
    """`LFUPolicy`'s choice -- least (count, last use, key) -- through a lazy heap, so an
    eviction does not scan every resident expert."""

    name: ClassVar[str] = "lfu"
    source: ClassVar[str] = "least frequently used (frequency caching, KTransformers / Fiddler style)"

    def setup(self, ctx: StrategyContext) -> None:
        self.policy = LFUPolicy()
        super().setup(ctx)
        pol = self.policy
        self.order = LazyHeap(lambda k: (pol.count.get(k, 0), pol.last.get(k, 0)))

    def on_access(self, key: ExpertKey, hit: bool) -> None:
        self.policy.on_access(key)
        self.order.push(key)

    def on_insert(self, key: ExpertKey) -> None:
        self.policy.on_insert(key)
        self.order.push(key)
        self.order.sweep(self.policy.last.keys())

    def victim(self, layer: int, candidates: list[ExpertKey]) -> ExpertKey:
        found = self.order.best(LazyHeap.member_of(candidates), lambda k: self.ctx.is_resident(*k))
        return found if found is not None else self.policy.victim(layer, candidates)


class PinReplay(ReplayOnly):
    """Pinned experts never enter the LRU order, so a victim is found among the few scratch
    experts without looking at the pinned ones."""

    name: ClassVar[str] = "pin"
    source: ClassVar[str] = "static hot-expert pinning from the trace's counts (KTransformers / Fiddler style)"

    def setup(self, ctx: StrategyContext) -> None:
        self.pinned: set[ExpertKey] = set()
        super().setup(ctx)   # global LRU for the scratch slots

    def initial_residents(self, n_slots: int) -> list[ExpertKey]:
        shape = self.ctx.shape
        per_layer = max(0, (n_slots - shape.top_k) // shape.moe_layers)
        pins = []
        counts = self.view.counts
        for m in range(shape.moe_layers):
            ranked = sorted(range(counts.shape[1]), key=lambda e: (-int(counts[m, e]), e))
            pins.extend((m, e) for e in ranked[:per_layer] if counts[m, e] > 0)
        self.pinned = set(pins)
        return pins

    def on_access(self, key: ExpertKey, hit: bool) -> None:
        if key not in self.pinned:
            self.policy.on_access(key)

    def on_insert(self, key: ExpertKey) -> None:
        if key not in self.pinned:
            self.policy.on_insert(key)

    def on_evict(self, key: ExpertKey) -> None:
        if key not in self.pinned:
            self.policy.on_evict(key)

    def victim(self, layer: int, candidates: list[ExpertKey]) -> ExpertKey:
        ok = LazyHeap.member_of(candidates)
        for k in self.policy.order:              # least recently used scratch expert first
            if ok(k):
                return k
        return candidates[0]                     # only pinned experts left (scratch < top-k)


class BeladyReplay(ReplayOnly):
    """MIN with demand fetches. `nu[key]` is the next use after the key's last access (or, for a
    prefetched key not yet used, from its insertion): a resident key is not accessed in between,
    so that is its next use at eviction time. Victim: the largest (next use, key), found through
    a lazy max-heap instead of a scan of every resident."""

    name: ClassVar[str] = "belady"
    source: ClassVar[str] = "Belady's MIN (1966): evict the expert used furthest in the future"

    def setup(self, ctx: StrategyContext) -> None:
        self.ctx = ctx
        self.nu: dict[ExpertKey, float] = {}
        self.order = LazyHeap(lambda k: (self.nu.get(k, -1.0),), sign=-1)

    def _set(self, key: ExpertKey, g: int) -> None:
        self.nu[key] = self.view.future.next_use(key, g)
        self.order.push(key)

    def on_access(self, key: ExpertKey, hit: bool) -> None:
        self._set(key, self.view.g + 1)

    def on_insert(self, key: ExpertKey) -> None:
        self._set(key, self.view.g)
        self.order.sweep(self.nu.keys())

    def on_evict(self, key: ExpertKey) -> None:
        self.nu.pop(key, None)

    def victim(self, layer: int, candidates: list[ExpertKey]) -> ExpertKey:
        found = self.order.best(LazyHeap.member_of(candidates), lambda k: k in self.nu)
        if found is None:                        # cannot happen: every resident has an entry
            nu = self.nu
            found = max(candidates, key=lambda k: (nu.get(k, NEVER), k))
        return found


@dataclass(frozen=True)
class OracleParams:
    lookahead: int = 0   # groups to look ahead; 0 = one whole token (every MoE layer)


class OracleReplay(BeladyReplay):
    name: ClassVar[str] = "oracle"
    source: ClassVar[str] = ("perfect future knowledge: earliest feasible prefetch, Belady eviction "
                             "(the lossless lower bound at a budget and bandwidth)")
    Params: ClassVar[type] = OracleParams
    scores_predictions: ClassVar[bool] = False    # its prefetches are plans, not guesses

    def before_attention(self, ev: LayerEvent, h: Any) -> Sequence[Prefetch]:
        view, cache = self.view, self.view.cache
        g0 = view.g
        horizon = self.params.lookahead or self.ctx.moe_layers
        wanted: list[tuple[int, ExpertKey]] = []
        seen: set[ExpertKey] = set()
        for g in range(g0, min(len(view.groups), g0 + horizon)):
            layer, ids = view.groups[g]
            for e in ids:
                key = (layer, e)
                if key not in seen and not cache.is_resident(key):
                    seen.add(key)
                    wanted.append((g, key))
        if not wanted:
            return ()
        free = len(cache.free)
        out: list[Prefetch] = []
        taken: set[ExpertKey] = set()           # residents this plan would evict, best first
        for g, key in wanted:
            if free > 0:
                free -= 1
            else:
                # Feasible only if the victim Belady would pick is needed after `key`.
                top = self.order.best(lambda k: k not in taken, lambda k: k in self.nu)
                if top is None or self.nu[top] <= g:
                    break
                taken.add(top)
            out.append(Prefetch(key[0], (key[1],), source="oracle"))
        return out


class PredictedReplay(ReplayOnly):
    """A recorded predictor's prefetches, replayed with a per-layer LRU cache (the `lru`
    default). When the trace was recorded by a registry strategy whose `prediction_cost` needs
    only its parameters and the model shape, that cost is charged per prefetch as in the live
    run; otherwise the predictor's own compute is free (said in `describe()`)."""

    name: ClassVar[str] = "pred"
    source: ClassVar[str] = "a recorded predictor's prefetches (trace `predicted`)"

    def __init__(self, params: Any = None, *, predictor: str = "", recorded: dict | None = None):
        super().__init__(params)
        self.predictor = predictor
        self.recorded = recorded or {}
        m = re.search(r"\+(\d+)$", predictor)
        self.ahead = 0 if "pre-attention" in predictor or "pre_attention" in predictor \
            else (int(m.group(1)) if m else 1)
        self._cost: Any = None

    def setup(self, ctx: StrategyContext) -> None:
        from moebench.engine.policies import LRUPolicy

        self.policy = LRUPolicy(scope="layer", n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)
        super().setup(ctx)
        self._cost = self._recorded_cost(ctx)

    def _recorded_cost(self, ctx: StrategyContext) -> Any:
        """The recording strategy's `prediction_cost`, if it can be had from routing alone."""
        from moebench.strategy import REGISTRY, build_strategy

        name = self.recorded.get("name")
        if not name or name not in REGISTRY.names() or not self.predictor.startswith(name):
            return None
        try:
            twin = build_strategy(name, self.recorded.get("params") or {})
            if not callable(getattr(twin, "prediction_cost", None)):
                return None
            twin.ctx = StrategyContext(shape=ctx.shape, n_slots=ctx.n_slots, is_resident=ctx.is_resident)
            twin.prediction_cost(LayerEvent(step=1, layer=0, phase="decode", n_tokens=1))
        except (UserError, AttributeError, TypeError, KeyError, StopIteration):
            return None      # it needs more than parameters and shapes (a trained predictor)
        return twin.prediction_cost

    @property
    def prediction_cost(self) -> Any:
        return self._cost

    def _for(self, layer: int) -> Sequence[Prefetch]:
        ids = self.view.trace.predicted(self.view.s, layer).get(self.predictor)
        return [Prefetch(layer, tuple(ids), source=self.predictor)] if ids else []

    def before_attention(self, ev: LayerEvent, h: Any) -> Sequence[Prefetch]:
        if self.ahead == 0 or ev.layer < self.ahead:   # nothing earlier could have issued them
            return self._for(ev.layer)
        return ()

    def after_routing(self, ev: LayerEvent, executed: Any, s: Any, u: Any) -> Sequence[Prefetch]:
        target = ev.layer + self.ahead
        if self.ahead and target < self.ctx.moe_layers:
            return self._for(target)
        return ()

    def describe(self) -> dict:
        d = super().describe()
        d["name"] = f"pred:{self.predictor}"
        d["params"] = {"predictor": self.predictor, "layers_ahead": self.ahead, "cache": "lru/layer",
                       "predictor_cost_charged": self._cost is not None}
        return d


REPLAY_ONLY = {"lfu": LFUReplay, "pin": PinReplay, "belady": BeladyReplay, "oracle": OracleReplay}
FROM_REGISTRY = {"sync": ("sync", {}), "lru": ("lru", {}), "lru-layer": ("lru", {"scope": "layer"}),
                 "lru-global": ("lru", {"scope": "global"}), "all-resident": ("all-resident", {})}


def policy_names(trace: Any = None) -> list[str]:
    names = sorted(FROM_REGISTRY) + sorted(REPLAY_ONLY)
    if trace is not None:
        names += [f"pred:{s}" for s in trace.sources()]
    return names


def build_policy(name: str, trace: Any = None) -> Strategy:
    """A fresh strategy object for a replay policy name (see the module table)."""
    from moebench.strategy import build_strategy

    name = name.strip()
    if name in FROM_REGISTRY:
        reg, params = FROM_REGISTRY[name]
        return build_strategy(reg, params)
    if name in REPLAY_ONLY:
        return REPLAY_ONLY[name]()
    if name.startswith("pred:"):
        src = name[5:]
        known = trace.sources() if trace is not None else []
        if src not in known:
            have = ", ".join(known) or "none"
            raise UserError(f"the trace has no predictions from '{src}' (it has: {have}).")
        rec = trace.recorded.strategy if trace is not None and trace.recorded else None
        return PredictedReplay(predictor=src, recorded=rec)
    from moebench.errors import did_you_mean
    from moebench.strategy import REGISTRY

    if name in REGISTRY.names():
        raise UserError(f"strategy '{name}' needs the model's hidden states and cannot be replayed "
                        "from routing alone; replay its recorded prefetches with pred:<predictor>.")
    raise UserError(f"unknown replay policy '{name}'{did_you_mean(name, policy_names(trace))}.")
