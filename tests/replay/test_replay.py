"""Trace replay: agreement with live runs, fast paths against the general replay, the bounds,
the synthetic generator, trace loading, routing consistency, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from moebench.bench import run as runner
from moebench.engine import session
from moebench.config import RunConfig
from moebench.errors import UserError
from moebench.models.presets import model_shape
from moebench.offload.profile import load_profile
from moebench.replay.engine import build_schedule, replay_one
from moebench.replay.fast import _lru_layer_exact, _quotas, fast_hit_rates, group_sequence
from moebench.replay.traces import load_replay_trace, trace_from_rows, trace_rows
from moebench.replay.synth import SynthSpec, synthesize

PROFILE = "a6000-pcie4"
SMALL = {"max_new_tokens": "5", "limit": "2"}   # the smoke workload's 2 warm-up steps stay on


# ----------------------------------------------------------------------------------------------
# agreement with live runs
# ----------------------------------------------------------------------------------------------
LIVE = {"sync": ("sync", {}), "lru": ("lru", {}), "lru-global": ("lru", {"scope": "global"}),
        "lru-expert-waits": ("lru", {"waits": "expert"}),
        "host-compute:decide=always+upload_cap=1": ("host-compute", {"decide": "always", "upload_cap": 1}),
        "host-compute:upload_cap=1": ("host-compute", {"upload_cap": 1}),
        "lowbit": ("lowbit", {}), "lowbit:bits=4+resident=low": ("lowbit", {"bits": 4, "resident": "low"})}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    cfg = RunConfig(model="tiny-qwen3-moe", cache_budget="0.25", clock="sim", profile=PROFILE,
                    workload_overrides=SMALL, record_trace=True)
    prep = session.prepare(cfg)
    out = {}
    for policy, (name, params) in LIVE.items():
        piece = runner.run_strategy(prep, name, params)
        res = runner.build_result(prep, [piece])
        d = tmp_path_factory.mktemp(policy)
        runner.write_run(prep, res, [piece], out_dir=d)
        out[policy] = (d, res)
    return out


def _steps(samples):
    return [s for s in samples if s["kind"] == "step"]


@pytest.mark.parametrize("policy", list(LIVE))
def test_replaying_a_live_run_gives_its_hit_rate_and_simulated_tpot(recorded, policy) -> None:
    d, live = recorded[policy]
    run = replay_one(load_replay_trace(d), policy, shape=model_shape("tiny-qwen3-moe"),
                     profile=load_profile(PROFILE), budget="0.25")
    got, want = run.result["metrics"], live["metrics"]
    assert run.result["source"] == "replay"
    assert run.result["clock"]["label"] == f"simulated:{PROFILE}"
    assert got["activations"] == want["activations"] > 0
    assert got["hits"] == want["hits"]
    assert got["hit_rate"] == want["hit_rate"]
    assert got["hit_rate_per_layer"] == want["hit_rate_per_layer"]
    for key in ("tpot_ms", "ttft_ms", "step_ms"):
        assert got[key]["mean"] == want[key]["mean"], key
        assert got[key]["median"] == want[key]["median"], key
    for key in ("h2d_bytes_per_token", "stall_ms_per_token", "compute_ms_per_token", "transfer_share"):
        assert got[key] == want[key], key
    live_samples = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    assert [s["latency_ms"] for s in _steps(run.samples)] == [s["latency_ms"] for s in _steps(live_samples)]
    assert run.result["workload"]["sha256"] == live["workload"]["sha256"]   # compare can pair them


def test_the_recorded_warmup_is_replayed(recorded) -> None:
    """Without the warm-up the first prefill starts from a cold cache (more bytes, a longer
    TTFT): the exact agreement above depends on replaying it."""
    d, live = recorded["lru"]
    cold = replay_one(load_replay_trace(d), "lru", shape=model_shape("tiny-qwen3-moe"),
                      profile=load_profile(PROFILE), budget="0.25", warmup_steps=0)
    assert cold.result["metrics"]["ttft_ms"]["mean"] > live["metrics"]["ttft_ms"]["mean"]


# ----------------------------------------------------------------------------------------------
# fast paths == the general replay
# ----------------------------------------------------------------------------------------------
def _with_prefills(trace, rng, width: int):
    """The same routing with a prefill row (step 0, `used` of `width` experts) per request."""
    rows = []
    for r in dict.fromkeys(trace.request.tolist()):
        for m in range(trace.moe_layers):
            used = rng.choice(trace.num_experts_seen, width, replace=False).tolist()
            rows.append({"request": r, "step": 0, "layer": m, "experts": used[:trace.top_k],
                         "used": used})
        rows += [row for row in trace_rows(trace) if row["request"] == r]
    return trace_from_rows(rows, source="test")


def _general(trace, policy, shape, budget, warmup_steps=0, **conv):
    run = replay_one(trace, policy, shape=shape, profile=load_profile(PROFILE), budget=budget,
                     warmup_steps=warmup_steps, **conv)
    m = run.result["metrics"]
    return [s["hits"] for s in _steps(run.samples)], m["hits"], m["hit_rate_per_layer"]


def _fast(trace, policy, shape, n_slots, warmup_steps=0, reset_per_request=False, warmup_tokens=0):
    seq = group_sequence(trace, build_schedule(trace, warmup_steps, warmup_tokens), shape.num_experts)
    hr = fast_hit_rates(seq, policy, n_slots, reset_per_request)
    from moebench.replay.fast import group_hits
    per_group = group_hits(seq, policy, n_slots, reset_per_request).reshape(-1, shape.moe_layers)
    per_step = per_group[seq.counted.reshape(-1, shape.moe_layers)[:, 0]].sum(1)
    per_layer = [h / a if a else None for h, a in zip(hr["layer_hits"], hr["layer_acts"])]
    return per_step.tolist(), hr["hits"], per_layer


CASES = [  # (model, budget as experts, prefill width or None)
    ("tiny-qwen3-moe", 32, None),    # quota 8 = k: the vectorised steady state
    ("tiny-qwen3-moe", 20, None),    # quota 5 < k: layers borrow slots, exact simulation
    ("tiny-qwen3-moe", 64, 24),      # prefills of 24 experts: irregular groups
    ("tiny-gpt-oss", 40, None),
]


@pytest.mark.parametrize("model,slots,prefill", CASES)
@pytest.mark.parametrize("policy", ["lru", "lru-global", "belady"])
def test_fast_hit_rates_equal_the_general_replay(model, slots, prefill, policy) -> None:
    shape = model_shape(model)
    tr = synthesize(shape.moe_layers, shape.num_experts, shape.top_k,
                    SynthSpec(steps=120, requests=2, zipf=0.8, reuse=0.4, cross_layer=0.3, seed=3))
    if prefill:
        tr = _with_prefills(tr, np.random.default_rng(1), prefill)
    budget = f"{slots * shape.expert_bytes}b"
    assert _fast(tr, policy, shape, slots) == _general(tr, policy, shape, budget)


CONVENTIONS = [  # (warm-up steps, reset per request, warm-up tokens)
    (0, True, 0), (0, False, 10), (0, True, 10), (3, True, 7), (3, False, 0)]


@pytest.mark.parametrize("warm,reset,tokens", CONVENTIONS)
@pytest.mark.parametrize("model,slots,prefill", CASES)
@pytest.mark.parametrize("policy", ["lru", "lru-global", "belady"])
def test_fast_hit_rates_equal_the_general_replay_under_the_replay_conventions(
        model, slots, prefill, policy, warm, reset, tokens) -> None:
    """`--reset-per-request` (a cold cache and fresh policy per request; Belady's MIN then looks
    no further than the request's end) and `--warmup-tokens` (replayed, not counted), with and
    without the recorded warm-up: the fast paths give the general replay's hits step for step."""
    shape = model_shape(model)
    tr = synthesize(shape.moe_layers, shape.num_experts, shape.top_k,
                    SynthSpec(steps=40, requests=3, zipf=0.8, reuse=0.4, cross_layer=0.3, seed=5))
    if prefill:
        tr = _with_prefills(tr, np.random.default_rng(2), prefill)
    budget = f"{slots * shape.expert_bytes}b"
    fast = _fast(tr, policy, shape, slots, warm, reset, tokens)
    assert fast == _general(tr, policy, shape, budget, warm, reset_per_request=reset,
                            warmup_tokens=tokens)
    assert len(fast[0]) == 3 * (40 - tokens)                  # counted decode steps only


def test_reset_per_request_starts_every_request_cold() -> None:
    """With every expert fitting, a reset cache misses each expert's first use in each request
    (not only in the trace); without the reset the later requests reuse the earlier ones'."""
    shape = model_shape("tiny-qwen3-moe")
    tr = synthesize(shape.moe_layers, shape.num_experts, shape.top_k,
                    SynthSpec(steps=30, requests=3, zipf=0.8, reuse=0.4, cross_layer=0.3, seed=9))
    first_uses = {True: 0, False: 0}
    for reset in (True, False):
        seen: set = set()
        for s in range(tr.n_steps):
            if reset and tr.step[s] == 1:
                seen = set()
            for m in range(tr.moe_layers):
                for e in tr.true_ids(s, m):
                    first_uses[reset] += (m, int(e)) not in seen
                    seen.add((m, int(e)))
    acts = tr.n_steps * tr.moe_layers * shape.top_k
    for reset in (True, False):
        for policy in ("lru", "lfu", "belady", "pin"):
            m = replay_one(tr, policy, shape=shape, profile=load_profile(PROFILE), budget="all",
                           reset_per_request=reset).result["metrics"]
            if policy == "pin":          # pinned experts are loaded again, untimed, per request
                assert m["hits"] >= acts - first_uses[reset]
            else:
                assert m["hits"] == acts - first_uses[reset], (policy, reset)


def test_warmup_tokens_leave_the_first_tokens_out_of_hit_rates_and_tpot(synthetic) -> None:
    shape, tr = synthetic
    full = replay_one(tr, "lru", shape=shape, profile=load_profile(PROFILE), budget="0.3")
    cut = replay_one(tr, "lru", shape=shape, profile=load_profile(PROFILE), budget="0.3",
                     warmup_tokens=10)
    a, b = _steps(full.samples), _steps(cut.samples)
    assert [s["position"] for s in b] == [s["position"] for s in a if s["position"] > 10]
    assert [s["hits"] for s in b] == [s["hits"] for s in a if s["position"] > 10]
    assert [s["latency_ms"] for s in b] == [s["latency_ms"] for s in a if s["position"] > 10]
    reqs = [s for s in cut.samples if s["kind"] == "request"]
    assert [r["n_out"] for r in reqs] == [60 - 10 + 1] * 2
    want = np.mean([np.mean([s["latency_ms"] for s in b if s["prompt_id"] == r["prompt_id"]])
                    for r in reqs])
    assert cut.result["metrics"]["tpot_ms"]["mean"] == pytest.approx(want)
    assert cut.result["replay"]["warmup_tokens"] == 10


def test_untimed_issue_lands_prefetches_at_once_and_is_labelled(synthetic) -> None:
    shape, tr = synthetic
    prof = load_profile(PROFILE)
    timed = replay_one(tr, "pred:synthetic+1", shape=shape, profile=prof, budget="0.3")
    free = replay_one(tr, "pred:synthetic+1 (untimed)", shape=shape, profile=prof, budget="0.3")
    t, u = timed.result["metrics"], free.result["metrics"]
    assert u["late"] == 0 and t["late"] > 0                      # nothing is in flight when needed
    assert u["hits"] == t["hits"] + t["late"]                    # same residency, late become hits
    assert u["tpot_ms"]["mean"] < t["tpot_ms"]["mean"]
    assert free.policy == "pred:synthetic+1 (untimed)"
    assert free.result["strategy"]["name"] == "pred:synthetic+1 (untimed)"
    assert free.result["replay"]["issue"] == "untimed" and timed.result["replay"]["issue"] == "timed"
    assert any("issue untimed" in n for n in free.result["notes"])
    with pytest.raises(UserError, match="pred:<source> policies only"):
        replay_one(tr, "lru (untimed)", shape=shape, profile=prof, budget="0.3")


def test_the_vectorised_lru_branch_is_exercised() -> None:
    shape = model_shape("tiny-qwen3-moe")
    tr = synthesize(4, 32, 8, SynthSpec(steps=120, requests=2, zipf=0.8, seed=3))
    seq = group_sequence(tr, build_schedule(tr, 0), 32)
    _, steady = _lru_layer_exact(seq, 32, _quotas(32, 4), stop_when_steady=True)
    assert steady is not None and steady < 60
    assert shape.moe_layers == 4


# ----------------------------------------------------------------------------------------------
# bounds
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    shape = model_shape("tiny-qwen3-moe")
    return shape, synthesize(4, 32, 8, SynthSpec(steps=60, requests=2, zipf=1.0, reuse=0.5,
                                                 cross_layer=0.3, predictor_recall=1.0, seed=7))


@pytest.mark.parametrize("budget", ["0.3", "0.5"])
def test_belady_is_never_beaten_by_a_demand_fetch_cache(synthetic, budget) -> None:
    shape, tr = synthetic
    hits = {p: replay_one(tr, p, shape=shape, profile=load_profile(PROFILE), budget=budget)
            .result["metrics"]["hits"] for p in ("lru", "lru-global", "lfu", "belady")}
    assert all(hits["belady"] >= h for h in hits.values())
    assert hits["belady"] > hits["lru"]


def test_the_oracle_is_faster_than_lru_and_sync(synthetic) -> None:
    shape, tr = synthetic
    tpot = {p: replay_one(tr, p, shape=shape, profile=load_profile(PROFILE), budget="0.3")
            .result["metrics"]["tpot_ms"]["mean"] for p in ("sync", "lru", "oracle")}
    assert tpot["oracle"] < tpot["lru"] < tpot["sync"]


def test_recorded_predictions_are_replayed_as_prefetches(synthetic) -> None:
    shape, tr = synthetic
    run = replay_one(tr, "pred:synthetic+1", shape=shape, profile=load_profile(PROFILE), budget="0.3")
    pred = run.result["metrics"]["prediction"]
    assert pred["predictors"]["synthetic+1"]["recall_at_k"] == 1.0
    assert pred["prefetches_issued"] > 0
    with pytest.raises(UserError, match="no predictions from 'nope'"):
        replay_one(tr, "pred:nope", shape=shape, profile=load_profile(PROFILE), budget="0.3")


def test_pinning_keeps_the_hottest_experts_resident(synthetic) -> None:
    shape, tr = synthetic
    run = replay_one(tr, "pin", shape=shape, profile=load_profile(PROFILE), budget="0.5")
    lru = replay_one(tr, "lru", shape=shape, profile=load_profile(PROFILE), budget="0.5")
    assert run.result["metrics"]["hit_rate"] > lru.result["metrics"]["hit_rate"] * 0.8
    assert run.result["metrics"]["peak_expert_bytes"] <= run.result["budget"]["bytes"]


# ----------------------------------------------------------------------------------------------
# synthetic traces
# ----------------------------------------------------------------------------------------------
def test_synth_is_deterministic_and_rows_are_distinct() -> None:
    a = synthesize(6, 64, 8, SynthSpec(steps=50, requests=2, zipf=1.5, seed=5))
    b = synthesize(6, 64, 8, SynthSpec(steps=50, requests=2, zipf=1.5, seed=5))
    c = synthesize(6, 64, 8, SynthSpec(steps=50, requests=2, zipf=1.5, seed=6))
    assert np.array_equal(a.experts, b.experts) and a.sha256 == b.sha256
    assert not np.array_equal(a.experts, c.experts)
    s = np.sort(a.experts, axis=2)
    assert not (s[..., 1:] == s[..., :-1]).any()
    assert a.experts.min() >= 0 and a.experts.max() < 64


def test_synth_parameters_do_what_they_say() -> None:
    sticky = synthesize(4, 64, 4, SynthSpec(steps=30, requests=2, reuse=1.0, cross_layer=0.0))
    same = (sticky.experts[1:] == sticky.experts[:-1]).all(axis=(1, 2))
    assert same[:29].all() and same[30:].all()        # reuse never crosses the request boundary
    chained = synthesize(4, 64, 4, SynthSpec(steps=200, reuse=0.0, cross_layer=1.0, seed=2))
    for m in range(1, 4):
        pairs = set(zip(chained.experts[:, m - 1].ravel().tolist(), chained.experts[:, m].ravel().tolist()))
        assert len(pairs) == len({a for a, _ in pairs})   # a fixed map from layer m-1 to layer m

    def top_share(z: float) -> float:
        t = synthesize(2, 64, 4, SynthSpec(steps=400, zipf=z, reuse=0.0, cross_layer=0.0, seed=1))
        return np.bincount(t.experts[:, 0].ravel(), minlength=64).max() / t.experts[:, 0].size
    assert top_share(2.0) > 2 * top_share(0.0)
    with pytest.raises(UserError):
        SynthSpec(reuse=1.5).validate()


# ----------------------------------------------------------------------------------------------
# loading traces
# ----------------------------------------------------------------------------------------------
def test_any_jsonl_of_step_layer_experts_replays(tmp_path) -> None:
    rows = [{"step": s, "layer": m, "experts": [(s + m + j) % 32 for j in range(8)]}
            for s in range(1, 7) for m in range(4)]
    p = tmp_path / "foreign.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tr = load_replay_trace(p)
    assert tr.n_steps == 6 and tr.moe_layers == 4 and set(tr.request.tolist()) == {0}
    run = replay_one(tr, "lru", shape=model_shape("tiny-qwen3-moe"), profile=load_profile(PROFILE),
                     budget="0.5")
    assert run.result["metrics"]["tpot_ms"]["n"] == 1
    assert run.result["metrics"]["ttft_ms"]["n"] == 0          # no prefill row: no TTFT claimed
    assert any("no prefill rows" in n for n in run.result["notes"])


@pytest.mark.parametrize("rows,msg", [
    ([{"step": 1, "layer": 0, "experts": [1]}, {"step": 1, "layer": 2, "experts": [1]}], "lacks layer 1"),
    ([{"step": 1, "layer": 0, "experts": [1]}, {"step": 1, "layer": 0, "experts": [2]}], "layer 0 twice"),
    ([{"step": 1, "layer": 0, "experts": "3"}], "non-empty list"),
    ([{"step": 1, "layer": 0, "experts": [-1]}], "non-negative"),
    ([{"step": 1, "layer": 0}], "non-empty list"),
    ([{"step": 1, "layer": 0, "experts": [3, 3]}], "lists expert 3 twice"),
])
def test_bad_traces_are_one_sentence_errors(rows, msg) -> None:
    with pytest.raises(UserError, match=msg):
        trace_from_rows(rows, source="t")


@pytest.mark.parametrize("k", [7, 9])
def test_a_trace_of_another_top_k_is_refused(k: int) -> None:
    rows = [{"step": s, "layer": m, "experts": list(range(k))} for s in range(1, 3) for m in range(4)]
    with pytest.raises(UserError, match=f"lists {k} experts, but model 'tiny-qwen3-moe' routes each "
                                        "token to its top-8"):
        replay_one(trace_from_rows(rows, source="t"), "lru", shape=model_shape("tiny-qwen3-moe"),
                   profile=load_profile(PROFILE), budget="0.5")


def test_a_trace_must_fit_the_model() -> None:
    tr = synthesize(3, 16, 2, SynthSpec(steps=5))
    with pytest.raises(UserError, match="MoE layers"):
        replay_one(tr, "lru", shape=model_shape("tiny-qwen3-moe"), profile=load_profile(PROFILE),
                   budget="0.5")


# ----------------------------------------------------------------------------------------------
# routing consistency (arXiv 2505.16056)
# ----------------------------------------------------------------------------------------------
def _brute_srp(layers: list[np.ndarray], E: int, m: int) -> float:
    """Best F1 over thresholds, counts summed over every segment of every layer given."""
    best = 0.0
    for v in range(1, m + 1):
        match = pred = acts = 0
        for X in layers:
            T, k = X.shape
            for s in range(T - m + 1):
                c = np.bincount(X[s:s + m].ravel(), minlength=E)
                group = c >= v
                match += c[group].sum()
                pred += group.sum() * m
                acts += m * k
        best = max(best, 2 * match / (pred + acts))
    return best


def _brute_sch(X: np.ndarray, E: int, m: int, c: int) -> float:
    T, k = X.shape
    last: dict[int, int] = {}
    hits, ts = 0, 0
    for i in range(T):
        fut = np.bincount(X[i:i + m].ravel(), minlength=E)
        ranked = sorted(last, key=lambda e: (fut[e], last[e]), reverse=True)
        n_first = 0
        for e in X[i]:
            e = int(e)
            if e in last:
                hits += ranked.index(e) < c
            else:
                hits += len(last) + n_first < c
                n_first += 1
        for e in X[i]:
            last[int(e)] = ts
            ts += 1
    return hits / X.size


def test_consistency_figures_follow_the_paper_definitions() -> None:
    from moebench.replay.consistency import routing_consistency, sch_layer, srp

    tr = synthesize(2, 16, 2, SynthSpec(steps=40, zipf=0.5, reuse=0.3, seed=4))
    got = srp(tr, 16, [2, 4, 8])
    for m in (2, 4, 8):
        assert got["model"][m]["srp"] == pytest.approx(
            _brute_srp([tr.experts[:, 0], tr.experts[:, 1]], 16, m))
        for layer in range(2):
            assert got["per_layer"][m][layer] == pytest.approx(_brute_srp([tr.experts[:, layer]], 16, m))
    X = tr.experts[:, 0]
    for m in (1, 3, 8):
        h = sch_layer(X, 16, m, [2, 3, 5])
        assert [x / X.size for x in h] == pytest.approx([_brute_sch(X, 16, m, c) for c in (2, 3, 5)])
    constant = trace_from_rows([{"step": s, "layer": 0, "experts": [3, 5]} for s in range(1, 20)])
    figs = routing_consistency(constant, 16, lengths=(2, 4))
    assert figs["srp"]["model"][4]["srp"] == 1.0
    assert figs["sch"]["mean"][4][2] == 1.0


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def test_cli_synth_then_replay_writes_results_and_a_report(tmp_path) -> None:
    from typer.testing import CliRunner

    from moebench.cli import app
    from moebench.results.model import load_run

    cli = CliRunner()
    trace = tmp_path / "t.jsonl"
    r = cli.invoke(app, ["trace", "synth", "--model", "tiny-qwen3-moe", "--steps", "12",
                         "--requests", "2", "--out", str(trace)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "rep"
    r = cli.invoke(app, ["replay", str(trace), "--model", "tiny-qwen3-moe", "--strategies", "sync,lru",
                         "--sweep", "cache_budget=0.25,0.5", "--profile", PROFILE, "--out", str(out)])
    assert r.exit_code == 0, r.output
    for f in ("report.md", "replay.json", "hit_rate_vs_budget.png", "tpot_vs_budget.png",
              "hit_rate_per_layer.png"):
        assert (out / f).exists(), f
    results = [load_run(p).raw for p in out.iterdir() if (p / "result.json").exists()]
    assert {(x["strategy"]["name"], x["budget"]["spec"]) for x in results} == {
        (s, b) for s in ("sync", "lru", "belady", "oracle") for b in ("0.25", "0.5")}
    assert all(x["source"] == "replay" and x["clock"]["label"] == f"simulated:{PROFILE}" for x in results)
    r = cli.invoke(app, ["replay", str(trace), "--model", "tiny-qwen3-moe", "--hit-rate-only",
                         "--strategies", "lru,lru-global", "--out", str(tmp_path / "fast")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "fast" / "replay.json").read_text())
    assert {row["policy"] for row in doc["rows"]} == {"lru", "lru-global", "belady"}
    r = cli.invoke(app, ["replay", str(trace), "--model", "tiny-qwen3-moe", "--strategies", "lru,nope",
                         "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "unknown replay policy 'nope'" in r.output


def test_cli_replay_of_a_bf16_checkpoint_run_in_float32_charges_the_bytes_it_moved(tmp_path) -> None:
    """The embedded model is stored in bf16 and runs in float32: replaying its recorded run must
    charge float32 expert bytes (what the live run moved), not the checkpoint's dtype."""
    from typer.testing import CliRunner

    from moebench.cli import app

    cli = CliRunner()
    live = cli.invoke(app, ["run", "--strategy", "sync", "--model", "default", "--record-trace",
                            "--clock", "sim", "--set", "limit=1", "--set", "max_new_tokens=3",
                            "--out", str(tmp_path / "live")])
    assert live.exit_code == 0, live.output
    run_dir = next((tmp_path / "live").iterdir())
    want = json.loads((run_dir / "result.json").read_text())["metrics"]
    rep = cli.invoke(app, ["replay", str(run_dir), "--strategies", "sync", "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    got = [json.loads(p.read_text())["metrics"] for p in (tmp_path / "rep").rglob("result.json")
           if json.loads(p.read_text())["strategy"]["name"] == "sync"]
    assert got and got[0]["h2d_bytes_per_token"] == want["h2d_bytes_per_token"]
    assert got[0]["tpot_ms"]["mean"] == want["tpot_ms"]["mean"]


def test_replay_asks_the_strategy_what_it_reads() -> None:
    """No whitelist: a registered routing-only strategy (a plugin's) replays; one that reads the
    model's states is refused with one sentence naming what it reads."""
    from moebench.errors import UserError
    from moebench.replay.policies import build_policy, policy_names
    from moebench.strategy import REGISTRY, Strategy

    class RoutingOnly(Strategy):
        name = "routing-only-probe"
        reads = frozenset({"routing"})

    class ReadsResidual(Strategy):
        name = "residual-probe"
        reads = frozenset({"routing", "residual"})

    with REGISTRY.registered("routing-only-probe", RoutingOnly), \
            REGISTRY.registered("residual-probe", ReadsResidual):
        assert isinstance(build_policy("routing-only-probe"), RoutingOnly)
        assert "routing-only-probe" in policy_names() and "residual-probe" not in policy_names()
        with pytest.raises(UserError, match="reads the model's residual stream"):
            build_policy("residual-probe")
    with pytest.raises(UserError, match="hidden states and residual stream"):
        build_policy("speculative")
