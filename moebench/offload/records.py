"""Per-step counters and prediction scores of a run (tensor-free; live engine and replay alike)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from moebench.stats import distinct_repetitions


@dataclass
class StepStats:
    """Counters of one forward step (prefill or one decode token).

    Every expert a decode step executes is one *access*, classified once: a **hit** (resident,
    its copy complete, when compute needs it), **late** (a prefetch whose copy is still in
    flight: compute waits for the rest of it, `late_stall_s`), a **miss** (not resident: a
    demand fetch, waited for in full) or **host** (computed on the host CPU instead of copied:
    `host_s` of host compute, `host_stall_s` waiting for its result). Per MoE layer too, so
    `samples.jsonl` alone determines every access metric of a result.
    """

    phase: str
    position: int
    latency_s: float = 0.0
    stall_s: float = 0.0
    copy_busy_s: float = 0.0
    compute_s: float = 0.0
    h2d_bytes: int = 0
    demand_bytes: int = 0
    prefetch_bytes: int = 0
    late_stall_s: float = 0.0      # the part of stall_s spent on late prefetches
    host_s: float = 0.0            # host CPU busy computing experts
    host_stall_s: float = 0.0      # the part of stall_s spent waiting for host results
    hits: int = 0
    activations: int = 0
    late: int = 0
    misses: int = 0
    host: int = 0
    layer_hits: list[int] = field(default_factory=list)
    layer_late: list[int] = field(default_factory=list)
    layer_misses: list[int] = field(default_factory=list)
    layer_host: list[int] = field(default_factory=list)

    @classmethod
    def begin(cls, phase: str, position: int, moe_layers: int) -> StepStats:
        return cls(phase=phase, position=position, layer_hits=[0] * moe_layers,
                   layer_late=[0] * moe_layers, layer_misses=[0] * moe_layers,
                   layer_host=[0] * moe_layers)

    @property
    def layer_acts(self) -> list[int]:
        return [h + l + m + c for h, l, m, c in zip(self.layer_hits, self.layer_late,
                                                    self.layer_misses, self.layer_host)]

    def account(self, layer: int, out: Any, n_experts: int) -> None:
        """Add one MoE layer's `LayerOutcome`: bytes always, accesses in decode."""
        demand, prefetch = out.demand_bytes, out.prefetch_bytes
        if demand or prefetch:
            self.h2d_bytes += demand + prefetch
            self.demand_bytes += demand
            self.prefetch_bytes += prefetch
        if self.phase == "decode":
            hits, late, misses, host = out.hits, out.late, out.misses, len(out.host)
            assert hits + late + misses + host == n_experts
            self.activations += n_experts
            self.hits += hits
            self.layer_hits[layer] += hits
            if late:                 # (one layer of every step: only what is there is added)
                self.late += late
                self.layer_late[layer] += late
            if misses:
                self.misses += misses
                self.layer_misses[layer] += misses
            if host:
                self.host += host
                self.layer_host[layer] += host

    def row(self) -> dict:
        """The step's row of samples.jsonl (times in ms)."""
        return {"kind": "step", "phase": self.phase, "position": self.position,
                "latency_ms": self.latency_s * 1e3, "stall_ms": self.stall_s * 1e3,
                "late_stall_ms": self.late_stall_s * 1e3,
                "copy_busy_ms": self.copy_busy_s * 1e3, "compute_ms": self.compute_s * 1e3,
                "h2d_bytes": self.h2d_bytes, "demand_bytes": self.demand_bytes,
                "prefetch_bytes": self.prefetch_bytes, "hits": self.hits,
                "activations": self.activations, "late": self.late, "misses": self.misses,
                "layer_hits": list(self.layer_hits), "layer_late": list(self.layer_late),
                "layer_misses": list(self.layer_misses),
                **({"host": self.host, "layer_host": list(self.layer_host),
                    "host_ms": self.host_s * 1e3, "host_stall_ms": self.host_stall_s * 1e3}
                   if self.host or self.host_s else {})}


def batch_label(prompt_ids: list[str]) -> str:
    """The sample unit of a batch decoded together: its prompts' ids, joined."""
    return "+".join(prompt_ids)


def request_samples(steps: list[StepStats], prompt_id: str | list[str], repetition: int) -> list[dict]:
    """One request's rows of samples.jsonl: its decode steps, then its request row (TTFT = the
    prefill step, TPOT = decode time over the tokens after the first). A request without a
    prefill step (a decode-only trace) has no TTFT.

    A batch (`prompt_id` a list of B > 1 prompt ids decoded together) is one unit: its steps and
    its one request row carry the batch's label (`batch_label`) as `prompt_id`, `batch` (the ids)
    and `batch_size`; every request of it has the batch's TTFT and TPOT (they share every step),
    so one row, not B identical ones, is what a statistic may count."""
    members = list(prompt_id) if isinstance(prompt_id, (list, tuple)) else [prompt_id]
    label = batch_label(members)
    extra = {"batch": members, "batch_size": len(members)} if len(members) > 1 else {}
    rows = [st.row() for st in steps]
    prefill, decode = (rows[0], rows[1:]) if rows and rows[0]["phase"] == "prefill" else (None, rows)
    ttft = prefill["latency_ms"] if prefill else 0.0
    e2e = ttft + sum(r["latency_ms"] for r in decode)
    n_out = len(decode) + 1
    out = []
    for r in decode:
        r.pop("phase")
        out.append({"prompt_id": label, "repetition": repetition, **r,
                    **({"batch_size": len(members)} if extra else {})})
    out.append({"kind": "request", "prompt_id": label, "repetition": repetition,
                "ttft_ms": ttft if prefill else None, "tpot_ms": (e2e - ttft) / max(1, n_out - 1),
                "e2e_ms": e2e, "n_out": n_out,
                "prefill_h2d_bytes": prefill["h2d_bytes"] if prefill else None, **extra})
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


def prediction_metrics(pred_stats: dict[int, dict[str, dict]], *, wasted_bytes: int,
                       issued: int, used: int) -> dict:
    """Per-layer and overall prediction quality for every predictor a strategy ran, each scored
    against the true router's top-k of the last token: recall@k = |P ∩ T| / |T|, precision =
    |P ∩ T| / |P|, exact set match P = T, top-1 hit, gate-weighted recall."""
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
    return {"predictors": per_source, "wasted_bytes": wasted_bytes,
            "prefetches_issued": issued, "prefetches_used": used,
            "prefetch_precision": used / issued if issued else None}


# ----------------------------------------------------------------------------------------------
# the independent unit of a sample, and repetitions that repeat themselves
# ----------------------------------------------------------------------------------------------
def sample_unit(row: dict) -> tuple:
    """What a sample row measures, repetition aside: a request row its prompt, a step row its
    prompt and decode position."""
    if row.get("kind") == "step":
        return ("step", row.get("prompt_id"), row.get("position"))
    return (row.get("kind"), row.get("prompt_id"))


def _canonical(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "repetition"}, sort_keys=True)


@dataclass(frozen=True)
class Repetitions:
    """Which repetitions of a run count: `kept` measured something, `collapsed` were bit-identical
    copies of a kept one (the simulated clock) and are left out of every statistic."""

    run: int
    kept: tuple
    collapsed: tuple
    what: str = "prompt"     # the sample unit: "prompt", or "batch" (prompts decoded together)

    def to_dict(self) -> dict:
        return {"run": self.run, "distinct": len(self.kept), "collapsed": len(self.collapsed)}

    @property
    def unit(self) -> str:
        """The independent unit of a per-request statistic."""
        return self.what if len(self.kept) <= 1 else f"{self.what} × repetition (paired by {self.what})"


def unit_kind(samples: list[dict]) -> str:
    """"batch" when the rows are batches of prompts decoded together (`batch_size` > 1)."""
    return "batch" if any((r.get("batch_size") or 1) > 1 for r in samples) else "prompt"


def distinct_samples(samples: list[dict]) -> tuple[list[dict], Repetitions]:
    """The rows of the repetitions that count, and which ones were collapsed."""
    order = list(dict.fromkeys(r.get("repetition") for r in samples))
    obs: dict[tuple, str] = {}
    for r in samples:
        obs[(sample_unit(r), r.get("repetition"))] = _canonical(r)
    kept = distinct_repetitions(obs)
    keep = set(kept)
    reps = Repetitions(len(order), tuple(kept), tuple(x for x in order if x not in keep),
                       unit_kind(samples))
    return [r for r in samples if r.get("repetition") in keep], reps


@dataclass(frozen=True)
class Pairs:
    """Two runs' values of one sample field, paired by (unit, repetition) after repetitions that
    repeat themselves in both runs were collapsed; `paired` False when the runs measured
    different units (then `base` and `cand` are the two runs' values, unpaired)."""

    keys: list
    base: list[float]
    cand: list[float]
    paired: bool
    collapsed: int
    kind: str = "prompt"     # `unit_kind` of the rows

    @property
    def unit(self) -> str:
        reps = {k[1] for k in self.keys}
        what = self.kind if len(reps) <= 1 else f"{self.kind} × repetition"
        return f"{what} pairs" if self.paired else f"{what} (unpaired)"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def sample_values(samples: list[dict], kind: str, field_name: str) -> dict[tuple, float]:
    """`{(unit, repetition): value}` of one field of one kind of sample (later duplicates win)."""
    return {(sample_unit(r), r.get("repetition")): float(r[field_name])
            for r in samples if r.get("kind") == kind and _finite(r.get(field_name))}


def pair_samples(base: list[dict], cand: list[dict], kind: str, field_name: str) -> Pairs:
    """The one pairing rule of reports and the gate: by (prompt[, position], repetition); a
    repetition whose every pair repeats an earlier one's is a copy and is dropped."""
    b, c = sample_values(base, kind, field_name), sample_values(cand, kind, field_name)
    if b and set(b) == set(c):
        kept = distinct_repetitions({k: (b[k], c[k]) for k in b})
        keys = [k for k in b if k[1] in set(kept)]
        keys.sort(key=repr)
        n_reps = len({k[1] for k in b})
        return Pairs(keys, [b[k] for k in keys], [c[k] for k in keys], True, n_reps - len(kept),
                     unit_kind(base))
    b_kept, c_kept = (set(distinct_repetitions({k: v for k, v in d.items()})) for d in (b, c))
    bk = [k for k in b if k[1] in b_kept]
    ck = [k for k in c if k[1] in c_kept]
    return Pairs(bk, [b[k] for k in bk], [c[k] for k in ck], False,
                 len({k[1] for k in b}) - len(b_kept) + len({k[1] for k in c}) - len(c_kept),
                 unit_kind(base))
