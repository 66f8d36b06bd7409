"""`next-gate`: mixtral-offloading's speculative expert loading (Eliseev & Mazur 2023,
arXiv 2312.17238, section 3.2), with an LRU expert cache. Lossless.

In decode, at MoE layer `i` (after its routing, before its experts run), apply the routers of
layers `i+1 .. i+lookahead` to layer `i`'s hidden state and prefetch their top-k guesses; the
true router of every layer still decides what runs, and a wrong guess only costs bytes (and a
demand fetch for the expert really needed). Experts stay in an LRU cache under the budget;
speculative loads go only to experts not already resident.

- `lookahead` (default 1): how many layers ahead to guess; each guess is scored on its own
  (`next-gate+1`, `next-gate+2`, ... in the prediction metrics).
- `input`: `moe_input` (default) feeds layer `i`'s MoE input `u_i = norm2_i(s_i)` to the later
  routers, as mixtral-offloading applies the next gate to the current layer's hidden states;
  `residual` applies layer `j`'s own pre-MoE norm to the residual `s_i` first.
- `scope`: `layer` (mixtral-offloading's per-layer slots, default) or `global` LRU.

Each guess costs one router GEMV on the simulated clock (plus a norm for `input=residual`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from moebench.errors import UserError
from moebench.strategy import LRUPolicy, LayerEvent, Prefetch, Routing, Strategy, StrategyContext, Traits


@dataclass(frozen=True)
class NextGateParams:
    lookahead: int = 1
    input: Literal["moe_input", "residual"] = "moe_input"
    scope: Literal["layer", "global"] = "layer"

    def validate(self, where: str) -> None:
        if self.lookahead < 1:
            raise UserError(f"{where}.lookahead must be at least 1.")


class NextGateStrategy(Strategy):
    name: ClassVar[str] = "next-gate"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    batching: ClassVar[str] = ('predicts per sequence and prefetches the union of the '
                               'predictions')
    source: ClassVar[str] = "mixtral-offloading speculative loading + LRU (arXiv 2312.17238)"
    reads: ClassVar[frozenset[str]] = frozenset({"routing", "hidden"})
    Params: ClassVar[type] = NextGateParams

    @classmethod
    def traits_for(cls, params: Any) -> Traits:
        t = super().traits_for(params)
        return replace(t, reads=t.reads | {"residual"}) if params.input == "residual" else t

    def make_policy(self, ctx: StrategyContext) -> LRUPolicy:
        return LRUPolicy(scope=self.params.scope, n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)

    def check_model(self, shape: Any) -> None:
        d, last = self.params.lookahead, shape.moe_layers - 1
        if d > last:
            raise UserError(
                f"next-gate.lookahead={d} reaches past the last MoE layer: this model has "
                f"{shape.moe_layers} MoE layers, so at most {last} layers ahead can be guessed "
                + ("(with one MoE layer there is nothing to guess: that is `lru`)." if last < 1 else
                   f"(distances {last + 1}..{d} would never predict anything)."))

    def run_notes(self) -> list[str]:
        ctx = self.ctx
        if ctx.n_slots >= ctx.moe_layers * ctx.num_experts:
            return ["next-gate: the budget holds every expert, so nothing is ever evicted and its "
                    "guesses only change each expert's first copy"]
        return []

    def after_routing(self, ev: LayerEvent, executed: Routing, s: Any, u: Any) -> list[Prefetch]:
        if ev.phase != "decode":
            return []
        adapter = self.ctx.adapter
        out = []
        for d in range(1, self.params.lookahead + 1):
            j = ev.layer + d
            if j >= self.ctx.moe_layers:
                break
            if self.params.input == "residual":
                x = adapter.moe[j].norm2.forward(s.reshape(-1, s.shape[-1]))    # [T, H]
            else:
                x = u                                                          # [T, H]
            _, _, ids = adapter.route(j, x)
            experts = tuple(dict.fromkeys(int(e) for e in ids.reshape(-1).tolist()))
            out.append(Prefetch(j, experts, source=f"{self.name}+{d}"))
        return out

    def prediction_cost(self, ev: LayerEvent) -> tuple[float, float, int]:
        sh = self.ctx.shape
        norm = self.params.input == "residual"
        flops = 2.0 * ev.n_tokens * sh.num_experts * sh.hidden + (4.0 * sh.hidden if norm else 0.0)
        return flops, sh.router_bytes(), 3 + (1 if norm else 0)
