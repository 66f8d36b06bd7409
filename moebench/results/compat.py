"""The one comparability rule, shared by `moebench compare DIR...` and `moebench gate`.

Two runs measure the same thing only when they ran

- the same workload (`workload.sha256`: the prompts, token ids and settings, hashed),
- the same model (`model.name`, and the same `model.snapshot` of it),
- on the same clock (`clock.label`: measured and simulated times never meet, nor two profiles),
- at the same cache budget (`budget.bytes`; between *different* strategies the same requested
  `budget.spec` is enough, because a strategy may force its own: all-resident takes every expert),
- and, for one strategy, the same `strategy.version` (a strategy bumps its version when its
  behaviour changes, so results of two versions are not comparable).

`mismatches(a, b)` lists what differs between two runs, one sentence each; how it is acted on
belongs to the caller: `check_comparable` (compare, a table of distinct strategies) refuses with
`MismatchError` (exit 2), the gate reports "inconclusive" (exit 3), except for a changed strategy
version alone, which the gate reports as not gated (see `moebench.gate`).

An in-sample run (calibrated on its own evaluation prompts) is comparable and `compare` marks
it; the gate refuses it outright (`in_sample_refusal`, exit 2): its numbers are optimistic.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moebench.errors import MismatchError, UserError
from moebench.results.model import RunResult

WORKLOAD, MODEL, SNAPSHOT, CLOCK, BUDGET = ("workload.sha256", "model.name", "model.snapshot",
                                            "clock.label", "budget.bytes")
STRATEGY, VERSION = "strategy.name", "strategy.version"


@dataclass(frozen=True)
class Mismatch:
    """One reason two runs are not comparable: the field (`WORKLOAD`, ..., `VERSION`) and a sentence."""

    field: str
    text: str


def _short(sha: str | None) -> str:
    return "none" if sha is None else f"{sha[:12]}…"


def mismatches(a: RunResult, b: RunResult, *, one_strategy: bool = False,
               where: tuple[str, str] | None = None) -> list[Mismatch]:
    """Why runs `a` and `b` cannot be compared (empty when they can).

    Runs of one strategy name must also agree on its version; runs of two strategy names may
    differ in the budget they forced (same requested spec). With `one_strategy` (the gate, which
    compares a strategy with itself) the names must agree too. `where` names the two sides in
    the sentences (default: their folders).
    """
    wa, wb = where or (a.where, b.where)
    out: list[Mismatch] = []
    na, nb = a.strategy.name, b.strategy.name
    if one_strategy and na != nb:
        out.append(Mismatch(STRATEGY, f"{STRATEGY} differs: '{na}' in {wa}, '{nb}' in {wb}"))

    def missing(field: str, va: object, vb: object) -> bool:
        if va is None or vb is None:
            out.append(Mismatch(field, f"{field} is missing from {wa if va is None else wb}"))
            return True
        return False

    sa, sb = a.workload.sha256, b.workload.sha256
    if not missing(WORKLOAD, sa, sb) and sa != sb:
        out.append(Mismatch(WORKLOAD, f"{WORKLOAD} differs: {wa} ran '{a.workload.name}' {_short(sa)}, "
                                      f"{wb} ran '{b.workload.name}' {_short(sb)}"))
    ma, mb = a.model.name, b.model.name
    if not missing(MODEL, ma, mb):
        if ma != mb:
            out.append(Mismatch(MODEL, f"{MODEL} differs: '{ma}' in {wa}, '{mb}' in {wb}"))
        elif a.model.snapshot != b.model.snapshot:
            out.append(Mismatch(SNAPSHOT, f"{SNAPSHOT} of '{ma}' differs: {_short(a.model.snapshot)} "
                                          f"in {wa}, {_short(b.model.snapshot)} in {wb}"))
    ca, cb = a.clock.label, b.clock.label
    if not missing(CLOCK, ca, cb) and ca != cb:
        why = (" (measured and simulated times are never compared)"
               if a.clock.simulated != b.clock.simulated else "")
        out.append(Mismatch(CLOCK, f"{CLOCK} differs: {ca} in {wa}, {cb} in {wb}{why}"))
    same_name = na == nb
    ba, bb = a.budget.bytes, b.budget.bytes
    same_request = a.budget.spec is not None and a.budget.spec == b.budget.spec
    if not missing(BUDGET, ba, bb) and ba != bb and (same_name or not same_request):
        out.append(Mismatch(BUDGET, f"{BUDGET} differs: {ba:,} ('{a.budget.spec}') in {wa}, "
                                    f"{bb:,} ('{b.budget.spec}') in {wb}"))
    if same_name and a.strategy.version != b.strategy.version:
        out.append(Mismatch(VERSION, f"{VERSION} of '{a.strategy.name}' differs: "
                                     f"{a.strategy.version} in {wa}, {b.strategy.version} in {wb} "
                                     "(results of two versions of a strategy are not comparable)"))
    return out


def in_sample_refusal(run: RunResult, side: str) -> str | None:
    """The gate's one sentence refusing `run` as its `side` ("baseline" or "candidate") when it
    is in-sample (`RunResult.in_sample`: its strategy ran on artifacts calibrated on prompts of
    its own evaluation workload, so its numbers are optimistic); None when it is not."""
    if not run.in_sample:
        return None
    from moebench.report.terminal import in_sample_clause

    clause = in_sample_clause(run.raw) or f"'{run.strategy.name}' is marked in-sample"
    return (f"moebench gate refuses in-sample results: in the {side} ({run.where}), {clause}; "
            "rerun it calibrated on a workload disjoint from the evaluated one (the default, "
            "`calibration`).")


def check_comparable(runs: Sequence[RunResult]) -> None:
    """Raise `MismatchError` unless `runs` can share one table: distinct strategies, each
    comparable with the first (`mismatches`). A strategy given twice is refused, whatever its
    versions (the sentence names them when they differ)."""
    if not runs:
        raise UserError("nothing to compare: give at least one result folder.")
    problems: list[str] = []
    seen: dict[str, RunResult] = {}
    for run in runs:
        name = str(run.strategy.name)
        if name in seen:
            problems.append(f"{seen[name].where} and {run.where} are both strategy '{name}'")
            problems.extend(m.text for m in mismatches(seen[name], run) if m.field == VERSION)
        seen[name] = run
    first = runs[0]
    for run in runs[1:]:
        problems.extend(m.text for m in mismatches(first, run))
    if problems:
        raise MismatchError("cannot compare these results: " + "; ".join(problems) + ".")
