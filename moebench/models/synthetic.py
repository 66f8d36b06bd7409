"""A random model at real per-layer sizes, built for offloading without a checkpoint.

Legend: E experts per MoE layer, H hidden, I expert width.

`random_offloaded(cfg, device=cuda)` builds a model like `load_lazy` does, but from random
numbers: the skeleton has meta parameters, every non-expert weight is created directly on the
device, and each MoE layer's experts are drawn on the device, one layer at a time, and copied
into the (pinned) host store. So a Qwen3-30B-A3B-shaped model with 48 layers needs 58 GB of host
memory for its experts and never more than one layer of experts on the device outside the cache.

Random weights route unrealistically (FACTS.md, "Routing realism"): use the model to measure
copies and kernels, never to rank strategies by hit rate.
"""
from __future__ import annotations

from typing import Any

from moebench.models.checkpoint import build_skeleton


def random_offloaded(cfg: dict, *, name: str, device: Any = None, seed: int = 0,
                     dtype: str = "bfloat16", std: float = 0.02) -> Any:
    """A `LoadedModel` with random weights and `expert_store` filled (see the module doc)."""
    import torch

    from moebench.weights.store import HostExpertStore
    from moebench.models.adapters import adapter_for
    from moebench.models.loading import LoadedModel, _snapshot, load_tokenizer
    from moebench.offload.shapes import shape_from_config

    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype)
    model = build_skeleton(cfg, torch_dtype)
    adapter = adapter_for(model)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    expert_modules = {id(v.experts) for v in adapter.moe}
    owners = {n: m for n, m in model.named_modules()}
    done: dict[int, Any] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owner, _, leaf = pname.rpartition(".")
        mod = owners[owner] if owner else model
        if id(mod) in expert_modules:
            continue
        if id(p) not in done:
            t = torch.empty(tuple(p.shape), dtype=p.dtype, device=dev)
            if p.ndim == 1 and "norm" in pname:
                t.fill_(1.0)                                   # RMSNorm gains
            elif p.ndim == 1:
                t.zero_()                                      # biases, attention sinks
            else:
                t.normal_(0.0, std, generator=gen)
            done[id(p)] = torch.nn.Parameter(t, requires_grad=False)
        mod._parameters[leaf] = done[id(p)]                    # tied weights stay one tensor
    views = adapter.moe
    params = {n: getattr(views[0].experts, n) for n in adapter.expert_param_names}
    specs = {n: (tuple(p.shape[1:]), torch_dtype) for n, p in params.items()}
    num_experts = int(next(iter(params.values())).shape[0])
    pin = dev.type == "cuda"
    store = HostExpertStore.empty(len(views), specs, num_experts, pin=pin)
    for v in views:
        for n, host in store.layers[v.moe_index].items():     # [E, ...]
            t = torch.empty(host.shape, dtype=torch_dtype, device=dev)
            if n.endswith("_bias"):
                t.zero_()
            else:
                t.normal_(0.0, std, generator=gen)
            host.copy_(t)                                      # device -> (pinned) host
            del t
    for v in views:
        for n in adapter.expert_param_names:
            setattr(v.experts, n, torch.nn.Parameter(torch.empty(0, dtype=torch_dtype), requires_grad=False))
    model.to(dev)
    from moebench.models.store_experts import install

    install(model, store)                                   # runnable without the engine too
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    shape = shape_from_config(model.config.to_dict(), name=name, dtype=dtype,
                              expert_bytes=store.expert_bytes)
    loaded = LoadedModel(name, shape.arch, None, None, model, load_tokenizer(None), shape,
                         _snapshot(cfg, f"random-offloaded seed={seed} std={std} dtype={dtype}"))
    loaded.expert_store = store
    loaded.notes = [f"random weights (seed {seed}, std {std}) created on {dev}; experts copied to "
                    f"{'pinned ' if pin else ''}host memory layer by layer: routing is not "
                    "realistic, timings are"]
    return loaded


def load_for_gpu(model: str, *, synthetic_layers: int = 0, device: Any = None, seed: int = 0) -> Any:
    """The model from its weights, or (`synthetic_layers > 0`) a random one at its real sizes
    with that many decoder layers (a preset's config needs no weights on disk)."""
    if synthetic_layers <= 0:
        from moebench.models.loading import load_model

        return load_model(model, seed=seed, device=device)
    from moebench.models.presets import resolve_config

    cfg, name, _, _ = resolve_config(model)
    cfg = dict(cfg, num_hidden_layers=int(synthetic_layers))
    if "layer_types" in cfg:   # per-layer attention kinds repeat with period 2 (GPT-OSS)
        cfg["layer_types"] = [cfg["layer_types"][i % len(cfg["layer_types"])] for i in range(synthetic_layers)]
    if cfg.get("mlp_only_layers"):
        cfg["mlp_only_layers"] = [i for i in cfg["mlp_only_layers"] if i < synthetic_layers]
    dtype = str(cfg.get("dtype") or "bfloat16").replace("torch.", "")
    return random_offloaded(cfg, name=f"{name}-random-{synthetic_layers}L", device=device,
                            seed=seed, dtype=dtype)
