"""Lossless strategies on one shared forward (`moebench.engine.lockstep`): every piece is the one
the strategy's own run gives, field by field; the model comes back unmodified; a slot that does
not hold its expert is caught; a comparison gives the same files with and without sharing."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from moebench.calibration.provision import artifacts_for
from moebench.config import RunConfig
from moebench.engine import lockstep
from moebench.engine.session import prepare, run_session
from moebench.strategy import REGISTRY, build_strategy
from tests.helpers import reference_decode

CFG = RunConfig(model="tiny-qwen3-moe", workload="smoke", cache_budget="0.25", clock="sim",
                profile="a6000-pcie4", seed=0, workload_overrides={"max_new_tokens": 4, "limit": 3})


@pytest.fixture(scope="module")
def prep():
    return prepare(CFG)


def _lossless() -> list[str]:
    names = []
    for n in REGISTRY.names():
        try:
            if build_strategy(n).traits.lossless:
                names.append(n)
        except Exception:      # a plugin that does not load here is not this test's business
            continue
    return names


def _piece_fields(p) -> dict:
    d = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "logits"}
    d["logits"] = {repr(k): [t.tolist() for t in v] for k, v in p.logits.items()}
    return json.loads(json.dumps(d, sort_keys=True, default=repr))


def test_every_lossless_strategy_gives_its_solo_piece_on_a_shared_forward(prep):
    names = _lossless()
    assert {"sync", "lru", "oracle", "all-resident", "pre-attention"} <= set(names)
    provisioned = [artifacts_for(prep, build_strategy(n)) for n in names]
    group = [(build_strategy(n), prov) for n, prov in zip(names, provisioned)]
    shared = lockstep.run_shared(prep, group, keep_logits=True, record_trace=True)
    for name, prov, piece in zip(names, provisioned, shared):
        solo = run_session(prep, build_strategy(name), prov, keep_logits=True, record_trace=True)
        assert _piece_fields(piece) == _piece_fields(solo), name


def test_the_shared_forward_is_bit_identical_to_the_unmodified_model(prep):
    group = [(s, artifacts_for(prep, s)) for s in map(build_strategy, ("lru", "sync", "lfu"))]
    pieces = lockstep.run_shared(prep, group, keep_logits=True)
    n_new = prep.workload.max_new_tokens
    for req in prep.requests:
        tokens, logits = reference_decode(prep.loaded.model, list(req.input_ids), n_new)
        for piece in pieces:
            out = next(o for o in piece.outputs if o["prompt_id"] == req.id)
            assert out["token_ids"] == tokens
            for a, b in zip(piece.logits[(0, req.id)], logits):
                assert torch.equal(a, b)


def test_the_model_is_restored_after_a_shared_run(prep):
    model = prep.loaded.model
    before = {n: p for n, p in model.named_parameters()}
    impl = model.config._experts_implementation
    group = [(s, artifacts_for(prep, s)) for s in map(build_strategy, ("sync", "lru"))]
    lockstep.run_shared(prep, group)
    after = dict(model.named_parameters())
    assert before.keys() == after.keys()
    assert all(after[n] is p for n, p in before.items())
    assert model.config._experts_implementation == impl
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not hasattr(m, "_moebench")


def test_a_slot_that_does_not_hold_its_expert_is_caught(prep, monkeypatch):
    real = lockstep._log_copies

    def lossy_log(engine):
        written = real(engine)
        load = engine.pools.load

        def forgetful(key, slot):          # the copy happens, but into another slot's record
            load(key, slot)
            written[slot] = (key[0], (key[1] + 1) % prep.loaded.shape.num_experts)
        engine.pools.load = forgetful
        return written

    monkeypatch.setattr(lockstep, "_log_copies", lossy_log)
    group = [(s, artifacts_for(prep, s)) for s in map(build_strategy, ("sync", "lru"))]
    with pytest.raises(lockstep.Disagreement):
        lockstep.run_shared(prep, group)
    monkeypatch.undo()
    test_the_model_is_restored_after_a_shared_run(prep)


def test_a_strategy_declared_lossless_that_executes_other_experts_is_caught(prep):
    from moebench.offload.events import Routing

    sync, lru = build_strategy("sync"), build_strategy("lru")

    def reweighted(ev, true, s, u):                 # "lossless", but not the router's weights
        return Routing(true.ids, true.weights * 0.5)
    lru.choose = reweighted
    with pytest.raises(lockstep.Disagreement, match="declared lossless"):
        lockstep.run_shared(prep, [(sync, artifacts_for(prep, sync)), (lru, artifacts_for(prep, lru))])
    assert "choose" not in sync.__dict__ and lru.choose is reweighted
    test_the_model_is_restored_after_a_shared_run(prep)


def test_only_lossless_strategies_on_the_simulated_clock_share(prep):
    sync, lru, lowbit = (build_strategy(n) for n in ("sync", "lru", "lowbit"))
    assert lockstep.can_share(prep, [sync, lru])
    assert not lockstep.can_share(prep, [sync])
    assert not lockstep.can_share(prep, [sync, lowbit])
    assert not lockstep.can_share(dataclasses.replace(prep, clock="cuda"), [sync, lru])


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "environment.json"}


def test_a_comparison_writes_the_same_files_with_and_without_sharing(tmp_path, monkeypatch):
    from moebench.bench.compare import ComparePlan, run_compare

    base = dataclasses.replace(CFG, workload_overrides={"max_new_tokens": 3, "limit": 2})
    plan = ComparePlan(base, ("sync", "lowbit", "lru", "oracle"), "sync", repetitions=2, plots=False)
    run_compare(plan, tmp_path / "warm", name="r")        # the oracle's recorded routing, cached
    a = run_compare(plan, tmp_path / "a", name="r")
    monkeypatch.setenv("MOEBENCH_SHARED_FORWARD", "0")
    b = run_compare(plan, tmp_path / "b", name="r")
    assert _files(a) == _files(b)


def test_a_failed_shared_run_falls_back_to_runs_one_by_one(tmp_path, monkeypatch):
    from moebench.bench import compare as C

    calls = []

    def refuse(prep, group, **kw):
        calls.append([s.name for s, _ in group])
        raise lockstep.Disagreement("test")

    monkeypatch.setattr(lockstep, "run_shared", refuse)
    base = dataclasses.replace(CFG, workload_overrides={"max_new_tokens": 3, "limit": 2})
    plan = C.ComparePlan(base, ("sync", "lru"), "sync", plots=False)
    a = C.run_compare(plan, tmp_path / "a", name="r")
    assert calls == [["sync", "lru"]] or calls == [["lru", "sync"]]
    monkeypatch.setenv("MOEBENCH_SHARED_FORWARD", "0")
    b = C.run_compare(plan, tmp_path / "b", name="r")
    assert _files(a) == _files(b)


def _prep_with(prep, budget: str, **workload):
    """The fixture's model with another budget and workload fields (no reload)."""
    cfg = dataclasses.replace(CFG, cache_budget=budget,
                              workload_overrides={**CFG.workload_overrides, **workload})
    return prepare(cfg, loaded=prep.loaded)


def _shared_and_solo(prep, names):
    """Each strategy's piece on a shared forward and alone, asserted equal field by field."""
    provisioned = [artifacts_for(prep, build_strategy(n)) for n in names]
    shared = lockstep.run_shared(prep, [(build_strategy(n), p) for n, p in zip(names, provisioned)],
                                 keep_logits=True, record_trace=True)
    solo = [run_session(prep, build_strategy(n), p, keep_logits=True, record_trace=True)
            for n, p in zip(names, provisioned)]
    for name, a, b in zip(names, shared, solo):
        assert _piece_fields(a) == _piece_fields(b), name
    return shared, solo


def _prefill_h2d(piece) -> list[int]:
    """Each request's prefill step's host-to-device bytes."""
    return [s["prefill_h2d_bytes"] for s in piece.samples if s.get("kind") == "request"]


def test_a_shared_forward_copies_prefills_as_the_workload_says(prep):
    names = ("sync", "lru", "lfu")
    whole = _prep_with(prep, "0.5", prefill_copies="whole-layer")
    shared, solo = _shared_and_solo(whole, names)
    per_expert = [run_session(_prep_with(prep, "0.5"), build_strategy(n)) for n in names]
    for name, a, b in zip(names, shared, per_expert):      # whole layers really crossed the link
        assert _prefill_h2d(a) != _prefill_h2d(b), name
        assert all(w >= p for w, p in zip(_prefill_h2d(a), _prefill_h2d(b))), name


def test_the_protocols_notes_reach_the_pieces_of_a_shared_forward(prep):
    # 16 slots, no whole layer (32 experts); prompts of 2 tokens touch at most 16 experts a layer
    auto = _prep_with(prep, "0.125", prefill_copies="auto", max_prompt_tokens=2)
    shared, solo = _shared_and_solo(auto, ("sync", "lru"))
    note = ("prefill_copies=auto: the cache budget (16 experts) holds no whole layer (32): "
            "prefills copied per expert")
    for piece in (*shared, *solo):
        assert note in piece.notes, piece.notes
