"""What the simulator charges for a model, computed from its config alone (no weights needed).

`ModelShape` is pure data: per-expert bytes and FLOPs, non-expert bytes per layer (attention,
router, dense MLPs), the LM head, and the KV bytes a decode step reads. It lets the simulated
clock charge a Qwen3-30B-A3B-sized model on a laptop, and lets `moebench replay` run with no
weights on disk.

Legend: H hidden, I expert width, E experts per MoE layer, k experts per token, V vocabulary,
Hq / Hkv attention / KV heads, d head dim.

Families read: Qwen3-MoE / Qwen2-MoE (`num_experts`, `decoder_sparse_step`, `mlp_only_layers`,
`shared_expert_intermediate_size`), Mixtral / OLMoE (`num_local_experts` / `num_experts`),
GPT-OSS (MXFP4 experts), DeepSeek-V2 / V3 (`n_routed_experts`, `n_shared_experts`,
`first_k_dense_replace`, `moe_layer_freq`, multi-head latent attention `kv_lora_rank`,
`q_lora_rank`, FP8 block-quantized experts). Shared experts run on every token of every MoE
layer: they are always resident (never copied), their bytes are charged to the cache budget
(`shared_bytes`), and their compute to each MoE layer. Dense layers (`first_k_dense_replace`,
`mlp_only_layers`) have no experts to move. What only some families have lives in `extra`
(so the shape of a family without it is unchanged).
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

    # --- shared experts (DeepSeek, Qwen2-MoE): resident, run on every token -----------------
    @property
    def shared_experts(self) -> int:
        """Shared experts per MoE layer (0 for most families)."""
        return int(self.extra.get("shared_experts", 0))

    @property
    def shared_expert_width(self) -> int:
        """Width of one MoE layer's shared MLP (all its shared experts together)."""
        return int(self.extra.get("shared_expert_width", 0))

    @property
    def shared_expert_bytes(self) -> int:
        """Bytes of one MoE layer's shared experts (and their gate)."""
        return int(self.extra.get("shared_expert_bytes", 0))

    @property
    def shared_bytes(self) -> int:
        """Bytes of every shared expert of the model: resident, charged to the cache budget."""
        return self.moe_layers * self.shared_expert_bytes

    def shared_expert_flops(self, tokens: int = 1) -> float:
        return 2.0 * 3 * self.hidden * self.shared_expert_width * tokens

    # --- per-token costs (batch 1); FLOPs count a multiply-add as 2 --------------------------
    def expert_flops(self, tokens: int = 1) -> float:
        return 2.0 * 3 * self.hidden * self.expert_width * tokens

    def attention_param_bytes(self) -> float:
        if self.extra.get("attention_params"):            # multi-head latent attention (DeepSeek)
            return float(self.extra["attention_params"]) * self.bytes_per_param
        h, d = self.hidden, self.head_dim
        params = h * self.q_heads * d + 2 * h * self.kv_heads * d + self.q_heads * d * h
        return params * self.bytes_per_param

    def kv_bytes(self, context: int) -> float:
        if self.extra.get("kv_dim"):                      # MLA caches one latent a token
            return float(self.extra["kv_dim"]) * context * self.bytes_per_param
        return 2.0 * self.kv_heads * self.head_dim * context * self.bytes_per_param

    def router_bytes(self) -> float:
        return self.num_experts * self.hidden * self.bytes_per_param

    def dense_mlp_bytes(self) -> float:
        return 3.0 * self.hidden * self.dense_mlp_width * self.bytes_per_param

    def lm_head_bytes(self) -> float:
        return self.vocab * self.hidden * self.bytes_per_param


def shape_from_config(cfg: dict[str, Any], *, name: str, dtype: str | None = None,
                      expert_bytes: int | None = None) -> ModelShape:
    """A `ModelShape` from a HF `config.json` mapping of a Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE,
    GPT-OSS or DeepSeek-V2 / V3 model; a config without the keys (or with values that are not
    numbers) is one sentence."""
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
        experts = int(cfg.get("n_routed_experts") or cfg.get("num_experts")
                      or cfg.get("num_local_experts") or 8)
        width = int(cfg.get("moe_intermediate_size") or cfg.get("intermediate_size"))
        top_k = int(cfg.get("num_experts_per_tok", 2))
        moe_ids = _moe_layer_ids(cfg, layers)
        has_bias = False
        dense_w = int(cfg.get("intermediate_size") or 0) if len(moe_ids) < layers else 0
    extra: dict = {}
    block = _fp8_block(cfg)
    if expert_bytes is None:
        if block is not None:                             # FP8 weights + fp32 scale per block
            expert_bytes = _fp8_mlp_bytes(hidden, width, block)
        else:
            params = 3 * hidden * width + ((2 * width + hidden) if has_bias else 0)
            expert_bytes = int(params * dtype_bytes(dtype))
    n_shared, shared_w = _shared(cfg, width)
    if n_shared and shared_w:
        gate = hidden if cfg.get("shared_expert_intermediate_size") else 0   # Qwen2-MoE's sigmoid gate
        mlp = _fp8_mlp_bytes(hidden, shared_w, block) if block is not None else \
            int(3 * hidden * shared_w * dtype_bytes(dtype))
        extra.update(shared_experts=n_shared, shared_expert_width=shared_w,
                     shared_expert_bytes=int(mlp + gate * dtype_bytes(dtype)))
    if cfg.get("kv_lora_rank"):                           # DeepSeek multi-head latent attention
        nope, rope = int(cfg.get("qk_nope_head_dim") or 128), int(cfg.get("qk_rope_head_dim") or 64)
        v_dim, kv_rank = int(cfg.get("v_head_dim") or 128), int(cfg["kv_lora_rank"])
        q_rank = int(cfg.get("q_lora_rank") or 0)
        q = hidden * q_rank + q_rank * heads * (nope + rope) if q_rank else hidden * heads * (nope + rope)
        extra.update(attention_params=q + hidden * (kv_rank + rope) + kv_rank * heads * (nope + v_dim)
                     + heads * v_dim * hidden, kv_dim=kv_rank + rope)
        head_dim = nope + rope
    return ModelShape(
        name=name, arch=arch, hidden=hidden, num_layers=layers, moe_layer_ids=moe_ids,
        num_experts=experts, top_k=top_k, expert_width=width, vocab=vocab, q_heads=heads,
        kv_heads=kv, head_dim=head_dim, dtype=dtype, expert_bytes=int(expert_bytes),
        expert_has_bias=has_bias, dense_mlp_width=dense_w, extra=extra,
    )


def _moe_layer_ids(cfg: dict[str, Any], layers: int) -> tuple[int, ...]:
    """Decoder layers with routed experts: DeepSeek's first `first_k_dense_replace` layers are
    dense and then every `moe_layer_freq`-th (an int, or a 0/1 list per layer); Qwen's
    `mlp_only_layers` are dense and every `decoder_sparse_step`-th layer is MoE."""
    mlp_only = set(cfg.get("mlp_only_layers") or [])
    first_dense = int(cfg.get("first_k_dense_replace") or 0)
    freq = cfg.get("moe_layer_freq", 1)
    step = int(cfg.get("decoder_sparse_step", 1) or 1)

    def is_moe(i: int) -> bool:
        if i in mlp_only or i < first_dense or (i + 1) % step:
            return False
        if isinstance(freq, list):
            return i < len(freq) and bool(freq[i])
        return i % max(1, int(freq or 1)) == 0
    return tuple(i for i in range(layers) if is_moe(i))


def _shared(cfg: dict[str, Any], width: int) -> tuple[int, int]:
    """(shared experts per MoE layer, width of the layer's shared MLP)."""
    if cfg.get("shared_expert_intermediate_size"):        # Qwen2-MoE: one gated shared expert
        return 1, int(cfg["shared_expert_intermediate_size"])
    n = int(cfg.get("n_shared_experts") or cfg.get("num_shared_experts") or 0)
    w = cfg.get("moe_shared_expert_intermediate_size")
    return n, (int(w) if w else n * width)


def _fp8_block(cfg: dict[str, Any]) -> tuple[int, int] | None:
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") != "fp8":
        return None
    b = q.get("weight_block_size") or [128, 128]
    return int(b[0]), int(b[1])


def _fp8_mlp_bytes(hidden: int, width: int, block: tuple[int, int]) -> int:
    """gate, up [I, H] and down [H, I] in FP8 (1 byte a value) with one fp32 scale per block."""
    def mat(rows: int, cols: int) -> int:
        return rows * cols + (-(-rows // block[0])) * (-(-cols // block[1])) * 4
    return 2 * mat(width, hidden) + mat(hidden, width)
