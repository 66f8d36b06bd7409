"""The run's routing as strategies see it (`ctx.trace`): every MoE layer the engine executes, in
execution order, the untimed warm-up included, indexed for look-ahead. One type, live and in
replay. Pure (no torch, no files): reading and writing traces is `moebench.trace`'s."""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from moebench.errors import UserError

NEVER = math.inf


def row_dict(row: Any) -> dict:
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)


class RoutingTrace:
    """The routing of a whole workload, in execution order, indexed for look-ahead.

    `positions[t] = (request, step, layer)`; `demand[t]` the experts position `t` executes
    (every token of the step); `next_use((layer, e), t)` the first position `>= t` that uses
    expert `e` of `layer`, or `inf`; `predicted[t]` what recorded predictors asked for there.
    It is the one trace type strategies see (`ctx.trace`), live and in replay: the positions are
    every MoE layer the engine executes, the untimed warm-up included (request -1)."""

    def __init__(self, rows: Iterable[Any]):
        self.positions: list[tuple[int, int, int]] = []
        self.demand: list[tuple[int, ...]] = []
        self.index: dict[tuple[int, int, int], int] = {}
        self.uses: dict[tuple[int, int], list[int]] = {}
        self.predicted: list[dict[str, tuple[int, ...]]] = []
        for r in rows:
            d = row_dict(r)
            pos = (int(d.get("request", 0)), int(d["step"]), int(d["layer"]))
            used = d.get("used") or d.get("executed") or d["experts"]
            ids = tuple(dict.fromkeys(int(e) for e in used))
            t = len(self.positions)
            if pos in self.index:
                raise UserError(f"routing trace has position {pos} twice.")
            self.index[pos] = t
            self.positions.append(pos)
            self.demand.append(ids)
            self.predicted.append({k: tuple(int(e) for e in v)
                                   for k, v in (d.get("predicted") or {}).items()})
            for e in ids:
                self.uses.setdefault((pos[2], e), []).append(t)

    def __len__(self) -> int:
        return len(self.positions)

    def position(self, request: int, step: int, layer: int) -> int | None:
        return self.index.get((request, step, layer))

    def next_use(self, key: tuple[int, int], t: float) -> float:
        uses = self.uses.get(key)
        if not uses:
            return NEVER
        i = bisect.bisect_left(uses, t)
        return uses[i] if i < len(uses) else NEVER

    def decode_counts(self, moe_layers: int, num_experts: int) -> list[list[int]]:
        """[L][E] how often each expert runs in the measured decode steps (request >= 0)."""
        counts = [[0] * num_experts for _ in range(moe_layers)]
        for (request, step, layer), ids in zip(self.positions, self.demand):
            if request >= 0 and step >= 1 and layer < moe_layers:
                for e in ids:
                    counts[layer][e] += 1
        return counts
