"""Where experts live: a host store (pinned on CUDA) and the device slot pools they are copied to.

Legend: E experts per layer, S cache slots, H hidden, I expert width.

`HostExpertStore` keeps, per MoE layer, each fused expert tensor as `[E, ...]` in host memory,
contiguous, so expert `e`'s rows are one contiguous block: a fetch is one non-blocking copy per
tensor, straight from pinned memory (never the pageable path, which does not overlap compute).
Evictions need no device->host copy: the host always keeps every expert.

`DevicePools` holds one `[S, ...]` tensor per expert tensor name on the device, allocated once
for the whole budget. Compute reads experts only from here, never from the store, on CPU too.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch


class HostExpertStore:
    def __init__(self, layers: list[dict[str, torch.Tensor]], *, pin: bool):
        # layers[moe_index][name] -> [E, ...] on the host
        self.layers: list[dict[str, torch.Tensor]] = []
        for tensors in layers:
            out = {}
            for name, t in tensors.items():
                t = t.detach().to("cpu").contiguous()
                out[name] = t.pin_memory() if pin and not t.is_pinned() else t
            self.layers.append(out)
        self.pinned = pin
        first = self.layers[0]
        self.num_experts = next(iter(first.values())).shape[0]
        self.expert_bytes = sum(t[0].numel() * t.element_size() for t in first.values())
        self.tensor_specs = {n: (tuple(t.shape[1:]), t.dtype) for n, t in first.items()}

    def make_pools(self, n_slots: int, device: torch.device) -> DevicePools:
        """The device slot pools this store fills (a packed store's unpack on the device)."""
        return DevicePools(self, n_slots, device)

    @classmethod
    def empty(cls, moe_layers: int, specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
              num_experts: int, *, pin: bool) -> HostExpertStore:
        """A store to be filled one expert at a time (lazy checkpoint loading). Allocated pinned
        when `pin` (carved from power-of-two slabs, see `_pinned_layers`), so the experts never
        exist twice in host memory."""
        if pin:
            return cls(_pinned_layers(moe_layers, specs, num_experts), pin=True)
        layers = [{n: torch.empty((num_experts, *shape), dtype=dt) for n, (shape, dt) in specs.items()}
                  for _ in range(moe_layers)]
        return cls(layers, pin=False)

    def write(self, layer: int, expert: int, name: str, value: torch.Tensor) -> None:
        self.layers[layer][name][expert].copy_(value)

    def expert(self, layer: int, expert: int) -> dict[str, torch.Tensor]:
        return {n: t[expert] for n, t in self.layers[layer].items()}

    @property
    def total_bytes(self) -> int:
        return self.expert_bytes * self.num_experts * len(self.layers)


SLAB_BYTES = 1 << 34     # 16 GiB
_ALIGN = 4096


def _pinned_layers(moe_layers: int, specs: dict, num_experts: int) -> list[dict[str, torch.Tensor]]:
    """Pinned `[E, ...]` tensors for every layer, carved from a few large pinned slabs.

    torch's pinned allocator rounds every request up to a power of two (an 805 MB Qwen3-30B
    `gate_up_proj` layer would pin 1 GiB; 77 GB for 58 GB of experts). Slabs that are powers of
    two already, filled in order, waste only the tail of each slab."""
    import math

    items = [(n, (num_experts, *shape), dt) for n, (shape, dt) in specs.items()]
    nbytes = [num_experts * math.prod(shape) * torch.empty((), dtype=dt).element_size()
              for _, (shape, dt) in specs.items()]
    need = [-(-b // _ALIGN) * _ALIGN for b in nbytes]                   # aligned sizes
    remaining = sum(need) * moe_layers
    slab, off = None, 0
    layers = []
    for _ in range(moe_layers):
        out = {}
        for (name, shape, dt), b, a in zip(items, nbytes, need):
            if slab is None or off + a > slab.numel():
                size = max(min(SLAB_BYTES, 1 << (remaining - 1).bit_length()), 1 << (a - 1).bit_length())
                slab, off = torch.empty(size, dtype=torch.uint8, pin_memory=True), 0
            out[name] = slab[off:off + b].view(dt).view(shape)
            off += a
            remaining -= a
        layers.append(out)
    return layers


class DevicePools:
    """The slot tensors on the device; also the `mover` the cache calls to fill a slot.
    `packed` pools hold experts in a packed format and give the kernel an unpacked
    `compute_view`; plain pools are read in place."""

    packed = False

    def __init__(self, store: HostExpertStore, n_slots: int, device: torch.device):
        self.store = store
        self.device = device
        self.non_blocking = device.type == "cuda"
        _MODULE_ATTRS.clear()
        self.pools: dict[str, torch.Tensor] = {
            name: torch.zeros((n_slots, *shape), dtype=dt, device=device)   # [S, ...]
            for name, (shape, dt) in store.tensor_specs.items()
        }
        self.loads = 0
        self._dst: dict[int, tuple] = {}     # slot -> its row of every pool (views, kept)
        self._src: dict[tuple, tuple] = {}   # (layer, expert) -> its rows in the store

    def load(self, key: tuple[int, int], slot: int) -> None:
        dst = self._dst.get(slot)
        if dst is None:
            dst = self._dst[slot] = tuple(pool[slot] for pool in self.pools.values())
        src = self._src.get(key)
        if src is None:
            layer, expert = key
            rows = self.store.layers[layer]
            src = self._src[key] = tuple(rows[name][expert] for name in self.pools)
        nb = self.non_blocking
        for d, s_ in zip(dst, src):
            d.copy_(s_, non_blocking=nb)
        self.loads += 1

    def load_low(self, key: tuple[int, int], slot: int, bits: int) -> None:
        """Copy `key`'s low-precision version (`bits` per weight, one fp16 scale per group of
        `LOWBIT_GROUP` along the last axis; quantised once on the host and kept there) and
        dequantise it into the slot. Tensors under two dimensions (biases) go in full."""
        from moebench.offload.costs import LOWBIT_GROUP

        cache = self.__dict__.setdefault("_low", {})
        q = cache.get((key, bits))
        if q is None:
            layer, expert = key
            q = {n: quantize(t[expert], bits, LOWBIT_GROUP, pin=self.store.pinned)
                 for n, t in self.store.layers[layer].items()}
            cache[(key, bits)] = q
        for name, pool in self.pools.items():
            item = q[name]
            if isinstance(item, torch.Tensor):
                pool[slot].copy_(item, non_blocking=self.non_blocking)
                continue
            packed, scale, shape = item
            p = packed.to(self.device, non_blocking=self.non_blocking)
            s = scale.to(self.device, non_blocking=self.non_blocking)
            pool[slot].copy_(dequantize(p, s, bits, shape).to(pool.dtype))
        self.loads += 1

    @property
    def allocated_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.pools.values())


def _grouped(t: torch.Tensor, group: int) -> tuple[torch.Tensor, int]:
    last = t.shape[-1]
    g = group if last % group == 0 else last
    return t.float().reshape(-1, g), g


def quantize(t: torch.Tensor, bits: int, group: int, pin: bool = False) -> Any:
    """Symmetric group-wise quantisation of a weight to `bits` (8 or 4; 4-bit values packed two
    per byte): `(packed int8/uint8, fp16 scales, shape)`; a tensor under 2-D is kept as is."""
    if t.dim() < 2 or not t.is_floating_point():
        return t.pin_memory() if pin else t
    qmax = (1 << (bits - 1)) - 1
    w, _ = _grouped(t, group)                                    # [G, g]
    # the scale as it will be stored (fp16), so the values are rounded against the scale the
    # device multiplies by
    scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp_min(1e-6).to(torch.float16).float()
    q = torch.clamp(torch.round(w / scale), -qmax, qmax).to(torch.int8)
    if bits == 4:
        u = (q + 8).to(torch.uint8).reshape(-1)
        if u.numel() % 2:
            u = torch.cat([u, u.new_zeros(1)])
        q = (u[0::2] | (u[1::2] << 4)).contiguous()
    scale = scale.to(torch.float16)
    if pin:
        q, scale = q.pin_memory(), scale.pin_memory()
    return q, scale, tuple(t.shape)


def dequantize(packed: torch.Tensor, scale: torch.Tensor, bits: int, shape: tuple) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    if bits == 4:
        lo, hi = (packed & 0xF).to(torch.int16), (packed >> 4).to(torch.int16)
        q = torch.stack([lo, hi], dim=1).reshape(-1)[:n] - 8
    else:
        q = packed.reshape(-1)
    g = scale.shape[0]
    return (q.float().reshape(g, -1) * scale.float()).reshape(shape)


class SlotExperts:
    """A stand-in for a fused experts module whose weights are the slot pools.

    transformers' experts implementations read `self.gate_up_proj[...]`, `self.num_experts`, etc.
    Handing them this object with slot ids in place of expert ids runs the model's own kernels on
    the cache slots, so results are bit-identical to the unmodified model (per-expert matmuls do
    not depend on which other experts share the tensor)."""

    def __init__(self, module: Any, pools: dict[str, torch.Tensor]):
        d = self.__dict__
        seen = _MODULE_ATTRS.get(module)
        if seen:
            d.update(seen)       # the module's flags read before: plain lookups, no __getattr__
        d.update(pools)
        d["_module"] = module
        d["_pools"] = pools
        d["num_experts"] = next(iter(pools.values())).shape[0]

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        pools = d["_pools"]
        if name in pools:
            return pools[name]
        module = d["_module"]
        value = getattr(module, name)
        if not isinstance(value, torch.Tensor):   # flags, act_fn, _apply_gate: fixed per module
            _MODULE_ATTRS.setdefault(module, {})[name] = value
            d[name] = value
        return value


# An experts module's non-tensor attributes that kernels read through `SlotExperts` (cleared
# whenever an engine makes its pools, so a run never sees another run's values).
_MODULE_ATTRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
