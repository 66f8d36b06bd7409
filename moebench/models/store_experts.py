"""Let a model whose experts live only in a host store still run as the unmodified model.

Legend: T tokens, H hidden, k experts per token, E experts per layer, n distinct experts a call uses.

`load_lazy` and `random_offloaded` leave empty placeholders where a model's fused expert tensors
were (the experts are in `loaded.expert_store`). Code that runs the model without the engine —
calibration passes, a reference forward — would then fail, so both switch the model to the
experts implementation registered here, `moebench-store`: each call gathers the `n` experts its
tokens route to from the store, puts them on the device and runs the model's own experts kernel
(`grouped_mm`, or whatever the model was configured with) on them. The numerics are those of the
unmodified model; only the speed is not (every call copies its experts: never time this path).

When the engine attaches it switches to its own implementation and, at detach, back to this one;
the engine's "reference kernel" lookup finds this function and calls it on its slot pools, which
hold real weights, so it runs the base kernel on them directly.
"""
from __future__ import annotations

from typing import Any

STORE_IMPL = "moebench-store"


def _store_forward(self: Any, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
    """hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k] -> [T, H]."""
    import torch

    from moebench.weights.store import SlotExperts

    kernel = self._moebench_base_kernel
    first = getattr(self, self._moebench_param_names[0])
    if first.numel() > 0:             # real weights (the engine's slot pools): run them as they are
        return kernel(self, hidden_states, top_k_index, top_k_weights)
    store, m = self._moebench_store
    dev = hidden_states.device
    used = sorted({int(e) for e in top_k_index.reshape(-1).tolist()})
    rows = torch.tensor(used, dtype=torch.long)
    tensors = {}
    for n, t in store.layers[m].items():                                        # t [E, ...]
        if dev.type == "cpu":
            tensors[n] = t.index_select(0, rows)                                # [n, ...]
        else:   # one copy per expert row, straight from the (pinned) store: no host gather
            dst = torch.empty((len(used), *t.shape[1:]), dtype=t.dtype, device=dev)
            for i, e in enumerate(used):
                dst[i].copy_(t[e], non_blocking=store.pinned)
            tensors[n] = dst
    if getattr(store, "layout", "") == "mxfp4":
        from moebench.weights.mxfp4 import PACKED, dequantize

        for p in PACKED:
            tensors[p] = dequantize(tensors.pop(f"{p}_blocks"), tensors.pop(f"{p}_scales"),
                                    store.compute_dtype)
    lut = torch.full((store.num_experts,), -1, dtype=top_k_index.dtype)
    lut[rows] = torch.arange(len(used), dtype=top_k_index.dtype)
    local = lut.to(dev)[top_k_index]                                            # [T, k] in 0..n-1
    return kernel(SlotExperts(self, tensors), hidden_states, local, top_k_weights)


def _base_kernel(model: Any, module: Any) -> Any:
    """The experts function the model is configured with (before this module switched it)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    name = getattr(model.config, "_experts_implementation", None) or "eager"
    if name not in ("eager", STORE_IMPL, "moebench") and name in ALL_EXPERTS_FUNCTIONS:
        return ALL_EXPERTS_FUNCTIONS[name]
    fwd = type(module).forward
    return getattr(fwd, "__wrapped__", fwd)


def install(model: Any, store: Any) -> None:
    """Tag every experts module with the store and switch the model to `moebench-store`."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    from moebench.models.adapters import adapter_for

    adapter = adapter_for(model)
    for v in adapter.moe:
        e = v.experts
        e._moebench_base_kernel = _base_kernel(model, e)
        e._moebench_store = (store, v.moe_index)
        e._moebench_param_names = adapter.expert_param_names
    if STORE_IMPL not in ALL_EXPERTS_FUNCTIONS:
        ExpertsInterface.register(STORE_IMPL, _store_forward)
    model.set_experts_implementation(STORE_IMPL)
