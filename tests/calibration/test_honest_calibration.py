"""Calibration never scores a predictor on what it trained on, and trains it on what it will see:
held-out splits are whole prompts; the early-layer estimator's inputs are the quasi states the
run's speculation chain builds; the pre-attention predictor is two linear functions with a
non-linearity between them (richer than one affine map), started exactly at the router."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from moebench.bench import run as runner
from moebench.calibration import predictors as P
from moebench.calibration.provision import (_speculation_chain, artifacts_for, calibrate_speculative,
                                            calibration_set, capture, chain_capture)
from moebench.cli import app
from moebench.config import RunConfig
from moebench.engine import session
from moebench.strategy import REGISTRY, build_strategy
from moebench.strategies.speculative import SpeculativeStrategy

FIVE_PROMPTS = """name: five-cal
prompts:
  - {id: a, text: "def add(a, b):\\n    return a + b\\n"}
  - {id: b, text: "Question: what is 3 plus 4?\\nAnswer:"}
  - {id: c, text: "for item in items:\\n    print(item)\\n"}
  - {id: d, text: "The river runs past the old mill and into the lake."}
  - {id: e, text: "import os\\n\\n\\ndef main():\\n"}
max_new_tokens: 3
warmup_steps: 0
"""


@pytest.fixture()
def five(tmp_path):
    p = tmp_path / "five-cal.yaml"
    p.write_text(FIVE_PROMPTS)
    return str(p)


# ---------------------------------------------------------------------------------------------
# held out by prompt
# ---------------------------------------------------------------------------------------------
def test_split_groups_holds_out_whole_prompts() -> None:
    groups = torch.repeat_interleave(torch.arange(10), torch.arange(3, 13))    # 10 prompts, ragged
    tr, ho = P.split_groups(groups, 0.2, seed=0)
    assert set(groups[tr].tolist()).isdisjoint(groups[ho].tolist())
    assert len(set(groups[ho].tolist())) == 2 and tr.numel() + ho.numel() == groups.numel()
    for g in set(groups[ho].tolist()):                                  # every token of the prompt
        assert (groups[ho] == g).sum() == (groups == g).sum()
    one = torch.zeros(7, dtype=torch.int64)                             # one prompt: nothing held out
    tr, ho = P.split_groups(one, 0.2, seed=0)
    assert ho.numel() == 0 and tr.numel() == 7


def test_pre_attention_heldout_figures_are_by_prompt(qwen, cache, five) -> None:
    res = CliRunner().invoke(app, ["calibrate", "pre-attention", "--model", "tiny-qwen3-moe",
                                   "--workload", five, "--set", "epochs=10", "--json"])
    assert res.exit_code == 0, res.output
    (art,) = json.loads(res.stdout)["artifacts"]
    cal = calibration_set(qwen, five)
    lengths = sorted(len(r.input_ids) + cal.workload.max_new_tokens for r in cal.requests)
    for r in art["meta"]["heldout"].values():
        assert r["split"] == "prompt"
        assert r["n_train_prompts"] + r["n_heldout_prompts"] == 5 and r["n_heldout_prompts"] == 1
        assert r["n_heldout"] in lengths                   # exactly one whole prompt's tokens
        assert r["early_stopped"] and r["n_val_prompts"] == 1
        assert 0.0 <= r["heldout_exact_set"] <= 1.0 and 0.0 <= r["router_heldout_exact_set"] <= 1.0
    assert art["params"]["activation"] == "relu" and art["params"]["width"] == 2 * qwen.shape.num_experts


# ---------------------------------------------------------------------------------------------
# the pre-attention predictor: two linear functions with an activation between them
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_two_linear_starts_exactly_at_the_router(activation: str) -> None:
    g = torch.Generator().manual_seed(0)
    w, b, h = torch.randn(8, 16, generator=g), torch.randn(8, generator=g), torch.randn(64, 16, generator=g)
    pred = P.TwoLinear.from_router(w, b, 2 * 8 + 4, activation=activation)  # pairs + 4 free units
    assert torch.allclose(pred(h), h @ w.T + b, atol=1e-4)
    assert pred.activation == activation and pred.w1.shape == (20, 16) and pred.w2.shape == (8, 20)
    assert pred.w1[16:].abs().sum() > 0 and pred.w2[:, 16:].abs().sum() == 0   # free units trainable


def test_two_linear_is_richer_than_one_affine_map() -> None:
    """Expert 0 wins when |h_0| > 1, expert 1 otherwise: no affine map ranks that right for most
    tokens; the 2-layer predictor (relu) learns it from the same router start."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(1200, 4, generator=g)
    logits = torch.stack([h[:, 0] ** 2, torch.ones(1200), -3 + 0 * h[:, 0], -3 + 0 * h[:, 0]], dim=1)
    ids = logits.topk(1, dim=-1).indices
    groups = torch.arange(1200) // 10                                    # 120 "prompts"
    router = torch.randn(4, 4, generator=g) * 0.1
    cfg = P.TrainConfig(epochs=150, lr=0.02, batch=256)
    held = {}
    for act in ("none", "relu"):
        _, rep = P.train_two_linear(h, logits, ids, groups, router, None, width=16, activation=act,
                                    init="router", cfg=cfg, router_scores=h @ router.T)
        held[act] = rep["heldout_recall_at_k"]
    assert held["none"] < 0.8 and held["relu"] > held["none"] + 0.1, held


# ---------------------------------------------------------------------------------------------
# the estimator is trained on the speculation chain the run builds
# ---------------------------------------------------------------------------------------------
class _Quasi(SpeculativeStrategy):
    """Records every quasi state the live strategy builds (layer -> q)."""

    seen: dict = {}

    def quasi(self, i, executed, s):
        q = super().quasi(i, executed, s)
        _Quasi.seen.setdefault((self.ctx.adapter is not None, i + 1), []).append(q.detach().clone())
        return q


def test_estimator_inputs_are_the_quasi_states_of_the_run(qwen, cache, five) -> None:
    cfg = RunConfig(model=qwen.name, cache_budget="0.5", clock="sim",
                    workload_overrides={"limit": 1, "max_new_tokens": 2, "warmup_steps": 0})
    prep = session.prepare(cfg, loaded=qwen)                 # one prompt: its prefill comes first
    _Quasi.seen = {}
    with REGISTRY.registered("speculative-quasi", _Quasi):
        runner.run_strategy(prep, "speculative-quasi", {})
    live = {j: qs[0] for (_, j), qs in _Quasi.seen.items()}  # the prefill's quasi state per layer
    strategy = build_strategy("speculative", {})
    dv = artifacts_for(prep, strategy).artifacts["default-vectors"]
    chain = _speculation_chain(qwen, strategy, dv, torch.device("cpu"))
    prompt = torch.tensor([list(prep.requests[0].input_ids)])
    true = capture(qwen, prompt)
    for j in range(1, qwen.shape.moe_layers):
        got = chain_capture(qwen, chain, prompt, prompt.shape[1], j)
        assert torch.allclose(got["q"], live[j].reshape(got["q"].shape), atol=1e-5), j
        assert got["logits"].shape == (prompt.shape[1], qwen.shape.num_experts)
        # the old inputs (quasi states of the true routing) are not what the run sees past layer 1
        dv_true = P.default_vector_estimate(dv[j - 1], true[j - 1]["ids"], true[j - 1]["weights"])
        q_true = qwen.model.model.layers[j].post_attention_layernorm(true[j - 1]["s"] + dv_true)
        if j >= 2:
            assert not torch.allclose(got["q"], q_true, atol=1e-3), j
    # calibration trains on those states, and says so
    est_strategy = build_strategy("speculative", {"estimator": "linear", "epochs": 5})
    _, est = calibrate_speculative(qwen, calibration_set(qwen, five), est_strategy)
    assert est.meta["meta"]["layers"] == [1, 2]
    for r in est.meta["meta"]["heldout"].values():
        assert r["inputs"] == "speculation-chain" and r["split"] == "prompt"
