"""moebench.gate: rules, comparability, noisy and deterministic decisions, the one gate path
(`gate` on folders, what the CLI runs), and the result loader it reads through."""
from __future__ import annotations

import json

import numpy as np
import pytest

from moebench.errors import UserError
from moebench.gate import (
    DEFAULT_RULES,
    INCONCLUSIVE,
    NOT_GATED,
    PASS,
    REGRESSION,
    ExitCode,
    GateReport,
    GateUsageError,
    Rule,
    decide,
    decide_many,
    gate,
    parse_rule,
)
from moebench.results.model import RunResult, load_run, load_runs
from moebench.stats import summarize

TPOT = [parse_rule("tpot_ms:+3%")]


def make_run(tpots, *, clock="measured", sha="w" * 64, strategy="lru", model="tiny-qwen3-moe",
             budget=1572864, status="complete", hit_rate=0.5, h2d=123.0, repetitions=1,
             prompt_ids=None, version=1):
    """A loaded result (`RunResult`) filled from docs/RESULT_FORMAT.md.

    ``tpots`` are per-request TPOTs, assigned to prompts p0, p1, ... (or ``prompt_ids``) and
    repetitions 0..repetitions-1 in order.
    """
    tpots = [float(t) for t in tpots]
    n_prompts = max(1, len(tpots) // repetitions)
    ids = prompt_ids or [f"p{i % n_prompts}" for i in range(len(tpots))]
    reps = [i // n_prompts for i in range(len(tpots))]
    label = "cuda-events" if clock == "measured" else "simulated:a6000-pcie4"
    samples = [
        {"kind": "request", "prompt_id": pid, "repetition": rep, "ttft_ms": 5.0, "tpot_ms": t,
         "e2e_ms": 5.0 + 15 * t, "n_out": 16}
        for pid, rep, t in zip(ids, reps, tpots)
    ]
    samples += [
        {"kind": "step", "prompt_id": pid, "repetition": rep, "position": 1, "latency_ms": t,
         "stall_ms": 0.5, "h2d_bytes": 1000, "hits": 3, "activations": 8}
        for pid, rep, t in zip(ids, reps, tpots)
    ]
    result = {
        "schema_version": 1,
        "moebench_version": "0.1.0",
        "status": status,
        "source": "run",
        "model": {"name": model, "arch": "qwen3_moe", "hf_id": None, "num_layers": 4,
                  "moe_layers": 4, "num_experts": 16, "top_k": 4, "expert_bytes": 24576,
                  "dtype": "float32", "snapshot": "s"},
        "strategy": {"name": strategy, "version": version, "params": {}, "lossless": True},
        "workload": {"name": "smoke", "sha256": sha, "n_prompts": n_prompts,
                     "max_new_tokens": 16, "task": "generate"},
        "clock": {"kind": clock, "profile": None if clock == "measured" else "a6000-pcie4",
                  "device": "cpu", "label": label},
        "budget": {"spec": "0.25", "bytes": budget, "experts": 64},
        "seed": 0,
        "repetition": 0,
        "metrics": {
            "tpot_ms": summarize(tpots, n_resamples=199),
            "hit_rate": hit_rate, "hit_rate_ci95": None, "hit_rate_per_layer": [hit_rate] * 4,
            "activations": 100, "hits": int(100 * hit_rate),
            "h2d_bytes_per_token": h2d,
            "stall_ms_per_token": 0.5,
            "transfer_share": 0.8,
            "prediction": {},
        },
        "accuracy": None,
        "outputs": [],
    }
    return RunResult.from_dict(result, samples=samples)


def noisy(n=30, seed=0):
    return np.random.default_rng(seed).lognormal(0.0, 0.3, n) + 1.0


# ---------------------------------------------------------------------------- rules
@pytest.mark.parametrize("text, rule", [
    ("tpot_ms:+5%", Rule("tpot_ms", 0.05, True, "lower")),
    ("hit_rate:-0.02", Rule("hit_rate", 0.02, False, "higher")),
    ("h2d_bytes_per_token:+1%", Rule("h2d_bytes_per_token", 0.01, True, "lower")),
    (" ttft_ms : +2.5% ", Rule("ttft_ms", 0.025, True, "lower")),
])
def test_parse_rule_good(text, rule):
    parsed = parse_rule(text)
    assert parsed.metric == rule.metric and parsed.relative == rule.relative
    assert parsed.direction == rule.direction
    assert parsed.threshold == pytest.approx(rule.threshold)


@pytest.mark.parametrize("text", [
    "", "tpot_ms", "tpot_ms:5%", "tpot_ms:+", "tpot_ms:+x%", ":+5%", "tpot_ms:+5%%",
    "tpot_ms:+-5", "1tpot:+5%", "tpot_ms:+5%:x", "tpot_ms:+nan", "tpot_ms:+inf",
])
def test_parse_rule_bad(text):
    with pytest.raises(GateUsageError, match="Malformed --fail-on rule"):
        parse_rule(text)


def test_gate_usage_error_is_a_value_error_with_exit_2():
    assert issubclass(GateUsageError, ValueError)
    assert GateUsageError.exit_code == ExitCode.USAGE == 2


def test_default_rules_round_trip():
    assert [str(r) for r in DEFAULT_RULES] == ["tpot_ms:+3%", "hit_rate:-0.01",
                                               "h2d_bytes_per_token:+1%"]
    assert [parse_rule(str(r)) for r in DEFAULT_RULES] == list(DEFAULT_RULES)


# ---------------------------------------------------------------------------- measured clock
def test_twenty_percent_shift_with_noise_is_a_regression():
    base = noisy()
    cand = base * 1.2 * np.random.default_rng(1).lognormal(0.0, 0.02, base.size)
    report = decide(make_run(base), make_run(cand), TPOT)
    assert isinstance(report, GateReport)
    assert report.status == REGRESSION and report.exit_code == 1
    (v,) = report.verdicts
    assert v.status == REGRESSION and v.ci95[0] > 0.03
    assert v.p_value < 0.05 and v.change == pytest.approx(0.2, abs=0.03)


def test_identical_samples_pass():
    base = noisy()
    report = decide(make_run(base), make_run(base))  # default rules
    assert report.status == PASS and report.exit_code == 0
    assert all(v.status == PASS for v in report.verdicts)
    assert report.verdicts[0].p_value == 1.0


def test_one_percent_shift_under_three_percent_threshold_is_within_noise():
    base = noisy()
    cand = base * 1.01 * np.random.default_rng(2).lognormal(0.0, 0.003, base.size)
    report = decide(make_run(base), make_run(cand), TPOT)
    assert report.status == PASS
    assert "within noise" in report.verdicts[0].reason


def test_improvement_passes():
    base = noisy()
    cand = base * 0.8 * np.random.default_rng(3).lognormal(0.0, 0.02, base.size)
    assert decide(make_run(base), make_run(cand), TPOT).status == PASS


def test_three_requests_are_inconclusive():
    report = decide(make_run([1.0, 1.1, 1.2]), make_run([1.5, 1.6, 1.7]), TPOT)
    assert report.status == INCONCLUSIVE and report.exit_code == 3
    assert "too few samples" in report.verdicts[0].reason


def test_possible_regression_is_inconclusive():
    # A significant shift of about 3%: the CI straddles the 3% threshold.
    base = noisy(40)
    cand = base * 1.03 * np.random.default_rng(4).lognormal(0.0, 0.01, base.size)
    v = decide(make_run(base), make_run(cand), TPOT).verdicts[0]
    assert v.status == INCONCLUSIVE and "possible regression" in v.reason


def test_unpaired_samples_use_an_unpaired_test():
    rng = np.random.default_rng(5)
    base = make_run(rng.normal(10.0, 0.2, 30))
    cand = make_run(rng.normal(13.0, 0.2, 30), prompt_ids=[f"q{i}" for i in range(30)])
    v = decide(base, cand, TPOT).verdicts[0]
    assert v.status == REGRESSION and "unpaired" in v.reason


def test_absolute_tpot_threshold_is_in_ms():
    base = noisy()
    cand = base + 0.5 * np.random.default_rng(6).lognormal(0.0, 0.01, base.size)
    v = decide(make_run(base), make_run(cand), [parse_rule("tpot_ms:+0.1")]).verdicts[0]
    assert v.status == REGRESSION and not v.relative and v.change == pytest.approx(0.5, rel=0.1)


# ---------------------------------------------------------------------------- simulated clock
def test_simulated_identical_passes_and_shift_regresses_with_few_samples():
    base = [1.0, 1.2, 1.4]
    sim = dict(clock="simulated")
    assert decide(make_run(base, **sim), make_run(base, **sim), TPOT).status == PASS
    shifted = [t * 1.05 for t in base]
    report = decide(make_run(base, **sim), make_run(shifted, **sim), TPOT)
    assert report.status == REGRESSION
    assert report.verdicts[0].change == pytest.approx(0.05)
    small = [t * 1.02 for t in base]
    assert decide(make_run(base, **sim), make_run(small, **sim), TPOT).status == PASS


# ---------------------------------------------------------------------------- scalars
def test_scalar_rules():
    base = noisy()
    rules = [parse_rule("hit_rate:-0.02"), parse_rule("h2d_bytes_per_token:+1%")]
    ok = decide(make_run(base, hit_rate=0.5), make_run(base, hit_rate=0.49, h2d=123.5), rules)
    assert ok.status == PASS
    bad = decide(make_run(base, hit_rate=0.5), make_run(base, hit_rate=0.47), rules)
    assert bad.status == REGRESSION
    assert [v.status for v in bad.verdicts] == [REGRESSION, PASS]
    more_bytes = decide(make_run(base), make_run(base, h2d=130.0), rules)
    assert more_bytes.status == REGRESSION and "h2d_bytes_per_token" in more_bytes.reason


def test_scalar_exactly_at_threshold_passes():
    base = noisy()
    v = decide(make_run(base, hit_rate=0.5), make_run(base, hit_rate=0.49),
               [parse_rule("hit_rate:-0.01")]).verdicts[0]
    assert v.status == PASS


def test_other_numeric_metrics_and_unknown_metric():
    base = noisy()
    v = decide(make_run(base), make_run(base), [parse_rule("stall_ms_per_token:+5%")]).verdicts[0]
    assert v.status == PASS
    with pytest.raises(GateUsageError, match="did you mean 'hit_rate'"):
        decide(make_run(base), make_run(base), [parse_rule("hit_rat:-0.01")])


# ---------------------------------------------------------------------------- comparability
@pytest.mark.parametrize("field, kwargs", [
    ("workload.sha256", {"sha": "x" * 64}),
    ("model.name", {"model": "other"}),
    ("clock.label", {"clock": "simulated"}),
    ("budget.bytes", {"budget": 1}),
    ("strategy.name", {"strategy": "sync"}),
])
def test_mismatch_is_inconclusive(field, kwargs):
    base = noisy()
    report = decide(make_run(base), make_run(base, **kwargs))
    assert report.status == INCONCLUSIVE and report.exit_code == 3
    assert report.reason.startswith("mismatch:") and field in report.reason


def test_incomplete_run_is_inconclusive():
    base = noisy()
    report = decide(make_run(base), make_run(base, status="incomplete"))
    assert report.status == INCONCLUSIVE and "incomplete" in report.reason


def test_report_to_dict_is_json():
    base = noisy()
    d = decide(make_run(base), make_run(base * 1.2)).to_dict()
    assert d["status"] == REGRESSION and d["exit_code"] == 1
    assert json.loads(json.dumps(d)) == d
    assert {"metric", "status", "baseline", "candidate", "change", "ci95", "p_value",
            "threshold", "reason", "rule", "direction", "test", "run", "measure", "clock",
            "name"} <= set(d["verdicts"][0])
    tpot = next(v for v in d["verdicts"] if v["measure"] == "tpot_ms")
    assert tpot["status"] == REGRESSION and tpot["rule"] == "tpot_ms:+3%" and tpot["run"] == "lru"
    assert "unit: prompt" in tpot["test"] and "p < 0.05" in tpot["test"] and tpot["clock"] == "cuda-events"
    assert d["alpha"] == 0.05 and d["rules"] == [str(r) for r in DEFAULT_RULES]


# ---------------------------------------------------------------------------- reports
def test_decide_many_pairs_by_strategy():
    base = noisy()
    baseline = [make_run(base, strategy="lru"), make_run(base, strategy="sync")]
    same = [make_run(base, strategy="sync"), make_run(base, strategy="lru")]
    assert decide_many(baseline, same, TPOT).status == PASS
    worse = [make_run(base, strategy="sync"), make_run(base * 1.2, strategy="lru")]
    report = decide_many(baseline, worse, TPOT)
    assert report.status == REGRESSION and "lru/tpot_ms" in report.reason
    missing = decide_many(baseline, [make_run(base, strategy="lru")], TPOT)
    assert missing.status == INCONCLUSIVE and "'sync' missing" in missing.reason


def test_a_changed_strategy_version_is_not_gated_but_other_regressions_still_fail():
    base = noisy()
    baseline = [make_run(base, strategy="lru"), make_run(base, strategy="oracle")]
    bumped = [make_run(base, strategy="lru"), make_run(base * 1.5, strategy="oracle", version=2)]
    report = decide_many(baseline, bumped, TPOT)
    assert report.status == PASS and report.exit_code == 0        # oracle's change is not judged
    (skipped,) = [v for v in report.verdicts if v.status == NOT_GATED]
    assert skipped.metric == "oracle"
    note = "not gated: strategy version changed 1 -> 2; refresh the baseline with `moebench baseline update`"
    assert note in skipped.reason and note in report.reason
    assert report.notes == (skipped.reason,) and report.to_dict()["notes"] == [skipped.reason]
    worse = [make_run(base * 1.2, strategy="lru"), make_run(base, strategy="oracle", version=2)]
    report = decide_many(baseline, worse, TPOT)
    assert report.status == REGRESSION and report.exit_code == 1
    assert "lru/tpot_ms" in report.reason and note in report.reason


def test_a_version_change_with_another_mismatch_is_inconclusive():
    base = noisy()
    report = decide(make_run(base), make_run(base, version=2, sha="x" * 64))
    assert report.status == INCONCLUSIVE and "workload.sha256" in report.reason
    assert "strategy.version" in report.reason and not report.notes


def test_nothing_left_to_gate_is_inconclusive():
    base = noisy()
    report = decide(make_run(base), make_run(base, version=2))
    assert report.status == INCONCLUSIVE and report.exit_code == 3
    assert [v.status for v in report.verdicts] == [NOT_GATED]
    assert "nothing was gated" in report.reason and "1 -> 2" in report.reason


# ---------------------------------------------------------------------------- the one gate path
def write_run(folder, run):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(run.raw))
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in run.samples))
    return folder


def write_report(folder, runs):
    folder.mkdir(parents=True)
    for run in runs:
        write_run(folder / run.strategy.name, run)
    doc = {"schema_version": 1, "kind": "comparison", "plan": None, "baseline": None,
           "results": [{"dir": r.strategy.name, "point": "", "strategy": r.strategy.name,
                        "result": r.raw} for r in runs]}
    (folder / "report.json").write_text(json.dumps(doc))
    return folder


def test_gate_on_folders_dispatches_results_and_reports(tmp_path):
    base = noisy()
    one = write_run(tmp_path / "one", make_run(base))
    slower = write_run(tmp_path / "slower", make_run(base * 1.2))
    assert gate(one, one).status == PASS
    assert gate(one / "result.json", slower).status == REGRESSION
    rep = write_report(tmp_path / "rep", [make_run(base, strategy="lru"),
                                          make_run(base, strategy="sync")])
    report = gate(rep, one)                        # a report on one side: pair by strategy
    assert report.status == INCONCLUSIVE and "'sync' missing" in report.reason
    assert gate(rep, rep / "report.json").status == PASS


def test_a_report_whose_folders_moved_gates_on_its_summaries(tmp_path):
    base = [1.0, 1.2, 1.4]
    rep = write_report(tmp_path / "rep", [make_run(base, clock="simulated")])
    import shutil
    shutil.rmtree(rep / "lru")
    _, runs = load_runs(rep)
    assert [r.key for r in runs] == ["lru"] and runs[0].samples == ()
    assert gate(rep, rep, TPOT).status == PASS


# ---------------------------------------------------------------------------- loading
def test_load_run_round_trip(tmp_path):
    run = make_run(noisy(6))
    folder = write_run(tmp_path / "run", run)
    loaded = load_run(folder)
    assert loaded.raw == run.raw and loaded.samples == run.samples and loaded.dir == folder
    assert load_run(folder / "result.json").raw == run.raw
    assert (loaded.strategy.name, loaded.strategy.version, loaded.strategy.lossless) == ("lru", 1, True)
    assert loaded.workload.sha256 == "w" * 64 and loaded.budget.bytes == 1572864
    assert loaded.clock.label == "cuda-events" and not loaded.clock.simulated


def test_load_run_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_run(tmp_path / "nope")
    folder = write_run(tmp_path / "run", make_run(noisy(6)))
    (folder / "samples.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="line 1 is not valid JSON"):
        load_run(folder)
    (folder / "samples.jsonl").write_text("[1]\n")
    with pytest.raises(UserError, match="line 1 is a JSON list, not an object"):
        load_run(folder)
    (folder / "result.json").write_text("[")
    with pytest.raises(UserError, match="not valid JSON"):
        load_run(folder)
    (folder / "result.json").write_text(json.dumps({"schema_version": 1}))
    (folder / "samples.jsonl").unlink()
    with pytest.raises(UserError, match="samples.jsonl does not exist"):
        load_run(folder)


@pytest.mark.parametrize("doc, needle", [
    ({"status": "complete"}, "has no schema_version"),
    ({"schema_version": 2}, "has schema_version 2; this moebench reads version 1"),
    ({"schema_version": "1"}, "has schema_version '1'"),
    ({"schema_version": True}, "has schema_version True"),
])
def test_one_schema_rule_for_results_and_reports(tmp_path, doc, needle):
    folder = write_run(tmp_path / "run", make_run(noisy(6)))
    (folder / "result.json").write_text(json.dumps(doc))
    for load in (load_run, load_runs, lambda p: gate(p, p)):
        with pytest.raises(UserError, match=needle):
            load(folder)
    rep = write_report(tmp_path / "rep", [make_run(noisy(6))])
    (rep / "report.json").write_text(json.dumps({**doc, "results": []}))
    with pytest.raises(UserError, match=needle):
        load_runs(rep)


def test_load_run_refuses_a_report_folder_with_a_hint(tmp_path):
    rep = write_report(tmp_path / "rep", [make_run(noisy(6))])
    with pytest.raises(UserError, match="is a comparison report, not a result folder.*rep/lru"):
        load_run(rep)


# ---------------------------------------------------------------------------- the one rule
def test_compat_budget_rule_between_strategies_and_within_one():
    from moebench.errors import MismatchError
    from moebench.results.compat import BUDGET, check_comparable, mismatches

    base = noisy(6)
    forced = make_run(base, strategy="all-resident", budget=99)    # same spec "0.25", its own bytes
    assert mismatches(make_run(base, strategy="sync"), forced) == []
    check_comparable([make_run(base, strategy="sync"), forced])
    assert [m.field for m in mismatches(make_run(base), make_run(base, budget=99))] == [BUDGET]
    with pytest.raises(MismatchError, match="both strategy 'lru'.*strategy.version of 'lru' differs"):
        check_comparable([make_run(base), make_run(base, version=2)])
