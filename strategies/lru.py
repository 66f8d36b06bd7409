"""`lru`: an LRU expert cache under the byte budget (mixtral-offloading, Eliseev & Mazur 2023).

Like `sync`, but fetched experts stay on the device; a miss evicts the least recently used
resident expert. `scope=layer` gives each MoE layer a fixed share of the slots, as
mixtral-offloading does; `scope=global` lets the budget flow to the layers that need it.
The host keeps a pinned copy of every expert, so eviction needs no device->host copy
(mixtral-offloading's swap does one; a design choice, not copied). Lossless.

`waits=layer` (default) runs a layer's experts once all its copies have landed; `waits=expert`
runs the resident experts while the misses load, each missed expert as its copy lands, as
mixtral-offloading does. The engine then calls the experts kernel once per expert and reduces
the partial outputs exactly as the one-call kernel would (eager: from zero in slot order;
grouped/batched: a sum over the top-k axis), so tokens and logits stay bit-identical (tested
on CPU for both kernels); on a GPU a grouped GEMM that chose another algorithm for one group
than for k could differ by rounding, which `--accuracy` fidelity would show.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from moebench.strategy import LRUPolicy, Strategy, StrategyContext


@dataclass(frozen=True)
class LRUParams:
    scope: Literal["layer", "global"] = "layer"
    waits: Literal["layer", "expert"] = "layer"


class LRUStrategy(Strategy):
    name: ClassVar[str] = "lru"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    source: ClassVar[str] = "mixtral-offloading LRU expert cache (arXiv 2312.17238)"
    Params: ClassVar[type] = LRUParams

    def expert_granular_waits(self) -> bool:
        return self.params.waits == "expert"

    def make_policy(self, ctx: StrategyContext) -> LRUPolicy:
        return LRUPolicy(scope=self.params.scope, n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)
