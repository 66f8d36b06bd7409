"""A budget says what the pool holds, and what a strategy that forces its own budget held."""
from __future__ import annotations

from moebench.offload.budget import resolve_budget
from moebench.report.markdown import budget_sentence
from moebench.strategy import build_strategy
from tests.core.builders import make_shape


def test_a_forced_budget_states_what_it_held_not_what_was_asked() -> None:
    shape = make_shape(moe_layers=2, num_experts=8, top_k=2)
    b = resolve_budget("0.25", shape, build_strategy("all-resident"))
    assert (b.spec, b.held, b.forced, b.experts) == ("0.25", "all", "all", 16)
    plain = resolve_budget("0.25", shape, build_strategy("lru"))
    assert (plain.held, plain.forced, plain.experts) == ("0.25", None, 4)
    rows = [{"strategy": "lru", "budget": {"held": "0.25", "experts": 4, "bytes": 4 * b.expert_bytes,
                                           "forced_by_strategy": False}},
            {"strategy": "all-resident", "budget": {"held": "all", "experts": 16, "bytes": b.bytes,
                                                    "forced_by_strategy": True}}]
    text = budget_sentence({"spec": "0.25", "experts": 4}, rows)
    assert text.startswith("Cache budget 0.25 (4 experts); all-resident held all (16 experts")
    assert "lru held" not in text
