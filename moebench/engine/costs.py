"""What each operation costs on the simulated clock (pure; roofline from a hardware profile).

Batch-1 decode on a GPU is memory-bound: every kernel reads its weights once, so a kernel's
time is `max(flops / peak, bytes / (mem_bw * efficiency)) + launches * launch_overhead`.
Kernel counts per operation are those of an eager transformers forward (norm, q/k/v/o
projections, rotary, attention, residual adds; gate_up, activation, down per expert).
"""
from __future__ import annotations

from moebench.models.shapes import ModelShape
from moebench.profile import HardwareProfile

ATTENTION_KERNELS = 10
ROUTER_KERNELS = 3
EXPERT_KERNELS = 3
LM_HEAD_KERNELS = 3


def _floor(seconds: float, floor_us: float) -> float:
    """A calibrated profile's measured floor (`attention_us`, ...; 0 = none) under the roofline:
    eager batch-1 decode is bound by kernel launches and host work the roofline cannot see."""
    return max(seconds, floor_us * 1e-6) if floor_us > 0 else seconds


def attention_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int, context: int) -> float:
    """norm1 + attention of one layer for `tokens` new tokens over `context` cached ones."""
    weights = shape.attention_param_bytes()
    kv = shape.kv_bytes(context + tokens)
    h, d = shape.hidden, shape.head_dim
    flops = 2.0 * tokens * weights / shape.bytes_per_param \
        + 4.0 * tokens * (context + tokens) * shape.q_heads * d
    act = tokens * h * shape.bytes_per_param * 6
    return _floor(hw.kernel_seconds(flops=flops, nbytes=weights + kv + act, kernels=ATTENTION_KERNELS),
                  getattr(hw, "attention_us", 0.0))


def router_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    flops = 2.0 * tokens * shape.num_experts * shape.hidden
    return _floor(hw.kernel_seconds(flops=flops, nbytes=shape.router_bytes(), kernels=ROUTER_KERNELS),
                  getattr(hw, "router_us", 0.0))


def expert_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    """One expert over the `tokens` routed to it."""
    return _floor(hw.kernel_seconds(flops=shape.expert_flops(tokens), nbytes=shape.expert_bytes,
                                    kernels=EXPERT_KERNELS), getattr(hw, "expert_us", 0.0))


def dense_mlp_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    flops = 2.0 * 3 * shape.hidden * shape.dense_mlp_width * tokens
    return hw.kernel_seconds(flops=flops, nbytes=shape.dense_mlp_bytes(), kernels=EXPERT_KERNELS)


def lm_head_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int = 1) -> float:
    """Final norm + LM head for the last position (generation reads one row of logits)."""
    flops = 2.0 * shape.vocab * shape.hidden
    return _floor(hw.kernel_seconds(flops=flops, nbytes=shape.lm_head_bytes(), kernels=LM_HEAD_KERNELS),
                  getattr(hw, "lm_head_us", 0.0))
