"""moebench.results.export: every format read back with an independent parser (json, csv,
xml.etree) and checked against the results it came from; gate verdicts as JUnit XML and CSV.

Inputs are the committed baseline (reports/baselines/smoke, read only) and in-memory edits of it.
"""
from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from moebench.errors import UserError
from moebench.gate import NOT_GATED, decide, decide_many, parse_rule
from moebench.results import export as E
from moebench.results.model import load_runs

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "reports" / "baselines" / "smoke"
CLOCK = "simulated:a6000-pcie4"


@pytest.fixture(scope="module")
def runs():
    _, runs = load_runs(BASELINE)
    assert len(runs) >= 2 and all(r.clock.label == CLOCK for r in runs)
    return runs


def _expected(run, metric):
    """(value, lower, upper) straight from result.json, the way docs/ci.md says they are read."""
    raw = run.metrics[metric]
    if isinstance(raw, dict):
        lo, hi = raw["ci95"] or (None, None)
        return raw["median"], lo, hi
    ci = run.metrics.get(f"{metric}_ci95") or (None, None)
    return raw, ci[0], ci[1]


def _by_name(runs):
    return {f"{CLOCK}/{r.strategy.name}": r for r in runs}


# ---------------------------------------------------------------------- github-action-benchmark
@pytest.mark.parametrize("direction", ["smaller", "bigger"])
def test_github_benchmark_entries_match_the_results(runs, direction):
    doc = json.loads(E.export_text(runs, f"github-{direction}"))
    wanted = [m for m in E.DEFAULT_METRICS if E.SPECS[m].direction == direction]
    assert wanted
    names = {f"{CLOCK}/{r.strategy.name}/{m}" for r in runs for m in wanted}
    assert {e["name"] for e in doc} == names and len(doc) == len(names)
    bench = _by_name(runs)
    for e in doc:
        clock_strategy, metric = e["name"].rsplit("/", 1)
        run = bench[clock_strategy]
        assert e["unit"] == E.SPECS[metric].unit
        value, lo, hi = _expected(run, metric)
        assert e["value"] == value
        if lo is None:
            assert "range" not in e
            continue
        assert e["range"].startswith("+/- ")
        assert float(e["range"][4:]) == pytest.approx(max(value - lo, hi - value), rel=1e-5, abs=1e-12)
        assert f"95% CI [{lo!r}, {hi!r}]" in e["extra"]
        assert f"v{run.strategy.version}" in e["extra"]


def test_units_and_directions_pick_the_right_tool(runs):
    smaller = json.loads(E.export_text(runs, "github-smaller"))
    bigger = json.loads(E.export_text(runs, "github-bigger"))
    assert {e["name"].rsplit("/", 1)[1] for e in bigger} == {"hit_rate"}
    assert {e["unit"] for e in smaller} == {"ms", "bytes/token", "ms/token"}
    tpot = [e for e in smaller if e["name"].endswith("/tpot_ms")]
    assert tpot and all(e["unit"] == "ms" and "range" in e for e in tpot)


# ---------------------------------------------------------------------- Bencher
def test_bmf_benchmarks_measures_values_and_bounds(runs):
    doc = json.loads(E.export_text(runs, "bmf"))
    bench = _by_name(runs)
    assert set(doc) == set(bench)
    for name, measures in doc.items():
        assert set(measures) == set(E.DEFAULT_METRICS)
        for metric, m in measures.items():
            value, lo, hi = _expected(bench[name], metric)
            assert m["value"] == value
            if lo is None:
                assert set(m) == {"value"}
            else:
                assert (m["lower_value"], m["upper_value"]) == (lo, hi)
                assert m["lower_value"] <= m["value"] <= m["upper_value"]


# ---------------------------------------------------------------------- CSV
def test_csv_rows_round_trip_exactly(runs):
    rows = list(csv.DictReader(io.StringIO(E.export_text(runs, "csv"))))
    assert list(rows[0]) == list(E.CSV_FIELDS)
    assert len(rows) == len(runs) * len(E.DEFAULT_METRICS)
    bench = _by_name(runs)
    for row in rows:
        run = bench[row["benchmark"]]
        assert row["name"] == f"{row['benchmark']}/{row['measure']}"
        assert (row["clock"], row["strategy"], row["point"]) == (CLOCK, run.strategy.name, "")
        assert row["unit"] == E.SPECS[row["measure"]].unit
        assert row["direction"] == E.SPECS[row["measure"]].direction
        value, lo, hi = _expected(run, row["measure"])
        assert float(row["value"]) == value                  # repr: exact round trip
        assert (float(row["lower"]) if row["lower"] else None) == lo
        assert (float(row["upper"]) if row["upper"] else None) == hi
        assert row["workload_sha256"] == run.workload.sha256
        assert row["strategy_version"] == str(run.strategy.version)
        assert row["in_sample"] == "false"
    tpot = [r for r in rows if r["measure"] == "tpot_ms"]
    assert all(r["interval"] == "prompt" and r["n"] == "10" for r in tpot)


def test_metrics_can_be_chosen(runs):
    rows = list(csv.DictReader(io.StringIO(E.export_text(runs, "csv", ["step_ms", "miss_rate"]))))
    assert {r["measure"] for r in rows} == {"step_ms", "miss_rate"}
    with pytest.raises(UserError, match="did you mean 'tpot_ms'"):
        E.export_text(runs, "csv", ["tpot"])


# ---------------------------------------------------------------------- names
def test_the_clock_and_the_sweep_point_are_part_of_the_name(runs):
    lru = next(r for r in runs if r.strategy.name == "lru")
    measured = replace(lru, clock=replace(lru.clock, kind="cuda-events", label="cuda-events", profile=None))
    swept = replace(lru, point="cache_budget=0.5")
    names = {e.name for e in E.entries([lru, measured, swept], ["tpot_ms"])}
    assert names == {f"{CLOCK}/lru/tpot_ms", "cuda-events/lru/tpot_ms",
                     f"{CLOCK}/cache_budget=0.5/lru/tpot_ms"}
    with pytest.raises(UserError, match="under one name"):
        E.entries([lru, lru])


def test_unknown_formats_are_one_sentence(runs):
    for fmt, needle in [("xml", "Unknown export format 'xml'"), ("junit", "moebench gate"),
                        ("github", "github-smaller")]:
        with pytest.raises(UserError, match=needle) as exc:
            E.export_text(runs, fmt)
        assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------- gate verdicts
def _slower(run, factor):
    """The same run with every request's TPOT (and the summary) scaled by `factor`."""
    samples = tuple(dict(s, tpot_ms=s["tpot_ms"] * factor) if s.get("kind") == "request" else s
                    for s in run.samples)
    tpot = dict(run.metrics["tpot_ms"], median=run.metrics["tpot_ms"]["median"] * factor)
    return replace(run, samples=samples, metrics=dict(run.metrics, tpot_ms=tpot))


def _cases(xml_text):
    root = ET.fromstring(xml_text)
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    return root, suite, {(c.get("classname"), c.get("name")): c for c in suite.findall("testcase")}


def test_a_regression_is_a_junit_failure_with_the_reason(runs):
    cand = [_slower(r, 1.10) if r.strategy.name == "lru" else r for r in runs]
    report = decide_many(runs, cand)
    assert report.status == "regression" and report.exit_code == 1
    root, suite, cases = _cases(E.gate_junit(report.to_dict()))
    assert len(cases) == len(runs) * 3                      # the three default rules
    assert root.get("failures") == suite.get("failures") == "1"
    assert suite.get("tests") == str(len(cases)) and suite.get("errors") == "0"
    failed = {k: c for k, c in cases.items() if c.find("failure") is not None}
    assert list(failed) == [(f"{CLOCK}/lru", "tpot_ms")]
    failure = failed[(f"{CLOCK}/lru", "tpot_ms")].find("failure")
    (verdict,) = [v for v in report.verdicts if v.status == "regression"]
    assert failure.get("type") == "regression" and failure.get("message") == verdict.reason
    assert "+10.00% vs threshold +3.00%" in failure.get("message")
    assert "tpot_ms:+3%" in failure.text and "decision: regression" in failure.text
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["status"] == "regression" and props["exit_code"] == "1"
    assert props["rules"] == "tpot_ms:+3% hit_rate:-0.01 h2d_bytes_per_token:+1%"
    passed = cases[(f"{CLOCK}/sync", "tpot_ms")]
    assert passed.find("failure") is None and "decision: pass" in passed.find("system-out").text


def test_the_verdict_json_is_complete(runs):
    cand = [_slower(r, 1.10) if r.strategy.name == "lru" else r for r in runs]
    doc = json.loads(json.dumps(decide_many(runs, cand).to_dict()))
    assert doc["kind"] == "gate" and doc["exit_code"] == 1 and doc["alpha"] == 0.05
    assert doc["rules"] == ["tpot_ms:+3%", "hit_rate:-0.01", "h2d_bytes_per_token:+1%"]
    for v in doc["verdicts"]:
        for key in ("name", "run", "measure", "clock", "status", "baseline", "candidate", "change",
                    "threshold", "rule", "direction", "test", "reason", "relative"):
            assert key in v, key
        assert v["name"] == f"{v['run']}/{v['measure']}" and v["clock"] == CLOCK
        assert v["test"].startswith("exact") and v["baseline"] is not None
    lru = {v["measure"]: v for v in doc["verdicts"] if v["run"] == "lru"}
    assert lru["tpot_ms"]["status"] == "regression"
    assert lru["tpot_ms"]["change"] == pytest.approx(0.10)
    assert lru["tpot_ms"]["candidate"] == pytest.approx(lru["tpot_ms"]["baseline"] * 1.10)
    assert lru["hit_rate"]["direction"] == "higher" and lru["hit_rate"]["relative"] is False


def test_gate_csv_reads_back(runs):
    cand = [_slower(r, 1.10) if r.strategy.name == "lru" else r for r in runs]
    report = decide_many(runs, cand)
    rows = list(csv.DictReader(io.StringIO(E.gate_csv(report.to_dict()))))
    assert list(rows[0]) == list(E.GATE_CSV_FIELDS) and len(rows) == len(report.verdicts)
    bad = [r for r in rows if r["status"] == "regression"]
    assert [r["name"] for r in bad] == ["lru/tpot_ms"]
    assert float(bad[0]["change"]) == pytest.approx(0.10) and bad[0]["rule"] == "tpot_ms:+3%"


def test_not_gated_inconclusive_and_incomparable_in_junit(runs):
    lru = next(r for r in runs if r.strategy.name == "lru")
    sync = next(r for r in runs if r.strategy.name == "sync")
    bumped = replace(lru, raw={**lru.raw, "strategy": {**lru.raw["strategy"], "version": 99}},
                     strategy=replace(lru.strategy, version=99))
    report = decide_many([lru, sync], [bumped])          # lru not gated, sync missing
    _, suite, cases = _cases(E.gate_junit(report.to_dict()))
    assert [v.status for v in report.verdicts if v.run == "lru"] == [NOT_GATED]
    assert cases[(f"{CLOCK}/lru", "all metrics")].find("skipped") is not None
    err = cases[(f"{CLOCK}/sync", "all metrics")].find("error")
    assert err.get("type") == "inconclusive" and "missing from the candidate" in err.get("message")
    assert suite.get("skipped") == "1" and suite.get("errors") == "1"

    other = replace(lru, workload=replace(lru.workload, sha256="0" * 64))
    report = decide(lru, other, [parse_rule("tpot_ms:+3%")])
    assert not report.verdicts and report.exit_code == 3
    _, suite, cases = _cases(E.gate_junit(report.to_dict()))
    (case,) = cases.values()
    assert (case.get("classname"), case.get("name")) == ("moebench.gate", "comparability")
    assert "workload.sha256" in case.find("error").get("message")


def test_a_document_that_is_not_a_verdict_is_refused():
    with pytest.raises(UserError, match="Not a gate verdict"):
        E.gate_junit({"points": []})
