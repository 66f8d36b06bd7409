"""What each operation costs on the simulated clock (pure; roofline from a hardware profile).

Batch-1 decode on a GPU is memory-bound: every kernel reads its weights once, so a kernel's
time is `max(flops / peak, bytes / (mem_bw * efficiency)) + launches * launch_overhead`.
Kernel counts per operation are those of an eager transformers forward (norm, q/k/v/o
projections, rotary, attention, residual adds; gate_up, activation, down per expert).
"""
from __future__ import annotations

from moebench.offload.shapes import ModelShape
from moebench.offload.profile import HardwareProfile

ATTENTION_KERNELS = 10
ROUTER_KERNELS = 3
EXPERT_KERNELS = 3
LM_HEAD_KERNELS = 3


def _measured(hw: HardwareProfile, field: str, now: float, base: float) -> float:
    """With a calibrated profile's measured batch-1 time (`attention_us`, ...; 0 = none), that
    time plus whatever the roofline adds beyond batch 1 (`now - base`): eager batch-1 decode is
    bound by kernel launches and host work a roofline cannot see."""
    us = getattr(hw, field, 0.0)
    return now if us <= 0 else us * 1e-6 + max(0.0, now - base)


def _attention_roofline(shape: ModelShape, hw: HardwareProfile, tokens: int, context: int,
                        sequences: int = 1) -> float:
    weights = shape.attention_param_bytes()
    kv = sequences * shape.kv_bytes(context + tokens)
    h, d = shape.hidden, shape.head_dim
    flops = sequences * (2.0 * tokens * weights / shape.bytes_per_param
                         + 4.0 * tokens * (context + tokens) * shape.q_heads * d)
    act = sequences * tokens * h * shape.bytes_per_param * 6
    return hw.kernel_seconds(flops=flops, nbytes=weights + kv + act, kernels=ATTENTION_KERNELS)


def attention_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int, context: int,
                      sequences: int = 1) -> float:
    """norm1 + attention of one layer for `tokens` new tokens over `context` cached ones, in each
    of `sequences` sequences (a batch: the weights are read once, the KV cache of each)."""
    return _measured(hw, "attention_us", _attention_roofline(shape, hw, tokens, context, sequences),
                     _attention_roofline(shape, hw, 1, 0))


def _router_roofline(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    flops = 2.0 * tokens * shape.num_experts * shape.hidden
    return hw.kernel_seconds(flops=flops, nbytes=shape.router_bytes(), kernels=ROUTER_KERNELS)


def router_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    return _measured(hw, "router_us", _router_roofline(shape, hw, tokens), _router_roofline(shape, hw, 1))


def _expert_roofline(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    return hw.kernel_seconds(flops=shape.expert_flops(tokens), nbytes=shape.expert_bytes,
                             kernels=EXPERT_KERNELS)


def expert_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    """One expert over the `tokens` routed to it."""
    return _measured(hw, "expert_us", _expert_roofline(shape, hw, tokens), _expert_roofline(shape, hw, 1))


def host_expert_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    """One expert over `tokens` tokens on the host CPU (`hw.host`): it reads the expert's weights
    from DRAM once, as the GPU reads them from HBM."""
    return hw.host.kernel_seconds(flops=shape.expert_flops(tokens), nbytes=shape.expert_bytes,
                                  kernels=EXPERT_KERNELS)


LOWBIT_GROUP = 64     # values per scale of a low-precision expert copy (a stated default)


def lowbit_bytes(shape: ModelShape, bits: int, group: int = LOWBIT_GROUP) -> int:
    """Bytes of one expert copied at `bits` per weight, one fp16 scale per `group` weights
    (HOBBIT-style low-precision transfer of a missed expert)."""
    params = shape.expert_bytes / shape.bytes_per_param
    return int(params * bits / 8 + -(-params // group) * 2)


def activation_bytes(shape: ModelShape, tokens: int) -> int:
    """One hidden state per token, each way across the link for a host-computed expert."""
    return int(tokens * shape.hidden * shape.bytes_per_param)


def host_instead_of_copy(shape: ModelShape, hw: HardwareProfile, tokens: int = 1) -> tuple[float, float]:
    """(seconds to compute one expert on the host, activations both ways included; seconds to
    copy it to the device): Fiddler's per-miss choice, on an idle link and host."""
    act = hw.copy_seconds(activation_bytes(shape, tokens))
    return 2 * act + host_expert_seconds(shape, hw, tokens), hw.copy_seconds(shape.expert_bytes)


def shared_expert_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    """One MoE layer's shared experts (DeepSeek, Qwen2-MoE) over every token: resident weights,
    never copied; 0 for a model without them."""
    if not shape.shared_expert_bytes:
        return 0.0
    return hw.kernel_seconds(flops=shape.shared_expert_flops(tokens), nbytes=shape.shared_expert_bytes,
                             kernels=EXPERT_KERNELS)


def dense_mlp_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int) -> float:
    flops = 2.0 * 3 * shape.hidden * shape.dense_mlp_width * tokens
    return hw.kernel_seconds(flops=flops, nbytes=shape.dense_mlp_bytes(), kernels=EXPERT_KERNELS)


def lm_head_seconds(shape: ModelShape, hw: HardwareProfile, tokens: int = 1) -> float:
    """Final norm + LM head for the last position of each of `tokens` sequences (generation
    reads one row of logits per sequence; the head's weights once)."""
    def roof(n: int) -> float:
        return hw.kernel_seconds(flops=2.0 * n * shape.vocab * shape.hidden,
                                 nbytes=shape.lm_head_bytes(), kernels=LM_HEAD_KERNELS)
    return _measured(hw, "lm_head_us", roof(tokens), roof(1))
