"""`lru`: an LRU expert cache under the byte budget (mixtral-offloading, Eliseev & Mazur 2023).

Like `sync`, but fetched experts stay on the device; a miss evicts the least recently used
resident expert. `scope=layer` gives each MoE layer a fixed share of the slots, as
mixtral-offloading does; `scope=global` lets the budget flow to the layers that need it.
The host keeps a pinned copy of every expert, so eviction needs no device->host copy
(mixtral-offloading's swap does one; a design choice, not copied). Lossless.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from moebench.strategy import LRUPolicy, Strategy, StrategyContext


@dataclass(frozen=True)
class LRUParams:
    scope: Literal["layer", "global"] = "layer"


class LRUStrategy(Strategy):
    name: ClassVar[str] = "lru"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    source: ClassVar[str] = "mixtral-offloading LRU expert cache (arXiv 2312.17238)"
    Params: ClassVar[type] = LRUParams

    def make_policy(self, ctx: StrategyContext) -> LRUPolicy:
        return LRUPolicy(scope=self.params.scope, n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)
