"""`lowbit`: copy a missed expert at low precision (HOBBIT, arXiv 2411.01433, and its family).

A decode-time miss is copied as an int8 or int4 version of the expert (group-wise symmetric
quantisation, one fp16 scale per 64 weights: about 53% or 28% of a bf16 expert's bytes), which
the engine dequantises into the cache slot; the layer runs on it. The cache is `lru`'s (per
layer). HOBBIT's idea is that a miss of a *less critical* expert need not wait for the full
copy: `full_above` keeps misses whose router weight reaches it at full precision (default 1.0:
every miss is low precision).

`resident=full` (default): after its layer ran, a low-precision copy is replaced by the full
one off the critical path (a later access waits for it if it has not landed), so only the token
that missed uses the low-precision weights. `resident=low` keeps the low-precision copy while
it stays resident (fewer bytes, more error). Prefill copies at full precision.

Lossy: `--accuracy` measures what it costs against the lossless reference (fidelity KL, top-1
agreement, greedy match, task accuracy). Packed (MXFP4) experts are refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from moebench.strategy import LayerEvent, LRUPolicy, Routing, Strategy, StrategyContext, UserError


@dataclass(frozen=True)
class LowbitParams:
    bits: Literal[8, 4] = 8
    resident: Literal["full", "low"] = "full"
    full_above: float = 1.0
    scope: Literal["layer", "global"] = "layer"

    def validate(self, where: str) -> None:
        if not 0.0 <= self.full_above <= 1.0:
            raise UserError(f"{where}.full_above is a router weight, in [0, 1].")


class LowbitStrategy(Strategy):
    name: ClassVar[str] = "lowbit"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = False
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    batching: ClassVar[str] = ('copies misses at full precision at batch size > 1 (the low-'
                               'precision path is a batch-1 decode decision): lowbit then runs'
                               ' as lru')
    source: ClassVar[str] = ("HOBBIT (arXiv 2411.01433): low-precision copies of missed experts, "
                             "int8/int4 group-wise, dequantised on the device")
    Params: ClassVar[type] = LowbitParams

    def make_policy(self, ctx: StrategyContext) -> LRUPolicy:
        return LRUPolicy(scope=self.params.scope, n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)

    def setup(self, ctx: StrategyContext) -> None:
        super().setup(ctx)
        self._weights: dict[int, float] = {}

    def choose(self, ev: LayerEvent, true: Routing, s: Any, u: Any) -> Routing:
        ids = [int(e) for e in true.ids[-1].tolist()]
        w = [float(x) for x in true.weights[-1].tolist()]
        self._weights = dict(zip(ids, w))
        return true

    def miss_precision(self, ev: LayerEvent, experts: list[int]) -> dict[int, int]:
        p = self.params
        return {int(e): int(p.bits) for e in experts
                if not self.ctx.is_resident(ev.layer, int(e)) and self._weights.get(int(e), 0.0) < p.full_above}

    def refresh_low_precision(self) -> bool:
        return self.params.resident == "full"
