"""`moebench calibrate profile` and `moebench validate-sim` without a GPU, and the pure parts they
rest on: the copy fit, the profile document, measured floors in the simulator's costs, the
validate-sim comparison, and the pinned-slab carving of the host store."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from moebench.cli import app

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def _one_sentence(text: str) -> None:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in text, text


@cpu_only
def test_validate_sim_exits_2_on_cpu_with_one_sentence():
    r = CliRunner().invoke(app, ["validate-sim", "--strategies", "sync,lru", "--model", "tiny-qwen3-moe"])
    assert r.exit_code == 2
    _one_sentence(r.output)
    assert "CUDA" in r.output


@cpu_only
def test_calibrate_profile_exits_2_on_cpu_with_one_sentence():
    r = CliRunner().invoke(app, ["calibrate", "profile", "--model", "tiny-qwen3-moe"])
    assert r.exit_code == 2
    _one_sentence(r.output)
    assert "CUDA" in r.output


def test_copy_fit_recovers_latency_and_bandwidth():
    from moebench.hardware.measure import fit_copy

    lat, bw = 9e-6, 52.0
    pts = [(n, lat + n / (bw * 1e9)) for n in (1 << 16, 1 << 20, 1 << 24, 1 << 28)]
    fit = fit_copy(pts)
    assert fit.latency_s == pytest.approx(lat, rel=1e-6)
    assert fit.bandwidth_gbps == pytest.approx(bw, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fit_copy([(1, 2.0), (2, 1.0)])                 # time falling with size: broken data


def test_profile_document_round_trips_into_the_simulator(tmp_path):
    from moebench.offload import costs
    from moebench.models.presets import model_shape
    from moebench.offload.profile import load_profile
    from moebench.hardware.measure import attention_residual_us, fit_copy, profile_document, write_profile

    shape = model_shape("qwen3-30b-a3b")
    pinned = [(n, 8e-6 + n / 50e9) for n in (1 << 16, 1 << 22, 1 << 28)]
    parts = {"expert_us": 12.0, "router_us": 30.0, "lm_head_us": 200.0, "experts_layer_us": 96.0}
    attn = attention_residual_us(30.0, parts, moe_layers=48, top_k=8)
    assert attn == pytest.approx((30000 - 200 - 48 * (30 + 8 * 12)) / 48)
    expert_copy = 2 * 5e-6 + shape.expert_bytes / 50e9      # two tensors per expert
    doc = profile_document(name="cal-test", gpu={"name": "Test GPU", "memory_bytes": 141e9,
                                                 "pcie_gen": 5, "pcie_width": 16},
                           model=shape.name, pinned=pinned, pageable=[(1 << 20, 1e-4), (1 << 24, 1.6e-3)],
                           fit=fit_copy(pinned), expert_copy_s=expert_copy, expert_bytes=shape.expert_bytes,
                           launch_us=4.5, mem_gbps=4300.0, tflops=700.0, parts=parts,
                           decode={"compute_ms": 30.0}, attention_us=attn, created="2026-01-01")
    path = write_profile(doc, tmp_path / "cal.yaml")
    hw = load_profile(str(path))
    assert hw.source == "measured" and hw.calibrated_for == "qwen3-30b-a3b"
    assert hw.h2d_bandwidth_gbps == pytest.approx(50.0, rel=1e-3)
    assert hw.h2d_latency_us == pytest.approx(10.0, abs=0.01)   # per expert copy, not per tensor
    assert hw.copy_seconds(shape.expert_bytes) == pytest.approx(expert_copy, rel=1e-3)
    # the measured batch-1 times are what the simulator now charges at batch 1
    assert costs.expert_seconds(shape, hw, 1) == pytest.approx(12e-6)
    assert costs.router_seconds(shape, hw, 1) == pytest.approx(30e-6)
    assert costs.attention_seconds(shape, hw, 1, 0) == pytest.approx(attn * 1e-6)
    assert costs.lm_head_seconds(shape, hw) == pytest.approx(200e-6)
    public = load_profile("h200-pcie5")                          # not calibrated: the roofline
    assert costs.expert_seconds(shape, public, 1) != pytest.approx(12e-6)


def _result(name, tpot, stall, hit, tokens):
    return {"strategy": {"name": name}, "clock": {"label": "x"}, "outputs": [{"token_ids": tokens}],
            "metrics": {"tpot_ms": {"median": tpot}, "stall_ms_per_token": stall, "hit_rate": hit,
                        "h2d_bytes_per_token": 1.0}}


def test_validate_sim_comparison_and_table():
    from moebench.bench.validate_sim import compare, markdown

    row = compare(_result("lru", 10.0, 4.0, 0.5, [1, 2]), _result("lru", 11.0, 3.0, 0.6, [1, 2]))
    assert row["tpot_rel_error"] == pytest.approx(0.1)
    assert row["stall_rel_error"] == pytest.approx(-0.25)
    assert row["hit_rate_rel_error"] == pytest.approx(0.2)
    assert row["hit_rate_abs_error"] == pytest.approx(0.1)
    assert row["tokens_identical"] and row["within_tolerance"]
    zero = compare(_result("oracle", 5.0, 0.0, 1.0, [1]), _result("oracle", 6.0, 0.0, 1.0, [2]))
    assert zero["stall_rel_error"] is None and zero["stall_abs_error_ms"] == 0.0
    assert not zero["tokens_identical"] and not zero["within_tolerance"]      # 20% > 15%
    report = {"reference_clock": "cuda-events", "model": "m", "profile": "p", "profile_source": "measured",
              "budget": "0.25", "tolerance": 0.15, "rows": [row, zero], "max_abs_tpot_rel_error": 0.2,
              "passed": False}
    md = markdown(report)
    assert "| lru | 10.000 | 11.000 | +10.0% |" in md and "NO" in md and "fail" in md


def test_pinned_store_is_carved_from_power_of_two_slabs(monkeypatch):
    """torch rounds each pinned allocation up to a power of two; the store asks for slabs that
    already are, and carves non-overlapping [E, ...] tensors out of them."""
    import moebench.weights.store as S

    real = torch.empty
    asked = []

    def fake_empty(*args, **kw):
        if kw.pop("pin_memory", False):
            asked.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(S.torch, "empty", fake_empty)
    monkeypatch.setattr(S, "SLAB_BYTES", 1 << 20)
    specs = {"gate_up_proj": ((48, 64), torch.float32), "down_proj": ((64, 24), torch.float32)}
    layers = S._pinned_layers(5, specs, 32)
    assert all(n & (n - 1) == 0 for n in asked)                       # powers of two only
    data = 5 * 32 * (48 * 64 + 64 * 24) * 4
    assert data <= sum(asked) < 1.25 * data                            # vs 2x for per-tensor pins
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * 4) for layer in layers for t in layer.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))         # no two tensors overlap
    assert layers[4]["down_proj"].shape == (32, 64, 24) and layers[4]["down_proj"].is_contiguous()


def test_measured_times_grow_with_tokens_and_context_like_the_roofline():
    from dataclasses import replace

    from moebench.offload import costs
    from moebench.models.presets import model_shape
    from moebench.offload.profile import load_profile

    shape = model_shape("qwen3-30b-a3b")
    public = load_profile("h200-pcie5")
    cal = replace(public, attention_us=150.0, expert_us=20.0)
    grow = costs.attention_seconds(shape, public, 64, 4000) - costs.attention_seconds(shape, public, 1, 0)
    assert costs.attention_seconds(shape, cal, 64, 4000) == pytest.approx(150e-6 + grow)
    e_grow = costs.expert_seconds(shape, public, 512) - costs.expert_seconds(shape, public, 1)
    assert e_grow > 0 and costs.expert_seconds(shape, cal, 512) == pytest.approx(20e-6 + e_grow)
