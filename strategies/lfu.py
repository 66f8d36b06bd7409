"""`lfu`: least frequently used expert cache under the byte budget. Lossless, replayable.

On a miss with no free slot, evict the resident, unlocked expert executed the fewest times
(ties: the least recently executed, then the smaller `(layer, expert)` key). Every execution
counts, the one a demand miss is fetched for included. The cache is global (one pool for all
layers).

`counts=persist` (default; version 1's replay-only `lfu`): counts survive eviction, "perfect"
LFU, the frequency statistic that static hot-expert pinning is built on. `counts=resident`:
an evicted expert's count is forgotten (in-cache LFU, as tinyserve's `LFUPolicy`); it re-enters
at the count of the access that fetched it. The policy is `moebench.offload.policies.LFUPolicy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from moebench.strategy import LFUPolicy, Strategy, StrategyContext


@dataclass(frozen=True)
class LFUParams:
    counts: Literal["persist", "resident"] = "persist"


class LFUStrategy(Strategy):
    name: ClassVar[str] = "lfu"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    source: ClassVar[str] = ("least frequently used (counts persist across evictions by default); the "
                             "LFU baseline of SpecMD (arXiv 2602.03921) and tinyserve (github.com/e1n00r/tinyserve)")
    Params: ClassVar[type] = LFUParams

    def make_policy(self, ctx: StrategyContext) -> LFUPolicy:
        return LFUPolicy(counts=self.params.counts)
