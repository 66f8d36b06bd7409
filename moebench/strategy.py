"""The Strategy plugin interface and its registry.

A strategy sees events and returns decisions; the engine executes them. It never touches
streams, clocks, slots or tensors it does not own, so one strategy object runs unchanged under
the CUDA clock, the simulated clock and trace replay.

Per MoE layer of every step the engine calls, in order:

    before_attention(ev, h)          -> [Prefetch]   h = norm1(x_i)          [T, H]
    choose(ev, true, s, u)           -> Routing      the experts to execute (default: the router's)
    after_routing(ev, executed, s, u)-> [Prefetch]   s = x_i + Attn(...), u = norm2(s)   [T, H]
    victim(layer, candidates)        -> ExpertKey    eviction when no slot is free
    on_access / on_insert / on_evict                 bookkeeping for the cache policy

`Prefetch(layer, experts)` asks the engine to start copying; `ctx` (a `StrategyContext`) answers
`is_resident`, gives the adapter (norms, routers), shape, artifacts and the step counter.

Registration: built-ins and third-party plugins both go through `REGISTRY`, a lazy
`"module:Class"` table filled from the entry-point group `moebench.strategies`.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

from moebench.config import field_names, from_dict
from moebench.errors import UserError, did_you_mean

ExpertKey = tuple[int, int]   # (moe layer index, expert id)
ENTRY_POINT_GROUP = "moebench.strategies"


@dataclass(frozen=True)
class LayerEvent:
    step: int                           # decode step counter within the request (0 = prefill)
    layer: int                          # MoE layer index (0..moe_layers-1)
    phase: Literal["prefill", "decode"]
    n_tokens: int
    request: int = 0


@dataclass(frozen=True)
class Routing:
    """Top-k routing of a layer. `ids [T, k]` (int64) and `weights [T, k]` tensors."""

    ids: Any
    weights: Any

    def experts(self) -> list[int]:
        """Distinct expert ids, in first-use order (deterministic)."""
        seen: dict[int, None] = {}
        for e in self.ids.reshape(-1).tolist():
            seen.setdefault(int(e), None)
        return list(seen)


@dataclass(frozen=True)
class Prefetch:
    layer: int
    experts: tuple[int, ...]
    source: str = "prefetch"


class StrategyContext:
    """What the engine shares with a strategy. Read-only views; no clocks, no streams."""

    def __init__(self, *, shape: Any, adapter: Any = None, n_slots: int, is_resident: Any,
                 artifacts: dict | None = None, trace: Any = None, device: Any = None):
        self.shape = shape
        self.adapter = adapter
        self.n_slots = n_slots
        self._is_resident = is_resident
        self.artifacts = artifacts or {}
        self.trace = trace
        self.device = device

    def is_resident(self, layer: int, expert: int) -> bool:
        return self._is_resident((layer, expert))

    @property
    def moe_layers(self) -> int:
        return self.shape.moe_layers

    @property
    def num_experts(self) -> int:
        return self.shape.num_experts

    @property
    def top_k(self) -> int:
        return self.shape.top_k


@dataclass(frozen=True)
class NoParams:
    pass


class Strategy:
    """Base class: the router's experts, fetched on demand, LRU eviction, no prefetch."""

    name: ClassVar[str] = "base"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    keeps_experts: ClassVar[bool] = True    # False: a layer's experts are dropped after use
    uses_true_router: ClassVar[bool] = True  # False: the router is instrumentation only
    needs: ClassVar[tuple[str, ...]] = ()    # e.g. ("trace",), ("default-vectors",)
    needs_residual: ClassVar[bool] = True    # False: `s` is not captured (one hook fewer per layer)
    source: ClassVar[str] = ""               # published source, shown by `moebench strategies`
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()
        self.ctx: StrategyContext | None = None
        self.policy: Any = None

    # -- lifecycle ---------------------------------------------------------------------------
    def min_slots(self, top_k: int, moe_layers: int) -> int:
        """The fewest expert slots this strategy can run with (one layer's top-k by default)."""
        return top_k

    def setup(self, ctx: StrategyContext) -> None:
        from moebench.engine.policies import LRUPolicy

        self.ctx = ctx
        if self.policy is None:
            self.policy = LRUPolicy(scope="global", n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)

    def begin_request(self, request: int) -> None:
        """A new prompt starts (its KV cache is empty; the expert cache is the engine's business)."""

    # -- decisions ---------------------------------------------------------------------------
    def before_attention(self, ev: LayerEvent, h: Any) -> Sequence[Prefetch]:
        return ()

    def choose(self, ev: LayerEvent, true: Routing, s: Any, u: Any) -> Routing:
        return true

    def after_routing(self, ev: LayerEvent, executed: Routing, s: Any, u: Any) -> Sequence[Prefetch]:
        return ()

    def victim(self, layer: int, candidates: list[ExpertKey]) -> ExpertKey:
        return self.policy.victim(layer, candidates)

    # -- bookkeeping (cache policy) ----------------------------------------------------------
    def on_access(self, key: ExpertKey, hit: bool) -> None:
        self.policy.on_access(key)

    def on_insert(self, key: ExpertKey) -> None:
        self.policy.on_insert(key)

    def on_evict(self, key: ExpertKey) -> None:
        self.policy.on_evict(key)

    # -- description -------------------------------------------------------------------------
    def describe(self) -> dict:
        from moebench.config import to_dict

        return {"name": self.name, "version": self.version, "lossless": self.lossless,
                "params": to_dict(self.params)}


# ----------------------------------------------------------------------------------------------
# Registry (lm-evaluation-harness style: lazy entries, base-class check, collisions, did-you-mean)
# ----------------------------------------------------------------------------------------------
BUILTINS = {
    "sync": "strategies.sync:SyncStrategy",
    "lru": "strategies.lru:LRUStrategy",
    "all-resident": "strategies.all_resident:AllResidentStrategy",
    "speculative": "strategies.speculative:SpeculativeStrategy",
    "pre-attention": "strategies.pre_attention:PreAttentionStrategy",
    "next-gate": "strategies.next_gate:NextGateStrategy",
    "oracle": "strategies.oracle:OracleStrategy",
}


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, str | type[Strategy]] = {}
        self._loaded_eps = False

    def register(self, name: str, target: str | type[Strategy], *, replace: bool = False) -> None:
        if name in self._entries and not replace and self._entries[name] != target:
            raise ValueError(f"strategy '{name}' is already registered ({self._entries[name]}).")
        self._entries[name] = target

    def _load_entry_points(self) -> None:
        if self._loaded_eps:
            return
        self._loaded_eps = True
        for name, target in BUILTINS.items():
            self._entries.setdefault(name, target)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._entries and self._entries[ep.name] == ep.value:
                continue
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, name: str) -> type[Strategy]:
        self._load_entry_points()
        if name not in self._entries:
            raise UserError(f"unknown strategy '{name}'{did_you_mean(name, self._entries)}.")
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            try:
                target = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise UserError(f"strategy '{name}' cannot be loaded from {self._entries[name]}: {exc}.") from None
            if not (isinstance(target, type) and issubclass(target, Strategy)):
                raise UserError(f"strategy '{name}' ({self._entries[name]}) is not a moebench Strategy.")
            self._entries[name] = target
        return target


REGISTRY = Registry()


def strategy_params_fields(name: str) -> set[str]:
    return field_names(REGISTRY.get(name).Params)


def build_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    """A strategy instance with its typed parameters (unknown keys are errors)."""
    cls = REGISTRY.get(name)
    p = from_dict(cls.Params, dict(params or {}), f"strategy '{name}' parameters")
    return cls(p)


def params_dataclass_defaults(cls: type[Strategy]) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls.Params)
            if f.default is not dataclasses.MISSING}
