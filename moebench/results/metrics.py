"""Per-step records -> the metrics block of result.json (pure).

Names follow vLLM where one exists; latencies in ms, from the run's clock. Definitions, and the
unit of every interval, are in docs/measurement.md:
- repetitions that repeat an earlier one bit for bit (the simulated clock) are collapsed first
  (`metrics.repetitions`), so nothing identical is counted twice;
- `ttft_ms`: prefill plus the first token, per request; `tpot_ms`: decode only,
  `(e2e - ttft) / (n_out - 1)` per request; their CIs are over prompts (the independent unit;
  prompt × repetition where the repetitions differ). `step_ms`: every decode step (its CI is over
  steps, which are not independent: the `unit` says so);
- accesses: every executed expert of a decode step is a hit (resident, copy complete), late (a
  prefetch still in flight: a partial stall, `late_stall_ms_per_token`) or a miss (a demand fetch,
  `miss_stall_ms_per_token`); `hit_rate`, `late_rate`, `miss_rate` overall and per layer, the
  hit rate's CI a cluster bootstrap over requests (accesses of one request are not independent);
- `h2d_bytes_per_token`, `stall_ms_per_token`, `transfer_share` (copy-engine busy / decode time),
  and `floor_ms_per_token` = bytes per token / link bandwidth: the copy-bound ceiling printed
  beside every TPOT.
"""
from __future__ import annotations

from typing import Any

from moebench.offload.records import distinct_samples, sample_unit
from moebench.stats import ratio_of_sums, summarize

STEP_UNIT = "decode step (steps of one request are correlated: a description, not a test)"


def request_samples(records: list[dict]) -> list[dict]:
    return [r for r in records if r["kind"] == "request"]


def step_samples(records: list[dict]) -> list[dict]:
    return [r for r in records if r["kind"] == "step"]


def _layer_sums(steps: list[dict], key: str, moe_layers: int) -> list[int]:
    out = [0] * moe_layers
    for s in steps:
        for i, v in enumerate(s.get(key) or ()):
            out[i] += v
    return out


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def compute_metrics(samples: list[dict], *, moe_layers: int, link_gbps: float | None, seed: int,
                    prediction: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    samples, reps = distinct_samples(samples)
    reqs = request_samples(samples)
    steps = step_samples(samples)
    n_dec = len(steps)
    n_tok = sum(s.get("batch_size") or 1 for s in steps)        # output tokens of the decode steps
    hits = sum(s["hits"] for s in steps)
    acts = sum(s["activations"] for s in steps)
    late = sum(s.get("late", 0) for s in steps)
    misses = sum(s.get("misses", 0) for s in steps)
    host = sum(s.get("host", 0) for s in steps)
    host_ms = sum(s.get("host_ms", 0.0) for s in steps)
    total_ms = sum(s["latency_ms"] for s in steps)
    busy_ms = sum(s.get("copy_busy_ms", 0.0) for s in steps)
    h2d = sum(s["h2d_bytes"] for s in steps)
    stall = sum(s["stall_ms"] for s in steps)
    late_stall = sum(s.get("late_stall_ms", 0.0) for s in steps)
    per_step_bytes = h2d / n_dec if n_dec else 0.0
    per_token_bytes = h2d / n_tok if n_tok else 0.0
    out_tokens = sum(r["n_out"] * (r.get("batch_size") or 1) for r in reqs)
    e2e_s = sum(r["e2e_ms"] for r in reqs) / 1e3

    # the hit rate's clusters: one (hits, accesses) per request
    clusters: dict[tuple, list[int]] = {}
    for s in steps:
        c = clusters.setdefault((sample_unit(s)[1], s.get("repetition")), [0, 0])
        c[0] += s["hits"]
        c[1] += s["activations"]
    hr, hr_ci, hr_method = ratio_of_sums([c[0] for c in clusters.values()],
                                         [c[1] for c in clusters.values()], seed=seed)
    lh, ll, lm, lc = (_layer_sums(steps, k, moe_layers)
                      for k in ("layer_hits", "layer_late", "layer_misses", "layer_host"))
    la = [h + l_ + m + c for h, l_, m, c in zip(lh, ll, lm, lc)]
    m: dict[str, Any] = {
        "repetitions": reps.to_dict(),
        "tpot_ms": summarize([r["tpot_ms"] for r in reqs], seed=seed, unit=reps.unit),
        "ttft_ms": summarize([r["ttft_ms"] for r in reqs if r.get("ttft_ms") is not None],
                             seed=seed, unit=reps.unit),
        "step_ms": summarize([s["latency_ms"] for s in steps], seed=seed, unit=STEP_UNIT),
        "hit_rate": hr if acts else None,
        "hit_rate_ci95": hr_ci,
        "hit_rate_ci_unit": f"request ({hr_method})",
        "late_rate": _rate(late, acts),
        "miss_rate": _rate(misses, acts),
        "hit_rate_per_layer": [_rate(h, a) for h, a in zip(lh, la)],
        "late_rate_per_layer": [_rate(x, a) for x, a in zip(ll, la)],
        "miss_rate_per_layer": [_rate(x, a) for x, a in zip(lm, la)],
        "activations": acts,
        "hits": hits,
        "late": late,
        "misses": misses,
        **({"host": host, "host_rate": _rate(host, acts),
            "host_rate_per_layer": [_rate(x, a) for x, a in zip(lc, la)],
            "host_ms_per_token": host_ms / n_dec if n_dec else 0.0,
            "host_stall_ms_per_token": sum(s.get("host_stall_ms", 0.0) for s in steps) / n_dec
            if n_dec else 0.0,
            "host_share": host_ms / total_ms if total_ms else 0.0} if host or host_ms else {}),
        "h2d_bytes_per_token": per_token_bytes,
        "demand_bytes_per_token": sum(s.get("demand_bytes", 0) for s in steps) / n_tok if n_tok else 0.0,
        "prefetch_bytes_per_token": sum(s.get("prefetch_bytes", 0) for s in steps) / n_tok if n_tok else 0.0,
        "stall_ms_per_token": stall / n_dec if n_dec else 0.0,
        "late_stall_ms_per_token": late_stall / n_dec if n_dec else 0.0,
        "miss_stall_ms_per_token": (stall - late_stall - sum(s.get("host_stall_ms", 0.0) for s in steps))
        / n_dec if n_dec else 0.0,
        "compute_ms_per_token": sum(s.get("compute_ms", 0.0) for s in steps) / n_dec if n_dec else 0.0,
        "transfer_share": busy_ms / total_ms if total_ms else 0.0,
        # the copy-bound floor of a decode step (of TPOT): the step's bytes over the link
        "floor_ms_per_token": (per_step_bytes / (link_gbps * 1e9) * 1e3) if link_gbps else None,
        "decode_tokens": n_dec,
        "requests": len(reqs),
        "throughput_tokens_per_s": out_tokens / e2e_s if e2e_s > 0 else None,
    }
    if n_tok != n_dec:      # batched decoding: B requests per step
        sizes = sorted({r.get("batch_size") or 1 for r in reqs})
        m.update({"batch_size": sizes[-1], "batch_sizes": sizes, "output_tokens": n_tok,
                  "h2d_bytes_per_step": per_step_bytes,
                  "union_per_layer": acts / (n_dec * moe_layers) if n_dec and moe_layers else None})
    if prediction:
        m["prediction"] = prediction
    if extra:
        m.update(extra)
    return m
