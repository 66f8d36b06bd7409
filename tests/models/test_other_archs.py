"""Mixtral and OLMoE are served by the same Qwen-family adapter: a tiny checkpoint of each,
saved to a folder and loaded with `--model PATH`, runs bit-identically through the engine."""
from __future__ import annotations

import pytest
import torch

from moebench.bench import run as runner
from moebench.engine import session
from moebench.config import RunConfig
from tests.helpers import generate_greedy

CONFIGS = {
    "mixtral": dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, vocab_size=4096,
                    max_position_embeddings=256),
    "olmoe": dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, num_experts=16, num_experts_per_tok=4, vocab_size=4096,
                  max_position_embeddings=256, norm_topk_prob=False),
}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_tiny_checkpoint_folder_runs_bit_identically(arch: str, tmp_path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **CONFIGS[arch]), dtype=torch.float32)
    model.save_pretrained(tmp_path / arch)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / arch, dtype=torch.float32).eval()
    cfg = RunConfig(model=str(tmp_path / arch), cache_budget="0.5", clock="sim",
                    workload_overrides={"limit": 2, "max_new_tokens": 4, "warmup_steps": 1})
    prep = session.prepare(cfg)
    assert prep.loaded.shape.arch == arch
    for strategy in ("sync", "lru"):
        piece = runner.run_strategy(prep, strategy)
        for out in piece.outputs:
            assert out["token_ids"] == generate_greedy(reference, out["prompt_token_ids"], 4)
