"""Lazy, offline loading of a real MoE checkpoint: non-expert weights to the device, experts into
the host store one at a time. Nothing else ever holds the experts.

Legend: E experts per MoE layer, H hidden, I expert width, L MoE layers.

    loaded = load_lazy(folder, device=torch.device("cuda"))
    loaded.expert_store          # HostExpertStore (pinned on CUDA), filled expert by expert
    loaded.load_stats            # what was read: tensors, bytes, the largest single expert read

How, and why this way:
1. The model skeleton is built with every *parameter* on the meta device (buffers such as the
   rotary `inv_freq` stay real, so nothing has to be recomputed). A 30B model's skeleton costs
   nothing.
2. Non-expert parameters are read from the safetensors shards one tensor at a time and placed on
   the device. Tied parameters (the LM head and the embedding) share one tensor, as in the model.
3. Experts go straight from the shards into a pre-allocated `HostExpertStore` (pinned when the
   device is CUDA): one expert's tensors per read, so peak host memory is one copy of the experts
   plus one expert. Shards are opened per layer, so at most one layer of the file stays mapped.
   Three layouts are read:
   - hub, one tensor per expert (what `save_pretrained` writes for Qwen3-MoE / OLMoE / Mixtral,
     and how their hub checkpoints ship): `...mlp.experts.{e}.gate_proj.weight [I, H]`, `up_proj`,
     `down_proj [H, I]` (Mixtral `block_sparse_moe.experts.{e}.w1/w3/w2`) -> fused
     `gate_up_proj [E, 2I, H]` (gate rows first) and `down_proj [E, H, I]`;
   - fused 3-D (what `save_pretrained` writes for GPT-OSS): `...mlp.experts.gate_up_proj [E, ..]`
     read one row `[e]` at a time through `get_slice`;
   - GPT-OSS MXFP4 (`gate_up_proj_blocks` / `_scales`, biases): kept packed (see `mxfp4.py`).
4. The experts' own parameters in the model are left as empty placeholders: the engine runs them
   from its device slots, and `OffloadEngine.attach()` takes the prebuilt store as it is.

   Run without the engine (a calibration pass, a reference forward), the model gathers each
   call's experts from the store (`store_experts.py`): the same numerics, never timed.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moebench.errors import UserError

# checkpoint-name fragment -> model-name fragment (older layouts transformers renames on load)
RENAMES = ((".block_sparse_moe.", ".mlp."),)
# per-expert hub names: (gate, up, down) leaf names, tried in order
PER_EXPERT_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


@dataclass
class LoadStats:
    """What the lazy loader read (a test counts these; the result can quote them)."""

    tensors_read: int = 0            # every get_tensor / slice read
    expert_reads: int = 0            # reads that went to the expert store
    bytes_read: int = 0
    expert_bytes_read: int = 0
    max_expert_read_bytes: int = 0   # the largest single expert read (one expert's tensor)
    layout: str = ""                 # per-expert | fused | mxfp4
    files_opened: int = 0
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# the skeleton
# ----------------------------------------------------------------------------------------------
@contextmanager
def params_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device (buffers stay real)."""
    import torch

    original = torch.nn.Module.register_parameter

    def register(self: Any, name: str, param: Any) -> None:
        original(self, name, param)
        p = self._parameters.get(name)
        if p is not None and p.device.type != "meta":
            self._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def build_skeleton(cfg: dict, dtype: Any) -> Any:
    """The transformers model for `cfg` with meta parameters, in eval mode."""
    from moebench.models.loading import _build_config, _offline

    _offline()
    from transformers import AutoModelForCausalLM

    conf = _build_config(cfg)
    with params_on_meta():
        model = AutoModelForCausalLM.from_config(conf, dtype=dtype)
    return model.eval()


def module_names(model: Any) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


# ----------------------------------------------------------------------------------------------
# the checkpoint's tensors
# ----------------------------------------------------------------------------------------------
def _model_key(ckpt_key: str) -> str:
    for old, new in RENAMES:
        ckpt_key = ckpt_key.replace(old, new)
    return ckpt_key


def tensor_index(folder: Path) -> dict[str, tuple[Path, str]]:
    """model-side name -> (shard file, checkpoint name), from the index or the shard headers."""
    from safetensors import safe_open

    idx = folder / "model.safetensors.index.json"
    pairs: list[tuple[str, Path]] = []
    if idx.exists():
        try:
            weight_map = json.loads(idx.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise UserError(f"cannot read {idx}: {exc}.") from None
        pairs = [(k, folder / f) for k, f in weight_map.items()]
    else:
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                pairs.extend((k, f) for k in h.keys())
    if not pairs:
        raise UserError(f"{folder} holds no *.safetensors weights (moebench loads safetensors only).")
    missing = sorted({str(f) for _, f in pairs if not f.exists()})
    if missing:
        raise UserError(f"checkpoint shard {missing[0]} named by the index is missing.")
    return {_model_key(k): (f, k) for k, f in pairs}


class _Reader:
    """Counts every read; opens shards lazily and keeps at most one set open (see `close`)."""

    def __init__(self, index: dict[str, tuple[Path, str]], stats: LoadStats):
        self.index = index
        self.stats = stats
        self._open: dict[Path, Any] = {}

    def _handle(self, path: Path) -> Any:
        from safetensors import safe_open

        h = self._open.get(path)
        if h is None:
            h = safe_open(str(path), framework="pt", device="cpu")
            h.__enter__()
            self._open[path] = h
            self.stats.files_opened += 1
        return h

    def close(self) -> None:
        for h in self._open.values():
            h.__exit__(None, None, None)
        self._open.clear()

    def shape(self, key: str) -> tuple[int, ...]:
        path, name = self.index[key]
        return tuple(self._handle(path).get_slice(name).get_shape())

    def tensor(self, key: str, *, expert: int | None = None, row: int | None = None) -> Any:
        """The whole tensor, or row `row` of a fused `[E, ...]` tensor (only that row is read)."""
        path, name = self.index[key]
        h = self._handle(path)
        t = h.get_tensor(name) if row is None else h.get_slice(name)[row:row + 1][0]
        nbytes = t.numel() * t.element_size()
        self.stats.tensors_read += 1
        self.stats.bytes_read += nbytes
        if expert is not None:
            self.stats.expert_reads += 1
            self.stats.expert_bytes_read += nbytes
            self.stats.max_expert_read_bytes = max(self.stats.max_expert_read_bytes, nbytes)
        return t


# ----------------------------------------------------------------------------------------------
# experts
# ----------------------------------------------------------------------------------------------
def detect_layout(index: dict, prefix: str) -> tuple[str, tuple[str, str, str] | None]:
    """('mxfp4' | 'fused' | 'per-expert', per-expert leaf names) for experts module `prefix`."""
    if f"{prefix}.gate_up_proj_blocks" in index:
        return "mxfp4", None
    if f"{prefix}.gate_up_proj" in index:
        return "fused", None
    for names in PER_EXPERT_NAMES:
        if f"{prefix}.0.{names[0]}.weight" in index:
            return "per-expert", names
    raise UserError(f"the checkpoint has no experts for {prefix} (looked for {prefix}.gate_up_proj, "
                    f"{prefix}.gate_up_proj_blocks and {prefix}.0.gate_proj.weight).")


def _store_specs(layout: str, reader: _Reader, prefix: str, params: dict, dtype: Any) -> dict:
    """name -> (per-expert shape, dtype) of the store for one MoE layer."""
    import torch

    if layout != "mxfp4":
        return {n: (tuple(p.shape[1:]), dtype) for n, p in params.items()}
    specs = {}
    for n in params:
        if n.endswith("_bias"):
            specs[n] = (tuple(params[n].shape[1:]), dtype)
        else:
            for part in ("blocks", "scales"):
                specs[f"{n}_{part}"] = (reader.shape(f"{prefix}.{n}_{part}")[1:], torch.uint8)
    return specs


def _fill_layer(store: Any, m: int, layout: str, names: Any, reader: _Reader, prefix: str,
                num_experts: int) -> None:
    """Expert by expert: read its tensors, write them into the store's rows `[m][.., e]`."""
    layer = store.layers[m]
    for e in range(num_experts):
        if layout == "per-expert":
            g, u, d = names
            gate = reader.tensor(f"{prefix}.{e}.{g}.weight", expert=e)          # [I, H]
            gu = layer["gate_up_proj"][e]                                       # [2I, H]
            if gu.shape[0] != 2 * gate.shape[0] or gu.shape[1:] != gate.shape[1:]:
                raise UserError(f"{prefix}.{e}.{g}.weight has shape {tuple(gate.shape)}, which does "
                                f"not fit the config's experts {tuple(gu.shape)}.")
            i = gate.shape[0]
            gu[:i].copy_(gate)
            del gate
            gu[i:].copy_(reader.tensor(f"{prefix}.{e}.{u}.weight", expert=e))
            layer["down_proj"][e].copy_(reader.tensor(f"{prefix}.{e}.{d}.weight", expert=e))
        else:
            for n, t in layer.items():
                src = reader.tensor(f"{prefix}.{n}", expert=e, row=e)
                if tuple(src.shape) != tuple(t.shape[1:]):
                    raise UserError(f"{prefix}.{n} has per-expert shape {tuple(src.shape)}; the "
                                    f"config expects {tuple(t.shape[1:])}.")
                t[e].copy_(src)


# ----------------------------------------------------------------------------------------------
# the whole model
# ----------------------------------------------------------------------------------------------
def load_lazy(folder: Path, *, cfg: dict, name: str, hf_id: str | None = None, device: Any = None,
              dtype: str | None = None, snapshot: str = "") -> Any:
    """A `LoadedModel` whose experts live only in `loaded.expert_store` (see the module doc)."""
    import torch

    from moebench.weights.store import HostExpertStore
    from moebench.models.adapters import adapter_for
    from moebench.models.loading import LoadedModel, load_tokenizer
    from moebench.weights.mxfp4 import PackedExpertStore
    from moebench.offload.shapes import shape_from_config

    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    stats = LoadStats()
    index = tensor_index(folder)
    torch_dtype = _dtype(dtype or cfg.get("dtype") or cfg.get("torch_dtype"), index, folder)
    model = build_skeleton(cfg, torch_dtype)
    adapter = adapter_for(model)
    names = module_names(model)
    expert_prefixes = {names[id(v.experts)] for v in adapter.moe}
    reader = _Reader(index, stats)
    try:
        _load_non_experts(model, reader, expert_prefixes, dev)
        reader.close()
        views = adapter.moe
        first = names[id(views[0].experts)]
        layout, per_names = detect_layout(index, first)
        stats.layout = layout
        params = {n: getattr(views[0].experts, n) for n in adapter.expert_param_names}
        specs = _store_specs(layout, reader, first, params, torch_dtype)
        num_experts = int(next(iter(params.values())).shape[0])
        pin = dev.type == "cuda"
        if layout == "mxfp4":
            store = PackedExpertStore.empty(len(views), specs, num_experts, pin=pin,
                                            compute_dtype=torch_dtype)
        else:
            store = HostExpertStore.empty(len(views), specs, num_experts, pin=pin)
        for v in views:
            prefix = names[id(v.experts)]
            if detect_layout(index, prefix)[0] != layout:
                raise UserError(f"{prefix} stores its experts differently from {first}.")
            _fill_layer(store, v.moe_index, layout, per_names, reader, prefix, num_experts)
            reader.close()                                  # unmap this layer's shard pages
    finally:
        reader.close()
    for v in views:   # the engine runs experts from its slots; leave empty placeholders
        for n in adapter.expert_param_names:
            setattr(v.experts, n, torch.nn.Parameter(torch.empty(0, dtype=torch_dtype), requires_grad=False))
    model.to(dev)                                           # buffers (rotary tables) follow
    from moebench.models.store_experts import install

    install(model, store)                                   # runnable without the engine too
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    where = "pinned host memory" if pin else "host memory"
    stats.notes.append(f"checkpoint loaded lazily: non-expert weights on {dev}, experts read one at "
                       f"a time from safetensors ({layout} layout) into {where}")
    if layout == "mxfp4":
        stats.notes.append(f"MXFP4 experts kept packed on the host ({store.expert_bytes:,} bytes per "
                           f"expert, copied and budgeted at that size) and unpacked to "
                           f"{str(torch_dtype).replace('torch.', '')} on the device for each layer's compute")
    dt = str(torch_dtype).replace("torch.", "")
    shape = shape_from_config(model.config.to_dict(), name=name, dtype=dt,
                              expert_bytes=store.expert_bytes)
    loaded = LoadedModel(name, shape.arch, hf_id, folder, model, load_tokenizer(folder), shape, snapshot)
    loaded.expert_store = store
    loaded.load_stats = stats
    loaded.notes = list(stats.notes)
    return loaded


def _dtype(name: Any, index: dict, folder: Path) -> Any:
    import torch

    if name:
        dt = getattr(torch, str(name).replace("torch.", ""), None)
        if isinstance(dt, torch.dtype):
            return dt
        raise UserError(f"unknown dtype '{name}' for the checkpoint in {folder}.")
    from safetensors import safe_open

    path, key = next(iter(index.values()))     # no dtype in config.json: the weights say
    with safe_open(str(path), framework="pt") as h:
        code = h.get_slice(key).get_dtype()
    return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(code, torch.bfloat16)


def _load_non_experts(model: Any, reader: _Reader, expert_prefixes: set[str], dev: Any) -> None:
    """Every parameter outside the experts modules, from the checkpoint, straight to `dev`.
    Parameters that are one tensor in the model (tied) are read once and stay one tensor."""
    import torch

    groups: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        if pname.rpartition(".")[0] in expert_prefixes:
            continue
        groups.setdefault(id(p), []).append(pname)
    missing = []
    for pnames in groups.values():
        found = next((n for n in pnames if n in reader.index), None)
        if found is None:
            missing.extend(pnames)
            continue
        ref = model.get_parameter(pnames[0])
        want = tuple(ref.shape)
        got = reader.shape(found)
        if got != want:
            raise UserError(f"checkpoint tensor {reader.index[found][1]} has shape {got}; the config "
                            f"expects {want}.")
        value = reader.tensor(found).to(device=dev, dtype=ref.dtype)
        shared = torch.nn.Parameter(value, requires_grad=False)
        for n in pnames:
            owner, _, leaf = n.rpartition(".")
            (model.get_submodule(owner) if owner else model)._parameters[leaf] = shared
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"the checkpoint lacks {', '.join(missing[:3])}{more}; is it the model its "
                        "config.json describes?")
