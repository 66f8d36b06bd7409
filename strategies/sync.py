"""`sync`: on-demand synchronous fetch, the baseline everyone reports against.

Per layer: the true router's top-k, copied host->device, waited for, run. Nothing is kept across
layers or tokens, so every decode token moves `k x moe_layers x expert_bytes`. This is the
"on-demand loading of experts from CPU memory" baseline of arXiv 2603.19289 (YALIS
`prefetch_mode="none"`). Prefill fetches the distinct experts its tokens route to, one copy per
expert (not whole layers). Lossless.
"""
from __future__ import annotations

from typing import ClassVar

from moebench.strategy import Strategy


class SyncStrategy(Strategy):
    name: ClassVar[str] = "sync"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    keeps_experts: ClassVar[bool] = False
    batching: ClassVar[str] = ("each layer fetches the union of the batch's experts on demand "
                               'and drops them after use')
    source: ClassVar[str] = "on-demand fetch baseline (arXiv 2603.19289, YALIS prefetch_mode=none)"
