"""Load a model offline: a tiny preset (seeded random init), the embedded trained default, a
real preset from a local folder or the local HF cache, or any local checkpoint folder.

The hub is never contacted: `HF_HUB_OFFLINE=1` is set before transformers is imported.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moebench.errors import UserError
from moebench.models import presets as P
from moebench.models.presets import resolve_config
from moebench.offload.shapes import ModelShape, shape_from_config


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")   # moebench draws its own progress
    import sys

    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@dataclass
class LoadedModel:
    name: str
    arch: str
    hf_id: str | None
    path: Path | None
    model: Any
    tokenizer: Any
    shape: ModelShape
    snapshot: str          # sha256 over config (+ weight index / seed): keys calibration artifacts


def _snapshot(cfg: dict, extra: str) -> str:
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(extra.encode())
    return h.hexdigest()


def load_tokenizer(folder: Path | None) -> Any:
    """The model folder's own tokenizer when it has one, else the bundled one."""
    _offline()
    from transformers import PreTrainedTokenizerFast

    for d in ([folder] if folder else []) + [P.tokenizer_dir()]:
        if d is not None and (d / "tokenizer.json").exists():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
            if tok.eos_token is None:
                tok.eos_token = "<|endoftext|>"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            return tok
    raise UserError("no tokenizer found: the model folder has no tokenizer.json and the bundled "
                    f"tokenizer is missing from {P.tokenizer_dir()}.")


def _build_config(cfg: dict) -> Any:
    _offline()
    from transformers import AutoConfig

    cfg = dict(cfg)
    model_type = cfg.pop("model_type")
    cfg.pop("quantization_config", None)
    return AutoConfig.for_model(model_type, **cfg)


def want_lazy(folder: Path, cfg: dict, lazy: bool | None = None) -> bool:
    """Load a checkpoint folder lazily (`moebench.models.checkpoint`)? `lazy` decides when given;
    else `$MOEBENCH_LAZY_LOAD` (1/0), else: MXFP4 experts, or safetensors of at least
    `$MOEBENCH_LAZY_BYTES` (default 2 GiB), are loaded lazily."""
    if lazy is not None:
        return lazy
    env = os.environ.get("MOEBENCH_LAZY_LOAD", "auto").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    if env not in ("", "auto"):
        raise UserError(f"MOEBENCH_LAZY_LOAD={os.environ['MOEBENCH_LAZY_LOAD']!r} is not one of "
                        "1/true/yes/on, 0/false/no/off or auto.")
    raw = os.environ.get("MOEBENCH_LAZY_BYTES", str(2**31)).strip()
    if not raw.isdigit():
        raise UserError(f"MOEBENCH_LAZY_BYTES={raw!r} is not a whole number of bytes.")
    shards = list(folder.glob("*.safetensors"))
    if not shards:
        return False
    if (cfg.get("quantization_config") or {}).get("quant_method") == "mxfp4":
        return True
    return sum(p.stat().st_size for p in shards) >= int(raw)


def load_model(name_or_path: str, *, seed: int = 0, dtype: str | None = None,
               lazy: bool | None = None, device: Any = None) -> LoadedModel:
    """Load weights on the host (CPU). The engine moves non-expert weights to the device and
    experts into its host store. Checkpoint folders that `want_lazy` go through
    `moebench.models.checkpoint.load_lazy` instead: non-expert weights straight to `device`,
    experts read one at a time into the store (`loaded.expert_store`)."""
    _offline()
    import torch
    from transformers import AutoModelForCausalLM

    cfg, name, preset, folder = resolve_config(name_or_path)
    hf_id = preset.hf_id if preset else None
    if preset is not None and not preset.tiny and folder is None:
        places = "\n  ".join(str(p) for p in P.candidate_dirs(preset)) or "(none)"
        raise UserError(f"model '{name}' ({hf_id}) is not on this machine; looked in: {places} "
                        f"-- download it there, put it in $MOEBENCH_MODELS/{name}, or pass --model PATH.")
    lazily = folder is not None and want_lazy(folder, cfg, lazy)     # (checks $MOEBENCH_LAZY_*)
    if folder is not None:
        check_weight_files(folder)
    if lazily:
        from moebench.models.checkpoint import load_lazy

        return load_lazy(folder, cfg=cfg, name=name, hf_id=hf_id, device=device,
                         dtype=dtype or ("float32" if preset and preset.embedded else None),
                         snapshot=_snapshot(cfg, _weights_index(folder)))
    torch_dtype = getattr(torch, dtype) if dtype else None
    if folder is None:  # tiny preset: seeded random init, float32
        conf = _build_config(cfg)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(conf, dtype=torch_dtype or torch.float32)
        snapshot = _snapshot(cfg, f"random-init seed={seed}")
    else:
        kwargs = {"dtype": torch_dtype or (torch.float32 if preset and preset.embedded else "auto")}
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot load the checkpoint in {folder} (do its weights match its "
                            f"config.json?): {first}") from None
        snapshot = _snapshot(cfg, _weights_index(folder))
    model.eval()
    if getattr(model.config, "model_type", "") == "qwen3_moe" and "norm_topk_prob" not in cfg:
        pass  # transformers' default (False) is kept only when the checkpoint says nothing
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    tok = load_tokenizer(folder)
    dt = str(next(model.parameters()).dtype).replace("torch.", "")
    shape = shape_from_config(model.config.to_dict(), name=name, dtype=dt)
    return LoadedModel(name, shape.arch, hf_id, folder, model, tok, shape, snapshot)


def check_weight_files(folder: Path) -> None:
    """Every `*.safetensors` shard of a checkpoint folder has a readable header that covers the
    file (an empty, truncated or random-bytes file is named here, before anything loads)."""
    from safetensors import safe_open

    for p in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(p), framework="pt") as f:
                f.keys()
        except Exception as exc:   # safetensors raises its own error type for a bad header
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"weights file {p} is not a readable safetensors file ({why}); "
                            "it may be truncated or corrupt.") from None


def _weights_index(folder: Path) -> str:
    parts = []
    for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.index.json")):
        st = p.stat()
        parts.append(f"{p.name}:{st.st_size}")
    return "|".join(parts)
