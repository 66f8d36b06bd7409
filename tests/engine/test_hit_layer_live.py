"""On the live engine, `LayerProtocol.hit_layer` (an all-hit decode layer in one call) changes
nothing: every registered strategy gives the same piece (samples, outputs, logits, trace,
prediction, notes) with it turned off, at two budgets, and batched. It is taken by the caching
strategies that decide nothing after routing (lru, lfu, lfru, least-stale, all-resident: checked
not vacuous); the others (prefetchers, host compute, low-bit, keep-nothing sync, pre-attention
with its predictions pending) never take it, and the test shows their pieces unchanged too.
(Replay, every policy: tests/core/test_hit_layer.py.)"""
from __future__ import annotations

import dataclasses
import json

import pytest

from moebench.calibration.provision import artifacts_for
from moebench.config import RunConfig
from moebench.engine.session import prepare, run_session
from moebench.errors import UserError
from moebench.strategy import REGISTRY, Strategy, build_strategy
from tests.core.builders import hit_layers_counted

CFG = RunConfig(model="tiny-qwen3-moe", workload="smoke", cache_budget="0.5", clock="sim",
                profile="a6000-pcie4", seed=0, workload_overrides={"max_new_tokens": 5, "limit": 2})


@pytest.fixture(scope="module")
def preps():
    first = prepare(CFG)
    batched = dataclasses.replace(CFG, cache_budget="0.875",
                                  workload_overrides={**CFG.workload_overrides, "limit": 4, "batch_size": 2})
    return {"0.5": first, "0.875": prepare(dataclasses.replace(CFG, cache_budget="0.875"), loaded=first.loaded),
            "0.875 batch 2": prepare(batched, loaded=first.loaded)}


def _fields(piece) -> str:
    d = {f.name: getattr(piece, f.name) for f in dataclasses.fields(piece) if f.name != "logits"}
    d["logits"] = {repr(k): [t.tolist() for t in v] for k, v in piece.logits.items()}
    return json.dumps(d, sort_keys=True, default=repr)


def _run(prep, name: str, prov, fast: bool, monkeypatch) -> tuple[str, int]:
    taken = hit_layers_counted(monkeypatch, fast)
    piece = run_session(prep, build_strategy(name), prov, keep_logits=True, record_trace=True)
    return _fields(piece), sum(taken)


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_strategy_gives_the_same_piece_with_and_without_hit_layer(preps, name, monkeypatch):
    taken = 0
    for prep in preps.values():
        prov = artifacts_for(prep, build_strategy(name))     # calibrated once: the same notes
        slow, off = _run(prep, name, prov, False, monkeypatch)
        fast, on = _run(prep, name, prov, True, monkeypatch)
        assert off == 0
        assert fast == slow, (name, prep.cfg.cache_budget)
        taken += on
    if name in ("lru", "lfu", "lfru", "least-stale", "all-resident"):
        assert taken > 0, name       # the comparison is not vacuous where hits are expected


class LateHidden(Strategy):
    """Takes on a `before_attention` only when its first prompt begins: after the engine decided
    it needs no norm1 hook."""

    name = "late-hidden"
    reads = frozenset({"routing", "hidden"})

    def begin_request(self, request):
        self.before_attention = lambda ev, h: ()


def test_a_before_attention_taken_on_after_setup_is_refused_in_one_sentence(preps):
    with REGISTRY.registered("late-hidden", LateHidden):
        with pytest.raises(UserError, match="took on a before_attention of its own after setup"):
            run_session(preps["0.5"], build_strategy("late-hidden"))
