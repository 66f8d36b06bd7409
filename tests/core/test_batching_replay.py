"""Batches composed from batch-1 routing (`compose_batches`, `moebench replay --batch-size`), on the
torch-free core: unions, per-request stopping, bytes exactly the union's, scoring per batch."""
from __future__ import annotations

import numpy as np
import pytest

from moebench.errors import UserError
from moebench.models.presets import model_shape
from moebench.offload.events import Routing
from moebench.offload.profile import load_profile
from moebench.replay.engine import replay_one
from moebench.replay.synth import SynthSpec, synthesize
from moebench.replay.traces import compose_batches, trace_from_rows


def _rows(lengths: list[int], L: int = 2, E: int = 8, k: int = 2, seed: int = 0) -> list[dict]:
    """Requests of the given decode lengths (plus a prefill each), random top-k routing."""
    rng = np.random.default_rng(seed)
    rows = []
    for r, n in enumerate(lengths):
        for step in range(n + 1):
            for m in range(L):
                ids = [int(e) for e in rng.choice(E, size=k, replace=False)]
                row = {"request": r, "step": step, "layer": m, "experts": ids,
                       "weights": [0.6, 0.4]}
                if step == 0:
                    row["used"] = [int(e) for e in rng.choice(E, size=5, replace=False)]
                    row["tokens"] = 3 + r
                rows.append(row)
    return rows


def test_composed_steps_run_the_union_and_ragged_members_drop_out() -> None:
    rows = _rows([3, 1, 2])
    base = trace_from_rows(rows)
    t = compose_batches(base, 2)
    assert t.batches == {0: (0, 1), 1: (2,)}
    # batch 0: steps 0..3, member 1 stops after its step 1; batch 1: steps 0..2
    assert t.step.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert t.sequences.tolist() == [2, 2, 1, 1, 1, 1, 1]
    assert t.tokens[0] == 2 * max(3, 4)                      # left-padded prefill: B x longest
    index = {(r["request"], r["step"], r["layer"]): r for r in rows}
    for c in range(t.n_steps):
        b, step = int(t.request[c]), int(t.step[c])
        for m in range(2):
            members = [r for r in t.batches[b] if (r, step, m) in index]
            want: dict[int, None] = {}
            for r in members:
                row = index[(r, step, m)]
                for e in (row["used"] if step == 0 else row["experts"]):
                    want.setdefault(e, None)
            assert list(t.executed(c, m)) == list(want)
            ids, ws = t.rows(c, m)
            assert [list(x) for x in ids] == [index[(r, step, m)]["experts"] for r in members]
    assert compose_batches(base, 1) is base
    with pytest.raises(UserError):
        compose_batches(t, 2)


def test_sync_replay_bytes_per_step_are_exactly_the_union() -> None:
    shape = model_shape("qwen3-30b-a3b")
    base = synthesize(shape.moe_layers, shape.num_experts, shape.top_k,
                      SynthSpec(steps=12, requests=6, seed=3))
    B = 4
    t = compose_batches(base, B)
    run = replay_one(t, "sync", shape=shape, profile=load_profile("a6000-pcie4"), budget="0.25")
    steps = [s for s in run.samples if s["kind"] == "step"]
    # the independent count: per composed step, the distinct experts of its members, per layer
    reqs = list(dict.fromkeys(int(r) for r in base.request))
    at = {(int(base.request[s]), int(base.step[s])): s for s in range(base.n_steps)}
    expected = []
    for i in range(0, len(reqs), B):
        members = reqs[i:i + B]
        for step in sorted({st for (r, st) in at if r in members}):
            if step == 0:
                continue
            n = sum(len({int(e) for r in members if (r, step) in at
                         for e in base.experts[at[(r, step)], m]}) for m in range(shape.moe_layers))
            expected.append(n * shape.expert_bytes)
    assert [s["h2d_bytes"] for s in steps] == expected
    assert max(expected) > shape.moe_layers * shape.top_k * shape.expert_bytes
    m = run.result["metrics"]
    assert m["batch_size"] == B and m["requests"] == 2           # two batches: 4 + 2 requests
    assert m["tpot_ms"]["unit"].startswith("batch")
    assert run.result["workload"]["batch_size"] == B
    ids = {s["prompt_id"] for s in run.samples if s["kind"] == "request"}
    assert ids == {"request-0+request-1+request-2+request-3", "request-4+request-5"}


def test_a_batch_is_scored_against_the_union_of_its_rows() -> None:
    one = Routing(np.array([[3, 1]]), np.array([[0.7, 0.3]], dtype=np.float32))
    assert one.target() == ([3, 1], [pytest.approx(0.7), pytest.approx(0.3)])
    two = Routing(np.array([[3, 1], [1, 5]]), np.array([[0.5, 0.5], [0.75, 0.25]], dtype=np.float32))
    ids, w = two.target()
    assert ids == [1, 3, 5] and w == [1.25, 0.5, 0.25]


def _prefill_trace(L: int, E: int, used: int, k: int) -> object:
    rows = []
    for r in range(2):
        for step in range(3):
            for m in range(L):
                row = {"request": r, "step": step, "layer": m,
                       "experts": [(m + r + j) % E for j in range(k)]}
                if step == 0:
                    row["used"] = list(range(used))
                    row["tokens"] = 6
                rows.append(row)
    return trace_from_rows(rows)


@pytest.mark.parametrize("mode", ["per-expert", "whole-layer", "auto"])
def test_a_prefill_copies_per_expert_or_as_one_whole_layer_transfer(mode: str) -> None:
    shape = model_shape("tiny-qwen3-moe")
    prof = load_profile("a6000-pcie4")
    E, L, eb = shape.num_experts, shape.moe_layers, shape.expert_bytes
    trace = _prefill_trace(L, E, E - 2, shape.top_k)          # a long prompt: most of every layer
    run = replay_one(trace, "sync", shape=shape, profile=prof, budget="all", prefill_copies=mode)
    ttft_bytes = [s["prefill_h2d_bytes"] for s in run.samples if s["kind"] == "request"]
    per_expert = (E - 2) * prof.copy_seconds(eb)
    whole = prof.copy_seconds(E * eb)
    pick_whole = mode == "whole-layer" or (mode == "auto" and whole < per_expert)
    assert ttft_bytes == [L * (E if pick_whole else E - 2) * eb] * 2
    assert run.result["replay"]["prefill_copies"] == mode
    # the same prefill costs exactly the link time of what crossed: one latency per transfer
    per = replay_one(trace, "sync", shape=shape, profile=prof, budget="all", prefill_copies="per-expert")
    ttft = [s["ttft_ms"] for s in run.samples if s["kind"] == "request"]
    ttft_per = [s["ttft_ms"] for s in per.samples if s["kind"] == "request"]
    if pick_whole:
        assert ttft[0] != ttft_per[0]
    else:
        assert ttft == ttft_per


def test_whole_layer_prefills_need_room_for_a_layer() -> None:
    shape = model_shape("tiny-qwen3-moe")
    with pytest.raises(UserError, match="whole layer|whole-layer"):
        replay_one(_prefill_trace(shape.moe_layers, shape.num_experts, 3, shape.top_k), "sync", shape=shape,
                   profile=load_profile("a6000-pcie4"), budget="0.1", prefill_copies="whole-layer")
