"""One adapter per architecture family: a uniform view of a transformers MoE model.

The engine and the strategies never reach into model internals themselves; they ask the
adapter for layer `i`'s pre-attention norm (`norm1`), pre-MoE norm (`norm2`), router and fused
expert module, and for the architecture's own routing rule. The rule is applied by calling the
model's own router module, so a speculated routing uses exactly the softmax / top-k /
renormalisation of the real one:

- Qwen3-MoE, Mixtral, OLMoE: `mlp.gate` (a TopKRouter): softmax -> top-k -> renormalise when
  `norm_topk_prob` (Mixtral always). Experts: `gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`.
  Qwen2-MoE and DeepSeek-V2 / V3 have the same router and experts interface (DeepSeek's own
  scoring: softmax / sigmoid, group-limited top-k, scaling); their shared experts
  (`mlp.shared_expert(s)`) and dense layers stay ordinary resident modules, never offloaded.
- GPT-OSS: `mlp.router` with a bias: top-k on raw logits, softmax over the k. Experts are
  transposed with biases: `gate_up_proj [E, H, 2I]` (gate/up interleaved), `down_proj [E, I, H]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moebench.errors import UserError

QWEN_FAMILY = ("qwen3_moe", "mixtral", "olmoe", "qwen2_moe", "deepseek_v2", "deepseek_v3")
GPT_OSS_FAMILY = ("gpt_oss",)


@dataclass
class MoELayerView:
    """Handles on one MoE decoder layer (modules belong to the model; nothing is copied)."""

    index: int          # decoder layer index in the model
    moe_index: int      # position among MoE layers
    layer: Any
    norm1: Any          # input_layernorm
    norm2: Any          # post_attention_layernorm
    router: Any         # returns (logits [T, E], weights [T, k], ids [T, k])
    experts: Any        # fused experts module (3-D parameters)


class ArchAdapter:
    family: tuple[str, ...] = ()
    router_attr = "gate"
    expert_param_names: tuple[str, ...] = ("gate_up_proj", "down_proj")

    def __init__(self, model: Any):
        self.model = model
        self.config = model.config
        self.decoder_layers = list(model.model.layers)
        self.moe: list[MoELayerView] = []
        for i, layer in enumerate(self.decoder_layers):
            mlp = layer.mlp
            if not hasattr(mlp, "experts"):
                continue  # a dense layer (Qwen3 mlp_only_layers): plain MLP, no experts
            self.moe.append(MoELayerView(
                index=i, moe_index=len(self.moe), layer=layer, norm1=layer.input_layernorm,
                norm2=layer.post_attention_layernorm, router=getattr(mlp, self.router_attr),
                experts=mlp.experts))
        if not self.moe:
            raise UserError(f"model of type '{self.config.model_type}' has no MoE layers.")

    # -- shapes -----------------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return int(self.moe[0].experts.num_experts)

    @property
    def top_k(self) -> int:
        return int(self.config.num_experts_per_tok)

    def expert_params(self, view: MoELayerView) -> dict[str, Any]:
        """name -> fused parameter `[E, ...]` for every tensor that belongs to the experts."""
        return {n: getattr(view.experts, n) for n in self.expert_param_names}

    # -- routing rule ------------------------------------------------------------------------
    def route(self, moe_index: int, u: Any) -> tuple[Any, Any, Any]:
        """Layer `moe_index`'s own router on MoE input `u [T, H]` -> (logits, weights, ids)."""
        router = self.moe[moe_index].router
        return router(u.reshape(-1, u.shape[-1]))


class QwenFamilyAdapter(ArchAdapter):
    family = QWEN_FAMILY
    router_attr = "gate"
    expert_param_names = ("gate_up_proj", "down_proj")


class GptOssAdapter(ArchAdapter):
    family = GPT_OSS_FAMILY
    router_attr = "router"
    expert_param_names = ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")


def adapter_for(model: Any) -> ArchAdapter:
    mt = getattr(model.config, "model_type", "")
    for cls in (QwenFamilyAdapter, GptOssAdapter):
        if mt in cls.family:
            return cls(model)
    raise UserError(f"model type '{mt}' is not supported; moebench adapts "
                    f"{', '.join(QWEN_FAMILY + GPT_OSS_FAMILY)}.")
