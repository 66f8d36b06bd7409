"""`lfru`: the LFRU expert cache of vLLM PR 37190 (`CachedWeightProvider`). Lossless, replayable.

"Frequency-weighted LRU": evict the resident, unlocked expert with the lowest `freq / age`,
`age = clock - last + 1`. The rule is the PR's (github.com/vllm-project/vllm/pull/37190,
`vllm/model_executor/layers/fused_moe/expert_weight_provider.py`, and its reference
implementation tinyserve, github.com/e1n00r/tinyserve `src/cache_policy.py` `LFRUPolicy`):

- a fetched expert enters with `freq = 1`, `last = clock` after one clock tick;
- each hit ticks the clock once, `freq += 1`, `last = clock`;
- no decay; an evicted expert's counters are dropped (it re-enters at `freq = 1`; the PR's later
  policy file says persistent counters made the ratio worse);
- ties go to the expert loaded first (the PR's scan keeps the first minimum in load order).

Adaptation: the engine gives every fetch a slot and calls `on_insert` then `on_access` for a
demand miss; the access right after an insertion is the reference the insertion counted. A
layer's experts are locked while it runs, as the PR's `needed` set excludes them.

| parameter | default | meaning |
|---|---|---|
| `scope` | `layer` | `layer`: the PR's layout, one cache per MoE layer with its own clock and `n_slots / L` slots (a soft quota, as `lru`'s per-layer scope: a prefill may take more); `global`: tinyserve's, one cache and one clock for all layers |

The policy is `moebench.offload.policies.LFRUPolicy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from moebench.strategy import LFRUPolicy, Strategy, StrategyContext


@dataclass(frozen=True)
class LFRUParams:
    scope: Literal["layer", "global"] = "layer"


class LFRUStrategy(Strategy):
    name: ClassVar[str] = "lfru"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    source: ClassVar[str] = ("vLLM PR 37190 CachedWeightProvider LFRU (evict min freq/age, per layer; "
                             "reference implementation tinyserve, github.com/e1n00r/tinyserve)")
    Params: ClassVar[type] = LFRUParams

    def make_policy(self, ctx: StrategyContext) -> LFRUPolicy:
        return LFRUPolicy(scope=self.params.scope, n_slots=ctx.n_slots, moe_layers=ctx.moe_layers)
