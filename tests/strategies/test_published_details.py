"""The published details of `speculative` and `pre-attention`, and parameters that would make a
strategy something else: speculation runs in prefill (YALIS's `use_prefetched` is not gated on
the phase) with whole-layer copies; a speculation that speculates nothing, or a lookahead past the
last layer, is refused before any calibration; a legal but degenerate setting is said in the
result."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moebench.bench import run as runner
from moebench.cli import app
from moebench.config import RunConfig
from moebench.engine import session
from moebench.errors import UserError
from moebench.strategy import build_strategy

RUN_SET = ["--set", "limit=1", "--set", "max_new_tokens=2", "--set", "warmup_steps=0"]


def _prep(loaded, budget: str = "0.5", **over) -> session.Prepared:
    cfg = RunConfig(model=loaded.name, cache_budget=budget, clock="sim",
                    workload_overrides={"limit": 2, "max_new_tokens": 3, "warmup_steps": 0, **over})
    return session.prepare(cfg, loaded=loaded)


def _cli_run(tmp_path, *args: str):
    return CliRunner().invoke(app, ["run", "--model", "tiny-qwen3-moe", "--clock", "sim",
                                    "--cache-budget", "0.5", "--out", str(tmp_path / "res"),
                                    *args, *RUN_SET])


def _artifacts(cache) -> list[str]:
    return sorted(p.parent.name for p in cache.glob("artifacts/*/*.safetensors"))


# ---------------------------------------------------------------------------------------------
# speculation in prefill
# ---------------------------------------------------------------------------------------------
def test_speculative_speculates_in_prefill_by_default_with_whole_layer_copies(qwen, cache) -> None:
    """Published default: prompt tokens run speculated experts, and each speculated layer is
    copied whole one layer ahead (YALIS's full-layer offload mode); `prefill_fetch=experts`
    copies only the speculated experts; `speculate_prefill=false` is the old true-routing prefill."""
    default = build_strategy("speculative")
    assert default.params.speculate_prefill is True and default.params.prefill_fetch == "layer"
    assert default.version >= 2
    prep = _prep(qwen)
    shape, eb = qwen.shape, qwen.shape.expert_bytes
    runs = {}
    for label, params in [("layer", {}), ("experts", {"prefill_fetch": "experts"}),
                          ("off", {"speculate_prefill": False})]:
        piece = runner.run_strategy(prep, "speculative", params, record_trace=True)
        prefill_rows = {(r.request, r.layer): r for r in piece.trace if r.step == 0}
        req_rows = [s for s in piece.samples if s["kind"] == "request"]
        runs[label] = (piece, prefill_rows, req_rows)
    for label, (piece, rows, reqs) in runs.items():
        for i, req in enumerate(reqs):
            used = [len(rows[(i, m)].used) for m in range(shape.moe_layers)]
            if label == "layer":      # layer 0 on demand, every later layer copied whole
                want = (used[0] + (shape.moe_layers - 1) * shape.num_experts) * eb
            else:                     # exactly the experts the prompt's tokens ran
                want = sum(used) * eb
            assert req["prefill_h2d_bytes"] == want, (label, i)
    # speculated prefill executes the guesses (a random tiny model guesses wrong somewhere)
    spec_rows, off_rows = runs["layer"][1], runs["off"][1]
    assert all(r.executed == r.experts for (_, m), r in off_rows.items())
    assert any(r.executed != r.experts for (_, m), r in spec_rows.items() if m >= 1)
    assert all(r.executed == r.experts for (_, m), r in spec_rows.items() if m == 0)
    assert runs["layer"][0].outputs == runs["experts"][0].outputs   # copies never change numerics
    notes = " ".join(runs["layer"][0].notes)
    assert "prefill runs speculated experts" in notes


def test_whole_layer_prefill_copy_that_does_not_fit_is_said(qwen, cache) -> None:
    prep = _prep(qwen, budget="0.25", limit=1)          # 32 slots: one whole layer, not two
    piece = runner.run_strategy(prep, "speculative", {})
    assert any("fewer than two whole layers" in n for n in piece.notes)


# ---------------------------------------------------------------------------------------------
# parameters that would make the strategy something else
# ---------------------------------------------------------------------------------------------
def test_speculation_that_speculates_no_layer_is_refused_before_calibrating(cache, tmp_path) -> None:
    res = _cli_run(tmp_path, "--strategy", "speculative", "--set", "speculate_from_layer=99")
    assert res.exit_code == 2, res.output
    assert "leaves no layer to speculate" in res.output and "Traceback" not in res.output
    assert _artifacts(cache) == []                       # refused before any calibration work
    # the last MoE layer is still a speculation (tiny-qwen3-moe: MoE layers 0..3)
    res = _cli_run(tmp_path, "--strategy", "speculative", "--set", "speculate_from_layer=3")
    assert res.exit_code == 0, res.output


def test_speculation_refused_at_setup_when_the_artifact_is_cached(qwen, cache) -> None:
    prep = _prep(qwen, limit=1)
    runner.run_strategy(prep, "speculative", {"speculate_from_layer": 3})   # artifacts now cached
    with pytest.raises(UserError, match="leaves no layer to speculate"):
        runner.run_strategy(prep, "speculative", {"speculate_from_layer": 4})
    assert qwen.model.model.layers[0].mlp.experts.gate_up_proj.numel() > 0   # model restored


def test_next_gate_lookahead_past_the_last_layer_is_refused(cache, tmp_path) -> None:
    res = _cli_run(tmp_path, "--strategy", "next-gate", "--set", "lookahead=4")
    assert res.exit_code == 2 and "reaches past the last MoE layer" in res.output
    assert _cli_run(tmp_path, "--strategy", "next-gate", "--set", "lookahead=3").exit_code == 0


def test_unused_estimator_is_said_and_not_trained(cache, tmp_path) -> None:
    params = {"estimator": "linear", "speculate_from_layer": 3, "estimator_layers": 2}
    assert "spec-estimator" not in build_strategy("speculative", params).traits.needs
    assert "spec-estimator" in build_strategy("speculative", {**params, "estimator_layers": 3}).traits.needs
    res = _cli_run(tmp_path, "--strategy", "speculative", "--json",
                   *[x for k, v in params.items() for x in ("--set", f"{k}={v}")])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{"):])
    assert any("estimator=linear is unused and was not trained" in n for n in result["notes"])
    assert "spec-estimator" not in _artifacts(cache)
    assert "spec-estimator" not in [a["kind"] for a in result["strategy"]["artifacts"]]


def test_degenerate_pre_attention_settings_are_said(qwen, cache) -> None:
    prep = _prep(qwen, limit=1)
    piece = runner.run_strategy(prep, "pre-attention", {"activation": "none", "epochs": 0})
    notes = " ".join(piece.notes)
    assert "one affine map" in notes and "epochs=0" in notes
    piece = runner.run_strategy(_prep(qwen, budget="all", limit=1), "pre-attention", {"predictor": "router"})
    assert any("holds every expert" in n for n in piece.notes)
