"""The Strategy plugin interface and its registry: `from moebench.strategy import Strategy`.

A strategy sees events and returns decisions; the engine executes them. It never touches
streams, clocks, slots or tensors it does not own, so one strategy object runs unchanged under
the CUDA clock, the simulated clock and trace replay (`moebench.offload.protocol` is the one
protocol all three execute). Per MoE layer of every step the engine calls, in order:

    before_attention(ev, h)           -> [Prefetch]   h = norm1(x_i) [T, H]     (reads "hidden")
    uses_router(ev)                   -> bool         is the true router part of the strategy here
    choose(ev, true, s, u)            -> Routing      the experts to execute (default: the router's)
    after_routing(ev, executed, s, u) -> [Prefetch]   s = x_i + Attn(...) [T, H] (reads "residual"),
                                                      u = norm2(s) [T, H]
    prediction_cost(ev)               -> (flops, bytes, kernels) | None, per prefetch it returned
    victim(layer, candidates)         -> ExpertKey    eviction when no slot is free
    on_access / on_insert / on_evict                  bookkeeping for the cache policy

and once per run `setup(ctx)` (after `make_policy(ctx)`; it calls `check_model(shape)`, which
refuses parameter values that would make the strategy something else on this model),
`run_notes()` (legal but degenerate values, said in the result), `initial_residents(n_slots)`
(what to load before timing), and per prompt `begin_request(request)`.

**Declarations** (class attributes; `traits_for(params)` turns them into the instance's
`traits` when a parameter changes one):
- `reads`: what the strategy looks at, a subset of `READS`: `routing` (the true router's choice),
  `hidden` (h), `residual` (s: one more hook per layer), `trace` (the run's recorded routing, the
  future included). Replay runs every strategy that reads neither `hidden` nor `residual`; the
  engine captures `s` only for those that read it; the simulated clock charges the router to
  those that read `routing`.
- `lossless`, `keeps_experts` (False: a layer's experts are dropped after use), `needs`
  (artifacts to calibrate or record), `scores_predictions`, `forces_budget`, `min_slots`.

**Registry**: built-ins are listed once (`BUILTINS`); plugins register through the entry-point
group `moebench.strategies` (`name = "package.module:Class"`) or `@register("name")`; tests use
`with REGISTRY.registered("name", Cls): ...`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

from moebench.config import field_names, from_dict, to_dict
from moebench.errors import UserError, did_you_mean
from moebench.offload.events import ExpertKey, LayerEvent, Prefetch, Routing, StrategyContext
from moebench.offload.policies import (ARCPolicy, BeladyPolicy, CachePolicy, LeastStalePolicy,
                                       LFRUPolicy, LFUPolicy, LRUPolicy)

__all__ = ["ENTRY_POINT_GROUP", "READS", "REGISTRY", "ARCPolicy", "BeladyPolicy", "CachePolicy",
           "ExpertKey", "LFRUPolicy", "LFUPolicy", "LRUPolicy", "LayerEvent", "LeastStalePolicy",
           "NoParams", "Prefetch", "Registry", "Routing", "Strategy", "StrategyContext", "Traits",
           "UserError", "build_strategy", "register"]

ENTRY_POINT_GROUP = "moebench.strategies"
READS = frozenset({"routing", "hidden", "residual", "trace"})
LEGACY_READS = frozenset({"routing", "hidden", "residual"})   # a plugin that declares nothing


def _default_decision(fn: Any) -> Any:
    """Marks a base-class decision that decides nothing (`default_decision`, the function itself:
    `moebench.offload.events.marked` tests identity, so a wrapper is not taken for it): the
    protocol does not call one a strategy leaves as it is (`moebench.offload.protocol.decides`),
    which keeps the engine's per-layer host work small. Any override, or an instance attribute
    (a `functools.wraps` wrapper of the default included), is called."""
    fn.default_decision = fn
    return fn


@dataclass(frozen=True)
class NoParams:
    def validate(self, where: str) -> None:
        """Called after the parameters are built: raise `UserError` for a bad combination."""


@dataclass(frozen=True)
class Traits:
    """What one strategy instance is, as its parameters make it."""

    lossless: bool
    keeps_experts: bool
    reads: frozenset[str]
    needs: tuple[str, ...]

    @property
    def replayable(self) -> bool:
        """Needs only routing (and the recorded trace): runs in `moebench replay`."""
        return not (self.reads & {"hidden", "residual"})


class Strategy:
    """Base class: the router's experts, fetched on demand, global LRU eviction, no prefetch."""

    name: ClassVar[str] = "base"
    version: ClassVar[int] = 1               # bump on any behaviour change (results compare per version)
    source: ClassVar[str] = ""               # published source, shown by `moebench strategies`
    Params: ClassVar[type] = NoParams
    # -- declarations (defaults for the default parameters; see traits_for) --
    lossless: ClassVar[bool] = True
    keeps_experts: ClassVar[bool] = True     # False: a layer's experts are dropped after use
    reads: ClassVar[frozenset[str] | None] = None   # None: undeclared -> LEGACY_READS (deprecated)
    needs: ClassVar[tuple[str, ...]] = ()    # artifacts: "trace", "default-vectors", ...
    scores_predictions: ClassVar[bool] = True  # False: prefetches are plans, not guesses of this step
    forces_budget: ClassVar[str | None] = None  # a budget this strategy always runs at ("all")
    # what it does when B > 1 sequences decode together (a note of every batched result)
    batching: ClassVar[str] = ("each layer fetches the union of the batch's experts, each once; "
                               "the cache sees one access per distinct expert")
    # -- deprecated declarations, still honoured when `reads` is not declared --
    uses_true_router: ClassVar[bool] = True
    needs_residual: ClassVar[bool | None] = None

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()
        self.traits = type(self).traits_for(self.params)
        self.ctx: StrategyContext = None   # type: ignore[assignment]  # set by setup(), before any hook
        self.policy: Any = None

    @classmethod
    def traits_for(cls, params: Any) -> Traits:
        """The traits an instance with `params` has. Override when a parameter changes one."""
        return Traits(lossless=cls.lossless, keeps_experts=cls.keeps_experts,
                      reads=cls.declared_reads(), needs=tuple(cls.needs))

    @classmethod
    def declared_reads(cls) -> frozenset[str]:
        if cls.reads is not None:
            bad = set(cls.reads) - READS
            if bad:
                raise UserError(f"strategy '{cls.name}' declares reads {sorted(bad)}; known: {sorted(READS)}.")
            return frozenset(cls.reads)
        reads = set(LEGACY_READS)
        if cls.needs_residual is False:
            reads.discard("residual")
        if not cls.uses_true_router:
            reads.discard("routing")
        if "trace" in cls.needs:
            reads.add("trace")
        warnings.warn(f"strategy '{cls.name}' does not declare `reads`; assuming {sorted(reads)} "
                      "(declare e.g. reads = frozenset({'routing'}))", DeprecationWarning, stacklevel=3)
        return frozenset(reads)

    # -- lifecycle ---------------------------------------------------------------------------
    def min_slots(self, top_k: int, moe_layers: int) -> int:
        """The fewest expert slots this strategy can run with (one layer's top-k by default)."""
        return top_k

    def make_policy(self, ctx: StrategyContext) -> CachePolicy:
        """The cache policy `victim` / `on_*` delegate to (global LRU by default)."""
        return LRUPolicy(scope="global", n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)

    def check_model(self, shape: Any) -> None:
        """Raise `UserError` (one sentence) when a parameter value, on this model's shape, would
        make the strategy something else (e.g. a speculation that speculates no layer is `sync`
        under another label). Called by `setup` and before any calibration for this model."""

    def setup(self, ctx: StrategyContext) -> None:
        """Once per run, before anything else: `ctx` is the shape, budget, artifacts, trace."""
        self.check_model(ctx.shape)
        self.ctx = ctx
        if self.policy is None:      # (a plugin may still assign its policy before calling this)
            self.policy = self.make_policy(ctx)

    def run_notes(self) -> list[str]:
        """After `setup`: sentences for result.json `notes` (and a warning on stderr) about legal
        but degenerate parameter values on this model and budget (a learned part that is never
        used, a prediction that can change nothing, ...). Default: none."""
        return []

    def initial_residents(self, n_slots: int) -> Sequence[ExpertKey]:
        """Experts to make resident before timing starts (all-resident, pinning)."""
        return ()

    def begin_request(self, request: int) -> None:
        """A new prompt starts (its KV cache is empty; the expert cache is the engine's business)."""

    # -- decisions ---------------------------------------------------------------------------
    @_default_decision
    def before_attention(self, ev: LayerEvent, h: Any) -> Sequence[Prefetch]:
        """At norm1 of MoE layer `ev.layer`: prefetches to issue during its attention."""
        return ()

    @_default_decision
    def uses_router(self, ev: LayerEvent) -> bool:
        """Whether the true router is part of the strategy at this layer (charged on the simulated
        clock); by default whether the strategy reads `routing`."""
        return "routing" in self.traits.reads

    uses_host: ClassVar[bool] = False
    """Whether the strategy computes experts on the host CPU (`host_experts`): the simulated
    clock then needs the profile's host figures."""

    def host_experts(self, ev: LayerEvent, experts: list[int]) -> Sequence[int]:
        """Of a decode step's experts, those to compute on the host CPU instead of copying to
        the device (Fiddler, llama.cpp `--n-cpu-moe`); called only when `uses_host`, before the
        layer's residency is prepared. Default: none."""
        return ()

    @_default_decision
    def miss_precision(self, ev: LayerEvent, experts: list[int]) -> dict[int, int]:
        """Of a decode step's experts, those to copy at low precision if they miss
        (expert -> bits per weight; HOBBIT). Default: none (every copy is full precision)."""
        return {}

    def refresh_low_precision(self) -> bool:
        """Whether a low-precision copy is replaced by the full-precision one after its layer
        ran (off the critical path), so that later hits are full precision. Default True."""
        return True

    def expert_granular_waits(self) -> bool:
        """Whether a decode step's experts run as their copies land (the resident ones first,
        then each late or missed one) instead of after every copy of the layer has landed.
        Default False: layer-granular waits, one kernel call per layer."""
        return False

    @_default_decision
    def choose(self, ev: LayerEvent, true: Routing, s: Any, u: Any) -> Routing:
        """The experts to execute (lossless strategies: the router's own choice)."""
        return true

    @_default_decision
    def after_routing(self, ev: LayerEvent, executed: Routing, s: Any, u: Any) -> Sequence[Prefetch]:
        """After the layer's routing, before its waits: prefetches for later layers."""
        return ()

    def prediction_cost(self, ev: LayerEvent) -> tuple[float, float, int] | None:
        """The predictor's own work per non-empty prefetch it returned, `(flops, bytes, kernels)`,
        charged on the simulated clock (on CUDA its kernels really ran). None: free."""
        return None

    def victim(self, layer: int, candidates: Sequence[ExpertKey]) -> ExpertKey:
        """Which resident, unlocked expert to evict for one of `layer` (never outside `candidates`)."""
        return self.policy.victim(layer, candidates)

    # -- bookkeeping (cache policy) ----------------------------------------------------------
    def on_access(self, key: ExpertKey, hit: bool) -> None:
        """`key` is executed; `hit`: it was resident with its copy complete."""
        self.policy.on_access(key, hit)

    on_access.delegates_to_policy = on_access   # the protocol calls `policy.on_access` itself

    def on_insert(self, key: ExpertKey) -> None:
        self.policy.on_insert(key)

    def on_evict(self, key: ExpertKey) -> None:
        self.policy.on_evict(key)

    # -- description -------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "lossless": self.traits.lossless,
                "params": to_dict(self.params)}


# ----------------------------------------------------------------------------------------------
# Registry (lm-evaluation-harness style: lazy entries, base-class check, collisions, did-you-mean)
# ----------------------------------------------------------------------------------------------
# The built-ins, listed once (the same lazy entries a plugin's entry point gives).
BUILTINS = {
    "sync": "moebench.strategies.sync:SyncStrategy",
    "lru": "moebench.strategies.lru:LRUStrategy",
    "all-resident": "moebench.strategies.all_resident:AllResidentStrategy",
    "speculative": "moebench.strategies.speculative:SpeculativeStrategy",
    "pre-attention": "moebench.strategies.pre_attention:PreAttentionStrategy",
    "next-gate": "moebench.strategies.next_gate:NextGateStrategy",
    "oracle": "moebench.strategies.oracle:OracleStrategy",
    "lfu": "moebench.strategies.lfu:LFUStrategy",
    "lfru": "moebench.strategies.lfru:LFRUStrategy",
    "arc": "moebench.strategies.arc:ARCStrategy",
    "least-stale": "moebench.strategies.least_stale:LeastStaleStrategy",
    "host-compute": "moebench.strategies.host_compute:HostComputeStrategy",
    "lowbit": "moebench.strategies.lowbit:LowbitStrategy",
}


class Registry:
    """Name -> strategy class. Entries are classes or lazy `"module:Class"` strings, loaded (and
    checked to be `Strategy` subclasses) on first use."""

    def __init__(self) -> None:
        self._entries: dict[str, str | type[Strategy]] = {}
        self._loaded_eps = False

    def register(self, name: str, target: str | type[Strategy], *, replace: bool = False) -> None:
        self._load_entry_points()
        if name in self._entries and not replace and self._entries[name] != target:
            raise UserError(f"strategy '{name}' is already registered ({self._entries[name]}).")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        self._load_entry_points()
        if name not in self._entries:
            raise UserError(f"strategy '{name}' is not registered.")
        del self._entries[name]

    @contextlib.contextmanager
    def registered(self, name: str, target: str | type[Strategy]) -> Iterator[None]:
        """Register `name` for the duration of a `with` block (tests), restoring what was there."""
        self._load_entry_points()
        before = self._entries.get(name)
        self._entries[name] = target
        try:
            yield
        finally:
            if before is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = before

    def reload(self) -> None:
        """Scan the entry points again (a plugin installed while this process runs); what was
        registered explicitly stays."""
        self._loaded_eps = False
        self._load_entry_points()

    def _load_entry_points(self) -> None:
        if self._loaded_eps:
            return
        self._loaded_eps = True
        for name, target in BUILTINS.items():
            self._entries.setdefault(name, target)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._entries.setdefault(ep.name, ep.value)   # a plugin never shadows a built-in

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


def register(name: str) -> Any:
    """Class decorator: `@register("my-prefetcher")` adds the class to the registry."""
    def deco(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"@register('{name}') needs a moebench Strategy subclass, not {cls!r}")
        REGISTRY.register(name, cls)
        return cls
    return deco


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
