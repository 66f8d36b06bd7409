"""`speculative`: speculative expert execution with default vectors (arXiv 2603.19289; YALIS,
branch `offload_prefetch`), exactly as published, plus the variants the paper suggests.

Legend: T tokens, H hidden, E experts per layer, k experts per token, L MoE layers.

In MoE layer `i` of a decode step, *before* layer `i`'s experts run, the strategy predicts layer
`i+1` from what is already computed and starts copying its experts:

    dv_i        = sum_k w_ik * DV_i[e_ik]          # default vectors: unweighted expert outputs [E, H]
    q           = norm2_{i+1}(s_i + dv_i)          # quasi-hidden state: layer i+1's own pre-MoE norm,
                                                   # layer i+1's attention skipped
    (w^, e^)_{i+1} = route_{i+1}(W_gate_{i+1} q)   # layer i+1's own router and routing rule

Layer `i+1` then **executes the speculated ids with the speculated weights**; there is no
correction and the true router of a speculated layer is not part of the strategy (it runs in the
model graph as instrumentation only, so the per-layer hit rate of the speculation can be scored,
and the simulated clock does not charge it). Speculation chains: layer `i`'s `(w, e)` above is
what layer `i` executed, i.e. its own speculated routing. Layer 0 (and every layer below
`speculate_from_layer`) runs its true routing, fetched on demand; prefill always does.

With `cache=none` (published) nothing survives a layer: `keeps_experts=False`, two layers' top-k
are resident at most (this layer's and the next one's prefetch, `min_slots = 2k`), and every
decode token moves exactly the bytes `sync` moves; the gain is only the copy/compute overlap.

Parameters (the unpublished details are choices, documented here and in docs/strategies.md):
- `speculate_from_layer` (default 1): layers `< N` use true routing fetched on demand.
- `estimator` (`none` | `linear`), `estimator_layers` (default 2): for target layers
  `1..estimator_layers` replace layer `i+1`'s router by a learned copy of it (an `E x H` map,
  plus the bias where the router has one, initialised from the router) fine-tuned by
  `moebench calibrate default-vectors --set estimator=linear` on quasi states of the
  calibration text to reproduce the true router logits (ranking-aware loss: listwise
  cross-entropy against the true softmax + a top-k margin). The router's own forward applies it,
  so the architecture's softmax / top-k / renormalisation rule is unchanged.
- `refetch_on_miss` (default false): lossless variant. The true router decides what runs; the
  speculated experts are prefetched, the missing true ones fetched on demand; `dv` then uses
  the routing the layer executed (the true one).
- `cache` (`none` | `lru`): `lru` keeps fetched experts across tokens under the budget (global
  LRU) and prefetches only speculated experts that are not resident.
- `dv_method` (`mean` | `ema`), `dv_beta` (default 0.9, EMA only): how the default-vector
  tables are averaged (Default MoE uses an EMA during training; the inference code loads frozen
  tables). Default: the plain mean over the calibration tokens.
- `calibration`: the calibration workload (default: the run workload's `calibration`, `smoke`).
- `epochs`, `lr`, `holdout`: estimator training (defaults 200, 0.01, 0.2 held out).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from moebench.errors import UserError
from moebench.strategy import LayerEvent, Prefetch, Routing, Strategy, StrategyContext, Traits


@dataclass(frozen=True)
class SpeculativeParams:
    speculate_from_layer: int = 1
    estimator: Literal["none", "linear"] = "none"
    estimator_layers: int = 2
    refetch_on_miss: bool = False
    cache: Literal["none", "lru"] = "none"
    dv_method: Literal["mean", "ema"] = "mean"
    dv_beta: float = 0.9
    calibration: str = ""
    epochs: int = 200
    lr: float = 0.01
    holdout: float = 0.2

    def validate(self, where: str) -> None:
        if self.speculate_from_layer < 1:
            raise UserError(f"{where}.speculate_from_layer must be at least 1 (layer 0 has nothing "
                            "to speculate from).")
        if not 0.0 < self.dv_beta < 1.0:
            raise UserError(f"{where}.dv_beta must be in (0, 1).")
        if self.estimator_layers < 1:
            raise UserError(f"{where}.estimator_layers must be at least 1.")
        if self.epochs < 0 or self.lr <= 0 or not 0.0 <= self.holdout < 1.0:
            raise UserError(f"{where}: epochs >= 0, lr > 0 and holdout in [0, 1) are required.")


class SpeculativeStrategy(Strategy):
    name: ClassVar[str] = "speculative"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = False          # refetch_on_miss=true makes an instance lossless
    keeps_experts: ClassVar[bool] = False     # cache=lru makes an instance keep them
    reads: ClassVar[frozenset[str]] = frozenset({"routing", "hidden", "residual"})
    needs: ClassVar[tuple[str, ...]] = ("default-vectors",)
    source: ClassVar[str] = "speculative expert execution with default vectors (arXiv 2603.19289, YALIS)"
    Params: ClassVar[type] = SpeculativeParams

    @classmethod
    def traits_for(cls, params: Any) -> Traits:
        return replace(super().traits_for(params), lossless=params.refetch_on_miss,
                       keeps_experts=params.cache == "lru",
                       needs=cls.needs + (("spec-estimator",) if params.estimator != "none" else ()))

    def __init__(self, params: Any = None):
        super().__init__(params)
        self._spec: dict[int, Routing] = {}

    def min_slots(self, top_k: int, moe_layers: int) -> int:
        return 2 * top_k      # this layer's experts + the next layer's speculated prefetch

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        dv = ctx.artifacts.get("default-vectors")
        shape = ctx.shape
        if dv is None or tuple(dv.shape) != (shape.moe_layers, shape.num_experts, shape.hidden):
            got = None if dv is None else tuple(dv.shape)
            raise UserError(f"speculative needs a default-vector table of shape "
                            f"{(shape.moe_layers, shape.num_experts, shape.hidden)}, got {got}.")
        self.dv = dv.to(device=ctx.device, dtype=_f32())                     # [L, E, H]
        self.estimators: dict[int, dict[str, Any]] = {}
        if self.params.estimator != "none":
            est = ctx.artifacts.get("spec-estimator") or {}
            for name, t in est.items():
                layer, _, what = name.partition(".")
                j = int(layer.removeprefix("layer"))
                self.estimators.setdefault(j, {})[what] = t.to(ctx.device)
            for j, w in self.estimators.items():
                if tuple(w["weight"].shape) != (shape.num_experts, shape.hidden):
                    raise UserError(f"the speculative estimator for layer {j} does not fit this model.")

    def begin_request(self, request: int) -> None:
        self._spec.clear()

    # -- decisions ---------------------------------------------------------------------------
    def _speculated(self, ev: LayerEvent) -> bool:
        return ev.phase == "decode" and ev.layer >= self.params.speculate_from_layer

    def uses_router(self, ev: LayerEvent) -> bool:
        """The true router is part of the strategy only where it decides what runs."""
        return self.params.refetch_on_miss or not self._speculated(ev)

    def choose(self, ev: LayerEvent, true: Routing, s: Any, u: Any) -> Routing:
        spec = self._spec.pop(ev.layer, None)
        if not self._speculated(ev) or self.params.refetch_on_miss or spec is None:
            return true
        return Routing(spec.ids.to(true.ids.dtype), spec.weights.to(true.weights.dtype))

    def after_routing(self, ev: LayerEvent, executed: Routing, s: Any, u: Any) -> list[Prefetch]:
        j = ev.layer + 1
        if ev.phase != "decode" or j >= self.ctx.moe_layers or j < self.params.speculate_from_layer:
            return []
        spec = self.speculate(ev.layer, executed, s)
        self._spec[j] = spec
        return [Prefetch(j, tuple(spec.experts()), source=self.name)]

    def speculate(self, i: int, executed: Routing, s: Any) -> Routing:
        """Layer i+1's routing from layer i's residual s [.., T, H] and executed routing."""
        from moebench.calibration.predictors import default_vector_estimate, route_with

        adapter = self.ctx.adapter
        s2 = s.reshape(-1, s.shape[-1])                                        # [T, H]
        dv = default_vector_estimate(self.dv[i], executed.ids, executed.weights)   # [T, H] f32
        nxt = adapter.moe[i + 1]
        q = nxt.norm2.forward(s2 + dv.to(s2.dtype))     # .forward: the engine's norm hooks stay out
        if i + 1 in self.estimators:
            _, weights, ids = route_with(nxt.router, self.estimators[i + 1], q)
        else:
            _, weights, ids = adapter.route(i + 1, q)
        return Routing(ids, weights)

    def prediction_cost(self, ev: LayerEvent) -> tuple[float, float, int]:
        """norm + dv (k rows of the float32 table) + one E x H router GEMV, per predicted layer."""
        sh = self.ctx.shape
        t = ev.n_tokens
        flops = t * (2.0 * sh.num_experts * sh.hidden + 2.0 * sh.top_k * sh.hidden + 4.0 * sh.hidden)
        nbytes = sh.router_bytes() + sh.top_k * sh.hidden * 4 + 3 * t * sh.hidden * sh.bytes_per_param
        return flops, nbytes, 5

    def describe(self) -> dict:
        d = super().describe()
        d["notes"] = ["true router of speculated layers: instrumentation only, not charged on the "
                      "simulated clock (on CUDA it stays in the graph: one E x H GEMV per layer)",
                      "speculation cost (norm, dv, router) charged per predicted layer"]
        return d


def _f32() -> Any:
    import torch

    return torch.float32
