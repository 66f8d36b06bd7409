"""What `moebench replay` can run: every registered strategy that reads only routing (and the
run's trace), plus a few policies that exist for replay's what-if questions.

| name | what it is |
|---|---|
| any registered strategy whose `reads` has neither `hidden` nor `residual` | the registry strategy itself (`sync`, `lru`, `lfu`, `lfru`, `arc`, `least-stale`, `all-resident`, `oracle`, a plugin's), the same object `run` builds |
| `lru-layer`, `lru-global` | registry `lru` with `scope=layer` / `scope=global` |
| `pin` | frequency pinning: each layer's `(slots - k) // L` most used experts of the trace are made resident before timing and never evicted; the other slots are an LRU scratch area |
| `belady` | Belady's MIN: demand fetch, evict the expert used furthest in the future (`BeladyPolicy`) |
| `pred:<source>` | the prefetches a recorded predictor made (`predicted[source]` in the trace) replayed with a per-layer LRU cache; issued after the previous layer's routing (`+N` in the source name: N layers ahead; `pre-attention` sources: before the layer's own attention) |

Each is a `Strategy` (decisions only), driven by the one per-layer protocol; those that read the
trace get it as `ctx.trace` (a `RoutingTrace` over every MoE layer replayed, warm-up included).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from moebench.errors import UserError, did_you_mean
from moebench.offload.policies import NEVER, BeladyPolicy, CachePolicy, LRUPolicy
from moebench.strategy import (REGISTRY, ExpertKey, LayerEvent, Prefetch, Strategy, StrategyContext,
                               build_strategy)


class TraceStrategy(Strategy):
    """A strategy that reads the run's trace and tracks its position in it."""

    reads: ClassVar[frozenset[str]] = frozenset({"routing", "trace"})
    needs: ClassVar[tuple[str, ...]] = ("trace",)

    def setup(self, ctx: StrategyContext) -> None:
        if ctx.trace is None:
            raise UserError(f"'{self.name}' needs the recorded routing of this workload, and none was given.")
        super().setup(ctx)

    def position(self, ev: LayerEvent, layer: int | None = None) -> int | None:
        return self.ctx.trace.position(ev.request, ev.step, ev.layer if layer is None else layer)


class BeladyStrategy(TraceStrategy):
    name: ClassVar[str] = "belady"
    source: ClassVar[str] = "Belady's MIN (1966): evict the expert used furthest in the future"

    per_request: bool = False     # replay --reset-per-request: the cache empties at each request

    def make_policy(self, ctx: StrategyContext) -> CachePolicy:
        if not self.per_request:
            return BeladyPolicy(ctx.trace.next_use)
        # A use in a later request is no use: the cache is emptied before it (MIN per request).
        trace = ctx.trace
        ends = getattr(self, "_ends", None)
        if ends is None:
            pos = trace.positions
            ends = [len(pos)] * len(pos)
            for t in range(len(pos) - 2, -1, -1):
                ends[t] = t + 1 if pos[t + 1][0] != pos[t][0] else ends[t + 1]
            self._ends = ends

        def next_use(key: ExpertKey, t: float) -> float:
            n = trace.next_use(key, t)
            now = policy.now
            return n if now >= len(ends) or n < ends[now] else NEVER

        policy = BeladyPolicy(next_use)
        return policy

    def before_attention(self, ev: LayerEvent, h: Any) -> Sequence[Prefetch]:
        t = self.position(ev)
        if t is not None:
            self.policy.now = t
        return ()


class PinStrategy(TraceStrategy):
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
        counts = self.ctx.trace.decode_counts(shape.moe_layers, shape.num_experts)
        pins = []
        for m in range(shape.moe_layers):
            ranked = sorted(range(shape.num_experts), key=lambda e: (-counts[m][e], e))
            pins.extend((m, e) for e in ranked[:per_layer] if counts[m][e] > 0)
        self.pinned = set(pins)
        return pins

    def on_access(self, key: ExpertKey, hit: bool) -> None:
        if key not in self.pinned:
            self.policy.on_access(key, hit)

    def on_insert(self, key: ExpertKey) -> None:
        if key not in self.pinned:
            self.policy.on_insert(key)

    def on_evict(self, key: ExpertKey) -> None:
        if key not in self.pinned:
            self.policy.on_evict(key)

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        for k in self.policy.order:              # least recently used scratch expert first
            if k in candidates:
                return k
        return candidates[0]                     # only pinned experts left (scratch < top-k)


class PredictedStrategy(TraceStrategy):
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

    def make_policy(self, ctx: StrategyContext) -> CachePolicy:
        return LRUPolicy(scope="layer", n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        self._cost = self._recorded_cost(ctx)

    def _recorded_cost(self, ctx: StrategyContext) -> Any:
        """The recording strategy's `prediction_cost`, if it can be had from routing alone."""
        name = self.recorded.get("name")
        if not name or name not in REGISTRY.names() or not self.predictor.startswith(name):
            return None
        try:
            twin = build_strategy(name, self.recorded.get("params") or {})
            twin.ctx = StrategyContext(shape=ctx.shape, n_slots=ctx.n_slots, is_resident=ctx.is_resident)
            if twin.prediction_cost(LayerEvent(step=1, layer=0, phase="decode", n_tokens=1)) is None:
                return None
        except (UserError, AttributeError, TypeError, KeyError, StopIteration):
            return None      # it needs more than parameters and shapes (a trained predictor)
        return twin.prediction_cost

    def prediction_cost(self, ev: LayerEvent) -> tuple[float, float, int] | None:
        return self._cost(ev) if self._cost is not None else None

    def _for(self, ev: LayerEvent, layer: int) -> Sequence[Prefetch]:
        t = self.position(ev, layer)
        ids = self.ctx.trace.predicted[t].get(self.predictor) if t is not None else None
        return [Prefetch(layer, tuple(ids), source=self.predictor)] if ids else []

    def before_attention(self, ev: LayerEvent, h: Any) -> Sequence[Prefetch]:
        if self.ahead == 0 or ev.layer < self.ahead:   # nothing earlier could have issued them
            return self._for(ev, ev.layer)
        return ()

    def after_routing(self, ev: LayerEvent, executed: Any, s: Any, u: Any) -> Sequence[Prefetch]:
        target = ev.layer + self.ahead
        if self.ahead and target < self.ctx.moe_layers:
            return self._for(ev, target)
        return ()

    def describe(self) -> dict:
        d = super().describe()
        d["name"] = f"pred:{self.predictor}"
        d["params"] = {"predictor": self.predictor, "layers_ahead": self.ahead, "cache": "lru/layer",
                       "predictor_cost_charged": self._cost is not None}
        return d


REPLAY_ONLY = {"pin": PinStrategy, "belady": BeladyStrategy}
ALIASES = {"lru-layer": ("lru", {"scope": "layer"}), "lru-global": ("lru", {"scope": "global"}),
           "lru-expert-waits": ("lru", {"waits": "expert"})}


def replayable_registry() -> list[str]:
    """Registered strategies that read only routing and the trace (those that fail to load are
    left out here and explained when named)."""
    out = []
    for name in REGISTRY.names():
        try:
            if REGISTRY.get(name).traits_for(REGISTRY.get(name).Params()).replayable:
                out.append(name)
        except UserError:
            continue
    return out


def policy_names(trace: Any = None) -> list[str]:
    names = sorted(set(replayable_registry()) | set(ALIASES) | set(REPLAY_ONLY))
    if trace is not None:
        names += [f"pred:{s}" for s in trace.sources()]
    return names


def build_policy(name: str, trace: Any = None) -> Strategy:
    """A fresh strategy object for a replay policy name (see the module table)."""
    name = name.strip()
    if name in ALIASES:
        reg, params = ALIASES[name]
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
        return PredictedStrategy(predictor=src, recorded=rec)
    base, colon, sets = name.partition(":")
    if colon and base in REGISTRY.names():      # `host-compute:decide=always+upload_cap=2`
        from moebench.config import parse_overrides

        strategy = build_strategy(base, parse_overrides([x for x in sets.split("+") if x.strip()]))
        if not strategy.traits.replayable:
            raise UserError(f"strategy '{base}' reads more than routing and cannot be replayed.")
        return strategy
    if name in REGISTRY.names():
        strategy = build_strategy(name)
        if not strategy.traits.replayable:
            what = {"hidden": "hidden states", "residual": "residual stream"}
            reads = " and ".join(what[r] for r in sorted(strategy.traits.reads & set(what)))
            raise UserError(f"strategy '{name}' reads the model's {reads} and cannot be replayed "
                            "from routing alone; replay its recorded prefetches with pred:<predictor>.")
        return strategy
    raise UserError(f"unknown replay policy '{name}'{did_you_mean(name, policy_names(trace))}.")
