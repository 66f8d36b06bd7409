"""`least-stale`: SpecMD's Least-Stale eviction (Hoang, Jaiswal, Samragh, Cho, "SpecMD: A
Comprehensive Study On Speculative Expert Prefetching", Apple, arXiv 2602.03921, ICML 2026).
Lossless, replayable.

SpecMD's finding (abstract): MoE expert access does not follow temporal locality, so LRU and LFU
are the wrong priors; Least-Stale "exploits MoE's predictable expert access patterns" and cuts
collision misses up to 85x against LRU. The predictable pattern is the layer cycle: a token runs
the MoE layers in order, so once layer `j` has run, its experts cannot be needed before layer `j`
runs again, a whole cycle later, while the experts of the layers about to run may be needed at
once. LRU evicts exactly those (they were used a cycle ago: the least recent), a collision.

`order=cycle` (default): evict the least stale expert, the one whose layer ran most recently:
the running layer's own unused experts (a whole cycle from their next possible use) first, then
the previous layer's, and so on round the cycle, the next layer to run last; within a layer the
least recently used (an expert the current pass used outlives one it did not). The running layer
is the one `before_attention` last announced (`LayerEvent.layer`): the only position
information read, which a trace carries, so replay is exact.

`order=tiers`: tinyserve's `LeastStalePolicy` (github.com/e1n00r/tinyserve `src/cache_policy.py`,
which cites the paper): experts used or loaded in the current forward pass (one engine step) are
fresh, the others stale; evict the oldest stale, else the oldest fresh, both tiers first-in
first-out; the pass boundary is the first `before_attention` of a new `(request, step)`. On
moebench's protocol, where an expert executes at most once per layer and step, this order is the
global last-use order: `order=tiers` decides exactly as `lru --set scope=global` (tested).

The paper's method section was not readable here (only its abstract and the implementations and
summaries cited in docs/strategies.md): `order=cycle` is moebench's reading of the published
description (staleness measured along the layer cycle), not a transcription of the paper.

| parameter | default | meaning |
|---|---|---|
| `order` | `cycle` | `cycle`: least stale layer first (above); `tiers`: tinyserve's fresh/stale FIFO tiers |

The policy is `moebench.offload.policies.LeastStalePolicy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

from moebench.strategy import LayerEvent, LeastStalePolicy, Prefetch, Strategy, StrategyContext


@dataclass(frozen=True)
class LeastStaleParams:
    order: Literal["cycle", "tiers"] = "cycle"


class LeastStaleStrategy(Strategy):
    name: ClassVar[str] = "least-stale"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    source: ClassVar[str] = ("SpecMD Least-Stale (Hoang et al., Apple, arXiv 2602.03921): evict the expert "
                             "of the layer that ran most recently in the layer cycle")
    Params: ClassVar[type] = LeastStaleParams

    def make_policy(self, ctx: StrategyContext) -> LeastStalePolicy:
        return LeastStalePolicy(order=self.params.order, moe_layers=ctx.moe_layers)

    def setup(self, ctx: StrategyContext) -> None:
        self._pass: tuple[int, int] | None = None
        self._layer = -1
        super().setup(ctx)

    def before_attention(self, ev: LayerEvent, h: Any) -> Sequence[Prefetch]:
        # a new pass: another (request, step), or the layer cycle starting over (two warm-up
        # prefills in a row share request -1 and step 0)
        if (ev.request, ev.step) != self._pass or ev.layer <= self._layer:
            self._pass = (ev.request, ev.step)
            self.policy.begin_pass()
        self._layer = ev.layer
        self.policy.at_layer(ev.layer)
        return ()
