"""A device expert-cache budget resolved for one strategy on one model: the one object the engine
(its slot pool), the result (its budget block) and comparisons (which read that block) all use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moebench.config import BudgetSpec
from moebench.errors import UserError


@dataclass(frozen=True)
class Budget:
    spec: str                 # as the user wrote it (a strategy's forced budget is still stated)
    experts: int              # slots in the device pool
    expert_bytes: int
    total_experts: int        # every expert of the model
    forced: str | None = None  # the budget the strategy always runs at (`forces_budget`), if any

    @property
    def held(self) -> str:
        """The budget the pool actually holds, in the user's terms."""
        return self.forced or self.spec

    @property
    def bytes(self) -> int:
        return self.experts * self.expert_bytes

    @property
    def all_experts_bytes(self) -> int:
        return self.total_experts * self.expert_bytes


def resolve_budget(spec: BudgetSpec | str, shape: Any, strategy: Any) -> Budget:
    """The slots `spec` buys (or the budget the strategy always runs at, `forces_budget`), refused
    with one sentence when it cannot hold what the strategy needs at once (`min_slots`)."""
    given = spec if isinstance(spec, BudgetSpec) else BudgetSpec.parse(spec)
    used = BudgetSpec.parse(strategy.forces_budget) if strategy.forces_budget else given
    n = used.slots(moe_layers=shape.moe_layers, num_experts=shape.num_experts,
                   expert_bytes=shape.expert_bytes,
                   reserved_bytes=int(getattr(shape, "shared_bytes", 0) or 0))
    need = strategy.min_slots(shape.top_k, shape.moe_layers)
    if n < need:
        shared = int(getattr(shape, "shared_bytes", 0) or 0)
        after = f" after the {shared:,} bytes of shared experts" if shared and used.kind == "bytes" else ""
        raise UserError(
            f"cache budget '{given.text}' holds {n} experts ({n * shape.expert_bytes:,} bytes){after}, "
            f"but '{strategy.name}' needs at least {need} (one layer's top-{shape.top_k} is "
            f"{shape.top_k * shape.expert_bytes:,} bytes).")
    return Budget(given.text, n, shape.expert_bytes, shape.total_experts,
                  forced=used.text if strategy.forces_budget else None)
