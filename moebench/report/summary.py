"""One row per strategy: the figures of the summary table, with their intervals (pure).

For the strategies of one comparison point (same workload, model, budget and clock):
- `tpot_ms` — the median per-request TPOT with its 95% bootstrap CI, from result.json;
- `ratio` — strategy / baseline ratio of median TPOT. Request samples pair by prompt
  (`offload.records.pair_samples`, the gate's rule too): repetitions that repeat an earlier one
  in both runs are copies and are dropped, so n counts prompts, and prompt × repetition only
  where the repetitions differ (the CUDA clock). The CI is a *paired* bootstrap and the p-value a
  Wilcoxon signed-rank test (`stats.paired_ratio`); results that do not pair fall back to the
  unpaired estimate and say so. `unit` names what was paired. The p-values of all strategies
  against one baseline are Holm-corrected;
- `hit_rate` (with `late_rate`, `miss_rate`) and its CI over requests, `h2d_bytes_per_token`;
- `stall_share` — `stall_ms_per_token / mean TPOT`: the share of a decode step spent waiting for
  copies (the mean, not the median, because stall per token is a mean over the same steps);
- `efficiency_vs_oracle` — oracle TPOT / strategy TPOT when the oracle ran at this point;
- `accuracy` — result["accuracy"] as measured (None when it was not).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moebench.offload.records import pair_samples
from moebench.stats import MIN_SAMPLES, holm, paired_ratio, unpaired_ratio


def ratio_to_baseline(base_samples: Sequence[dict], samples: Sequence[dict], *, seed: int = 0,
                      field: str = "tpot_ms") -> dict:
    """Ratio of median `field` (candidate / baseline) with its CI, raw p-value and unit."""
    pairs = pair_samples(list(base_samples), list(samples), "request", field)
    try:
        if pairs.paired:
            est = paired_ratio(pairs.base, pairs.cand, seed=seed)
        else:
            est = unpaired_ratio(pairs.base, pairs.cand, seed=seed)
    except ValueError as exc:
        return {"ratio": None, "ci95": None, "p_value": None, "method": f"cannot compare: {exc}",
                "n_pairs": len(pairs.keys), "paired": False, "unit": pairs.unit,
                "collapsed_repetitions": pairs.collapsed}
    return {"ratio": est.ratio, "ci95": None if est.ci95 is None else list(est.ci95),
            "p_value": est.p_value, "method": est.method, "n_pairs": est.n_pairs,
            "paired": est.paired, "unit": pairs.unit, "collapsed_repetitions": pairs.collapsed}


def _verdict(ratio: dict, alpha: float) -> str:
    p, ci = ratio.get("p_holm"), ratio.get("ci95")
    if ratio.get("ratio") is None:
        return "not compared"
    if p is None or ci is None:
        return f"too few pairs for a test (< {MIN_SAMPLES})"
    if p < alpha and ci[1] < 1:
        return "faster"
    if p < alpha and ci[0] > 1:
        return "slower"
    return f"not significant ({ratio.get('n_pairs')} pairs)"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def strategy_row(entry: dict) -> dict:
    r = entry["result"]
    m = r.get("metrics", {})
    tpot = m.get("tpot_ms") or {}
    stall, mean = _num(m.get("stall_ms_per_token")), _num(tpot.get("mean"))
    acc = r.get("accuracy")
    return {
        "strategy": r["strategy"]["name"], "version": r["strategy"].get("version"),
        "lossless": r["strategy"].get("lossless"), "params": r["strategy"].get("params", {}),
        "dir": entry.get("dir"), "status": r.get("status"), "in_sample": r.get("in_sample") is True,
        "budget": r.get("budget"), "clock_label": r.get("clock", {}).get("label"),
        "tpot_ms": {k: tpot.get(k) for k in ("median", "mean", "p90", "p99", "ci95", "ci_method", "n",
                                             "unit")},
        "ttft_ms": {k: (m.get("ttft_ms") or {}).get(k) for k in ("median", "mean", "ci95", "ci_method",
                                                                   "n", "unit")},
        "hit_rate": _num(m.get("hit_rate")), "hit_rate_ci95": m.get("hit_rate_ci95"),
        "late_rate": _num(m.get("late_rate")), "miss_rate": _num(m.get("miss_rate")),
        "h2d_bytes_per_token": _num(m.get("h2d_bytes_per_token")),
        "stall_ms_per_token": stall,
        "stall_share": stall / mean if stall is not None and mean else None,
        "transfer_share": _num(m.get("transfer_share")),
        "floor_ms_per_token": _num(m.get("floor_ms_per_token")),
        "throughput_tokens_per_s": _num(m.get("throughput_tokens_per_s")),
        "efficiency_vs_oracle": None,
        "ratio": None,
        "accuracy": acc if isinstance(acc, dict) else None,
    }


def summarize_point(entries: Sequence[dict], *, baseline: str | None, alpha: float = 0.05,
                    seed: int = 0) -> list[dict]:
    """Rows for the strategies of one comparison point, baseline first."""
    rows = [strategy_row(e) for e in entries]
    by_name = {row["strategy"]: (row, e) for row, e in zip(rows, entries)}
    if baseline in by_name:
        base_samples = by_name[baseline][1]["samples"]
        others = [row for row in rows if row["strategy"] != baseline]
        for row in others:
            row["ratio"] = ratio_to_baseline(base_samples, by_name[row["strategy"]][1]["samples"],
                                             seed=seed)
        for row, p in zip(others, holm([row["ratio"]["p_value"] for row in others])):
            row["ratio"]["p_holm"] = p
            row["ratio"]["verdict"] = _verdict(row["ratio"], alpha)
        by_name[baseline][0]["ratio"] = {"ratio": 1.0, "ci95": [1.0, 1.0], "p_value": None,
                                         "p_holm": None, "method": "baseline", "n_pairs": None,
                                         "paired": True, "verdict": "baseline"}
    oracle = by_name.get("oracle")
    o_med = oracle[0]["tpot_ms"]["median"] if oracle else None
    if o_med:
        for row in rows:
            med = row["tpot_ms"]["median"]
            row["efficiency_vs_oracle"] = o_med / med if med else None
    rows.sort(key=lambda row: row["strategy"] != baseline)
    return rows
