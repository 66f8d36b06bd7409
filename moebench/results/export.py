"""Results and gate verdicts in the formats CI benchmark trackers read (`moebench export`,
`moebench gate --format`). Pure conversions: loaded runs or a verdict document in, text out.

    from moebench.results.model import load_runs
    _, runs = load_runs("reports/baselines/smoke")
    rows = entries(runs)                              # one Entry per (run, metric)
    github_benchmark(rows, "smaller")                 # github-action-benchmark customSmallerIsBetter
    github_benchmark(rows, "bigger")                  #   ... customBiggerIsBetter
    bmf(rows)                                         # Bencher Metric Format
    csv_text(rows)
    gate_junit(gate_report.to_dict())                 # JUnit XML: one test case per strategy and metric
    gate_csv(gate_report.to_dict())

Names are stable so that a series survives across commits: `<clock>/<strategy>/<metric>`, with
the sweep point between them in a sweep (`simulated:a6000-pcie4/cache_budget=0.5/lru/tpot_ms`).
The clock label comes first, so a simulated number (`simulated:<profile>`) and a measured one
(`cuda-events`) never share a series. Units travel in the entry (`unit`), values are the
result's own (the median for latencies), and the bounds are the result's 95% CI (over prompts for
TPOT and TTFT, over requests for the hit rate: docs/measurement.md, "Statistics and their units").

The verdict converters read the document `moebench.gate.GateReport.to_dict()` returns (or what
`moebench gate --format json` printed), so this module needs nothing above `moebench.results`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from moebench.errors import UserError, did_you_mean
from moebench.results.model import RunResult


@dataclass(frozen=True)
class MetricSpec:
    """A metric that can be exported: its unit and which way is good (``smaller`` | ``bigger``)."""

    name: str
    unit: str
    direction: str
    what: str


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("tpot_ms", "ms", "smaller", "median time per output token after the first"),
    MetricSpec("ttft_ms", "ms", "smaller", "median time to first token (the prefill step)"),
    MetricSpec("hit_rate", "fraction", "bigger", "expert accesses found resident"),
    MetricSpec("h2d_bytes_per_token", "bytes/token", "smaller", "host-to-device copy bytes per decode token"),
    MetricSpec("stall_ms_per_token", "ms/token", "smaller", "compute waiting for copies per decode token"),
    MetricSpec("e2e_ms", "ms", "smaller", "median end-to-end request latency"),
    MetricSpec("step_ms", "ms", "smaller", "median decode-step latency (its CI is over correlated steps)"),
    MetricSpec("miss_rate", "fraction", "smaller", "expert accesses that were demand fetches"),
    MetricSpec("late_rate", "fraction", "smaller", "expert accesses whose prefetch was still in flight"),
    MetricSpec("transfer_share", "fraction", "smaller", "copy-engine busy time over decode time"),
)
SPECS: dict[str, MetricSpec] = {m.name: m for m in METRICS}
DEFAULT_METRICS: tuple[str, ...] = ("tpot_ms", "ttft_ms", "hit_rate", "h2d_bytes_per_token",
                                    "stall_ms_per_token")
DIRECTIONS = ("smaller", "bigger")


@dataclass(frozen=True)
class Entry:
    """One exported number: `name` = `benchmark/measure`, `benchmark` = `<clock>[/<point>]/<strategy>`."""

    name: str
    benchmark: str
    measure: str
    clock: str
    point: str
    strategy: str
    unit: str
    direction: str
    value: float
    lower: float | None
    upper: float | None
    n: int | None
    interval: str | None          # what the CI is over ("prompt", "request (...)"); None without bounds
    strategy_version: int | None
    model: str | None
    workload: str | None
    workload_sha256: str | None
    budget: str | None
    status: str | None
    in_sample: bool


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _bounds(ci: Any) -> tuple[float | None, float | None]:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = _number(ci[0]), _number(ci[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None, None


def benchmark_name(run: RunResult) -> str:
    """`<clock>/<strategy>`, or `<clock>/<point>/<strategy>` for a run at a sweep point."""
    clock = run.clock.label or run.clock.kind or "unknown-clock"
    return "/".join(x for x in (clock, run.point, str(run.strategy.name)) if x)


def _value(run: RunResult, metric: str) -> tuple[float, float | None, float | None, int | None,
                                                   str | None] | None:
    """(value, lower, upper, n, what the interval is over) of one metric of one run, or None."""
    raw = run.metrics.get(metric)
    if isinstance(raw, Mapping):                         # a summary: the median and its CI
        value = _number(raw.get("median"))
        if value is None:
            return None
        lo, hi = _bounds(raw.get("ci95"))
        n = raw.get("n") if isinstance(raw.get("n"), int) else None
        unit = raw.get("unit") if isinstance(raw.get("unit"), str) else None
        return value, lo, hi, n, unit if lo is not None else None
    value = _number(raw)
    if value is None:
        return None
    lo, hi = _bounds(run.metrics.get(f"{metric}_ci95"))
    unit = run.metrics.get(f"{metric}_ci_unit")
    n = run.metrics.get("requests") if isinstance(run.metrics.get("requests"), int) else None
    return value, lo, hi, n if lo is not None else None, (
        (unit if isinstance(unit, str) else "request") if lo is not None else None)


def check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    """The metrics to export (`DEFAULT_METRICS` when none); an unknown name is one sentence."""
    if not metrics:
        return DEFAULT_METRICS
    for m in metrics:
        if m not in SPECS:
            raise UserError(f"Unknown metric {m!r} for export{did_you_mean(m, SPECS)}.")
    return tuple(dict.fromkeys(metrics))


def entries(runs: Sequence[RunResult], metrics: Sequence[str] | None = None) -> list[Entry]:
    """One `Entry` per run and metric the run holds, in the runs' order then the metrics'.

    A metric a run lacks (or holds as no number) is left out; a metric asked for by name that no
    run holds, or two runs under one name, is refused with one sentence.
    """
    chosen = check_metrics(metrics)
    out: list[Entry] = []
    seen: set[str] = set()
    for run in runs:
        bench = benchmark_name(run)
        if bench in seen:
            raise UserError(f"Two results export under one name, {bench!r}; export them one at a time.")
        seen.add(bench)
        for m in chosen:
            got = _value(run, m)
            if got is None:
                continue
            value, lo, hi, n, over = got
            spec = SPECS[m]
            out.append(Entry(
                name=f"{bench}/{m}", benchmark=bench, measure=m,
                clock=run.clock.label or run.clock.kind or "unknown-clock", point=run.point,
                strategy=str(run.strategy.name), unit=spec.unit, direction=spec.direction,
                value=value, lower=lo, upper=hi, n=n, interval=over,
                strategy_version=run.strategy.version, model=run.model.name,
                workload=run.workload.name, workload_sha256=run.workload.sha256,
                budget=run.budget.spec, status=run.status, in_sample=run.in_sample))
    if metrics:
        missing = [m for m in chosen if not any(e.measure == m for e in out)]
        if missing:
            raise UserError(f"No result here holds {', '.join(missing)}.")
    return out


# ----------------------------------------------------------------------------------------------
# github-action-benchmark, Bencher, CSV
# ----------------------------------------------------------------------------------------------
def _half_width(e: Entry) -> float | None:
    if e.lower is None or e.upper is None:
        return None
    return max(e.value - e.lower, e.upper - e.value)


def github_benchmark(rows: Sequence[Entry], direction: str) -> str:
    """github-action-benchmark's custom tool input: a JSON list of `{name, unit, value, range,
    extra}` for the metrics whose good direction is `direction` (``smaller`` -> the
    ``customSmallerIsBetter`` tool, ``bigger`` -> ``customBiggerIsBetter``). `range` is
    ``+/- h``, the larger distance from the value to its 95% CI bounds (the bounds themselves are
    in `extra`); entries without a CI have no `range`."""
    if direction not in DIRECTIONS:
        raise UserError(f"direction must be smaller or bigger, not {direction!r}.")
    picked = [e for e in rows if e.direction == direction]
    if not picked:
        others = sorted({e.measure for e in rows})
        raise UserError(f"No exported metric is {direction}-is-better"
                        f"{' (here: ' + ', '.join(others) + ')' if others else ''}; choose others "
                        "with --metrics.")
    out = []
    for e in picked:
        item: dict[str, Any] = {"name": e.name, "unit": e.unit, "value": e.value}
        h = _half_width(e)
        extra = []
        if h is not None:
            item["range"] = f"+/- {h:.6g}"
            extra.append(f"95% CI [{e.lower!r}, {e.upper!r}] over {e.interval} (n={e.n})")
        extra.append(f"model {e.model}, workload {e.workload} ({str(e.workload_sha256)[:12]}), "
                     f"budget {e.budget}, {e.strategy} v{e.strategy_version}")
        if e.in_sample:
            extra.append("IN-SAMPLE: calibrated on its own evaluation prompts")
        if e.status not in (None, "complete"):
            extra.append(f"status {e.status}")
        item["extra"] = "\n".join(extra)
        out.append(item)
    return json.dumps(out, indent=2, allow_nan=False) + "\n"


def bmf(rows: Sequence[Entry]) -> str:
    """Bencher Metric Format: `{benchmark: {measure: {value, lower_value, upper_value}}}`, the
    bounds the 95% CI (left out where there is none). The measure names carry their unit
    (`tpot_ms`, `h2d_bytes_per_token`)."""
    doc: dict[str, dict[str, dict[str, float]]] = {}
    for e in rows:
        m: dict[str, float] = {"value": e.value}
        if e.lower is not None and e.upper is not None:
            m["lower_value"], m["upper_value"] = e.lower, e.upper
        doc.setdefault(e.benchmark, {})[e.measure] = m
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


CSV_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Entry))


def _cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    return repr(x) if isinstance(x, float) else str(x)


def csv_text(rows: Sequence[Entry]) -> str:
    """One row per entry, every `Entry` field a column (floats as their shortest exact repr,
    missing values empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for e in rows:
        d = asdict(e)
        w.writerow([_cell(d[k]) for k in CSV_FIELDS])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# gate verdicts: JUnit XML and CSV
# ----------------------------------------------------------------------------------------------
def _fmt_value(x: Any) -> str:
    return "–" if x is None else f"{x:.6g}"


def _fmt_change(v: Mapping[str, Any], key: str = "change") -> str:
    x = v.get(key)
    if x is None:
        return "–"
    return f"{x * 100:+.3g}%" if v.get("relative", True) else f"{x:+.6g}"


def verdict_text(v: Mapping[str, Any]) -> str:
    """One verdict in one line: values, change, threshold, test and decision."""
    thr = v.get("threshold")
    sign = {"lower": "+", "higher": "-"}.get(v.get("direction") or "", "")
    threshold = "–" if thr is None else (
        f"{sign}{thr * 100:g}%" if v.get("relative", True) else f"{sign}{thr:g}")
    parts = [f"decision: {v.get('status')}", f"baseline {_fmt_value(v.get('baseline'))}",
             f"candidate {_fmt_value(v.get('candidate'))}", f"change {_fmt_change(v)}",
             f"threshold {threshold}" + (f" ({v['rule']})" if v.get("rule") else "")]
    if v.get("p_value") is not None:
        parts.append(f"p={v['p_value']:.3g}")
    if v.get("test"):
        parts.append(f"test: {v['test']}")
    return " · ".join(parts) + f" — {v.get('reason')}"


def _check_gate_doc(doc: Any) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("verdicts"), list) \
            or "status" not in doc:
        raise UserError("Not a gate verdict document (expected moebench gate --format json output).")
    return doc


def gate_junit(doc: Mapping[str, Any]) -> str:
    """JUnit XML for a gate verdict: one `<testcase>` per strategy and metric, `classname` the
    benchmark (`<clock>/<strategy>`) and `name` the metric, so `classname/name` is the series name
    `moebench export` uses. A regression is a `<failure>` with the reason, an inconclusive verdict
    an `<error>` (the gate exits 3: it could not decide), a not-gated strategy `<skipped>`. A
    verdict with no metric at all (results that cannot be compared) is one test case
    `moebench.gate/comparability`."""
    doc = _check_gate_doc(doc)
    verdicts = list(doc["verdicts"])
    cases = []
    for v in verdicts:
        clock = v.get("clock") or ""
        run = v.get("run") or v.get("metric") or ""
        classname = "/".join(x for x in (clock, run) if x) or "moebench.gate"
        cases.append((classname, v.get("measure") or "all metrics", v.get("status"),
                      str(v.get("reason")), verdict_text(v)))
    if not verdicts:
        cases.append(("moebench.gate", "comparability", doc.get("status"), str(doc.get("reason")),
                      f"decision: {doc.get('status')} — {doc.get('reason')}"))
    count = {"failures": 0, "errors": 0, "skipped": 0}
    for _, _, status, _, _ in cases:
        key = {"regression": "failures", "inconclusive": "errors", "not gated": "skipped"}.get(status)
        if key:
            count[key] += 1
    title = "moebench gate"
    if doc.get("baseline") or doc.get("candidate"):
        title += f": {doc.get('candidate')} against {doc.get('baseline')}"
    attrs = {"name": title, "tests": str(len(cases)), **{k: str(n) for k, n in count.items()},
             "time": "0"}
    root = ET.Element("testsuites", attrs)
    suite = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(suite, "properties")
    for key in ("status", "exit_code", "reason", "baseline", "candidate", "alpha"):
        if doc.get(key) is not None:
            ET.SubElement(props, "property", {"name": key, "value": str(doc[key])})
    if doc.get("rules"):
        ET.SubElement(props, "property", {"name": "rules", "value": " ".join(doc["rules"])})
    for classname, name, status, reason, text in cases:
        case = ET.SubElement(suite, "testcase", {"classname": classname, "name": name, "time": "0"})
        if status == "regression":
            ET.SubElement(case, "failure", {"type": "regression", "message": reason}).text = text
        elif status == "inconclusive":
            ET.SubElement(case, "error", {"type": "inconclusive", "message": reason}).text = text
        elif status == "not gated":
            ET.SubElement(case, "skipped", {"message": reason})
        ET.SubElement(case, "system-out").text = text
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


GATE_CSV_FIELDS: tuple[str, ...] = (
    "name", "clock", "run", "measure", "status", "baseline", "candidate", "change", "relative",
    "ci_low", "ci_high", "p_value", "threshold", "rule", "direction", "test", "reason")


def gate_csv(doc: Mapping[str, Any]) -> str:
    """The gate's verdicts, one row each (`GATE_CSV_FIELDS`); `status` is the decision."""
    doc = _check_gate_doc(doc)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(GATE_CSV_FIELDS)
    for v in doc["verdicts"]:
        lo, hi = _bounds(v.get("ci95"))
        row = {**v, "name": v.get("name") or v.get("metric"), "ci_low": lo, "ci_high": hi}
        w.writerow([_cell(row.get(k)) for k in GATE_CSV_FIELDS])
    return buf.getvalue()


FORMATS: dict[str, str] = {
    "github-smaller": "github-action-benchmark JSON, customSmallerIsBetter (latency, bytes, stall)",
    "github-bigger": "github-action-benchmark JSON, customBiggerIsBetter (hit rate)",
    "bmf": "Bencher Metric Format JSON",
    "csv": "one row per strategy and metric",
}


def check_format(fmt: str) -> str:
    """`fmt` if it is an export format (`FORMATS`), else one sentence saying what to use."""
    if fmt == "junit":
        raise UserError("JUnit XML holds gate verdicts: run `moebench gate BASELINE CANDIDATE "
                        "--format junit`.")
    if fmt == "github":
        raise UserError("github-action-benchmark takes one direction per file: choose --format "
                        "github-smaller (customSmallerIsBetter) or github-bigger (customBiggerIsBetter).")
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format {fmt!r}{did_you_mean(fmt, FORMATS)}.")
    return fmt


def export_text(runs: Sequence[RunResult], fmt: str, metrics: Sequence[str] | None = None) -> str:
    """`runs` in export format `fmt` (`FORMATS`); an unknown format is one sentence."""
    check_format(fmt)
    rows = entries(runs, metrics)
    if not rows:
        raise UserError("The results hold none of the metrics to export.")
    if fmt == "github-smaller":
        return github_benchmark(rows, "smaller")
    if fmt == "github-bigger":
        return github_benchmark(rows, "bigger")
    if fmt == "bmf":
        return bmf(rows)
    return csv_text(rows)


__all__ = ["CSV_FIELDS", "DEFAULT_METRICS", "FORMATS", "GATE_CSV_FIELDS", "METRICS", "Entry",
           "MetricSpec", "benchmark_name", "bmf", "check_format", "check_metrics", "csv_text", "entries",
           "export_text", "gate_csv", "gate_junit", "github_benchmark", "verdict_text"]
