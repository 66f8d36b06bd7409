"""Result and report folders read back from disk.

- `compare_existing` — a report over result folders written earlier, after `check_comparable`
  refused any whose workload hash, model, budget or clock differ (`MismatchError`, exit 2);
- `gate_paths` — the gate on two result or report folders; `read_report` — report.json, for reruns.

A report folder holds report.json and one result folder per strategy (per sweep point), named
by each entry's `dir`. The gate reads those result folders, raw samples included, so a report
is gated exactly as its result folders would be one by one; results of a sweep are named
`<point>/<strategy>` so each point is gated against the same point of the other side.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moebench.errors import MismatchError, UserError


def new_report_dir(out: Path, name: str | None, model: str) -> Path:
    """A fresh report folder: `<out>/<name>` (which must not exist) or a timestamped one."""
    from moebench.results import new_run_dir

    if name is None:
        return new_run_dir(out, "compare", model)
    d = Path(out) / name
    if d.exists():
        raise UserError(f"{d} already exists; reports are never overwritten (choose another --name).")
    d.mkdir(parents=True)
    return d


def read_report(path: str | Path) -> dict:
    """report.json of a report folder (or the file itself), or a UserError saying why not."""
    p = Path(path)
    rp = p if p.name == "report.json" else p / "report.json"
    if not rp.exists():
        raise UserError(f"{p} is not a comparison report (no report.json).")
    try:
        doc = json.loads(rp.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{rp} is not valid JSON (line {exc.lineno}).") from None
    if not isinstance(doc, dict):
        raise UserError(f"{rp} does not hold a JSON object.")
    return doc


def load_for_gate(path: str | Path) -> tuple[bool, list[dict]]:
    """`(is_report, [loaded results])`: a result folder, or every result of a report folder."""
    from moebench.gate import GateUsageError, load_result_dir

    path = Path(path)
    loaded = load_result_dir(path)
    if "report" not in loaded:
        return False, [loaded]
    root = path if path.is_dir() else path.parent
    entries = loaded["report"].get("results")
    if not isinstance(entries, list) or not entries:
        raise GateUsageError(f"{path} holds a report with no results to gate.")
    out = []
    for e in entries:
        d = root / str(e.get("dir", ""))
        # A report over folders elsewhere that have since moved still gates on its summaries.
        ld = load_result_dir(d) if (d / "result.json").exists() else {"result": e["result"], "samples": []}
        if e.get("point"):
            r = dict(ld["result"])
            r["strategy"] = {**r["strategy"], "name": f"{e['point']}/{r['strategy']['name']}"}
            ld = {**ld, "result": r}
        out.append(ld)
    return True, out


def gate_paths(baseline: str | Path, candidate: str | Path, rules: Sequence[Any] | None = None, *,
               alpha: float = 0.05, seed: int = 0) -> Any:
    """The gate's verdict (`moebench.gate.GateReport`) on two result or report folders."""
    from moebench import gate

    b_report, b = load_for_gate(baseline)
    c_report, c = load_for_gate(candidate)
    if not b_report and not c_report:
        return gate.decide(b[0], c[0], rules, alpha=alpha, seed=seed)
    return gate.decide_many(b, c, rules, alpha=alpha, seed=seed)


# ----------------------------------------------------------------------------------------------
# comparing result folders written earlier
# ----------------------------------------------------------------------------------------------
def load_results(paths: Sequence[str | Path]) -> list[dict]:
    """Loaded result folders (`{"dir", "result", "samples"}`); a report folder gets a hint."""
    from moebench.results import load_result

    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir() and not (p / "result.json").exists() and (p / "report.json").exists():
            raise UserError(f"{p} is a comparison report, not a result folder; pass the result "
                            f"folders inside it (e.g. {p / 'sync'}).")
        out.append(load_result(p))
    return out


def _budget_differs(a: dict, b: dict) -> bool:
    # Same request ("0.25") or the same bytes: all-resident forces "all" but was asked for "0.25".
    return a.get("spec") != b.get("spec") and a.get("bytes") != b.get("bytes")


def check_comparable(loaded: Sequence[dict]) -> None:
    """Raise `MismatchError` unless every result ran the same workload, model, budget and clock,
    each with a different strategy."""
    if not loaded:
        raise UserError("nothing to compare: give at least one result folder.")
    first = loaded[0]
    r0 = first["result"]
    problems = []
    seen: dict[str, str] = {}
    for ld in loaded:
        r, where = ld["result"], ld.get("dir", "?")
        name = r.get("strategy", {}).get("name")
        if name in seen:
            problems.append(f"{seen[name]} and {where} are both strategy '{name}'")
        seen[name] = where
        if ld is first:
            continue
        w0, w = r0.get("workload", {}), r.get("workload", {})
        if w0.get("sha256") != w.get("sha256"):
            problems.append(f"the workload hash differs: {first['dir']} ran '{w0.get('name')}' "
                            f"{str(w0.get('sha256'))[:12]}…, {where} ran '{w.get('name')}' "
                            f"{str(w.get('sha256'))[:12]}…")
        m0, m = r0.get("model", {}), r.get("model", {})
        if (m0.get("name"), m0.get("snapshot")) != (m.get("name"), m.get("snapshot")):
            problems.append(f"the model differs: '{m0.get('name')}' in {first['dir']}, "
                            f"'{m.get('name')}' in {where}"
                            + (" (different snapshot)" if m0.get("name") == m.get("name") else ""))
        c0, c = r0.get("clock", {}).get("label"), r.get("clock", {}).get("label")
        if c0 != c:
            problems.append(f"the clock differs: {c0} in {first['dir']}, {c} in {where} "
                            "(measured and simulated times are never put in one table)")
        if _budget_differs(r0.get("budget", {}), r.get("budget", {})):
            problems.append(f"the cache budget differs: {r0['budget'].get('spec')} in {first['dir']}, "
                            f"{r['budget'].get('spec')} in {where}")
    if problems:
        raise MismatchError("cannot compare these results: " + "; ".join(problems) + ".")


def compare_existing(paths: Sequence[str | Path], out: Path, *, name: str | None = None,
                     baseline: str | None = None, plots: bool = True, alpha: float = 0.05) -> Path:
    """A report over result folders written earlier (they stay where they are)."""
    import os

    from moebench.compare import choose_baseline
    from moebench.report import build_report, write_report

    loaded = load_results(paths)
    check_comparable(loaded)
    base = choose_baseline([ld["result"]["strategy"]["name"] for ld in loaded], baseline)
    d = new_report_dir(out, name, loaded[0]["result"]["model"]["name"])
    entries = [{"dir": Path(os.path.relpath(Path(ld["dir"]).resolve(), d.resolve())).as_posix(),
                "point": "", "sweep_value": None, "result": ld["result"], "samples": ld["samples"]}
               for ld in loaded]
    doc = build_report(entries, baseline=base, plan=None, sweep=None, schedule=[], skipped=[],
                       notes=["compared from existing result folders"], alpha=alpha, seed=0)
    write_report(d, doc, entries, plots=plots)
    return d
