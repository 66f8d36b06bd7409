"""CUDA-only checks (marked `gpu`, skipped without a GPU): lazy loading onto the device, the CUDA
clock against the simulated one on the same numerics, and profile calibration end to end on a
tiny model. Run on a GPU machine with `PYTHONPATH=. python -m pytest -m gpu tests/engine/test_gpu_cuda.py`."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def lazy_cuda(tmp_path_factory):
    from moebench.models.loading import load_model

    eager = load_model("tiny-qwen3-moe")
    folder = tmp_path_factory.mktemp("tiny")
    eager.model.save_pretrained(folder)
    return load_model(str(folder), lazy=True, device=torch.device("cuda"))


def _prep(loaded, clock, profile="h200-pcie5"):
    from moebench.config import RunConfig
    from moebench.engine.session import prepare

    cfg = RunConfig(model=loaded.name, workload="smoke", clock=clock, profile=profile,
                    workload_overrides={"max_new_tokens": "6", "limit": "2"})
    return prepare(cfg, loaded=loaded)


def test_lazy_load_puts_weights_on_the_device_and_experts_in_pinned_memory(lazy_cuda):
    store = lazy_cuda.expert_store
    assert store.pinned and all(t.is_pinned() for layer in store.layers for t in layer.values())
    dense = [p for p in lazy_cuda.model.parameters() if p.numel() > 0]
    assert dense and all(p.device.type == "cuda" for p in dense)


@pytest.mark.parametrize("strategy", ["sync", "lru"])
def test_cuda_clock_and_simulated_clock_agree_on_tokens(lazy_cuda, strategy):
    from moebench.bench.run import build_result, run_strategy

    results = {}
    for clock in ("cuda", "sim"):
        prep = _prep(lazy_cuda, clock)
        results[clock] = build_result(prep, [run_strategy(prep, strategy, {})])
    cuda, sim = results["cuda"], results["sim"]
    assert cuda["clock"]["label"] == "cuda-events" and sim["clock"]["label"].startswith("simulated:")
    assert [o["token_ids"] for o in cuda["outputs"]] == [o["token_ids"] for o in sim["outputs"]]
    assert cuda["metrics"]["tpot_ms"]["median"] > 0
    assert cuda["budget"]["device_memory_bytes"] > 0
    if strategy == "sync":
        assert cuda["metrics"]["hit_rate"] == 0.0 and cuda["metrics"]["stall_ms_per_token"] > 0


def test_calibrated_profile_loads_and_validate_sim_runs(lazy_cuda, tmp_path):
    from moebench.hardware.measure import calibrate, calibration_prep, profile_from_doc, write_profile
    from moebench.bench.validate_sim import validate

    doc = calibrate(calibration_prep(lazy_cuda, tmp_path))
    assert doc["source"] == "measured" and doc["h2d_bandwidth_gbps"] > 0
    assert len(doc["measured"]["h2d_pinned"]) >= 5 and doc["expert_us"] > 0
    hw = profile_from_doc(doc)
    path = write_profile(doc, tmp_path / "p.yaml")
    report = validate(_prep(lazy_cuda, "cuda", str(path)), hw, ["sync", "lru"])
    assert [r["strategy"] for r in report["rows"]] == ["sync", "lru"]
    assert all(r["tokens_identical"] and r["tpot_rel_error"] is not None for r in report["rows"])
