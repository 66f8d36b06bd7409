"""Per-step counters and prediction scores of a run (tensor-free; live engine and replay alike)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepStats:
    """Counters of one forward step (prefill or one decode token)."""

    phase: str
    position: int
    latency_s: float = 0.0
    stall_s: float = 0.0
    copy_busy_s: float = 0.0
    compute_s: float = 0.0
    h2d_bytes: int = 0
    demand_bytes: int = 0
    prefetch_bytes: int = 0
    hits: int = 0
    activations: int = 0
    late: int = 0
    layer_hits: list[int] = field(default_factory=list)
    layer_acts: list[int] = field(default_factory=list)

    def account(self, layer: int, out: Any, n_experts: int) -> None:
        """Add one MoE layer's `LayerOutcome`: bytes always, activations and hits in decode."""
        self.h2d_bytes += out.demand_bytes + out.prefetch_bytes
        self.demand_bytes += out.demand_bytes
        self.prefetch_bytes += out.prefetch_bytes
        if self.phase == "decode":
            self.activations += n_experts
            self.hits += out.hits
            self.late += out.late
            self.layer_hits[layer] += out.hits
            self.layer_acts[layer] += n_experts

    def row(self) -> dict:
        """The step's row of samples.jsonl (times in ms)."""
        return {"kind": "step", "phase": self.phase, "position": self.position,
                "latency_ms": self.latency_s * 1e3, "stall_ms": self.stall_s * 1e3,
                "copy_busy_ms": self.copy_busy_s * 1e3, "compute_ms": self.compute_s * 1e3,
                "h2d_bytes": self.h2d_bytes, "demand_bytes": self.demand_bytes,
                "prefetch_bytes": self.prefetch_bytes, "hits": self.hits,
                "activations": self.activations, "late": self.late}


def request_samples(steps: list[StepStats], prompt_id: str, repetition: int) -> list[dict]:
    """One request's rows of samples.jsonl: its decode steps, then its request row (TTFT = the
    prefill step, TPOT = decode time over the tokens after the first). A request without a
    prefill step (a decode-only trace) has no TTFT."""
    rows = [st.row() for st in steps]
    prefill, decode = (rows[0], rows[1:]) if rows and rows[0]["phase"] == "prefill" else (None, rows)
    ttft = prefill["latency_ms"] if prefill else 0.0
    e2e = ttft + sum(r["latency_ms"] for r in decode)
    n_out = len(decode) + 1
    out = []
    for r in decode:
        r.pop("phase")
        out.append({"prompt_id": prompt_id, "repetition": repetition, **r})
    out.append({"kind": "request", "prompt_id": prompt_id, "repetition": repetition,
                "ttft_ms": ttft if prefill else None, "tpot_ms": (e2e - ttft) / max(1, n_out - 1),
                "e2e_ms": e2e, "n_out": n_out,
                "prefill_h2d_bytes": prefill["h2d_bytes"] if prefill else None})
    return out


def prediction_seconds(strategy: Any, profile: Any, ev: Any, requests: Any) -> float:
    """A predictor's own compute on the simulated clock: each non-empty `Prefetch` costs what the
    strategy's `prediction_cost(ev)` says, `(flops, bytes, kernels)`, as a roofline kernel."""
    total = 0.0
    for r in requests or ():
        if r.experts:
            cost = strategy.prediction_cost(ev)
            if cost is None:
                return 0.0
            flops, nbytes, kernels = cost
            total += profile.kernel_seconds(flops=flops, nbytes=nbytes, kernels=kernels)
    return total


def prediction_metrics(pred_stats: dict[int, dict[str, dict]], *, late: int, wasted_bytes: int,
                       issued: int, used: int) -> dict:
    """Per-layer and overall prediction quality for every predictor a strategy ran."""
    per_source: dict[str, dict] = {}
    for layer in sorted(pred_stats):
        for source, acc in pred_stats[layer].items():
            n = acc["n"] or 1
            row = {"layer": layer, "n": acc["n"], "recall_at_k": acc["recall"] / n,
                   "precision": acc["precision"] / n, "exact_set_match": acc["exact"] / n,
                   "top1_hit": acc["top1"] / n, "gate_weighted_recall": acc["gw_recall"] / n,
                   "mean_predicted": acc["predicted"] / n}
            per_source.setdefault(source, {"per_layer": []})["per_layer"].append(row)
    for source, d in per_source.items():
        rows = d["per_layer"]
        tot = sum(r["n"] for r in rows) or 1
        for key in ("recall_at_k", "precision", "exact_set_match", "top1_hit", "gate_weighted_recall"):
            d[key] = sum(r[key] * r["n"] for r in rows) / tot
    return {"predictors": per_source, "late_prefetches": late, "wasted_bytes": wasted_bytes,
            "prefetches_issued": issued, "prefetches_used": used,
            "prefetch_precision": used / issued if issued else None}
