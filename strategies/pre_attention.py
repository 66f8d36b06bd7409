"""`pre-attention`: the pre-attention expert predictor (Zhu, Bohl, Oester, Alonso, ETH Zurich;
arXiv 2511.10676), following the paper where the published material is specific.

Legend: T tokens, H hidden, E experts per layer, k experts per token, r predictor width.

In decode, at MoE layer `i`, right after `h = norm1_i(x_i)` (the normalised activations just
before layer `i`'s attention, the paper's input) the strategy predicts layer `i`'s own experts
from `h` and starts copying them, so the copy overlaps that layer's attention; unlike
cross-layer predictors it covers layer 0 too (the paper's point). The router then decides what
runs (the true routing: lossless); a prediction miss waits for its demand fetch. Fetched experts
stay in an LRU cache under the budget (`scope` layer or global, as `lru`).

- `predictor=trained` (default): per layer the paper's "2 linear functions" ("2-layer
  predictor"), `scores = W2 act(W1 h + b1) + b2` (`W1 [r, H]`, `W2 [E, r]`), trained by
  `moebench calibrate pre-attention` on the model's own `h` and true routing over the
  calibration text with a ranking-aware loss (listwise cross-entropy against the true router's
  softmax + a top-k margin hinge, `margin`). The predicted set is the top-k of the scores (k =
  the router's). Held-out recall@k and exact-set match (the paper's "accuracy" is an exact-match
  figure) are reported by `calibrate`, on held-out *prompts*.
- `predictor=router`: the zero-training baseline, layer `i`'s own router (and routing rule)
  applied to `h` instead of `norm2_i(s_i)`.

Where the published material is silent, a parameter with a stated default:
`activation` (`relu`; `gelu`, `silu`, or `none` = the old single affine map, no richer than a
refitted router), `width` (`r`, 0 = `2E`: room for the router's full rank as antisymmetric
pairs), `init` (`router`: starts exactly at the router variant; `random`: `nn.Linear`'s
initialisation), `margin` (1.0), `calibration`, `epochs`, `lr`, `holdout` (of the calibration
prompts). Prefill is fetched on demand (the predictor runs in decode only). The predictor's own
compute is charged on the simulated clock (two small GEMVs, or one router GEMV).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from moebench.errors import UserError
from moebench.strategy import LRUPolicy, LayerEvent, Prefetch, Strategy, StrategyContext, Traits


@dataclass(frozen=True)
class PreAttentionParams:
    predictor: Literal["trained", "router"] = "trained"
    scope: Literal["layer", "global"] = "layer"
    activation: Literal["relu", "gelu", "silu", "none"] = "relu"
    width: int = 0
    init: Literal["router", "random"] = "router"
    margin: float = 1.0
    calibration: str = ""
    epochs: int = 200
    lr: float = 0.01
    holdout: float = 0.2

    def validate(self, where: str) -> None:
        if self.width < 0:
            raise UserError(f"{where}.width must not be negative (0 means twice the number of experts).")
        if self.margin < 0:
            raise UserError(f"{where}.margin must not be negative.")
        if self.epochs < 0 or self.lr <= 0 or not 0.0 <= self.holdout < 1.0:
            raise UserError(f"{where}: epochs >= 0, lr > 0 and holdout in [0, 1) are required.")


class PreAttentionStrategy(Strategy):
    name: ClassVar[str] = "pre-attention"
    version: ClassVar[int] = 2             # 2: a non-linear 2-layer predictor, split by prompt
    lossless: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("pre-attention",)
    reads: ClassVar[frozenset[str]] = frozenset({"routing", "hidden"})
    batching: ClassVar[str] = ('predicts per sequence and prefetches the union of the '
                               'predictions')
    source: ClassVar[str] = "pre-attention expert predictor, 2 linear functions (arXiv 2511.10676)"
    Params: ClassVar[type] = PreAttentionParams

    @classmethod
    def traits_for(cls, params: Any) -> Traits:
        t = super().traits_for(params)
        return t if params.predictor == "trained" else replace(t, needs=())

    def make_policy(self, ctx: StrategyContext) -> LRUPolicy:
        return LRUPolicy(scope=self.params.scope, n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)

    def __init__(self, params: Any = None):
        super().__init__(params)
        self.source_name = self.name if self.params.predictor == "trained" else f"{self.name}:router"

    def setup(self, ctx: StrategyContext) -> None:
        from moebench.calibration.predictors import TwoLinear

        super().setup(ctx)
        self.predictors: dict[int, Any] = {}
        if self.params.predictor == "trained":
            t = ctx.artifacts.get("pre-attention") or {}
            for m in range(ctx.moe_layers):
                try:
                    pred = TwoLinear.from_tensors(t, f"layer{m}", self.params.activation)
                except KeyError:
                    raise UserError(f"the pre-attention artifact has no predictor for MoE layer {m}.") from None
                if pred.w1.shape[1] != ctx.shape.hidden or pred.w2.shape[0] != ctx.num_experts:
                    raise UserError("the pre-attention artifact does not fit this model.")
                self.predictors[m] = pred.to(ctx.device)

    def before_attention(self, ev: LayerEvent, h: Any) -> list[Prefetch]:
        if ev.phase != "decode":
            return []
        x = h.reshape(-1, h.shape[-1])                                         # [T, H]
        if self.params.predictor == "trained":
            ids = self.predictors[ev.layer](x).topk(self.ctx.top_k, dim=-1).indices   # [T, k]
        else:
            _, _, ids = self.ctx.adapter.route(ev.layer, x)
        experts = tuple(dict.fromkeys(int(e) for e in ids.reshape(-1).tolist()))
        return [Prefetch(ev.layer, experts, source=self.source_name)]

    def prediction_cost(self, ev: LayerEvent) -> tuple[float, float, int]:
        sh = self.ctx.shape
        if self.params.predictor == "router":
            return 2.0 * ev.n_tokens * sh.num_experts * sh.hidden, sh.router_bytes(), 3
        p = next(iter(self.predictors.values()))
        params = p.w1.numel() + p.w2.numel()
        act = self.params.activation != "none"          # one elementwise kernel over r values
        flops = 2.0 * ev.n_tokens * params + (ev.n_tokens * p.w1.shape[0] if act else 0.0)
        return flops, params * 4.0, 3 + int(act)

    def run_notes(self) -> list[str]:
        """Legal parameter values that make this something less than the paper's predictor."""
        p, ctx, notes = self.params, self.ctx, []
        if p.predictor == "trained" and p.activation == "none":
            notes.append("pre-attention: activation=none makes the two linear functions one affine "
                         "map (rank <= number of experts), no richer than a refitted router")
        if p.predictor == "trained" and p.epochs == 0:
            notes.append("pre-attention: epochs=0, so the trained predictor is its initialisation"
                         + (" (init=router: the router variant, up to its width)" if p.init == "router" else
                            " (init=random: untrained random weights)"))
        if ctx.n_slots >= ctx.moe_layers * ctx.num_experts:
            notes.append("pre-attention: the budget holds every expert, so nothing is ever evicted "
                         "and its predictions only change each expert's first copy")
        return notes
