"""What the simulator charges for a model, computed from its config alone (no weights needed).

`ModelShape` is pure data: per-expert bytes and FLOPs, non-expert bytes per layer (attention,
router, dense MLPs), the LM head, and the KV bytes a decode step reads. It lets the simulated
clock charge a Qwen3-30B-A3B-sized model on a laptop, and lets `moebench replay` run with no
weights on disk.

Legend: H hidden, I expert width, E experts per MoE layer, k experts per token, V vocabulary,
Hq / Hkv attention / KV heads, d head dim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moebench.errors import UserError

_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "mxfp4": 0.53125}


def dtype_bytes(name: str | None) -> float:
    return _DTYPE_BYTES.get(str(name or "bfloat16").replace("torch.", ""), 2)


@dataclass(frozen=True)
class ModelShape:
    name: str
    arch: str
    hidden: int
    num_layers: int
    moe_layer_ids: tuple[int, ...]
    num_experts: int
    top_k: int
    expert_width: int
    vocab: int
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    expert_bytes: int                 # bytes of one expert as stored on the host (what a copy moves)
    expert_has_bias: bool = False
    dense_mlp_width: int = 0          # width of the plain MLP in dense layers (Qwen3 mlp_only_layers)
    extra: dict = field(default_factory=dict)

    @property
    def moe_layers(self) -> int:
        return len(self.moe_layer_ids)

    @property
    def total_experts(self) -> int:
        return self.moe_layers * self.num_experts

    @property
    def bytes_per_param(self) -> float:
        return dtype_bytes(self.dtype)

    # --- per-token costs (batch 1); FLOPs count a multiply-add as 2 --------------------------
    def expert_flops(self, tokens: int = 1) -> float:
        return 2.0 * 3 * self.hidden * self.expert_width * tokens

    def attention_param_bytes(self) -> float:
        h, d = self.hidden, self.head_dim
        params = h * self.q_heads * d + 2 * h * self.kv_heads * d + self.q_heads * d * h
        return params * self.bytes_per_param

    def kv_bytes(self, context: int) -> float:
        return 2.0 * self.kv_heads * self.head_dim * context * self.bytes_per_param

    def router_bytes(self) -> float:
        return self.num_experts * self.hidden * self.bytes_per_param

    def dense_mlp_bytes(self) -> float:
        return 3.0 * self.hidden * self.dense_mlp_width * self.bytes_per_param

    def lm_head_bytes(self) -> float:
        return self.vocab * self.hidden * self.bytes_per_param


def shape_from_config(cfg: dict[str, Any], *, name: str, dtype: str | None = None,
                      expert_bytes: int | None = None) -> ModelShape:
    """A `ModelShape` from a HF `config.json` mapping of a Qwen3-MoE, Mixtral, OLMoE or GPT-OSS
    model; a config without the keys (or with values that are not numbers) is one sentence."""
    if not isinstance(cfg, dict):
        raise UserError(f"model '{name}': its config is not a JSON object.")
    try:
        return _shape_from_config(cfg, name=name, dtype=dtype, expert_bytes=expert_bytes)
    except KeyError as exc:
        raise UserError(f"model '{name}': its config.json lacks {exc.args[0]!r}, which an MoE "
                        "model's config states.") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"model '{name}': its config.json has a value that is not a number "
                        f"({exc}).") from None


def _shape_from_config(cfg: dict[str, Any], *, name: str, dtype: str | None = None,
                       expert_bytes: int | None = None) -> ModelShape:
    arch = cfg.get("model_type", "qwen3_moe")
    hidden = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    vocab = int(cfg.get("vocab_size", 32000))
    dtype = dtype or str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    if arch == "gpt_oss":
        experts = int(cfg.get("num_local_experts", cfg.get("num_experts", 32)))
        width = int(cfg["intermediate_size"])
        top_k = int(cfg.get("num_experts_per_tok", 4))
        moe_ids = tuple(range(layers))
        has_bias, dense_w = True, 0
        quant = (cfg.get("quantization_config") or {}).get("quant_method")
        if quant == "mxfp4" and expert_bytes is None:
            # MXFP4: 4-bit values + one 8-bit scale per 32 values; biases stay bf16.
            n = 3 * hidden * width
            expert_bytes = int(n // 2 + n // 32 + (2 * width + hidden) * 2)
    else:
        experts = int(cfg.get("num_experts", cfg.get("num_local_experts", 8)))
        width = int(cfg.get("moe_intermediate_size") or cfg.get("intermediate_size"))
        top_k = int(cfg.get("num_experts_per_tok", 2))
        mlp_only = set(cfg.get("mlp_only_layers") or [])
        step = int(cfg.get("decoder_sparse_step", 1) or 1)
        moe_ids = tuple(i for i in range(layers) if i not in mlp_only and (i + 1) % step == 0)
        has_bias = False
        dense_w = int(cfg.get("intermediate_size") or 0) if len(moe_ids) < layers else 0
    if expert_bytes is None:
        params = 3 * hidden * width + ((2 * width + hidden) if has_bias else 0)
        expert_bytes = int(params * dtype_bytes(dtype))
    return ModelShape(
        name=name, arch=arch, hidden=hidden, num_layers=layers, moe_layer_ids=moe_ids,
        num_experts=experts, top_k=top_k, expert_width=width, vocab=vocab, q_heads=heads,
        kv_heads=kv, head_dim=head_dim, dtype=dtype, expert_bytes=int(expert_bytes),
        expert_has_bias=has_bias, dense_mlp_width=dense_w,
    )
