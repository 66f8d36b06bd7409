"""Check the simulated clock against CUDA-event measurement on the same machine.

    report = validate(prep, profile, ["sync", "lru", "speculative", "oracle"])
    print(markdown(report))

For each strategy (in order, one after the other): the workload runs once with the engine under
the CUDA clock (`cuda-events`) and once under the simulated clock with `profile` (normally one
`moebench calibrate profile` measured on this GPU for this model), on the same device, model,
budget and token ids. Per strategy the report gives measured and simulated

- TPOT (median over requests, ms) and its relative error `(sim - measured) / measured`,
- stall per decode token (ms), relative error when the measured stall is not ~0 (else the
  absolute difference carries the information),
- hit rate, relative and absolute error,

and whether both runs produced the same tokens (the numerics do not depend on the clock).
`TOLERANCE` (15%) is the issue's target for TPOT; `passed` is about TPOT only.

`compare()` and `markdown()` are pure; `validate()` runs the engine.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

TOLERANCE = 0.15
STALL_EPS_MS = 1e-3
SCHEMA = "moebench.validate-sim/1"


def relative_error(sim: float | None, measured: float | None, eps: float = 0.0) -> float | None:
    if sim is None or measured is None or abs(measured) <= eps:
        return None
    return (sim - measured) / measured


def compare(measured: dict, simulated: dict) -> dict:
    """One row from two result.json mappings of the same strategy (pure)."""
    mm, sm = measured["metrics"], simulated["metrics"]
    tm, ts = mm["tpot_ms"]["median"], sm["tpot_ms"]["median"]
    stm, sts = mm["stall_ms_per_token"], sm["stall_ms_per_token"]
    hm, hs = mm.get("hit_rate"), sm.get("hit_rate")
    same = [o["token_ids"] for o in measured.get("outputs", [])] == \
           [o["token_ids"] for o in simulated.get("outputs", [])]
    err = relative_error(ts, tm)
    return {
        "strategy": measured["strategy"]["name"],
        "tpot_ms_measured": tm, "tpot_ms_simulated": ts, "tpot_rel_error": err,
        "stall_ms_measured": stm, "stall_ms_simulated": sts,
        "stall_rel_error": relative_error(sts, stm, STALL_EPS_MS), "stall_abs_error_ms": sts - stm,
        "hit_rate_measured": hm, "hit_rate_simulated": hs,
        "hit_rate_rel_error": relative_error(hs, hm, 1e-9),
        "hit_rate_abs_error": (hs - hm) if hm is not None and hs is not None else None,
        "h2d_bytes_per_token": mm.get("h2d_bytes_per_token"),
        "tokens_identical": same,
        "within_tolerance": err is not None and abs(err) <= TOLERANCE,
        "clock_measured": measured["clock"]["label"], "clock_simulated": simulated["clock"]["label"],
    }


def validate(prep: Any, profile: Any, strategies: list[str], *, params: dict | None = None,
             allow_sim_reference: bool = False, progress: Any = None) -> dict:
    """Run every strategy under `prep`'s clock (CUDA) and under the simulator with `profile`."""
    from moebench.errors import UserError
    from moebench.bench.run import build_result, run_strategy

    if prep.clock != "cuda" and not allow_sim_reference:
        raise UserError("validate-sim compares against the CUDA clock, and this run is not on one.")
    say = progress or (lambda msg: None)
    sim_prep = replace(prep, clock="sim", profile=profile)
    rows, results = [], {}
    for name in strategies:
        say(f"{name}: {prep.clock} clock")
        measured = build_result(prep, [run_strategy(prep, name, (params or {}).get(name))])
        say(f"{name}: simulated clock ({profile.name})")
        simulated = build_result(sim_prep, [run_strategy(sim_prep, name, (params or {}).get(name))])
        rows.append(compare(measured, simulated))
        results[name] = {"measured": _brief(measured), "simulated": _brief(simulated)}
    errs = [abs(r["tpot_rel_error"]) for r in rows if r["tpot_rel_error"] is not None]
    return {
        "schema": SCHEMA,
        "model": prep.loaded.name, "device": str(prep.device),
        "reference_clock": "cuda-events" if prep.clock == "cuda" else f"simulated:{prep.profile.name}",
        "profile": profile.name, "profile_source": profile.source,
        "workload": {"name": prep.workload.name, "sha256": prep.workload_sha,
                     "n_prompts": len(prep.requests), "max_new_tokens": prep.workload.max_new_tokens},
        "budget": prep.budget.text, "tolerance": TOLERANCE, "rows": rows,
        "max_abs_tpot_rel_error": max(errs) if errs else None,
        "passed": bool(rows) and all(r["within_tolerance"] for r in rows),
        "results": results,
    }


def _brief(result: dict) -> dict:
    """What a validate-sim report keeps of a result (no outputs)."""
    return {k: result[k] for k in ("clock", "budget", "metrics", "notes") if k in result}


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(report: dict) -> str:
    """The report as a Markdown table (pure)."""
    lines = [f"simulator vs {report['reference_clock']} - model {report['model']}, profile "
             f"{report['profile']} ({report['profile_source']}), budget {report['budget']}",
             "",
             "| strategy | TPOT meas. ms | TPOT sim. ms | TPOT err | stall meas. ms | stall sim. ms "
             "| stall err | hit meas. | hit sim. | same tokens |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['strategy']} | {_f(r['tpot_ms_measured'], '.3f')} | {_f(r['tpot_ms_simulated'], '.3f')} "
            f"| {_f(r['tpot_rel_error'], '+.1%')} | {_f(r['stall_ms_measured'], '.3f')} "
            f"| {_f(r['stall_ms_simulated'], '.3f')} | {_f(r['stall_rel_error'], '+.1%')} "
            f"| {_f(r['hit_rate_measured'], '.3f')} | {_f(r['hit_rate_simulated'], '.3f')} "
            f"| {'yes' if r['tokens_identical'] else 'NO'} |")
    worst = report.get("max_abs_tpot_rel_error")
    lines.append("")
    lines.append(f"largest |TPOT error| {_f(worst, '.1%')} (target <= {report['tolerance']:.0%}): "
                 f"{'pass' if report['passed'] else 'fail'}")
    return "\n".join(lines)
