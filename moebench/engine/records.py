"""Tensor-free records shared by the live engine and trace replay (no torch import here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepStats:
    """Counters of one forward step (prefill or one decode token)."""

    phase: str
    position: int
    latency_s: float = 0.0
    stall_s: float = 0.0
    copy_busy_s: float = 0.0
    compute_s: float = 0.0
    h2d_bytes: int = 0
    demand_bytes: int = 0
    prefetch_bytes: int = 0
    hits: int = 0
    activations: int = 0
    late: int = 0
    layer_hits: list[int] = field(default_factory=list)
    layer_acts: list[int] = field(default_factory=list)

    def account(self, layer: int, out: Any, n_experts: int) -> None:
        """Add one MoE layer's `LayerOutcome`: bytes always, activations and hits in decode."""
        self.h2d_bytes += out.demand_bytes + out.prefetch_bytes
        self.demand_bytes += out.demand_bytes
        self.prefetch_bytes += out.prefetch_bytes
        if self.phase == "decode":
            self.activations += n_experts
            self.hits += out.hits
            self.late += out.late
            self.layer_hits[layer] += out.hits
            self.layer_acts[layer] += n_experts


def prediction_seconds(strategy: Any, profile: Any, ev: Any, requests: Any) -> float:
    """A predictor's own compute on the simulated clock: each non-empty `Prefetch` costs what the
    strategy's `prediction_cost(ev)` says, `(flops, bytes, kernels)`, as a roofline kernel."""
    cost = getattr(strategy, "prediction_cost", None)
    if not (cost and requests):
        return 0.0
    total = 0.0
    for r in requests:
        if r.experts:
            flops, nbytes, kernels = cost(ev)
            total += profile.kernel_seconds(flops=flops, nbytes=nbytes, kernels=kernels)
    return total
