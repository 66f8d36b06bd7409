"""Qwen2-MoE and DeepSeek-V2 / V3 (shared experts, DeepSeek's dense first layers, MLA, grouped
top-k) run through the Qwen-family adapter: a tiny random checkpoint of each, loaded with
`--model PATH`, gives the unmodified model's greedy tokens under lossless strategies, and its
shape has the shared experts and MoE layers its config states."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from moebench.bench import run as runner
from moebench.config import RunConfig
from moebench.engine import session
from moebench.offload.profile import load_profile
from moebench.replay.engine import replay_one
from moebench.replay.traces import load_replay_trace
from tests.helpers import generate_greedy

_DEEPSEEK = dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=16, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, n_shared_experts=2,
                 num_experts_per_tok=4, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None,
                 qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, vocab_size=4096,
                 max_position_embeddings=256)
CONFIGS = {  # arch: (config, MoE layers, shared experts a layer)
    "qwen2_moe": (dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                       shared_expert_intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, vocab_size=4096,
                       max_position_embeddings=256, norm_topk_prob=False), 2, 1),
    "deepseek_v2": (dict(_DEEPSEEK, topk_method="greedy", n_group=1, topk_group=1), 2, 2),
    "deepseek_v3": (dict(_DEEPSEEK, q_lora_rank=16, n_group=4, topk_group=2, norm_topk_prob=True,
                         routed_scaling_factor=2.5), 2, 2),
}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_tiny_shared_expert_checkpoint_runs_bit_identically(arch: str, tmp_path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg, moe_layers, shared = CONFIGS[arch]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **cfg), dtype=torch.float32)
    for mod in model.modules():        # routers that actually discriminate (some init to zeros)
        if type(mod).__name__.endswith("TopkRouter"):
            mod.weight.data.normal_(0, 0.2)
            if hasattr(mod, "e_score_correction_bias"):
                mod.e_score_correction_bias.normal_(0, 0.01)
    model.save_pretrained(tmp_path / arch)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / arch, dtype=torch.float32).eval()
    run = RunConfig(model=str(tmp_path / arch), cache_budget="0.5", clock="sim", record_trace=True,
                    workload_overrides={"limit": 2, "max_new_tokens": 4, "warmup_steps": 1})
    prep = session.prepare(run)
    shape = prep.loaded.shape
    assert (shape.arch, shape.moe_layers, shape.shared_experts) == (arch, moe_layers, shared)
    assert shape.shared_expert_bytes > 0
    for strategy in ("sync", "lru"):
        piece = runner.run_strategy(prep, strategy)
        for out in piece.outputs:
            assert out["token_ids"] == generate_greedy(reference, out["prompt_token_ids"], 4), strategy
    # the replay of its trace charges what the live run charged, shared experts included
    res = runner.build_result(prep, [piece])
    d = tmp_path / "run"
    d.mkdir()
    runner.write_run(prep, res, [piece], out_dir=d)
    rep = replay_one(load_replay_trace(d), "lru", shape=shape, profile=load_profile("a6000-pcie4"),
                     budget="0.5")
    got, want = rep.result["metrics"], res["metrics"]
    assert got["hits"] == want["hits"] and got["tpot_ms"]["mean"] == want["tpot_ms"]["mean"]
    no_shared = replay_one(load_replay_trace(d), "lru", profile=load_profile("a6000-pcie4"), budget="0.5",
                           shape=dataclasses.replace(shape, extra={k: v for k, v in shape.extra.items()
                                                                   if not k.startswith("shared")}))
    assert no_shared.result["metrics"]["tpot_ms"]["mean"] < want["tpot_ms"]["mean"]
