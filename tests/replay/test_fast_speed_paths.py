"""The fast hit-rate paths (`moebench.replay.fast`): the compiled kernels (numba) and the plain
Python/numpy paths against each other and against the general replay, on random traces (random
shapes, budgets, prefill-sized groups, padded rows, composed batches, `--reset-per-request`,
the recorded warm-up and `--warmup-tokens`), group for group; and the plain paths standing in
when numba is absent."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moebench.models.presets import model_shape
from moebench.offload.profile import load_profile
from moebench.replay import fast
from moebench.replay.engine import build_schedule, replay_one
from moebench.replay.fast import compiled_available, fast_hit_rates, group_hits, group_sequence
from moebench.replay.synth import SynthSpec, synthesize
from moebench.replay.traces import compose_batches, trace_from_rows

POLICIES = ["lru", "lru-global", "belady"]
PROFILE = "a6000-pcie4"
ROOT = Path(__file__).resolve().parents[2]
needs_numba = pytest.mark.skipif(not compiled_available(), reason="numba is not installed")


@st.composite
def traces(draw, max_steps: int = 10, max_layers: int = 3, max_experts: int = 10,
           pad: bool = False):
    """(trace, L, E, k, largest group): requests of decode steps with skewed routing (so that
    there are hits), maybe a prefill of `width` experts per layer, maybe rows shorter than k."""
    L = draw(st.integers(1, max_layers))
    E = draw(st.integers(2, max_experts))
    k = draw(st.integers(1, min(4, E)))
    R = draw(st.integers(1, 3))
    steps = draw(st.integers(1, max_steps))
    width = draw(st.one_of(st.none(), st.integers(k, E)))
    skew = draw(st.sampled_from([0.0, 1.0, 2.5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = 1.0 / np.arange(1, E + 1) ** skew
    p = p[rng.permutation(E)] / p.sum()
    rows = []
    for r in range(R):
        rid = 3 * r + 1                                    # request ids need not be 0..R-1
        for m in range(L):
            if width is not None:
                used = rng.choice(E, width, replace=False, p=p).tolist()
                rows.append({"request": rid, "step": 0, "layer": m, "experts": used[:k], "used": used})
        for t in range(1, steps + 1):
            for m in range(L):
                n = int(rng.integers(1, k + 1)) if pad and rng.random() < 0.3 else k
                rows.append({"request": rid, "step": t, "layer": m,
                             "experts": rng.choice(E, n, replace=False, p=p).tolist()})
    return trace_from_rows(rows, source="hypothesis"), L, E, k, max(k, width or 0)


def _shape(L: int, E: int, k: int):
    return dataclasses.replace(model_shape("tiny-qwen3-moe"), num_layers=L,
                               moe_layer_ids=tuple(range(L)), num_experts=E, top_k=k)


def _per_step(seq, hits, L):
    per_group = hits.reshape(-1, L)
    return per_group[seq.counted.reshape(-1, L)[:, 0]].sum(1).tolist()


# ----------------------------------------------------------------------------------------------
# both fast paths == the general replay
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=traces(), data=st.data())
def test_both_fast_paths_equal_the_general_replay(policy, case, data) -> None:
    tr, L, E, k, kmax = case
    shape = _shape(L, E, k)
    slots = data.draw(st.integers(kmax, L * E + 2), label="slots")
    warm = data.draw(st.integers(0, 3), label="warm-up steps")
    reset = data.draw(st.booleans(), label="reset per request")
    tokens = data.draw(st.integers(0, 3), label="warm-up tokens")
    run = replay_one(tr, policy, shape=shape, profile=load_profile(PROFILE),
                     budget=f"{slots * shape.expert_bytes}b", warmup_steps=warm,
                     reset_per_request=reset, warmup_tokens=tokens)
    m = run.result["metrics"]
    want = [s["hits"] for s in run.samples if s["kind"] == "step"]
    seq = group_sequence(tr, build_schedule(tr, warm, tokens), E)
    paths = [False] + ([True] if compiled_available() else [])
    got = {c: group_hits(seq, policy, slots, reset, compiled=c) for c in paths}
    for c, hits in got.items():
        assert _per_step(seq, hits, L) == want, c
        hr = fast_hit_rates(seq, policy, slots, reset, compiled=c)
        assert hr["hits"] == m["hits"] and hr["activations"] == m["activations"]
        assert [h / a if a else None for h, a in zip(hr["layer_hits"], hr["layer_acts"])] \
            == m["hit_rate_per_layer"]
    assert np.array_equal(got[False], got.get(True, got[False]))   # group for group


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=traces(max_steps=6, max_layers=2, max_experts=8), batch=st.integers(2, 3),
       data=st.data())
def test_both_fast_paths_equal_the_general_replay_on_composed_batches(policy, case, batch, data) -> None:
    """Composed batches: every group is the union of its members' experts (irregular groups)."""
    tr, L, E, k, _ = case
    tr = compose_batches(tr, batch)
    shape = _shape(L, E, k)
    seq = group_sequence(tr, build_schedule(tr, 0), E)
    slots = data.draw(st.integers(seq.max_group(), L * E + 2), label="slots")
    reset = data.draw(st.booleans(), label="reset per request")
    run = replay_one(tr, policy, shape=shape, profile=load_profile(PROFILE),
                     budget=f"{slots * shape.expert_bytes}b", warmup_steps=0, reset_per_request=reset)
    want = [s["hits"] for s in run.samples if s["kind"] == "step"]
    for c in [False] + ([True] if compiled_available() else []):
        assert _per_step(seq, group_hits(seq, policy, slots, reset, compiled=c), L) == want, c


# ----------------------------------------------------------------------------------------------
# the kernels == the plain paths, on larger traces (no general replay: cheap)
# ----------------------------------------------------------------------------------------------
@needs_numba
@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=traces(max_steps=60, max_layers=6, max_experts=40, pad=True), data=st.data())
def test_the_kernels_equal_the_plain_paths_group_for_group(policy, case, data) -> None:
    tr, L, E, k, kmax = case
    warm = data.draw(st.integers(0, 4), label="warm-up steps")
    tokens = data.draw(st.integers(0, 4), label="warm-up tokens")
    reset = data.draw(st.booleans(), label="reset per request")
    seq = group_sequence(tr, build_schedule(tr, warm, tokens), E)
    # small budgets (layers borrow slots), quota >= k (the plain LRU's vectorised steady state)
    lo = max(seq.max_group(), L * k)
    slots = data.draw(st.one_of(st.integers(seq.max_group(), L * E + 2),
                                st.integers(lo, max(lo, L * E // 2))), label="slots")
    plain = group_hits(seq, policy, slots, reset, compiled=False)
    kern = group_hits(seq, policy, slots, reset, compiled=True)
    assert kern.dtype == plain.dtype == np.int64
    assert np.array_equal(kern, plain)
    assert fast_hit_rates(seq, policy, slots, reset, compiled=True) == \
        fast_hit_rates(seq, policy, slots, reset, compiled=False)


@needs_numba
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("budget", [0.07, 0.25, 0.6])
def test_the_kernels_equal_the_plain_paths_on_a_long_trace(policy, budget) -> None:
    """A longer, larger trace than hypothesis draws (the heap rebuilds, the steady state)."""
    tr = synthesize(6, 64, 6, SynthSpec(steps=1500, requests=2, zipf=1.0, reuse=0.5,
                                        cross_layer=0.3, seed=11))
    seq = group_sequence(tr, build_schedule(tr, 0), 64)
    slots = max(6, int(budget * 6 * 64))
    assert np.array_equal(group_hits(seq, policy, slots, compiled=True),
                          group_hits(seq, policy, slots, compiled=False))


def test_a_plain_schedule_replays_from_a_view_of_the_trace() -> None:
    tr = synthesize(3, 16, 4, SynthSpec(steps=20, requests=2, seed=1))
    seq = group_sequence(tr, build_schedule(tr, 0), 16)
    assert seq.full and np.shares_memory(seq.ids, tr.experts)
    assert seq.keys.tolist() == [m * 16 + int(e) for s in range(tr.n_steps) for m in range(3)
                                 for e in tr.experts[s, m]]
    warm = group_sequence(tr, build_schedule(tr, 2), 16)         # warm-up steps first: a copy
    assert warm.full and not np.shares_memory(warm.ids, tr.experts)
    assert warm.n_groups == (tr.n_steps + 2) * 3


def test_a_budget_below_the_largest_group_is_refused_on_both_paths() -> None:
    tr = synthesize(2, 16, 4, SynthSpec(steps=5, seed=1))
    seq = group_sequence(tr, build_schedule(tr, 0), 16)
    for c in [False] + ([True] if compiled_available() else []):
        for policy in POLICIES:
            with pytest.raises(fast.UserError, match="raise the budget"):
                group_hits(seq, policy, 3, compiled=c)


# ----------------------------------------------------------------------------------------------
# without numba
# ----------------------------------------------------------------------------------------------
def test_without_numba_the_plain_paths_stand_in() -> None:
    """numba made unimportable: `fast` imports, `compiled=None` runs the plain paths (the hits
    printed are checked against this process's), `compiled=True` is an error; and importing
    `fast` alone never imports numba (the torch-free core's CI has none)."""
    code = """
import sys
import moebench.replay.fast as fast
assert "numba" not in sys.modules, "importing fast imported numba"
sys.modules["numba"] = None
from moebench.replay.engine import build_schedule
from moebench.replay.synth import SynthSpec, synthesize
assert not fast.compiled_available()
tr = synthesize(3, 16, 4, SynthSpec(steps=40, requests=2, seed=2))
seq = fast.group_sequence(tr, build_schedule(tr, 1), 16)
try:
    fast.group_hits(seq, "lru", 12, compiled=True)
except RuntimeError as e:
    assert "numba" in str(e)
else:
    raise AssertionError("compiled=True ran without numba")
for policy in ("lru", "lru-global", "belady"):
    print(policy, fast.group_hits(seq, policy, 12, True).tolist())
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MOEBENCH_NO_NUMBA", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    tr = synthesize(3, 16, 4, SynthSpec(steps=40, requests=2, seed=2))
    seq = group_sequence(tr, build_schedule(tr, 1), 16)
    want = [f"{p} {group_hits(seq, p, 12, True).tolist()}" for p in POLICIES]
    assert out.stdout.splitlines() == want


def test_the_switch_off_variable_turns_the_kernels_off() -> None:
    code = "import moebench.replay.fast as f; print(f.compiled_available())"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOEBENCH_NO_NUMBA": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@needs_numba
def test_the_speed_benchmark_prints_each_policy_and_the_slowest_last() -> None:
    out = subprocess.run([sys.executable, "benchmarks/replay_speed.py", "--steps", "300"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rates = {ln.split("=")[0]: float(ln.split("=")[1]) for ln in lines if "_per_second=" in ln}
    assert set(rates) == {"lru_activations_per_second", "lru_global_activations_per_second",
                          "belady_activations_per_second", "replay_activations_per_second"}
    assert lines[-1].startswith("replay_activations_per_second=")
    assert rates["replay_activations_per_second"] == pytest.approx(
        min(v for k, v in rates.items() if k != "replay_activations_per_second"), abs=1)
    assert any("compiled kernels" in ln and "not timed" in ln for ln in lines)
