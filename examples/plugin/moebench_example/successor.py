"""`successor`: prefetch the next layer's likely experts from transitions seen in this request."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from moebench.strategy import LayerEvent, LRUPolicy, Prefetch, Routing, Strategy, StrategyContext, UserError


@dataclass(frozen=True)
class SuccessorParams:
    max_prefetch: int = 0          # experts prefetched per layer; 0 means the model's top-k

    def validate(self, where: str) -> None:
        if self.max_prefetch < 0:
            raise UserError(f"{where}.max_prefetch must not be negative (0 means top-k).")


class SuccessorStrategy(Strategy):
    name: ClassVar[str] = "successor"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True                      # executes the router's own experts
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})   # routing only: replayable
    source: ClassVar[str] = "example plugin: online layer-to-layer expert transition counts"
    Params: ClassVar[type] = SuccessorParams

    def make_policy(self, ctx: StrategyContext) -> LRUPolicy:
        return LRUPolicy(scope="layer", n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)

    def begin_request(self, request: int) -> None:
        self.seen: dict[tuple[int, int], Counter] = defaultdict(Counter)  # (layer, e) -> next layer's
        self.prev: list[int] = []                        # the previous layer's experts, this step

    def after_routing(self, ev: LayerEvent, executed: Routing, s: Any, u: Any) -> list[Prefetch]:
        if ev.phase != "decode":                         # learn and predict on decode steps only
            return []
        now = executed.experts()
        for a in self.prev if ev.layer > 0 else ():
            self.seen[(ev.layer - 1, a)].update(now)
        self.prev = now
        if ev.layer + 1 >= self.ctx.moe_layers:
            return []
        votes: Counter = Counter()
        for e in now:
            votes.update(self.seen[(ev.layer, e)])
        k = self.params.max_prefetch or self.ctx.top_k
        best = sorted(votes, key=lambda e: (-votes[e], e))[:k]
        return [Prefetch(ev.layer + 1, tuple(best), source=self.name)] if best else []
