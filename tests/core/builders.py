"""Builders for the torch-free core tests: hand-made model shapes, traces and replays (no fixtures)."""
from __future__ import annotations

from typing import Any

from moebench.offload.profile import load_profile
from moebench.offload.shapes import ModelShape
from moebench.replay.engine import ReplayEngine, build_schedule
from moebench.replay.policies import build_policy
from moebench.replay.traces import trace_from_rows


def make_shape(moe_layers: int = 2, num_experts: int = 8, top_k: int = 2,
               expert_bytes: int = 4 << 20) -> ModelShape:
    return ModelShape(name="test-moe", arch="qwen3_moe", hidden=256, num_layers=moe_layers,
                      moe_layer_ids=tuple(range(moe_layers)), num_experts=num_experts, top_k=top_k,
                      expert_width=512, vocab=1024, q_heads=4, kv_heads=2, head_dim=64,
                      dtype="bfloat16", expert_bytes=expert_bytes)


def make_trace(steps: list[list[list[int]]], requests: int = 1) -> Any:
    """`steps[t][layer]` = the experts of decode step t (steps split evenly across requests)."""
    per = max(1, len(steps) // requests)
    rows = [{"request": t // per, "step": t % per + 1, "layer": m, "experts": ids}
            for t, layers in enumerate(steps) for m, ids in enumerate(layers)]
    return trace_from_rows(rows, source="test")


def replay(trace: Any, policy: str, shape: ModelShape, n_slots: int, profile: str = "a6000-pcie4") -> dict:
    """Replay `trace` through `policy`: per-request TPOT (ms), hits, activations, the engine."""
    strategy = build_policy(policy, trace)
    engine = ReplayEngine(trace, strategy, shape=shape, profile=load_profile(profile),
                          n_slots=n_slots, schedule=build_schedule(trace, 0))
    out = engine.run()
    out["requests"] = {r: [st.row() for st in steps] for r, steps in out["requests"].items()}
    tpot = {r: sum(x["latency_ms"] for x in rows) / len(rows) for r, rows in out["requests"].items()}
    rows = [r for rs in out["requests"].values() for r in rs]
    ends, t = [], 0.0
    for r in rows:                      # when each step ends, from the start of the run
        t += r["latency_ms"]
        ends.append(t)
    return {"tpot": tpot, "hits": sum(r["hits"] for r in rows), "acts": sum(r["activations"] for r in rows),
            "rows": rows, "ends": ends, "engine": engine}



def hit_layers_counted(monkeypatch: Any, fast: bool) -> list[bool]:
    """Turn `LayerProtocol.hit_layer` on or off (`fast_hits`) for this test and count its calls:
    the returned list gets, per call, whether it stood for the layer's sequence."""
    from moebench.offload.protocol import LayerProtocol

    taken: list[bool] = []
    real = LayerProtocol.hit_layer

    def counted(self: Any, layer: int, ids: Any) -> Any:
        out = real(self, layer, ids)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(LayerProtocol, "fast_hits", fast)
    monkeypatch.setattr(LayerProtocol, "hit_layer", counted)
    return taken
