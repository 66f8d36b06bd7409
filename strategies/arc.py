"""`arc`: the Adaptive Replacement Cache (Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead
Replacement Cache", FAST 2003) over experts. Lossless, replayable.

Resident lists T1 (experts executed once since they entered) and T2 (executed again), ghost
lists B1 / B2 (keys recently evicted from T1 / T2, no weights), and a target size `p` for T1:
a miss on a B1 ghost raises `p` by `max(1, |B2|/|B1|)`, one on a B2 ghost lowers it by
`max(1, |B1|/|B2|)`; the victim is T1's LRU expert when `|T1| > p` (or `|T1| = p` and the
incoming expert is a B2 ghost), else T2's. `c` is the budget's slot count; one global cache.

Adaptation to moebench's interface (the engine decides insertion: every demand fetch gets a
slot; the policy only picks `victim(layer, candidates)` among resident, unlocked experts):
- the chosen list's least recently used *evictable* expert is evicted, the other list's when
  every expert of the chosen one is locked (a layer's experts are locked while it runs);
- after routing, the strategy tells the policy the layer's executed experts (`expect`), so the
  victim call knows the incoming expert and a ghost hit adapts `p` before the victim is chosen,
  as in the paper;
- an expert's first execution after it was fetched is the reference that fetched it (it stays
  in T1, or in T2 when it came back from a ghost list); each later one moves it to T2's MRU end;
- ghosts are trimmed after each insertion to `|T1| + |B1| <= c` and `|T1|+|T2|+|B1|+|B2| <= 2c`
  (the paper's case IV deletions).
With one expert per layer and nothing locked it is the paper's algorithm access for access
(tested against a transcription of its pseudocode). The policy is
`moebench.offload.policies.ARCPolicy`; no parameters (the paper has none: `p` starts at 0).
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

from moebench.strategy import ARCPolicy, LayerEvent, Prefetch, Routing, Strategy, StrategyContext


class ARCStrategy(Strategy):
    name: ClassVar[str] = "arc"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    source: ClassVar[str] = ("ARC adaptive replacement cache (Megiddo & Modha, FAST 2003): T1/T2 with "
                             "ghosts B1/B2 and an adaptive target p")

    def make_policy(self, ctx: StrategyContext) -> ARCPolicy:
        return ARCPolicy(n_slots=ctx.n_slots)

    def after_routing(self, ev: LayerEvent, executed: Routing, s: Any, u: Any) -> Sequence[Prefetch]:
        self.policy.expect([(ev.layer, e) for e in executed.experts()])
        return ()
