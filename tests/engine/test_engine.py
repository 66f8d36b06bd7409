"""The engine's contracts on tiny presets: lossless strategies are bit-identical to the
unmodified model, byte accounting is exact, the budget is never exceeded, results are
deterministic on the simulated clock."""
from __future__ import annotations

import json

import pytest
import torch

from moebench.bench import run as runner
from moebench.engine import session
from moebench.config import RunConfig
from moebench.models.loading import load_model
from tests.helpers import generate_greedy, reference_decode

SMALL = {"limit": 2, "max_new_tokens": 5, "warmup_steps": 1}
MODELS = ["tiny-qwen3-moe", "tiny-gpt-oss", "tiny-qwen3-trained"]


@pytest.fixture(scope="module", params=MODELS)
def prepared(request: pytest.FixtureRequest) -> tuple[session.Prepared, object]:
    cfg = RunConfig(model=request.param, cache_budget="0.5", clock="sim", workload_overrides=SMALL)
    prep = session.prepare(cfg)
    reference = load_model(request.param, seed=0).model   # an independent, unmodified copy
    return prep, reference


LOSSLESS = [("sync", {}), ("lru", {}), ("all-resident", {}), ("lru", {"waits": "expert"}),
            ("host-compute", {"decide": "always"}), ("host-compute", {"upload_cap": 1})]


@pytest.mark.parametrize("strategy,params", LOSSLESS, ids=[f"{n}{p or ''}" for n, p in LOSSLESS])
def test_lossless_tokens_and_logits_match_unmodified_model(prepared, strategy: str, params: dict) -> None:
    prep, reference = prepared
    piece = runner.run_strategy(prep, strategy, params, keep_logits=True)
    assert piece.outputs, "no output recorded"
    for out in piece.outputs:
        n = len(out["token_ids"])
        assert out["token_ids"] == generate_greedy(reference, out["prompt_token_ids"], n)
        ref_tokens, ref_logits = reference_decode(reference, out["prompt_token_ids"], n)
        got = piece.logits[(0, out["prompt_id"])]
        assert ref_tokens == out["token_ids"]
        assert len(got) == len(ref_logits)
        for a, b in zip(got, ref_logits):
            assert torch.equal(a, b), "logits differ from the unmodified model"


def test_engine_detach_restores_the_model(prepared) -> None:
    prep, reference = prepared
    runner.run_strategy(prep, "lru")
    prompt = list(prep.requests[0].input_ids)
    assert reference_decode(prep.loaded.model, prompt, 3)[0] == reference_decode(reference, prompt, 3)[0]


def test_sync_moves_exactly_topk_layers_expert_bytes_per_token(prepared) -> None:
    prep, _ = prepared
    shape = prep.loaded.shape
    piece = runner.run_strategy(prep, "sync")
    steps = [s for s in piece.samples if s["kind"] == "step"]
    assert steps
    expected = shape.top_k * shape.moe_layers * shape.expert_bytes
    assert all(s["h2d_bytes"] == expected for s in steps)
    assert all(s["hits"] == 0 for s in steps)


def test_lru_with_every_expert_hits_after_warmup_and_moves_nothing() -> None:
    cfg = RunConfig(model="tiny-qwen3-moe", cache_budget="all", clock="sim",
                    workload_overrides={**SMALL, "repetitions": 2})
    prep = session.prepare(cfg)
    piece = runner.run_strategy(prep, "lru")
    second = [s for s in piece.samples if s["kind"] == "step" and s["repetition"] == 1]
    assert second
    assert all(s["hits"] == s["activations"] > 0 for s in second)
    assert all(s["h2d_bytes"] == 0 for s in second)
    assert piece.peak_expert_bytes <= piece.budget.bytes


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_lru_hit_rate_does_not_fall_as_budget_grows(scope: str) -> None:
    rates = []
    for budget in ("0.25", "0.5", "0.75", "all"):
        cfg = RunConfig(model="tiny-qwen3-moe", cache_budget=budget, clock="sim",
                        workload_overrides=SMALL)
        prep = session.prepare(cfg)
        res = runner.build_result(prep, [runner.run_strategy(prep, "lru", {"scope": scope})])
        rates.append(res["metrics"]["hit_rate"])
    assert rates == sorted(rates), rates
    assert rates[-1] > rates[0]


def test_budget_is_never_exceeded_and_pool_is_the_budget(prepared) -> None:
    prep, _ = prepared
    piece = runner.run_strategy(prep, "lru")
    eb = prep.loaded.shape.expert_bytes
    assert piece.pool_bytes == piece.budget.experts * eb
    assert 0 < piece.peak_expert_bytes <= piece.budget.experts * eb


def test_compute_reads_slots_not_the_model_parameters() -> None:
    """While attached, the model's own expert parameters are empty: compute can only read slots."""
    from moebench.engine.executor import OffloadEngine
    from moebench.offload.clock import SimTimeline
    from moebench.offload.profile import load_profile
    from moebench.strategy import build_strategy

    loaded = load_model("tiny-qwen3-moe", seed=0)
    prof = load_profile("a6000-pcie4")
    eng = OffloadEngine(loaded, build_strategy("lru"), n_slots=64, timeline=SimTimeline(prof),
                        profile=prof, device=torch.device("cpu")).attach()
    try:
        for v in eng.adapter.moe:
            assert v.experts.gate_up_proj.numel() == 0 and v.experts.down_proj.numel() == 0
        # Poison the host store after the slots are filled: output must not change, because
        # compute reads the slots. Then poison a slot: output must change.
        ids = torch.tensor([[5, 6, 7]])
        eng.begin_request(0)
        eng.begin_step("prefill", 0, 3)
        a = loaded.model(input_ids=ids).logits
        eng.end_step()
        for layer in eng.store.layers:
            for t in layer.values():
                t.fill_(0.5)
        eng.begin_step("prefill", 0, 3)
        b = loaded.model(input_ids=ids).logits
        eng.end_step()
        assert torch.equal(a, b)
        for pool in eng.pools.pools.values():
            pool.mul_(2.0)
        eng.begin_step("prefill", 0, 3)
        c = loaded.model(input_ids=ids).logits
        eng.end_step()
        assert not torch.equal(a, c)
    finally:
        eng.detach()


def test_two_simulated_runs_with_the_same_seed_write_identical_results(tmp_path) -> None:
    def once(out: str) -> tuple[str, str]:
        cfg = RunConfig(model="tiny-qwen3-moe", strategy="lru", cache_budget="0.25", clock="sim",
                        out=str(tmp_path / out), workload_overrides=SMALL)
        d, _ = runner.run(cfg)
        return (d / "result.json").read_text(), (d / "samples.jsonl").read_text()

    r1, s1 = once("a")
    r2, s2 = once("b")
    assert r1 == r2 and s1 == s2
    res = json.loads(r1)
    assert res["clock"]["label"] == "simulated:a6000-pcie4"
    assert res["metrics"]["tpot_ms"]["median"] > 0


def test_result_json_has_the_documented_fields(tmp_path) -> None:
    cfg = RunConfig(model="tiny-gpt-oss", strategy="sync", cache_budget="0.25", clock="sim",
                    out=str(tmp_path), workload_overrides=SMALL)
    d, res = runner.run(cfg)
    for key in ("schema_version", "model", "strategy", "workload", "clock", "budget", "metrics", "outputs"):
        assert key in res
    assert set(res["model"]) >= {"name", "arch", "num_layers", "num_experts", "top_k", "expert_bytes"}
    assert set(res["strategy"]) >= {"name", "params", "lossless"}
    assert set(res["workload"]) >= {"name", "sha256", "n_prompts", "max_new_tokens"}
    assert set(res["clock"]) >= {"kind", "profile", "device"}
    assert set(res["budget"]) >= {"bytes", "experts"}
    m = res["metrics"]
    for key in ("tpot_ms", "ttft_ms", "hit_rate", "hit_rate_per_layer", "h2d_bytes_per_token",
                "stall_ms_per_token", "transfer_share"):
        assert key in m
    assert set(m["tpot_ms"]) >= {"mean", "median", "p90", "p99", "ci95"}
    assert set(res["outputs"][0]) >= {"prompt_id", "prompt_token_ids", "token_ids"}
    for f in ("config.json", "environment.json", "result.json", "samples.jsonl"):
        assert (d / f).exists()


def test_bit_identical_with_two_threads_on_a_long_prefill() -> None:
    """Multi-threaded CPU GEMMs round a row by its position: prefill must keep the model's row
    order (the executor gathers slots in expert order) to stay exact."""
    long_prompt = ("def main(argv=None):\n    parser = argparse.ArgumentParser()\n"
                   "    parser.add_argument('--name', default='a')\n    return parser.parse_args(argv)\n") * 2
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for model in MODELS:
            cfg = RunConfig(model=model, cache_budget="0.5", clock="sim", workload_overrides={
                "limit": 1, "max_new_tokens": 3, "warmup_steps": 0,
                "prompts": [{"id": "long", "text": long_prompt}]})
            prep = session.prepare(cfg)
            reference = load_model(model, seed=0).model
            for strategy in ("sync", "lru"):
                piece = runner.run_strategy(prep, strategy, keep_logits=True)
                out = piece.outputs[0]
                assert len(out["prompt_token_ids"]) > 40
                _, ref_logits = reference_decode(reference, out["prompt_token_ids"], 3)
                for a, b in zip(piece.logits[(0, "long")], ref_logits):
                    assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)
