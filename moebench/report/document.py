"""report.json: the comparison as one document (pure; `moebench.results.folders.write_report`
puts it on disk).

    {
      "schema_version": 1, "kind": "comparison", "moebench_version": "0.1.0",
      "clock": {"kind": "simulated", "label": "simulated:a6000-pcie4", "labels": [...]},
      "model": {...}, "workload": {...}, "baseline": "sync", "alpha": 0.05,
      "plan": {...} | null,             # how to rerun it (`compare --plan-from`), null for folders
      "sweep": "cache_budget" | null,   # several settings (`moebench sweep`): "cache_budget × profile"
      "points": [{"label": "", "sweep_value": null, "clock_label": "...",
                  "budget": {"spec": "0.25", "experts": 32, "fraction": 0.25}, "rows": [<row>]}],
          # a point of `moebench sweep` over several settings: "label": "cache_budget=0.1,profile=t4-pcie3",
          # "sweep_value": "0.1 / t4-pcie3", "axes": {"cache_budget": "0.1", "profile": "t4-pcie3"}
      "schedule": [["", "lru", 0], ...],    # (point, strategy, repetition) in the order they ran
      "skipped": [{"strategy": "oracle", "reason": "..."}],
      "accuracy_measured": false,
      "in_sample": ["speculative"],     # results calibrated on their own evaluation prompts
      "notes": [...],                   # an "IN-SAMPLE: ..." note first for each of them
      "results": [{"dir": "lru", "point": "", "strategy": "lru", "result": {<result.json>}}]
    }

`results` holds every result.json (without its token outputs) so that `moebench gate` can read
the report alone; the raw samples stay in each result folder (`dir`, relative to the report).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moebench import SCHEMA_VERSION, __version__
from moebench.errors import MismatchError, UserError
from moebench.report.summary import summarize_point
from moebench.report.terminal import in_sample_warning


def _key(entry: dict) -> str:
    """How the gate names a result of the report: `<point>/<strategy>`, or the strategy alone."""
    name = entry["result"]["strategy"]["name"]
    return f"{entry['point']}/{name}" if entry.get("point") else name


def _points(entries: Sequence[dict]) -> list[tuple[str, Any, Any, list[dict]]]:
    order: dict[str, tuple[Any, Any, list[dict]]] = {}
    for e in entries:
        order.setdefault(e.get("point", ""), (e.get("sweep_value"), e.get("axes"), []))[2].append(e)
    return [(label, value, axes, group) for label, (value, axes, group) in order.items()]


def _clock(entries: Sequence[dict]) -> dict:
    kinds = sorted({e["result"]["clock"]["kind"] for e in entries})
    if len(kinds) > 1:
        raise MismatchError("a report never mixes clocks, but these results come from "
                            f"{' and '.join(kinds)} clocks.")
    labels = list(dict.fromkeys(e["result"]["clock"]["label"] for e in entries))
    return {"kind": kinds[0], "label": labels[0] if len(labels) == 1 else None, "labels": labels,
            "measured": kinds[0] != "simulated"}


def _budget(result: dict) -> dict:
    """The budget the point asked for, in experts of this model (all-resident's result records
    the forced "all" in its bytes, but the requested spec like every other)."""
    from moebench.config import BudgetSpec

    m, spec = result["model"], result["budget"]["spec"]
    total = (m.get("moe_layers") or 0) * (m.get("num_experts") or 0)
    try:
        experts = BudgetSpec.parse(spec).slots(moe_layers=m["moe_layers"], num_experts=m["num_experts"],
                                               expert_bytes=m["expert_bytes"],
                                               reserved_bytes=int(m.get("shared_expert_bytes") or 0))
    except (KeyError, TypeError, ValueError, UserError):
        experts = None
    return {"spec": spec, "experts": experts,
            "fraction": experts / total if experts is not None and total else None}


def _collapsed(entries: Sequence[dict]) -> str | None:
    """One sentence when identical repetitions were collapsed (the simulated clock)."""
    runs = [(e["result"]["strategy"]["name"], (e["result"].get("metrics") or {}).get("repetitions"))
            for e in entries]
    hit = [(name, r) for name, r in runs if isinstance(r, dict) and r.get("collapsed")]
    if not hit:
        return None
    r = hit[0][1]
    same = all(x == r for _, x in hit)
    what = (f"{r['collapsed']} of the {r['run']} repetitions of every strategy" if same and len(hit) == len(runs)
            else ", ".join(f"{x['collapsed']} of the {x['run']} repetitions of {n}" for n, x in hit))
    return (f"{what} repeated an earlier repetition bit for bit (identical repetitions) and were "
            "collapsed: nothing identical is counted twice, so n, every interval and every p-value "
            "are those of the distinct repetitions")


def intervals(points: Sequence[dict], accuracy: bool) -> list[str]:
    """What every interval and test of the report is over (its unit), in words."""
    rows = [row for p in points for row in p["rows"]]
    tpot_units = sorted({(row["tpot_ms"] or {}).get("unit") or "request" for row in rows})
    ratio_units = sorted({row["ratio"].get("unit") for row in rows
                          if row.get("ratio") and row["ratio"].get("unit")})
    batched = any(u.startswith("batch") for u in tpot_units)
    out = [f"TPOT and TTFT: 95% bootstrap CI of the median over {' / '.join(tpot_units)} "
           "(one TPOT per request: its decode time over its tokens after the first"
           + ("; the requests of a batch share every step, so a batch is one sample)" if batched
              else ")")]
    if ratio_units:
        out.append("ratio to the baseline: paired bootstrap CI of the ratio of medians and a "
                   f"Wilcoxon signed-rank p-value over {' / '.join(ratio_units)}, Holm-corrected "
                   "across the strategies of a point")
    out.append("hit rate: cluster-bootstrap CI over requests" + (" (batches, where batched)" if batched else "")
               + " (the accesses of one request are not independent, so they are resampled together)")
    if accuracy:
        out.append("Δaccuracy: paired bootstrap CI over items and McNemar's exact test on the "
                   "items that flipped")
    return out


def build_report(entries: Sequence[dict], *, baseline: str | None, plan: dict | None = None,
                 sweep: str | None = None, schedule: Sequence = (), skipped: Sequence = (),
                 notes: Sequence[str] = (), alpha: float = 0.05, seed: int = 0) -> dict:
    """The report document from loaded results `{"dir", "point", "result", "samples"}`."""
    if not entries:
        raise MismatchError("nothing to report: no strategy finished a run.")
    clock = _clock(entries)
    first = entries[0]["result"]
    points = []
    for label, value, axes, group in _points(entries):
        rows = summarize_point(group, baseline=baseline, alpha=alpha, seed=seed)
        points.append({"label": label, "sweep_value": value, "budget": _budget(group[0]["result"]),
                       "clock_label": group[0]["result"]["clock"]["label"], "rows": rows})
        if axes is not None:            # `moebench sweep`: every varying setting of the point
            points[-1]["axes"] = dict(axes)
    flagged = [(e, w) for e in entries if (w := in_sample_warning(e["result"]))]   # in-sample first
    all_notes = [w + (f" (at {e['point']})" if e.get("point") else "") for e, w in flagged] + list(notes)
    if not clock["measured"]:
        all_notes.append("simulated clock: every time is computed by the discrete-event simulator "
                         "from a hardware profile, not measured; the same seed and workload give "
                         "the same numbers, so p-values describe prompt-to-prompt variation, not "
                         "measurement noise")
    collapsed = _collapsed(entries)
    if collapsed:
        all_notes.append(collapsed)
    for e in entries:
        for n in e["result"].get("notes", []):
            if n not in all_notes:
                all_notes.append(n)
    accuracy = any(row["accuracy"] for p in points for row in p["rows"])
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "comparison",
        "moebench_version": __version__,
        "clock": clock,
        "model": first["model"],
        "workload": first["workload"],
        "baseline": baseline,
        "alpha": alpha,
        "plan": plan,
        "sweep": sweep,
        "points": points,
        "schedule": [list(s) for s in schedule],
        "skipped": [{"strategy": s, "reason": why} for s, why in skipped],
        "accuracy_measured": accuracy,
        "in_sample": [_key(e) for e, _ in flagged],   # calibrated on their own evaluation prompts
        "notes": all_notes,
        "intervals": intervals(points, accuracy),
        "results": [{"dir": e.get("dir"), "point": e.get("point", ""), "strategy":
                     e["result"]["strategy"]["name"],
                     "result": {k: v for k, v in e["result"].items() if k != "outputs"}}
                    for e in entries],
    }
