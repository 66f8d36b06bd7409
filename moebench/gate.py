"""The CI regression gate: is the candidate run worse than the baseline, beyond noise?

``moebench gate BASELINE CANDIDATE [--fail-on RULE ...]`` ends with one of four exit codes:

    0  pass          every metric is within its threshold (or better)
    1  regression    some metric is significantly AND practically worse
    2  usage         a malformed rule, an unreadable file, an in-sample result on either
                     side (calibrated on its own evaluation prompts) (``GateUsageError``)
    3  inconclusive  too few samples, a possible-but-unproven regression, or results that cannot
                     be compared (different workload hash, model, clock, budget or strategy)

A rule names a metric, the bad direction and a threshold: ``tpot_ms:+5%`` fails when TPOT grows
by more than 5%, ``hit_rate:-0.02`` when the hit rate drops by more than 0.02 (absolute),
``h2d_bytes_per_token:+1%`` when the copy traffic grows by more than 1%. Without rules the gate
uses ``DEFAULT_RULES`` (``tpot_ms:+3%``, ``hit_rate:-0.01``, ``h2d_bytes_per_token:+1%``).

How each metric is judged
- Latencies with raw samples (``tpot_ms``, ``ttft_ms``, ``e2e_ms`` per request, ``step_ms``
  per decode step) on the *measured* clock: the candidate/baseline ratio of medians with a
  bootstrap CI and a p-value, paired by prompt (``moebench.offload.records.pair_samples``, the
  report's rule): repetitions that repeat an earlier one in both runs are dropped, so n counts
  what was measured; prompt × repetition pairs only where the repetitions differ. A regression needs p < α **and** the whole CI of the change beyond the
  threshold; a CI inside the threshold passes ("within noise"); anything between is
  inconclusive, because a gate that guesses "significant" on thin evidence trains people to
  ignore it.
- The same latencies on the *simulated* clock are deterministic (same seed, same workload, same
  numbers), so their medians are compared exactly, whatever the sample count.
- Scalar metrics (``hit_rate``, ``h2d_bytes_per_token`` or any other number in
  ``result["metrics"]``) are compared directly against the threshold.

Which results are compared is ``moebench.results.compat``'s one rule (the same as ``moebench
compare``'s). A strategy whose ``version`` differs between baseline and candidate (a deliberate
behaviour change) is **not gated**: it is listed with status ``not gated`` and a note to refresh
the baseline, it is left out of the verdict, and it does not fail the gate by itself (only when
nothing at all is left to gate is the result inconclusive). Every other mismatch is
inconclusive, as above.

Every verdict says what it judged and how (``MetricVerdict``: the run and metric, the rule and
its threshold, both values, the change, the test used, the decision); ``GateReport.to_dict()`` is
what ``moebench gate --format json`` prints, and ``moebench.results.export`` turns that document
into JUnit XML or CSV (``--format junit|csv``).

``gate(baseline_path, candidate_path)`` is the one entry point (``moebench gate`` and
``moebench baseline check`` call it): it loads result or report folders through
``moebench.results.model.load_runs`` and decides with ``decide`` / ``decide_many``, which are
pure; printing and exit codes belong to the CLI.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from moebench.errors import UserError, did_you_mean
from moebench.results.compat import VERSION, in_sample_refusal, mismatches
from moebench.results.model import RunResult, load_runs
from moebench.offload.records import distinct_samples, pair_samples, sample_values
from moebench.stats import MIN_SAMPLES, RatioEstimate, paired_ratio, unpaired_ratio


class GateUsageError(UserError, ValueError):
    """A malformed rule or an unreadable input: exit code 2, one clear sentence."""

    exit_code = 2


class ExitCode(IntEnum):
    PASS = 0
    REGRESSION = 1
    USAGE = 2
    INCONCLUSIVE = 3


PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"
NOT_GATED = "not gated"       # a verdict's status only: a strategy whose version changed
_EXIT = {PASS: ExitCode.PASS, REGRESSION: ExitCode.REGRESSION,
         INCONCLUSIVE: ExitCode.INCONCLUSIVE}

# metric -> (sample kind, sample field); pairs form by `moebench.offload.records.sample_unit`
_SAMPLE_METRICS: dict[str, tuple[str, str]] = {
    "tpot_ms": ("request", "tpot_ms"),
    "ttft_ms": ("request", "ttft_ms"),
    "e2e_ms": ("request", "e2e_ms"),
    "step_ms": ("step", "latency_ms"),
}


# ------------------------------------------------------------------------------------------
# rules
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """Fail when ``metric`` moves in the bad direction by more than ``threshold``.

    ``direction`` is the *good* direction (``"lower"``: an increase is bad, as for latency);
    ``threshold`` is a fraction of the baseline when ``relative`` (0.05 for 5%), else in the
    metric's own units.
    """

    metric: str
    threshold: float
    relative: bool
    direction: str

    def __str__(self) -> str:
        sign = "+" if self.direction == "lower" else "-"
        if self.relative:
            return f"{self.metric}:{sign}{self.threshold * 100:g}%"
        return f"{self.metric}:{sign}{self.threshold:g}"


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("tpot_ms", 0.03, True, "lower"),
    Rule("hit_rate", 0.01, False, "higher"),
    Rule("h2d_bytes_per_token", 0.01, True, "lower"),
)


_RULE_RE = re.compile(
    r"^(?P<metric>[A-Za-z_][A-Za-z0-9_.]*)\s*:\s*(?P<sign>[+-])\s*"
    r"(?P<value>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<pct>%?)$"
)


def parse_rule(text: str) -> Rule:
    """``"tpot_ms:+5%"`` -> ``Rule("tpot_ms", 0.05, True, "lower")``; the sign is the bad direction.

    ``+`` means an increase is bad (lower is better), ``-`` a decrease; a trailing ``%`` makes the
    threshold relative to the baseline, otherwise it is in the metric's units.
    """
    m = _RULE_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise GateUsageError(
            f"Malformed --fail-on rule {text!r}: expected METRIC:+N% or METRIC:-N "
            "(the sign is the bad direction), e.g. tpot_ms:+5% or hit_rate:-0.02.")
    relative = m["pct"] == "%"
    value = float(m["value"])
    return Rule(m["metric"], value / 100 if relative else value, relative,
                "lower" if m["sign"] == "+" else "higher")


# ------------------------------------------------------------------------------------------
# verdicts
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricVerdict:
    """One metric's decision. ``change`` (and ``ci95``) are relative (0.05 = +5%) when
    ``relative``, else in the metric's units; ``baseline``/``candidate`` are the compared values
    (medians for sampled latencies); ``status`` is the decision.

    ``metric`` is the name the gate prints (``<strategy>/<metric>`` for reports, the bare metric
    for two result folders, the strategy alone for a verdict on the whole run). The fields after
    ``relative`` say the same in parts, for machines: ``run`` (``<strategy>`` or
    ``<point>/<strategy>``), ``measure`` (the metric; "" for a whole-run verdict), ``rule``
    (``tpot_ms:+3%``), ``direction`` (the good one: ``lower`` | ``higher``), ``test`` (how it was
    decided) and ``clock`` (the compared runs' clock label)."""

    metric: str
    status: str
    baseline: float | None
    candidate: float | None
    change: float | None
    ci95: tuple[float, float] | None
    p_value: float | None
    threshold: float
    reason: str
    relative: bool = True
    run: str = ""
    measure: str = ""
    rule: str = ""
    direction: str = ""
    test: str = ""
    clock: str = ""

    @property
    def name(self) -> str:
        """``<run>/<measure>`` (``<point>/<strategy>/<metric>``), whatever ``metric`` prints."""
        return "/".join(x for x in (self.run, self.measure) if x) or self.metric


@dataclass(frozen=True)
class GateReport:
    """The aggregate over the gated verdicts: any regression -> regression; else any
    inconclusive -> inconclusive; else pass. ``not gated`` verdicts are left out of it and
    listed in ``notes`` (nothing gated at all is inconclusive)."""

    status: str
    exit_code: int
    verdicts: list[MetricVerdict]
    reason: str
    notes: tuple[str, ...] = field(default=())
    alpha: float | None = None
    rules: tuple[str, ...] = field(default=())
    baseline: str | None = None
    candidate: str | None = None

    def to_dict(self) -> dict:
        """The whole verdict as JSON (``moebench gate --format json``): the aggregate, the inputs
        and rules, and every metric's baseline, candidate, change, threshold, test and decision."""
        return {
            "kind": "gate",
            "status": self.status,
            "exit_code": int(self.exit_code),
            "reason": self.reason,
            "notes": list(self.notes),
            "baseline": self.baseline,
            "candidate": self.candidate,
            "alpha": self.alpha,
            "rules": list(self.rules),
            "verdicts": [
                {**asdict(v), "name": v.name, "ci95": None if v.ci95 is None else list(v.ci95)}
                for v in self.verdicts
            ],
        }


def _report(verdicts: list[MetricVerdict], reason: str | None = None,
            status: str | None = None) -> GateReport:
    gated = [v for v in verdicts if v.status != NOT_GATED]
    notes = tuple(v.reason for v in verdicts if v.status == NOT_GATED)
    if status is None:
        statuses = {v.status for v in gated}
        status = (REGRESSION if REGRESSION in statuses
                  else INCONCLUSIVE if INCONCLUSIVE in statuses or not gated else PASS)
    if reason is None:
        if not gated:
            reason = "inconclusive: nothing was gated"
        elif status == PASS:
            reason = f"pass: {len(gated)} metric(s) within their thresholds"
        else:
            reason = f"{status}: " + "; ".join(
                f"{v.metric}: {v.reason}" for v in gated if v.status == status)
        if notes:
            reason += "; " + "; ".join(notes)
    return GateReport(status, int(_EXIT[status]), list(verdicts), reason, notes)


def _fmt(change: float, relative: bool) -> str:
    return f"{change * 100:+.2f}%" if relative else f"{change:+.4g}"


def _bad_sign(rule: Rule) -> float:
    """+1 when an increase is bad (lower is better), -1 when a decrease is bad."""
    return 1.0 if rule.direction == "lower" else -1.0


def _exact_verdict(rule: Rule, base: float, cand: float, note: str) -> MetricVerdict:
    """Deterministic values: compare the change itself with the threshold, no statistics."""
    sign = _bad_sign(rule)

    def verdict(status: str, change: float | None, reason: str) -> MetricVerdict:
        return MetricVerdict(rule.metric, status, base, cand, change, None, None,
                             rule.threshold, reason, rule.relative,
                             test=f"exact, against the threshold ({note})")

    if rule.relative and base == 0:
        if cand == base:
            return verdict(PASS, 0.0, f"unchanged ({note})")
        worse = sign * (cand - base) > 0
        return verdict(REGRESSION if worse else PASS, None,
                       f"baseline is 0, candidate is {cand:g}: "
                       f"{'worse' if worse else 'better'} by an unbounded ratio ({note})")
    change = (cand - base) / abs(base) if rule.relative else cand - base
    bad = sign * change
    shown = f"{_fmt(change, rule.relative)} vs threshold {_fmt(sign * rule.threshold, rule.relative)}"
    # Float rounding must not turn a change of exactly the threshold into a regression.
    if bad > rule.threshold * (1 + 1e-9) + 1e-12:
        return verdict(REGRESSION, change, f"{shown} ({note})")
    if change == 0:
        return verdict(PASS, change, f"unchanged ({note})")
    what = "improvement" if bad < 0 else "within threshold"
    return verdict(PASS, change, f"{what}: {shown} ({note})")


def _interval_verdict(rule: Rule, base: float, cand: float, change: float,
                      ci: tuple[float, float], p: float, alpha: float,
                      method: str) -> MetricVerdict:
    """Noisy values: significance (p < alpha) and practical effect (CI beyond threshold)."""
    sign = _bad_sign(rule)
    bad_lo, bad_hi = sorted((sign * ci[0], sign * ci[1]))
    t = rule.threshold
    significant = p < alpha
    shown = (f"{_fmt(change, rule.relative)} (95% CI {_fmt(ci[0], rule.relative)} .. "
             f"{_fmt(ci[1], rule.relative)}, p={p:.3g}, {method})")
    if significant and bad_lo > t:
        status, why = REGRESSION, f"beyond the {_fmt(sign * t, rule.relative)} threshold"
    elif bad_hi <= t and significant and bad_hi < 0:
        status, why = PASS, "improvement"
    elif bad_hi <= t and bad_lo >= -t:
        status = PASS
        why = ("within noise" if not significant
               else "within noise: significant, but smaller than the threshold")
    elif bad_hi <= t:
        status, why = PASS, "within noise: no regression beyond the threshold"
    elif significant and sign * change > 0:
        status, why = INCONCLUSIVE, "possible regression: significant, but the CI straddles the threshold"
    else:
        status, why = INCONCLUSIVE, "not significant, but the CI reaches beyond the threshold (more samples needed)"
    return MetricVerdict(rule.metric, status, base, cand, change, ci, p, t,
                         f"{why}: {shown}", rule.relative,
                         test=f"{method}; regression: p < {alpha:g} and the 95% CI beyond the threshold")


# ------------------------------------------------------------------------------------------
# per-metric judgement
# ------------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _inconclusive(rule: Rule, reason: str, base: float | None = None,
                  cand: float | None = None, test: str = "none: nothing to test") -> MetricVerdict:
    return MetricVerdict(rule.metric, INCONCLUSIVE, base, cand, None, None, None,
                         rule.threshold, reason, rule.relative, test=test)


def _judge_sampled(rule: Rule, base: RunResult, cand: RunResult, *, alpha: float, seed: int,
                   simulated: bool) -> MetricVerdict:
    kind, name = _SAMPLE_METRICS[rule.metric]
    if simulated:
        bv, cv = _central(base, kind, name, rule.metric), _central(cand, kind, name, rule.metric)
        if bv is None or cv is None:
            side = "baseline" if bv is None else "candidate"
            return _inconclusive(rule, f"no {rule.metric} samples or summary in the {side}")
        return _exact_verdict(rule, bv, cv, "simulated clock: deterministic, compared exactly")

    # the pairing rule of reports: by prompt (and position), repetitions that repeat themselves
    # in both runs dropped, so n counts what was measured, not copies of it
    pairs = pair_samples(list(base.samples), list(cand.samples), kind, name)
    bvals, cvals = np.array(pairs.base), np.array(pairs.cand)
    bmed = float(np.median(bvals)) if bvals.size else None
    cmed = float(np.median(cvals)) if cvals.size else None
    if min(bvals.size, cvals.size) < MIN_SAMPLES:
        return _inconclusive(
            rule, f"too few samples (baseline n={bvals.size}, candidate n={cvals.size}; "
                  f"need at least {MIN_SAMPLES})", bmed, cmed,
            test=f"none: fewer than {MIN_SAMPLES} samples for a test")
    try:
        est: RatioEstimate
        if pairs.paired:
            est = paired_ratio(bvals, cvals, seed=seed)
        else:
            est = unpaired_ratio(bvals, cvals, seed=seed)
    except ValueError as exc:
        return _inconclusive(rule, f"cannot compare: {exc}", bmed, cmed)
    if est.ratio is None or est.ci95 is None or est.p_value is None:
        return _inconclusive(rule, f"no interval or p-value ({est.method})", bmed, cmed,
                             test=est.method)

    # An absolute threshold (ms) is judged in ms: scale the relative change by the baseline median.
    scale = 1.0 if rule.relative else bmed
    change = (est.ratio - 1.0) * scale
    ci = ((est.ci95[0] - 1.0) * scale, (est.ci95[1] - 1.0) * scale)
    return _interval_verdict(rule, bmed, cmed, change, ci, est.p_value, alpha,
                             f"{est.method}; unit: {pairs.unit}")


def _central(run: RunResult, kind: str | None, field: str | None, metric: str) -> float | None:
    """Median of the raw samples (identical repetitions collapsed), else the stored median."""
    if kind is not None:
        values = list(sample_values(distinct_samples(list(run.samples))[0], kind, field).values())
        if values:
            return float(np.median(values))
    summary = run.metrics.get(metric)
    if isinstance(summary, dict) and _is_number(summary.get("median")):
        return float(summary["median"])
    return None


def _scalar(run: RunResult, metric: str) -> float | None:
    value = run.metrics.get(metric)
    if _is_number(value):
        return float(value)
    return None


def _known_metrics(*runs: RunResult) -> set[str]:
    names = set(_SAMPLE_METRICS)
    for run in runs:
        for k, v in run.metrics.items():
            if _is_number(v) or isinstance(v, dict):
                names.add(k)
    return names


def _judge(rule: Rule, base: RunResult, cand: RunResult, *, alpha: float, seed: int) -> MetricVerdict:
    simulated = base.clock.simulated and cand.clock.simulated
    if rule.metric in _SAMPLE_METRICS:
        return _judge_sampled(rule, base, cand, alpha=alpha, seed=seed, simulated=simulated)
    if rule.metric not in _known_metrics(base, cand):
        raise GateUsageError(f"Unknown metric {rule.metric!r} in rule {rule}"
                             f"{did_you_mean(rule.metric, _known_metrics(base, cand))}.")
    bv, cv = _scalar(base, rule.metric), _scalar(cand, rule.metric)
    if bv is None or cv is None:
        # A summary dict without raw samples can be compared only where it is deterministic.
        bm, cm = _central(base, None, None, rule.metric), _central(cand, None, None, rule.metric)
        if simulated and bm is not None and cm is not None:
            return _exact_verdict(rule, bm, cm, "simulated clock: deterministic, compared exactly")
        side = "baseline" if bv is None else "candidate"
        return _inconclusive(rule, f"{rule.metric} is not a number in the {side}")
    return _exact_verdict(rule, bv, cv, "scalar, compared directly")


# ------------------------------------------------------------------------------------------
# decisions
# ------------------------------------------------------------------------------------------
def _check_run(run: Any, side: str) -> RunResult:
    if not isinstance(run, RunResult):
        raise GateUsageError(f"The {side} is not a loaded result (a moebench.results.model.RunResult).")
    refusal = in_sample_refusal(run, side)       # calibrated on its own evaluation prompts
    if refusal:
        raise GateUsageError(refusal)
    return run


def _rules(rules: Sequence[Rule] | None) -> tuple[Rule, ...]:
    return tuple(rules) if rules else DEFAULT_RULES


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise GateUsageError(f"alpha must lie strictly between 0 and 1, got {alpha}.")


def not_gated_note(name: str, old: int | None, new: int | None) -> str:
    return (f"{name}: not gated: strategy version changed {old} -> {new}; refresh the baseline "
            "with `moebench baseline update`")


def decide(baseline: RunResult, candidate: RunResult, rules: Sequence[Rule] | None = None, *,
           alpha: float = 0.05, seed: int = 0) -> GateReport:
    """Gate one candidate run against one baseline run (`moebench.results.model.RunResult`s).

    Incomparable or incomplete runs are inconclusive before any metric is looked at; a changed
    strategy version alone gives one ``not gated`` verdict (see the module docstring).
    """
    _check_alpha(alpha)
    base, cand = _check_run(baseline, "baseline"), _check_run(candidate, "candidate")
    found = mismatches(base, cand, one_strategy=True, where=("the baseline", "the candidate"))
    problems = [f"mismatch: {m.text}" for m in found]
    problems += [f"the {side} run is incomplete"
                 for side, run in (("baseline", base), ("candidate", cand)) if not run.complete]
    version_only = bool(found) and all(m.field == VERSION for m in found) and len(problems) == len(found)
    rules = _rules(rules)
    clock = base.clock.label or ""
    if problems and not version_only:
        return _with_inputs(_report([], reason="; ".join(problems), status=INCONCLUSIVE), rules, alpha)
    if version_only:
        note = not_gated_note(base.key, base.strategy.version, cand.strategy.version)
        return _with_inputs(_report([MetricVerdict(
            base.key, NOT_GATED, None, None, None, None, None, 0.0, note, run=base.key,
            test="none: the strategy version changed", clock=clock)]), rules, alpha)
    verdicts = [replace(_judge(r, base, cand, alpha=alpha, seed=seed), run=base.key,
                        measure=r.metric, rule=str(r), direction=r.direction, clock=clock)
                for r in rules]
    return _with_inputs(_report(verdicts), rules, alpha)


def _with_inputs(report: GateReport, rules: Sequence[Rule], alpha: float) -> GateReport:
    return replace(report, alpha=alpha, rules=tuple(str(r) for r in rules))


def _by_key(runs: Sequence[RunResult], side: str) -> dict[str, RunResult]:
    out: dict[str, RunResult] = {}
    for run in runs:
        if _check_run(run, side).strategy.name is None:
            raise GateUsageError(f"A {side} result has no strategy.name.")
        if run.key in out:
            raise GateUsageError(f"The {side} holds strategy {run.key!r} twice; gate one run per strategy.")
        out[run.key] = run
    return out


def decide_many(baseline_runs: Sequence[RunResult], candidate_runs: Sequence[RunResult],
                rules: Sequence[Rule] | None = None, *, alpha: float = 0.05,
                seed: int = 0) -> GateReport:
    """Gate every baseline run against the candidate's run of the same strategy (and sweep point).

    Verdicts are named ``<strategy>/<metric>`` (``<point>/<strategy>/<metric>`` in a sweep). A
    baseline strategy the candidate lacks is inconclusive; strategies only the candidate has
    are not gated (there is nothing to compare); a strategy whose version changed is not gated.
    """
    _check_alpha(alpha)
    base, cand = _by_key(baseline_runs, "baseline"), _by_key(candidate_runs, "candidate")
    if not base:
        raise GateUsageError("The baseline holds no results to gate against.")
    threshold = 0.0
    verdicts: list[MetricVerdict] = []
    for name in sorted(base):
        clock = base[name].clock.label or ""
        if name not in cand:
            verdicts.append(MetricVerdict(name, INCONCLUSIVE, None, None, None, None, None,
                                          threshold, f"strategy {name!r} missing from the candidate",
                                          run=name, test="none: nothing to compare", clock=clock))
            continue
        sub = decide(base[name], cand[name], rules, alpha=alpha, seed=seed)
        if not sub.verdicts:
            verdicts.append(MetricVerdict(name, sub.status, None, None, None, None, None,
                                          threshold, sub.reason, run=name,
                                          test="none: the runs cannot be compared", clock=clock))
        verdicts.extend(replace(v, metric=name if v.status == NOT_GATED else f"{name}/{v.metric}")
                        for v in sub.verdicts)
    return _with_inputs(_report(verdicts), _rules(rules), alpha)


def gate(baseline: str | Path, candidate: str | Path, rules: Sequence[Rule] | None = None, *,
         alpha: float = 0.05, seed: int = 0) -> GateReport:
    """The gate on two result or report folders: what ``moebench gate`` and ``moebench baseline
    check`` run. Two result folders -> ``decide``; a report on either side -> ``decide_many``.
    Unreadable folders, unknown schema versions and bad rules raise a ``UserError`` (exit 2)."""
    _check_alpha(alpha)
    b_report, b = load_runs(baseline)
    c_report, c = load_runs(candidate)
    if b_report is None and c_report is None:
        report = decide(b[0], c[0], rules, alpha=alpha, seed=seed)
    else:
        report = decide_many(b, c, rules, alpha=alpha, seed=seed)
    return replace(report, baseline=str(baseline), candidate=str(candidate))
