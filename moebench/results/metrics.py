"""Per-step records -> the metrics block of result.json (pure).

Names follow vLLM where one exists; latencies in ms, from the run's clock:
- `ttft_ms`: prefill plus the first token, per request.
- `tpot_ms`: decode only, `(e2e - ttft) / (n_out - 1)` per request; `step_ms`: every decode step.
- `hit_rate`: an activation is (step, layer, expert), once per step; a hit is resident with its copy
  complete when compute needs it. Per layer and overall, with a Wilson CI.
- `h2d_bytes_per_token`, `stall_ms_per_token`, `transfer_share` (copy-engine busy / decode time),
  and `floor_ms_per_token` = bytes per token / link bandwidth: the copy-bound ceiling printed
  beside every TPOT.
"""
from __future__ import annotations

from typing import Any

from moebench.stats import summarize, wilson_ci


def request_samples(records: list[dict]) -> list[dict]:
    return [r for r in records if r["kind"] == "request"]


def step_samples(records: list[dict]) -> list[dict]:
    return [r for r in records if r["kind"] == "step"]


def compute_metrics(samples: list[dict], *, moe_layers: int, layer_hits: list[int],
                    layer_acts: list[int], link_gbps: float | None, seed: int,
                    prediction: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    reqs = request_samples(samples)
    steps = step_samples(samples)
    n_dec = len(steps)
    hits = sum(s["hits"] for s in steps)
    acts = sum(s["activations"] for s in steps)
    total_ms = sum(s["latency_ms"] for s in steps)
    busy_ms = sum(s.get("copy_busy_ms", 0.0) for s in steps)
    h2d = sum(s["h2d_bytes"] for s in steps)
    per_token_bytes = h2d / n_dec if n_dec else 0.0
    m: dict[str, Any] = {
        "tpot_ms": summarize([r["tpot_ms"] for r in reqs], seed=seed),
        "ttft_ms": summarize([r["ttft_ms"] for r in reqs], seed=seed),
        "step_ms": summarize([s["latency_ms"] for s in steps], seed=seed),
        "hit_rate": hits / acts if acts else None,
        "hit_rate_ci95": list(wilson_ci(hits, acts)) if acts else None,
        "hit_rate_per_layer": [h / a if a else None for h, a in zip(layer_hits, layer_acts)],
        "activations": acts,
        "hits": hits,
        "late_prefetches": sum(s.get("late", 0) for s in steps),
        "h2d_bytes_per_token": per_token_bytes,
        "demand_bytes_per_token": sum(s.get("demand_bytes", 0) for s in steps) / n_dec if n_dec else 0.0,
        "prefetch_bytes_per_token": sum(s.get("prefetch_bytes", 0) for s in steps) / n_dec if n_dec else 0.0,
        "stall_ms_per_token": sum(s["stall_ms"] for s in steps) / n_dec if n_dec else 0.0,
        "compute_ms_per_token": sum(s.get("compute_ms", 0.0) for s in steps) / n_dec if n_dec else 0.0,
        "transfer_share": busy_ms / total_ms if total_ms else 0.0,
        "floor_ms_per_token": (per_token_bytes / (link_gbps * 1e9) * 1e3) if link_gbps else None,
        "decode_tokens": n_dec,
        "requests": len(reqs),
    }
    if prediction:
        m["prediction"] = prediction
    if extra:
        m.update(extra)
    return m
