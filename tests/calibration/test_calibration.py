"""Calibration and its artifacts: default vectors are unweighted expert means (or the EMA),
predictors start from the router and are scored on held-out tokens, artifacts are safetensors
keyed by what produced them, and a missing or corrupt artifact ends with exit code 2."""
from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from moebench.calibration import artifacts as A
from moebench.bench import run as runner
from moebench.engine import session
from moebench.calibration.provision import calibrate_speculative, calibration_set, dv_key
from moebench.cli import app
from moebench.config import RunConfig
from moebench.offload.policies import BeladyPolicy
from moebench.errors import UserError
from moebench.calibration.predictors import DefaultVectors, TwoLinear, ranking_loss, recall_at_k
from moebench.calibration.provision import trace_from_tensors, trace_tensors
from moebench.strategy import LayerEvent, StrategyContext, build_strategy
from moebench.offload.routing import RoutingTrace

TINY_WORKLOAD = """name: tiny-cal
prompts:
  - {id: a, text: "def add(a, b):\\n    return a + b\\n"}
  - {id: b, text: "Question: what is 3 plus 4?\\nAnswer:"}
max_new_tokens: 3
warmup_steps: 0
"""
RUN_SET = ["--set", "limit=1", "--set", "max_new_tokens=2", "--set", "warmup_steps=0"]


@pytest.fixture()
def tiny_workload(tmp_path):
    p = tmp_path / "tiny-cal.yaml"
    p.write_text(TINY_WORKLOAD)
    return str(p)


# ---------------------------------------------------------------------------------------------
# default vectors
# ---------------------------------------------------------------------------------------------
def test_default_vectors_are_mean_unweighted_expert_outputs(qwen, cache, tiny_workload) -> None:
    """Recompute the table by hand: hooks on each MoE block's input, the layer's own router, and
    the expert's SwiGLU written out from its weight matrices (FACTS.md layout)."""
    strategy = build_strategy("speculative", {})
    cal = calibration_set(qwen, tiny_workload)
    dv_art, est = calibrate_speculative(qwen, cal, strategy)
    assert est is None
    dv = dv_art.tensors["dv"]
    model = qwen.model
    shape = qwen.shape
    assert dv.shape == (shape.moe_layers, shape.num_experts, shape.hidden) and dv.dtype == torch.float32
    sums = torch.zeros(shape.moe_layers, shape.num_experts, shape.hidden, dtype=torch.float64)
    counts = torch.zeros(shape.moe_layers, shape.num_experts)
    inputs: dict[int, list] = {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: inputs.setdefault(i, []).append(a[0]))
             for i, layer in enumerate(model.model.layers)]
    n = cal.workload.max_new_tokens
    with torch.no_grad():
        seqs = [model.generate(torch.tensor([list(r.input_ids)]), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False) for r in cal.requests]
        inputs.clear()
        for seq in seqs:
            model(input_ids=seq, use_cache=False)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            ex = layer.mlp.experts
            for u in inputs[i]:
                u = u.reshape(-1, shape.hidden)
                _, _, ids = layer.mlp.gate(u)
                for t in range(u.shape[0]):
                    for e in ids[t].tolist():
                        gate, up = (u[t] @ ex.gate_up_proj[e].T).chunk(2)
                        y = (torch.nn.functional.silu(gate) * up) @ ex.down_proj[e].T   # E_e(u), unweighted
                        sums[i, e] += y.double()
                        counts[i, e] += 1
    expected = (sums / counts.clamp(min=1)[..., None]).float()
    assert torch.allclose(dv, expected, atol=1e-5)
    assert torch.equal(dv_art.tensors["counts"].float(), counts)
    assert (counts == 0).any() and (dv[counts == 0] == 0).all()     # unseen experts stay zero


def test_ema_default_vectors_follow_the_update_rule() -> None:
    acc = DefaultVectors(1, 2, 2, method="ema", beta=0.9)
    acc.add_batch(0, torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([0, 0]))
    acc.add_batch(0, torch.tensor([[4.0, 4.0], [5.0, 7.0]]), torch.tensor([0, 1]))
    t = acc.tables()
    assert torch.allclose(t[0, 0], torch.tensor([0.9 * 2 + 0.1 * 4] * 2))   # beta*DV + (1-beta)*mean
    assert torch.allclose(t[0, 1], torch.tensor([5.0, 7.0]))                 # first batch: its mean
    mean = DefaultVectors(1, 2, 2, method="mean")
    mean.add_batch(0, torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([0, 0]))
    mean.add_batch(0, torch.tensor([[5.0, 5.0]]), torch.tensor([0]))
    assert torch.allclose(mean.tables()[0, 0], torch.tensor([3.0, 3.0]))


# ---------------------------------------------------------------------------------------------
# predictors
# ---------------------------------------------------------------------------------------------
def test_two_linear_starts_as_the_router_and_the_loss_is_ranking_aware() -> None:
    g = torch.Generator().manual_seed(0)
    w, h = torch.randn(8, 16, generator=g), torch.randn(32, 16, generator=g)
    pred = TwoLinear.from_router(w, None, rank=8)
    assert torch.allclose(pred(h), h @ w.T, atol=1e-4)               # full rank: exactly the router
    ids = (h @ w.T).topk(2, dim=-1).indices
    assert recall_at_k(pred(h), ids) == 1.0
    good, bad = h @ w.T, -(h @ w.T)
    assert ranking_loss(good, h @ w.T, ids) < ranking_loss(bad, h @ w.T, ids)


def test_pre_attention_calibration_reports_heldout_recall(qwen, cache, tiny_workload) -> None:
    res = CliRunner().invoke(app, ["calibrate", "pre-attention", "--model", "tiny-qwen3-moe",
                                   "--workload", tiny_workload, "--set", "epochs=20", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (art,) = doc["artifacts"]
    assert art["kind"] == "pre-attention" and art["path"].endswith(".safetensors")
    held = art["meta"]["heldout"]
    assert sorted(held, key=int) == [str(m) for m in range(qwen.shape.moe_layers)]
    for r in held.values():
        assert r["n_heldout"] > 0 and 0.0 <= r["heldout_recall_at_k"] <= 1.0
        assert 0.0 <= r["router_heldout_recall_at_k"] <= 1.0
    again = CliRunner().invoke(app, ["calibrate", "pre-attention", "--model", "tiny-qwen3-moe",
                                     "--workload", tiny_workload, "--set", "epochs=20", "--json"])
    assert json.loads(again.stdout)["reused"] is True


# ---------------------------------------------------------------------------------------------
# artifacts
# ---------------------------------------------------------------------------------------------
def test_artifact_keys_roundtrip_and_detect_corruption(cache) -> None:
    key = A.ArtifactKey("default-vectors", "m", "snap", "w", "sha", {"method": "mean"}, 1)
    assert A.load(key) is None
    A.save(key, {"dv": torch.arange(6.0).reshape(2, 3)}, {"note": 1})
    art = A.load(key)
    assert torch.equal(art.tensors["dv"], torch.arange(6.0).reshape(2, 3))
    assert art.meta["calibration_workload_sha256"] == "sha" and art.meta["meta"] == {"note": 1}
    tpath, spath = key.paths()
    assert tpath.suffix == ".safetensors" and tpath.parent == cache / "artifacts" / "default-vectors"
    # everything that produced it is in the key
    for other in (dict(model_snapshot="x"), dict(workload_sha="x"), dict(params={"method": "ema"}),
                  dict(version=2)):
        assert A.ArtifactKey(**{**key.__dict__, **other}).digest() != key.digest()
    tpath.write_bytes(tpath.read_bytes()[:-3])
    with pytest.raises(UserError, match="corrupt"):
        A.load(key)
    spath.write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        A.load(key)


def _run(args: list[str], tmp_path) -> object:
    return CliRunner().invoke(app, ["run", "--model", "tiny-qwen3-moe", "--clock", "sim",
                                    "--cache-budget", "0.5", "--out", str(tmp_path / "res"), *args])


def test_missing_artifact_with_no_calibrate_is_exit_2(cache, tmp_path) -> None:
    res = _run(["--strategy", "speculative", "--no-calibrate", *RUN_SET], tmp_path)
    assert res.exit_code == 2
    assert "default-vectors artifact" in res.output and "--no-calibrate" in res.output
    assert "Traceback" not in res.output
    res = _run(["--strategy", "oracle", "--no-calibrate", *RUN_SET], tmp_path)
    assert res.exit_code == 2 and "routing-trace artifact" in res.output


def test_run_calibrates_when_missing_says_so_and_corrupt_is_exit_2(cache, tmp_path, tiny_workload) -> None:
    args = ["--strategy", "speculative", "--set", f"calibration={tiny_workload}", *RUN_SET, "--json"]
    res = _run(args, tmp_path)
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{"):])
    assert any("calibrating default vectors" in n for n in result["notes"])
    (prov,) = result["strategy"]["artifacts"]
    assert prov["kind"] == "default-vectors" and prov["calibration_workload"] == "tiny-cal"
    # a second run finds the artifact (no new note), and --no-calibrate is then fine
    res = _run(args + ["--no-calibrate"], tmp_path)
    assert res.exit_code == 0, res.output
    assert not any("calibrating" in n for n in json.loads(res.stdout[res.stdout.index("{"):])["notes"])
    path = prov["path"]
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"garbage!")
    res = _run(args, tmp_path)
    assert res.exit_code == 2 and "corrupt" in res.output and "Traceback" not in res.output


def test_artifact_of_another_shape_is_refused(cache, qwen) -> None:
    prep = session.prepare(RunConfig(model="tiny-qwen3-moe", clock="sim",
                                    workload_overrides={"limit": 1, "max_new_tokens": 2}), loaded=qwen)
    strategy = build_strategy("speculative", {})
    cal = calibration_set(qwen, prep.workload.calibration)
    A.save(dv_key(qwen, cal, strategy), {"dv": torch.zeros(2, 2, 2), "counts": torch.zeros(2, 2)})
    with pytest.raises(UserError, match="does not fit this model"):
        runner.run_strategy(prep, "speculative", {})
    assert qwen.model.model.layers[0].mlp.experts.gate_up_proj.numel() > 0   # model untouched


# ---------------------------------------------------------------------------------------------
# the oracle's parts
# ---------------------------------------------------------------------------------------------
def _trace(demands: list[tuple[int, list[int]]]) -> RoutingTrace:
    return RoutingTrace({"request": 0, "step": t, "layer": layer, "experts": ids}
                        for t, (layer, ids) in enumerate(demands))


def test_routing_trace_next_use_and_belady_victim() -> None:
    tr = _trace([(0, [1, 2]), (0, [3]), (0, [1])])
    assert tr.next_use((0, 1), 0) == 0 and tr.next_use((0, 1), 1) == 2
    assert tr.next_use((0, 3), 2) == math.inf and tr.next_use((0, 9), 0) == math.inf
    back = trace_from_tensors(trace_tensors(tr))
    assert back.positions == tr.positions and back.demand == tr.demand
    pol = BeladyPolicy(tr.next_use)
    pol.now = 1
    for k in [(0, 1), (0, 2), (0, 3)]:
        pol.on_insert(k)                 # next uses from position 1: 2, never, 1
    assert pol.victim(0, [(0, 1), (0, 2), (0, 3)]) == (0, 2)        # never used again beats later use
    assert pol.victim(0, [(0, 1), (0, 3)]) == (0, 1)


def test_oracle_plan_never_evicts_an_expert_needed_sooner() -> None:
    """Three slots, one expert per position: it prefetches in need order and stops where the only
    victim left would be needed before the expert it would make room for."""
    tr = _trace([(0, [0]), (0, [1]), (0, [2]), (0, [3]), (0, [0])])
    oracle = build_strategy("oracle", {})
    oracle.setup(StrategyContext(shape=type("S", (), {"moe_layers": 1, "num_experts": 4, "top_k": 1})(),
                                 n_slots=3, is_resident=lambda k: False, trace=tr))

    def ev(t: int) -> LayerEvent:
        request, step, layer = tr.positions[t]
        return LayerEvent(step=step, layer=layer, phase="decode", n_tokens=1, request=request)

    plan = oracle.before_attention(ev(0), None)     # free slots: Belady's first three fetches
    assert [(p.layer, p.experts) for p in plan] == [(0, (0,)), (0, (1,)), (0, (2,))]
    for k in [(0, 0), (0, 1), (0, 2)]:
        oracle.on_insert(k)
        oracle.on_access(k, True)
    # Belady fetches expert 3 at position 3 evicting expert 2 (never needed again; expert 0 is
    # needed at 4): that copy may start only once expert 2 has had its last use (position 2)
    assert oracle.before_attention(ev(1), None) == [] and oracle.before_attention(ev(2), None) == []
    plan = oracle.before_attention(ev(3), None)
    assert [(p.layer, p.experts) for p in plan] == [(0, (3,))]
    assert oracle.victim(0, [(0, 0), (0, 1), (0, 2)]) == (0, 2)

