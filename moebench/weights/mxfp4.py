"""MXFP4 experts (GPT-OSS): kept packed on the host, copied packed, unpacked on the device.

Legend: E experts, n experts a layer computes with, O output rows of a projection, G groups of
32 values along its input, H hidden, I expert width.

An OCP MX FP4 tensor stores every group of 32 values as 16 bytes of 4-bit E2M1 codes (`_blocks
[.., O, G, 16]`, low nibble first) and one shared power-of-two exponent (`_scales [.., O, G]`,
biased by 127). GPT-OSS checkpoints ship the experts that way (`mlp.experts.gate_up_proj_blocks`
and friends; biases stay bf16), so an expert is 13.24 MB instead of 49.8 MB in bf16.

moebench keeps those bytes as they are: the host store holds them, a fetch copies them (so the
link moves, and the cache budget counts, the stored size), and `Mxfp4DevicePools.compute_view`
unpacks only the experts a layer computes with, into the `[n, H, 2I]` / `[n, I, H]` layout of
`GptOssExperts`, right before the model's own experts kernel runs on them. The unpacking is an
exact table lookup and a power-of-two scale, so it matches transformers' dequantiser bit for bit.
"""
from __future__ import annotations

from typing import Any

import torch

from moebench.weights.store import DevicePools, HostExpertStore

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
PACKED = ("gate_up_proj", "down_proj")   # projections stored as _blocks + _scales


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`blocks [.., O, G, 16]` uint8 + `scales [.., O, G]` uint8 -> `[.., G * 32, O]` in `dtype`.

    The result is transposed (input features first), the layout GPT-OSS's experts compute with.
    """
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    lo = lut[(blocks & 0x0F).long()]                                   # [.., O, G, 16]
    hi = lut[(blocks >> 4).long()]                                     # [.., O, G, 16]
    vals = torch.stack((lo, hi), dim=-1).flatten(-2)                   # [.., O, G, 32]
    exp = (scales.to(torch.int32) - 127).unsqueeze(-1)                 # [.., O, G, 1]
    out = torch.ldexp(vals, exp).to(dtype).flatten(-2)                 # [.., O, G * 32]
    return out.transpose(-2, -1).contiguous()                          # [.., G * 32, O]


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`w [.., O, K]` (K a multiple of 32) -> `(blocks [.., O, K/32, 16], scales [.., O, K/32])`.

    Round-to-nearest onto the E2M1 grid with the smallest shared exponent that keeps the group's
    largest magnitude representable. Used to write MXFP4 test checkpoints."""
    *lead, o, k = w.shape
    if k % 32:
        raise ValueError(f"MXFP4 groups 32 values; the input dimension {k} is not a multiple of 32.")
    g = w.float().reshape(*lead, o, k // 32, 32)                       # [.., O, G, 32]
    amax = g.abs().amax(-1).clamp_min(2.0 ** -126)                     # [.., O, G]
    exp = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)          # [.., O, G]
    scaled = g / torch.exp2(exp).unsqueeze(-1)                         # |x| <= 6
    grid = torch.tensor(FP4_VALUES[:8])                                # magnitudes
    code = (scaled.abs().unsqueeze(-1) - grid).abs().argmin(-1)        # [.., O, G, 32]
    code = code + 8 * ((scaled < 0) & (code > 0)).long()               # sign bit
    code = code.to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)                  # low nibble first
    scales = (exp + 127).to(torch.uint8)
    return blocks.contiguous(), scales.contiguous()


class PackedExpertStore(HostExpertStore):
    """A host store whose projections are MXFP4 `_blocks` / `_scales` (biases as they are).

    `expert_bytes` is the stored size (what a copy moves and the budget counts); the engine asks
    the store for its device pools, which know how to unpack (`make_pools`)."""

    layout = "mxfp4"

    def __init__(self, layers: list[dict[str, torch.Tensor]], *, pin: bool,
                 compute_dtype: torch.dtype = torch.bfloat16):
        super().__init__(layers, pin=pin)
        self.compute_dtype = compute_dtype

    @classmethod
    def empty(cls, moe_layers: int, specs: dict, num_experts: int, *, pin: bool,
              compute_dtype: torch.dtype = torch.bfloat16) -> PackedExpertStore:
        store = super().empty(moe_layers, specs, num_experts, pin=pin)
        store.compute_dtype = compute_dtype
        return store

    def make_pools(self, n_slots: int, device: torch.device) -> Mxfp4DevicePools:
        return Mxfp4DevicePools(self, n_slots, device)


class Mxfp4DevicePools(DevicePools):
    """Slot pools of packed experts; `compute_view` unpacks the slots one layer computes with."""

    packed = True

    def __init__(self, store: PackedExpertStore, n_slots: int, device: torch.device):
        super().__init__(store, n_slots, device)
        self.compute_dtype = store.compute_dtype

    def compute_view(self, slot_index: torch.Tensor, used_slots: list[int], lo: int = 0,
                     hi: int | None = None) -> tuple[dict[str, Any], torch.Tensor]:
        """(unpacked tensors `[n, ...]`, `slot_index [T, k]` renumbered 0..n-1).

        `slot_index` and `used_slots` count from slot `lo` (the engine narrows the pools to the
        slot range `lo..hi` a layer touches)."""
        width = (hi if hi is not None else next(iter(self.pools.values())).shape[0] - 1) - lo + 1
        remap = torch.full((width,), -1, dtype=slot_index.dtype)
        remap[torch.tensor(used_slots, dtype=torch.long)] = torch.arange(len(used_slots),
                                                                        dtype=slot_index.dtype)
        used = torch.tensor([lo + s for s in used_slots], dtype=torch.long)
        if self.device.type == "cuda":   # stage in pinned memory: a pageable copy would block the host
            remap = remap.pin_memory().to(self.device, non_blocking=True)
            used = used.pin_memory().to(self.device, non_blocking=True)
        view: dict[str, Any] = {}
        for name, pool in self.pools.items():
            if not name.endswith(("_blocks", "_scales")):
                view[name] = pool.index_select(0, used)                   # [n, ...]
        for p in PACKED:
            view[p] = dequantize(self.pools[f"{p}_blocks"].index_select(0, used),
                                 self.pools[f"{p}_scales"].index_select(0, used), self.compute_dtype)
        return view, remap[slot_index]                                    # [T, k] in 0..n-1
