"""Low-precision copies of missed experts: the quantisation the engine copies and dequantises."""
from __future__ import annotations

import pytest
import torch

from moebench.offload.costs import LOWBIT_GROUP
from moebench.weights.store import dequantize, quantize


@pytest.mark.parametrize("bits", [8, 4])
def test_group_quantisation_round_trips_within_half_a_step(bits: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(96, 128, dtype=torch.bfloat16)
    packed, scale, shape = quantize(w, bits, LOWBIT_GROUP)
    back = dequantize(packed, scale, bits, shape)
    step = scale.float()                                    # one quantisation step per group
    err = (back.reshape(-1, LOWBIT_GROUP) - w.float().reshape(-1, LOWBIT_GROUP)).abs()
    assert bool((err <= step * 0.51 + 1e-6).all())           # half a step (the fp16 scale's rounding)
    # the bytes that cross the link: bits per weight plus one fp16 scale per group
    n = w.numel()
    assert packed.numel() * packed.element_size() == n * bits // 8
    assert scale.numel() * scale.element_size() == (n // LOWBIT_GROUP) * 2


def test_a_bias_is_copied_whole() -> None:
    b = torch.randn(32)
    assert quantize(b, 8, LOWBIT_GROUP) is b


def test_lowbit_runs_lossy_and_its_cost_is_measured() -> None:
    from moebench.bench import run as runner
    from moebench.config import RunConfig
    from moebench.engine import session

    prep = session.prepare(RunConfig(model="tiny-qwen3-moe", clock="sim", cache_budget="0.5",
                                     workload_overrides={"limit": 2, "max_new_tokens": 4}))
    piece = runner.run_strategy(prep, "lowbit", {"bits": 4}, keep_logits=True)
    ref = runner.run_strategy(prep, "lru", {}, keep_logits=True)
    assert piece.strategy["lossless"] is False
    diffs = [float((a - b).abs().max()) for k in ref.logits for a, b in zip(piece.logits[k], ref.logits[k])]
    assert max(diffs) > 0                       # the int4 copies changed the logits: lossy, as labelled
    res = runner.build_result(prep, [piece])
    lru = runner.build_result(prep, [ref])
    assert res["metrics"]["demand_bytes_per_token"] < lru["metrics"]["demand_bytes_per_token"]
