"""Batched decoding (issue 16): B prompts decode together, left-padded; each layer fetches the union
of the batch's experts; lossless strategies stay bit-identical to transformers' batched greedy
`generate`; bytes per step are exactly the union's, live and in trace replay."""
from __future__ import annotations

import json

import pytest
import torch

from moebench.bench import run as runner
from moebench.config import RunConfig
from moebench.engine import session
from moebench.models.loading import load_model
from moebench.strategy import REGISTRY, build_strategy

SMALL = {"limit": 4, "max_new_tokens": 4, "warmup_steps": 1, "batch_size": 3}   # batches of 3, then 1


def _generate(model, prompts: list[list[int]], n_new: int, pad: int) -> tuple[list[list[int]], list]:
    """transformers' own batched greedy generate on the unmodified model (left padding, EOS off)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        g = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, eos_token_id=None,
                           pad_token_id=pad)
    return g.sequences[:, width:].tolist(), list(g.logits)


def _lossless(model: str) -> list[str]:
    names = [n for n in REGISTRY.names() if build_strategy(n).traits.lossless]
    return names if model == "tiny-qwen3-trained" else ["sync", "lru", "oracle"]


CASES = [(m, s) for m in ("tiny-qwen3-trained", "tiny-qwen3-moe", "tiny-gpt-oss") for s in _lossless(m)]


@pytest.fixture(scope="module")
def models():
    return {}


def _pair(models: dict, name: str):
    if name not in models:
        models[name] = (load_model(name, seed=0), load_model(name, seed=0).model)
    return models[name]


@pytest.mark.parametrize("model,strategy", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_batched_lossless_runs_equal_batched_generate(models, model: str, strategy: str) -> None:
    loaded, reference = _pair(models, model)
    cfg = RunConfig(model=model, cache_budget="0.25", clock="sim", workload_overrides=SMALL)
    prep = session.prepare(cfg, loaded=loaded)
    piece = runner.run_strategy(prep, strategy, {}, keep_logits=True)
    batches = session.make_batches(prep.requests, 3)
    assert [len(b) for b in batches] == [3, 1]
    pad = session._pad_id(loaded)
    by_id = {o["prompt_id"]: o for o in piece.outputs}
    for batch in batches:
        tokens, logits = _generate(reference, [list(r.input_ids) for r in batch], 4, pad)
        for j, req in enumerate(batch):
            assert by_id[req.id]["token_ids"] == tokens[j]
            got = piece.logits[(0, req.id)]
            assert len(got) == 4
            for step, row in enumerate(got):
                assert torch.equal(row, logits[step][j]), f"{req.id} step {step} differs"


def test_sync_bytes_per_step_are_the_union_of_the_batch_live(models) -> None:
    loaded, _ = _pair(models, "tiny-qwen3-trained")
    cfg = RunConfig(model="tiny-qwen3-trained", cache_budget="0.25", clock="sim",
                    workload_overrides=SMALL, record_trace=True)
    prep = session.prepare(cfg, loaded=loaded)
    piece = runner.run_strategy(prep, "sync", {})
    eb = loaded.shape.expert_bytes
    union: dict[tuple[int, int], int] = {}
    for row in piece.trace:                       # the routing the engine recorded, per layer
        union[(row.request, row.step)] = union.get((row.request, row.step), 0) + len(set(row.used))
    steps = [s for s in piece.samples if s["kind"] == "step"]
    assert steps and all(s["batch_size"] == 3 for s in steps[:3])
    requests = sorted({r for r, _ in union})
    label_of = {}
    for s in piece.samples:
        if s["kind"] == "request":
            label_of.setdefault(s["prompt_id"], len(label_of))
    grew = False
    for s in steps:
        key = (requests[label_of[s["prompt_id"]]], s["position"])
        assert s["h2d_bytes"] == union[key] * eb
        grew |= union[key] > loaded.shape.moe_layers * loaded.shape.top_k
    assert grew, "a batch of 3 should need more than top-k experts in some layer"
    result = runner.build_result(prep, [piece])
    m = result["metrics"]
    assert m["batch_size"] == 3 and m["output_tokens"] == 3 * 3 + 1 * 3
    assert m["h2d_bytes_per_step"] == pytest.approx(sum(s["h2d_bytes"] for s in steps) / len(steps))
    assert m["h2d_bytes_per_token"] == pytest.approx(sum(s["h2d_bytes"] for s in steps) / m["output_tokens"])
    assert m["tpot_ms"]["n"] == 2                       # one TPOT per batch: identical ones not recounted
    assert m["tpot_ms"]["unit"].startswith("batch")
    assert result["workload"]["batch_size"] == 3


def test_batch_size_one_is_the_unbatched_run(models) -> None:
    loaded, _ = _pair(models, "tiny-qwen3-trained")
    base = {k: v for k, v in SMALL.items() if k != "batch_size"}
    a = session.prepare(RunConfig(model="tiny-qwen3-trained", clock="sim", workload_overrides=base),
                        loaded=loaded)
    b = session.prepare(RunConfig(model="tiny-qwen3-trained", clock="sim",
                                  workload_overrides={**base, "batch_size": 1}), loaded=loaded)
    assert a.workload_sha == b.workload_sha
    pa, pb = runner.run_strategy(a, "lru", {}), runner.run_strategy(b, "lru", {})
    assert pa.samples == pb.samples and "batch_size" not in pa.samples[0]


@pytest.mark.parametrize("strategy", ["sync", "lru"])
def test_whole_layer_prefill_copies_stay_bit_identical_and_copy_every_expert(models, strategy: str) -> None:
    loaded, reference = _pair(models, "tiny-qwen3-trained")
    wl = {**SMALL, "prefill_copies": "whole-layer"}
    prep = session.prepare(RunConfig(model="tiny-qwen3-trained", cache_budget="0.5", clock="sim",
                                     workload_overrides=wl), loaded=loaded)
    piece = runner.run_strategy(prep, strategy, {}, keep_logits=True)
    pad = session._pad_id(loaded)
    by_id = {o["prompt_id"]: o for o in piece.outputs}
    for batch in session.make_batches(prep.requests, 3):
        tokens, logits = _generate(reference, [list(r.input_ids) for r in batch], 4, pad)
        for j, req in enumerate(batch):
            assert by_id[req.id]["token_ids"] == tokens[j]
            assert all(torch.equal(a, b[j]) for a, b in zip(piece.logits[(0, req.id)], logits))
    sh = loaded.shape
    first = next(s for s in piece.samples if s["kind"] == "request")
    if strategy == "sync":        # keeps nothing: every layer of every prefill copies all E experts
        assert first["prefill_h2d_bytes"] == sh.moe_layers * sh.num_experts * sh.expert_bytes


def test_compare_sweeps_batch_size_and_plots_tpot_and_throughput_against_it(models, tmp_path) -> None:
    from moebench.bench import compare as C

    loaded, _ = _pair(models, "tiny-qwen3-trained")
    names = ("sync", "lru", "oracle")
    base = RunConfig(model="tiny-qwen3-trained", workload="smoke", cache_budget="0.25", clock="sim",
                     workload_overrides={"limit": 8, "max_new_tokens": 4, "warmup_steps": 1})
    plan = C.ComparePlan(base, names, "sync", sweep=C.SweepSpec.parse("batch_size=1,4,8"))
    d = C.run_compare(plan, tmp_path, name="b", loaded=loaded)
    doc = json.loads((d / "report.json").read_text())
    assert [p["label"] for p in doc["points"]] == ["batch_size=1", "batch_size=4", "batch_size=8"]
    tput = {}
    for p in doc["points"]:
        assert {r["strategy"] for r in p["rows"]} == set(names)
        for r in p["rows"]:
            assert r["tpot_ms"]["median"] > 0 and r["throughput_tokens_per_s"] > 0
            tput.setdefault(r["strategy"], []).append(r["throughput_tokens_per_s"])
    assert tput["sync"][0] < tput["sync"][-1]          # batching buys sync throughput
    for stem in ("tpot_vs_sweep", "throughput_vs_sweep"):
        png = d / "plots" / f"{stem}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert "throughput_vs_sweep" in (d / "report.md").read_text()
