"""Every strategy of a plot looks different, and a bound never hides a strategy on its line."""
from __future__ import annotations

from moebench.report.plots import styles_for


def test_no_two_strategies_share_a_look_and_bounds_are_drawn_on_top() -> None:
    names = ["sync", "lru", "lru-global", "lru-layer", "lfu", "pin", "belady", "oracle",
             "all-resident", "speculative", "pre-attention", "next-gate", "pred:speculative"]
    st = styles_for(names)
    looks = {(s["color"], s["marker"], s.get("linestyle")) for n, s in st.items()}
    assert len(looks) == len(names)
    colours = [s["color"] for n, s in st.items() if n not in ("oracle", "belady")]
    assert len(set(colours)) == len(colours)            # lfu/pin, lru/lru-global: no shared colour
    # all-resident reaches the oracle's line: the oracle is dashed, hollow and on top, so the
    # solid all-resident line shows beneath it
    assert st["oracle"]["linestyle"] != "-" and st["oracle"]["mfc"] == "none"
    assert st["oracle"]["zorder"] > st["all-resident"].get("zorder", 2)
    assert styles_for(names) == st                       # the same in every plot of a report
    assert len({s["color"] for s in styles_for([f"s{i}" for i in range(20)]).values()}) == 20
