"""`speculative`: speculative expert execution with default vectors (arXiv 2603.19289; YALIS,
branch `offload_prefetch`), exactly as published, plus the variants the paper suggests.

Legend: T tokens, H hidden, E experts per layer, k experts per token, L MoE layers.

In MoE layer `i` of a step, *before* layer `i`'s experts run, the strategy predicts layer `i+1`
from what is already computed and starts copying its experts:

    dv_i        = sum_k w_ik * DV_i[e_ik]          # default vectors: unweighted expert outputs [E, H]
    q           = norm2_{i+1}(s_i + dv_i)          # quasi-hidden state: layer i+1's own pre-MoE norm,
                                                   # layer i+1's attention skipped
    (w^, e^)_{i+1} = route_{i+1}(W_gate_{i+1} q)   # layer i+1's own router and routing rule

Layer `i+1` then **executes the speculated ids with the speculated weights**; there is no
correction and the true router of a speculated layer is not part of the strategy (it runs in the
model graph as instrumentation only, so the per-layer hit rate of the speculation can be scored,
and the simulated clock does not charge it). Speculation chains: layer `i`'s `(w, e)` above is
what layer `i` executed, i.e. its own speculated routing. Layer 0 (and every layer below
`speculate_from_layer`) runs its true routing, fetched on demand.

**Prefill** (`speculate_prefill`, default true, the published behaviour): YALIS's
`use_prefetched` is not gated on the engine phase, so prompt tokens run speculated experts too
(each token its own speculation, `T` rows). Their copies follow YALIS's default offload mode
(`cpu_offload_mode="all"`, full layers: YALIS README): with `prefill_fetch=layer` (default) the
whole next layer (all `E` experts) is copied one layer ahead; `prefill_fetch=experts` copies
only the union of the prompt tokens' speculated experts (YALIS `"rows"`). `speculate_prefill=false`
is moebench's version-1 behaviour: the prefill runs its true routing, fetched on demand.

With `cache=none` (published) nothing survives a layer: `keeps_experts=False`, two layers' top-k
are resident at most in decode (this layer's and the next one's prefetch, `min_slots = 2k`), and
every decode token moves exactly the bytes `sync` moves; the gain is only the copy/compute
overlap. A whole-layer prefill copy needs `2E` slots; with fewer, the part that does not fit is
dropped and fetched on demand (said in the result).

Parameters (the unpublished details are choices, documented here and in docs/strategies.md):
- `speculate_from_layer` (default 1): layers `< N` use true routing fetched on demand. It must
  leave a layer to speculate (`N <= L - 1`, else the run is `sync`: refused).
- `speculate_prefill` (default true), `prefill_fetch` (`layer` | `experts`): above.
- `estimator` (`none` | `linear`), `estimator_layers` (default 2): for target layers
  `max(1, N)..estimator_layers` replace layer `j`'s router by a learned copy of it (an `E x H`
  map, plus the bias where the router has one, initialised from the router) fine-tuned by
  `moebench calibrate default-vectors --set estimator=linear` to reproduce the true router
  logits on the quasi states *this strategy builds at run time*: the calibration forward runs
  the same speculation chain (speculated layers execute their speculated experts, prefill
  included when `speculate_prefill`), earlier estimators included. Ranking-aware loss (listwise
  cross-entropy against the true softmax + a top-k margin). The router's own forward applies it,
  so the architecture's softmax / top-k / renormalisation rule is unchanged. When no target is
  speculated (`speculate_from_layer > estimator_layers`) it is not trained and the result says
  it is unused.
- `refetch_on_miss` (default false): lossless variant. The true router decides what runs; the
  speculated experts are prefetched, the missing true ones fetched on demand; `dv` then uses
  the routing the layer executed (the true one).
- `cache` (`none` | `lru`): `lru` keeps fetched experts across tokens under the budget (global
  LRU) and prefetches only speculated experts that are not resident.
- `dv_method` (`mean` | `ema`), `dv_beta` (default 0.9, EMA only): how the default-vector
  tables are averaged (Default MoE uses an EMA during training; the inference code loads frozen
  tables). Default: the plain mean over the calibration tokens.
- `calibration`: the calibration workload (default: the run workload's `calibration`).
- `epochs`, `lr`, `holdout`: estimator training (defaults 200, 0.01, 0.2 of the calibration
  prompts held out).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from moebench.errors import UserError
from moebench.strategy import LayerEvent, Prefetch, Routing, Strategy, StrategyContext, Traits


@dataclass(frozen=True)
class SpeculativeParams:
    speculate_from_layer: int = 1
    speculate_prefill: bool = True
    prefill_fetch: Literal["layer", "experts"] = "layer"
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
    version: ClassVar[int] = 2   # 2: speculates in prefill (whole-layer copies); chained estimator
    lossless: ClassVar[bool] = False          # refetch_on_miss=true makes an instance lossless
    keeps_experts: ClassVar[bool] = False     # cache=lru makes an instance keep them
    reads: ClassVar[frozenset[str]] = frozenset({"routing", "hidden", "residual"})
    needs: ClassVar[tuple[str, ...]] = ("default-vectors",)
    batching: ClassVar[str] = ('speculates per sequence (one quasi-hidden state per token of '
                               "the step), executes each sequence's own speculated experts and"
                               ' prefetches their union one layer ahead; the published '
                               'algorithm assumes batch 1')
    source: ClassVar[str] = "speculative expert execution with default vectors (arXiv 2603.19289, YALIS)"
    Params: ClassVar[type] = SpeculativeParams

    @classmethod
    def traits_for(cls, params: Any) -> Traits:
        return replace(super().traits_for(params), lossless=params.refetch_on_miss,
                       keeps_experts=params.cache == "lru",
                       needs=cls.needs + (("spec-estimator",) if estimator_used(params) else ()))

    def __init__(self, params: Any = None):
        super().__init__(params)
        self._spec: dict[int, Routing] = {}

    def min_slots(self, top_k: int, moe_layers: int) -> int:
        return 2 * top_k      # this layer's experts + the next layer's speculated prefetch

    def estimator_targets(self, moe_layers: int) -> list[int]:
        return estimator_targets(self.params, moe_layers)

    def check_model(self, shape: Any) -> None:
        n, last = self.params.speculate_from_layer, shape.moe_layers - 1
        if n > last:
            raise UserError(
                f"speculative.speculate_from_layer={n} leaves no layer to speculate: this model's "
                f"MoE layers are 0..{last}, so it must be at most {last} (at {n} every layer runs "
                "its true routing fetched on demand: `sync`, or `lru` with cache=lru, not speculation).")

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
        if estimator_used(self.params):
            est = ctx.artifacts.get("spec-estimator") or {}
            for name, t in est.items():
                layer, _, what = name.partition(".")
                j = int(layer.removeprefix("layer"))
                self.estimators.setdefault(j, {})[what] = t.to(ctx.device)
            for j, w in self.estimators.items():
                if tuple(w["weight"].shape) != (shape.num_experts, shape.hidden):
                    raise UserError(f"the speculative estimator for layer {j} does not fit this model.")

    def run_notes(self) -> list[str]:
        p, ctx, notes = self.params, self.ctx, []
        if p.estimator != "none" and not estimator_used(p):
            notes.append(f"speculative: estimator={p.estimator} is unused and was not trained: it "
                         f"serves target layers 1..estimator_layers={p.estimator_layers}, all below "
                         f"speculate_from_layer={p.speculate_from_layer}, which run their true routing")
        elif p.estimator != "none":
            if p.estimator_layers > ctx.moe_layers - 1:
                notes.append(f"speculative: estimator_layers={p.estimator_layers} exceeds the last "
                             f"MoE layer ({ctx.moe_layers - 1}); layers up to it use the estimator")
            if p.epochs == 0:
                notes.append("speculative: epochs=0, so the estimator is an untrained copy of each "
                             "router (the same as estimator=none)")
        if p.speculate_prefill and p.prefill_fetch == "layer":
            notes.append("speculative: prefill runs speculated experts (YALIS) and copies each "
                         "speculated layer whole, one layer ahead (the run-wide note on prefill "
                         "copies does not apply to those layers)")
            if ctx.n_slots < 2 * ctx.num_experts:
                notes.append(f"speculative: the budget holds {ctx.n_slots} experts, fewer than two "
                             f"whole layers ({2 * ctx.num_experts}), so part of each whole-layer "
                             "prefill copy is dropped and those experts are fetched on demand")
        if not p.speculate_prefill and p.prefill_fetch != "layer":
            notes.append(f"speculative: prefill_fetch={p.prefill_fetch} has no effect with "
                         "speculate_prefill=false (the prefill fetches its true routing on demand)")
        if p.dv_method == "mean" and p.dv_beta != SpeculativeParams.dv_beta:
            notes.append(f"speculative: dv_beta={p.dv_beta} has no effect with dv_method=mean")
        if p.cache == "lru" and ctx.n_slots >= ctx.moe_layers * ctx.num_experts:
            notes.append("speculative: cache=lru with a budget that holds every expert: nothing is "
                         "ever evicted, so its prefetches only change each expert's first copy")
        return notes

    def begin_request(self, request: int) -> None:
        self._spec.clear()

    # -- decisions ---------------------------------------------------------------------------
    def _phase_speculated(self, ev: LayerEvent) -> bool:
        return ev.phase == "decode" or self.params.speculate_prefill

    def _speculated(self, ev: LayerEvent) -> bool:
        return self._phase_speculated(ev) and ev.layer >= self.params.speculate_from_layer

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
        if not self._phase_speculated(ev) or j >= self.ctx.moe_layers \
                or j < self.params.speculate_from_layer:
            return []
        spec = self.speculate(ev.layer, executed, s)
        self._spec[j] = spec
        if ev.phase == "prefill" and self.params.prefill_fetch == "layer":
            return [Prefetch(j, tuple(range(self.ctx.num_experts)), source=self.name)]
        return [Prefetch(j, tuple(spec.experts()), source=self.name)]

    def quasi(self, i: int, executed: Routing, s: Any) -> Any:
        """Layer i+1's quasi-hidden state q [T, H] from layer i's residual s [.., T, H] and the
        routing layer i executed: `norm2_{i+1}(s_i + sum_k w DV_i[e])`."""
        from moebench.calibration.predictors import default_vector_estimate

        s2 = s.reshape(-1, s.shape[-1])                                        # [T, H]
        dv = default_vector_estimate(self.dv[i], executed.ids, executed.weights)   # [T, H] f32
        return self.ctx.adapter.moe[i + 1].norm2.forward(s2 + dv.to(s2.dtype))   # .forward: no hooks

    def route_quasi(self, j: int, q: Any) -> Routing:
        """Layer j's speculated routing of q [T, H]: its estimator where it has one, else its own
        router (the architecture's routing rule either way)."""
        from moebench.calibration.predictors import route_with

        if j in self.estimators:
            _, weights, ids = route_with(self.ctx.adapter.moe[j].router, self.estimators[j], q)
        else:
            _, weights, ids = self.ctx.adapter.route(j, q)
        return Routing(ids, weights)

    def speculate(self, i: int, executed: Routing, s: Any) -> Routing:
        """Layer i+1's routing from layer i's residual s [.., T, H] and executed routing."""
        return self.route_quasi(i + 1, self.quasi(i, executed, s))

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


def estimator_targets(params: Any, moe_layers: int) -> list[int]:
    """MoE layers whose speculation uses the learned estimator: the speculated ones among
    1..estimator_layers (layers below `speculate_from_layer` are never speculated)."""
    if params.estimator == "none":
        return []
    first = max(1, params.speculate_from_layer)
    return list(range(first, min(params.estimator_layers, moe_layers - 1) + 1))


def estimator_used(params: Any) -> bool:
    """Whether some speculated layer uses the estimator (shape-free: the model's last layer only
    caps the targets, and `check_model` refuses a speculation that speculates nothing)."""
    return params.estimator != "none" and params.speculate_from_layer <= params.estimator_layers


def _f32() -> Any:
    import torch

    return torch.float32
