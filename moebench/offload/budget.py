"""How many expert slots a budget buys for one strategy on one model (live and replay alike)."""
from __future__ import annotations

from typing import Any

from moebench.config import BudgetSpec
from moebench.errors import UserError


def strategy_slots(budget: str, shape: Any, strategy: Any) -> int:
    """The slots of `budget` (or the budget the strategy always runs at, `forces_budget`), refused
    with one sentence when it cannot hold what the strategy needs at once (`min_slots`)."""
    spec = BudgetSpec.parse(strategy.forces_budget or budget)
    n = spec.slots(moe_layers=shape.moe_layers, num_experts=shape.num_experts,
                   expert_bytes=shape.expert_bytes)
    need = strategy.min_slots(shape.top_k, shape.moe_layers)
    if n < need:
        raise UserError(
            f"cache budget '{budget}' holds {n} experts ({n * shape.expert_bytes:,} bytes), "
            f"but '{strategy.name}' needs at least {need} (one layer's top-{shape.top_k} is "
            f"{shape.top_k * shape.expert_bytes:,} bytes).")
    return n
