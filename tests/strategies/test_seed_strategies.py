"""The seed strategies on tiny presets: speculative follows its published formula and moves the
bytes `sync` moves, the oracle bounds every lossless strategy, lossless ones reproduce the
unmodified model, prediction metrics and traces come out per layer."""
from __future__ import annotations

import json

import pytest
import torch

from moebench.bench import run as runner
from moebench.engine import session
from moebench.calibration.provision import artifacts_for
from moebench.config import RunConfig
from moebench.models.loading import load_model
from moebench.strategy import REGISTRY, build_strategy
from moebench.strategies.speculative import SpeculativeStrategy
from tests.helpers import generate_greedy, reference_decode

SMALL = {"limit": 2, "max_new_tokens": 6, "warmup_steps": 1}
MODELS = ["tiny-qwen3-moe", "tiny-gpt-oss"]
SLOW_LINK = """name: slow-link
description: a deliberately slow link, so copies dominate (tests only)
h2d_bandwidth_gbps: 0.5
h2d_latency_us: 10.0
mem_bandwidth_gbps: 768.0
mem_efficiency: 0.8
peak_tflops: 154.8
launch_overhead_us: 5.0
"""


@pytest.fixture(scope="module")
def models() -> dict:
    return {m: load_model(m, seed=0) for m in MODELS}


def _prep(loaded, budget: str = "0.5", profile: str = "a6000-pcie4", **over) -> session.Prepared:
    cfg = RunConfig(model=loaded.name, cache_budget=budget, clock="sim", profile=profile,
                    workload_overrides={**SMALL, **over})
    return session.prepare(cfg, loaded=loaded)


def _metrics(prep, name: str, params: dict | None = None) -> dict:
    piece = runner.run_strategy(prep, name, params or {})
    return runner.build_result(prep, [piece])["metrics"]


# ---------------------------------------------------------------------------------------------
# speculative: the formula, the bytes, the overlap
# ---------------------------------------------------------------------------------------------
class _Probe(SpeculativeStrategy):
    """Records what speculative saw and decided, for an independent recomputation."""

    seen: list = []

    def after_routing(self, ev, executed, s, u):
        out = super().after_routing(ev, executed, s, u)
        if out:
            spec = self._spec[ev.layer + 1]
            _Probe.seen.append({"pos": (ev.request, ev.step, ev.layer), "s": s.detach().clone(),
                                "ids": executed.ids.clone(), "w": executed.weights.clone(),
                                "pred_ids": spec.ids.clone(), "pred_w": spec.weights.clone()})
        return out

    def choose(self, ev, true, s, u):
        r = super().choose(ev, true, s, u)
        _Probe.seen.append({"chosen": (ev.request, ev.step, ev.layer), "ids": r.ids.clone(),
                            "w": r.weights.clone(), "true": true.ids.clone()})
        return r


def _route_by_hand(arch: str, router, q: torch.Tensor, top_k: int, weight=None, bias=None):
    """FACTS.md's routing rules, written out: Qwen3 softmax -> top-k -> renormalise;
    GPT-OSS top-k on raw logits (+ bias) -> softmax over the k."""
    w = router.weight if weight is None else weight
    if arch == "gpt_oss":
        b = router.bias if bias is None else bias
        logits = q @ w.T + b
        top, ids = logits.topk(top_k, dim=-1)
        return ids, torch.softmax(top, dim=-1)
    logits = q @ w.T
    p = torch.softmax(logits.float(), dim=-1)
    top, ids = p.topk(top_k, dim=-1)
    return ids, (top / top.sum(-1, keepdim=True)).to(logits.dtype)


@pytest.mark.parametrize("model,params", [("tiny-qwen3-moe", {}), ("tiny-gpt-oss", {}),
                                          ("tiny-qwen3-moe", {"estimator": "linear"}),
                                          ("tiny-qwen3-moe", {"speculate_prefill": False})])
def test_speculative_prediction_is_the_published_formula(models, model: str, params: dict) -> None:
    loaded = models[model]
    prep = _prep(loaded, limit=1, max_new_tokens=4)
    _Probe.seen = []
    with REGISTRY.registered("speculative-probe", _Probe):
        piece = runner.run_strategy(prep, "speculative-probe", params, record_trace=True)
    arts = artifacts_for(prep, build_strategy("speculative", params)).artifacts
    dv = arts["default-vectors"]                                   # [L, E, H]
    est = arts.get("spec-estimator", {})
    layers = loaded.model.model.layers                             # every tiny layer is MoE
    router_attr = "router" if loaded.shape.arch == "gpt_oss" else "gate"
    preds = [r for r in _Probe.seen if "pos" in r]
    assert preds, "speculative made no prediction"
    chosen = {r["chosen"]: r for r in _Probe.seen if "chosen" in r}
    with torch.no_grad():
        for r in preds:
            req, step, i = r["pos"]
            s = r["s"].reshape(-1, r["s"].shape[-1])
            dv_i = (r["w"].float()[..., None] * dv[i][r["ids"]]).sum(-2)          # sum_k w DV[e]
            q = layers[i + 1].post_attention_layernorm(s + dv_i.to(s.dtype))     # norm2_{i+1}
            router = getattr(layers[i + 1].mlp, router_attr)
            w_est = est.get(f"layer{i + 1}.weight")
            ids, w = _route_by_hand(loaded.shape.arch, router, q, loaded.shape.top_k, w_est,
                                    est.get(f"layer{i + 1}.bias"))
            assert torch.equal(ids, r["pred_ids"]), f"layer {i + 1} speculation differs at {r['pos']}"
            assert torch.allclose(w, r["pred_w"], atol=1e-6)
            # layer i+1 executes the speculated ids with the speculated weights
            nxt = chosen[(req, step, i + 1)]
            assert torch.equal(nxt["ids"], r["pred_ids"]) and torch.equal(nxt["w"], r["pred_w"].to(nxt["w"].dtype))
    # layer 0 executes its true routing (and the prefill too with speculate_prefill=false); the
    # trace records the speculation; a speculated prefill copies each speculated layer whole
    prefill = params.get("speculate_prefill", True)
    assert any(r["pos"][1] == 0 for r in preds) == prefill
    for row in piece.trace:
        if row.layer == 0 or (row.step == 0 and not prefill):
            assert row.executed == row.experts
        elif row.step == 0:
            assert row.predicted["speculative"] == list(range(loaded.shape.num_experts))
        else:
            assert sorted(row.executed) == row.predicted["speculative"]
    if params.get("estimator"):
        assert any(f"layer{j}.weight" in est for j in (1, 2))


@pytest.mark.parametrize("model", MODELS)
def test_speculative_moves_sync_bytes_and_only_hides_copies(models, model: str) -> None:
    loaded = models[model]
    prep = _prep(loaded, budget="0.25")
    sync = runner.run_strategy(prep, "sync")
    spec = runner.run_strategy(prep, "speculative", {"cache": "none"})
    steps = lambda p: [s for s in p.samples if s["kind"] == "step"]   # noqa: E731
    assert [s["h2d_bytes"] for s in steps(spec)] == [s["h2d_bytes"] for s in steps(sync)]
    m_sync = runner.build_result(prep, [sync])["metrics"]
    m_spec = runner.build_result(prep, [spec])["metrics"]
    assert m_spec["h2d_bytes_per_token"] == m_sync["h2d_bytes_per_token"]
    saving = m_sync["tpot_ms"]["mean"] - m_spec["tpot_ms"]["mean"]
    assert saving > 0, "speculation hid no copy"
    # Layer 0 is fetched on demand: its k copies can never be hidden.
    shape = loaded.shape
    layer0_ms = shape.top_k * prep.profile.copy_seconds(shape.expert_bytes) * 1e3
    assert m_spec["stall_ms_per_token"] >= layer0_ms - 1e-9
    # The saving is copy time hidden behind compute: never more than the compute there is, and
    # never more than the copies of the speculated layers (plus the router work it skips).
    assert saving <= m_spec["compute_ms_per_token"]
    hideable = m_sync["stall_ms_per_token"] - layer0_ms
    assert saving <= hideable + max(0.0, m_sync["compute_ms_per_token"] - m_spec["compute_ms_per_token"]) + 1e-9


# ---------------------------------------------------------------------------------------------
# the oracle bound
# ---------------------------------------------------------------------------------------------
VARIANTS = [("lru", {"scope": "global"}), ("next-gate", {"lookahead": 2}),
            ("pre-attention", {"predictor": "router"}), ("speculative", {"refetch_on_miss": True}),
            ("speculative", {"refetch_on_miss": True, "cache": "lru"})]


def lossless_contenders() -> list[tuple[str, dict]]:
    """Every registered lossless strategy at its defaults (plugins included), plus variants; not
    the oracle itself, nor strategies that force their own budget (all-resident), nor those that
    compute experts on the host (the oracle bounds copy schedules; host compute avoids copies)."""
    out = []
    for name in REGISTRY.names():
        cls = REGISTRY.get(name)
        if cls.lossless and name != "oracle" and not getattr(cls, "forces_budget", None) \
                and not getattr(cls, "uses_host", False) and not name.endswith("-probe"):
            out.append((name, {}))
    return out + VARIANTS


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("budget,profile", [("0.25", "a6000-pcie4"), ("0.5", "a6000-pcie4"),
                                            ("0.25", "slow"), ("0.5", "slow")])
def test_oracle_tpot_bounds_every_lossless_strategy(models, tmp_path, model, budget, profile) -> None:
    if profile == "slow":
        (tmp_path / "slow.yaml").write_text(SLOW_LINK)
        profile = str(tmp_path / "slow.yaml")
    prep = _prep(models[model], budget=budget, profile=profile)
    oracle = _metrics(prep, "oracle")
    floor = _metrics(prep, "all-resident")["tpot_ms"]["mean"]     # compute alone
    assert oracle["tpot_ms"]["mean"] >= floor - 1e-9
    for name, params in lossless_contenders():
        m = _metrics(prep, name, params)
        for stat in ("mean", "median"):
            assert oracle["tpot_ms"][stat] <= m["tpot_ms"][stat] + 1e-12, (name, params, stat)


# ---------------------------------------------------------------------------------------------
# lossless strategies reproduce the unmodified model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def references() -> dict:
    return {m: load_model(m, seed=0).model for m in MODELS}   # fresh, never attached


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name,params", [("pre-attention", {}), ("next-gate", {"lookahead": 2}),
                                         ("oracle", {}), ("speculative", {"refetch_on_miss": True})])
def test_lossless_seed_strategies_reproduce_the_model(models, references, model, name, params) -> None:
    prep = _prep(models[model], budget="0.25")
    strategy = build_strategy(name, params)
    assert strategy.traits.lossless
    piece = runner.run_strategy(prep, name, params, keep_logits=True)
    ref = references[model]
    for out in piece.outputs:
        n = len(out["token_ids"])
        assert out["token_ids"] == generate_greedy(ref, out["prompt_token_ids"], n)
        _, ref_logits = reference_decode(ref, out["prompt_token_ids"], n)
        for a, b in zip(piece.logits[(0, out["prompt_id"])], ref_logits):
            assert torch.equal(a, b)


def test_lossy_speculative_is_marked_lossy() -> None:
    assert not build_strategy("speculative").traits.lossless
    assert build_strategy("speculative", {"refetch_on_miss": True}).traits.lossless
    assert not build_strategy("speculative").traits.keeps_experts
    assert build_strategy("speculative", {"cache": "lru"}).traits.keeps_experts
    for name in ("pre-attention", "next-gate", "oracle"):
        assert build_strategy(name).traits.lossless


# ---------------------------------------------------------------------------------------------
# prediction metrics and traces
# ---------------------------------------------------------------------------------------------
def test_prediction_metrics_per_layer(models) -> None:
    loaded = models["tiny-qwen3-moe"]
    prep = _prep(loaded, budget="0.25")
    m = _metrics(prep, "speculative", {"refetch_on_miss": True})
    pred = m["prediction"]
    src = pred["predictors"]["speculative"]
    layers = [r["layer"] for r in src["per_layer"]]
    assert layers == list(range(1, loaded.shape.moe_layers))       # layer 0 is never speculated
    for key in ("recall_at_k", "precision", "exact_set_match", "top1_hit", "gate_weighted_recall"):
        assert 0.0 <= src[key] <= 1.0
    per = pred["per_layer"]
    assert [r["layer"] for r in per] == list(range(loaded.shape.moe_layers))
    assert per[0]["prefetches_issued"] == 0
    assert sum(r["wasted_bytes"] for r in per) == pred["wasted_bytes"]
    # scored against the true router, precision is not 1 where recall is not (speculative
    # predicts as many experts as the router picks: the two are equal per layer)
    for row in src["per_layer"]:
        assert row["mean_predicted"] == pytest.approx(loaded.shape.top_k)
        assert row["precision"] == pytest.approx(row["recall_at_k"])
        if row["recall_at_k"] < 1:
            assert row["precision"] < 1
    assert src["precision"] < 1
    assert m["hits"] + m["late"] + m["misses"] == m["activations"]
    assert m["hit_rate"] + m["late_rate"] + m["miss_rate"] == pytest.approx(1.0)
    # refetch with no cache: every wrong guess is dropped unused after its layer
    issued = sum(r["prefetches_issued"] for r in per)
    used = sum(r["prefetches_used"] for r in per)
    assert pred["wasted_bytes"] == (issued - used) * loaded.shape.expert_bytes
    assert src["recall_at_k"] < 1.0 and pred["wasted_bytes"] > 0   # random model: guesses miss


def test_record_trace_and_export(models, tmp_path) -> None:
    from typer.testing import CliRunner

    from moebench.cli import app

    loaded = models["tiny-gpt-oss"]
    cfg = RunConfig(model=loaded.name, strategy="next-gate", cache_budget="0.5", clock="sim",
                    workload_overrides={**SMALL, "limit": 1}, out=str(tmp_path), record_trace=True)
    prep = session.prepare(cfg, loaded=loaded)
    piece = runner.run_strategy(prep, "next-gate", {})
    d = runner.write_run(prep, runner.build_result(prep, [piece]), [piece])
    out = tmp_path / "trace.jsonl"
    res = CliRunner().invoke(app, ["trace", "export", str(d), "--format", "jsonl", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    n_steps = SMALL["max_new_tokens"]
    assert len(rows) == n_steps * loaded.shape.moe_layers
    for r in rows:
        assert {"step", "layer", "experts", "weights", "executed", "predicted"} <= set(r)
        assert len(r["experts"]) == len(r["weights"]) == loaded.shape.top_k
        assert r["executed"] == r["experts"]                        # lossless
        if r["step"] > 0 and r["layer"] > 0:
            assert len(r["predicted"]["next-gate+1"]) == loaded.shape.top_k
    assert CliRunner().invoke(app, ["trace", "export", str(d), "--format", "csv"]).exit_code == 2
