"""The contract every registered strategy keeps (built-ins and any plugin installed here), on the
default model at a tight budget on the simulated clock:

- the budget is never exceeded (peak resident expert bytes <= the budget's bytes);
- every victim it picks is among the candidates the engine offered;
- identical inputs give identical decisions (two runs: the same samples, bytes and hits);
- lossless (by its traits) => tokens and logits bit-identical to the unmodified model;
- a strategy whose `reads` allow replay gives the same hit rate and bytes replayed from its own
  recorded routing as live.
"""
from __future__ import annotations

import pytest
import torch

from moebench.bench import run as runner
from moebench.config import RunConfig
from moebench.engine import session
from moebench.models.loading import load_model
from moebench.offload.profile import load_profile
from moebench.replay.engine import replay_one
from moebench.replay.traces import trace_from_rows
from moebench.strategy import REGISTRY, Strategy, build_strategy
from moebench.trace import export_rows
from tests.helpers import reference_decode

MODEL = "tiny-qwen3-trained"
SMALL = {"limit": 2, "max_new_tokens": 5, "warmup_steps": 1}
NAMES = REGISTRY.names()


@pytest.fixture(scope="module")
def loaded():
    return load_model(MODEL, seed=0)


@pytest.fixture(scope="module")
def reference():
    return load_model(MODEL, seed=0).model          # fresh, never attached


def _prep(loaded, budget: str) -> session.Prepared:
    cfg = RunConfig(model=MODEL, cache_budget=budget, clock="sim", workload_overrides=SMALL)
    return session.prepare(cfg, loaded=loaded)


def _budget(name: str) -> str:
    """Tight: a sixth of all experts, just over one whole layer (a prefill may touch all 32)."""
    return "0.15"


class _Watch:
    """Wraps a strategy class so every victim is checked against its candidates."""

    bad: list = []

    @classmethod
    def wrap(cls, base: type[Strategy]) -> type[Strategy]:
        def victim(self, layer, candidates):
            v = base.victim(self, layer, candidates)
            if v not in candidates:
                _Watch.bad.append((layer, v))
            return v
        return type(f"Watched{base.__name__}", (base,), {"victim": victim})


@pytest.mark.parametrize("name", NAMES)
def test_budget_victims_and_determinism(loaded, name: str) -> None:
    cls = REGISTRY.get(name)
    prep = _prep(loaded, _budget(name))
    _Watch.bad = []
    with REGISTRY.registered(f"watched-{name}", _Watch.wrap(cls)):
        a = runner.run_strategy(prep, f"watched-{name}", {})
        b = runner.run_strategy(prep, f"watched-{name}", {})
    assert _Watch.bad == [], f"{name} chose victims outside the candidates: {_Watch.bad[:3]}"
    result = runner.build_result(prep, [a])
    assert 0 < result["metrics"]["peak_expert_bytes"] <= result["budget"]["bytes"]
    assert a.samples == b.samples                                          # same inputs, same run
    assert [o["token_ids"] for o in a.outputs] == [o["token_ids"] for o in b.outputs]


# parameter values that change how a lossless strategy runs, each proven lossless too
VARIANTS = [("lru", {"waits": "expert"}), ("lru", {"scope": "global", "waits": "expert"}),
            ("host-compute", {"decide": "always"}),
            ("host-compute", {"placement": "layers", "host_layers": 2}),
            ("host-compute", {"upload_cap": 1})]
LOSSLESS = [(n, {}) for n in NAMES if build_strategy(n).traits.lossless] + VARIANTS


@pytest.mark.parametrize("name,params", LOSSLESS, ids=[f"{n}{p or ''}" for n, p in LOSSLESS])
def test_lossless_means_bit_identical(loaded, reference, name: str, params: dict) -> None:
    prep = _prep(loaded, _budget(name))
    piece = runner.run_strategy(prep, name, params, keep_logits=True)
    assert piece.outputs
    for out in piece.outputs:
        n = len(out["token_ids"])
        tokens, logits = reference_decode(reference, out["prompt_token_ids"], n)
        assert out["token_ids"] == tokens
        for got, want in zip(piece.logits[(0, out["prompt_id"])], logits):
            assert torch.equal(got, want)


REPLAYABLE = ([(n, {}, n) for n in NAMES if build_strategy(n).traits.replayable]
              + [("lru", {"waits": "expert"}, "lru-expert-waits")])


@pytest.mark.parametrize("name,params,policy", REPLAYABLE, ids=[r[2] for r in REPLAYABLE])
def test_replayable_strategies_replay_their_own_run_exactly(loaded, name: str, params: dict,
                                                            policy: str) -> None:
    budget = _budget(name)
    prep = _prep(loaded, budget)
    piece = runner.run_strategy(prep, name, params, record_trace=True)
    live = runner.build_result(prep, [piece])["metrics"]
    trace = trace_from_rows(export_rows(piece.trace), source="conformance")
    run = replay_one(trace, policy, shape=loaded.shape, profile=load_profile("a6000-pcie4"),
                     budget=budget, warmup_steps=SMALL["warmup_steps"])
    assert run.result["metrics"]["hit_rate"] == live["hit_rate"]
    assert run.result["metrics"]["h2d_bytes_per_token"] == live["h2d_bytes_per_token"]
