"""`all-resident`: every expert on the device before timing starts; the upper bound on speed when
memory allows. Needs a budget of all experts (`--cache-budget all`, implied). Lossless."""
from __future__ import annotations

from typing import ClassVar

from moebench.strategy import Strategy


class AllResidentStrategy(Strategy):
    name: ClassVar[str] = "all-resident"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing"})
    batching: ClassVar[str] = ('every expert stays resident: a batch changes compute only')
    source: ClassVar[str] = "upper bound: no offloading"
    forces_budget: ClassVar[str] = "all"

    def initial_residents(self, n_slots: int) -> list[tuple[int, int]]:
        shape = self.ctx.shape
        return [(m, e) for m in range(shape.moe_layers) for e in range(shape.num_experts)][:n_slots]
