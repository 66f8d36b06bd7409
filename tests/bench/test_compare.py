"""`moebench compare`, `gate` and `baseline`: end to end on the tiny random Qwen3-MoE preset.

One live comparison (sync + lru, 2 prompts x 4 tokens, 3 interleaved repetitions) is shared by
most tests; the others copy its result folders and change one thing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from moebench.cli import app
from moebench.bench.compare import SweepSpec, interleaved_schedule, route_sets
from moebench.errors import UserError
from moebench.results.model import load_run

TINY = ["--model", "tiny-qwen3-moe", "--set", "max_new_tokens=4", "--set", "limit=2", "--clock", "sim"]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)     # 2 shared cores: tiny matmuls are faster on one thread
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmp")
    r = invoke("compare", "--strategies", "sync,lru", *TINY, "--repetitions", "3", "--out", out,
               "--name", "rep")
    assert r.exit_code == 0, r.output
    return out / "rep"


def _copy(src: Path, dst: Path, edit=None, samples_edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit:
        res = json.loads((dst / "result.json").read_text())
        edit(res)
        (dst / "result.json").write_text(json.dumps(res))
    if samples_edit:
        rows = [json.loads(x) for x in (dst / "samples.jsonl").read_text().splitlines() if x]
        (dst / "samples.jsonl").write_text("".join(json.dumps(samples_edit(x)) + "\n" for x in rows))
    return dst


# ----------------------------------------------------------------------------------------------
# the report of a live comparison
# ----------------------------------------------------------------------------------------------
def test_compare_writes_the_report_and_one_result_folder_per_strategy(report: Path):
    for f in ("report.json", "report.md", "report.html", "sync/result.json", "lru/samples.jsonl"):
        assert (report / f).exists(), f
    doc = json.loads((report / "report.json").read_text())
    for key in ("schema_version", "kind", "clock", "model", "workload", "baseline", "plan", "points",
                "schedule", "skipped", "notes", "results"):
        assert key in doc, key
    assert doc["clock"] == {"kind": "simulated", "label": "simulated:a6000-pcie4",
                            "labels": ["simulated:a6000-pcie4"], "measured": False}
    rows = {r["strategy"]: r for r in doc["points"][0]["rows"]}
    assert list(rows) == ["sync", "lru"]
    assert rows["sync"]["ratio"]["method"] == "baseline"
    for key in ("tpot_ms", "hit_rate", "hit_rate_ci95", "h2d_bytes_per_token", "stall_share",
                "efficiency_vs_oracle", "accuracy"):
        assert key in rows["lru"], key
    # the report agrees with the result folders it was built from
    sync, lru = load_run(report / "sync"), load_run(report / "lru")
    assert rows["lru"]["tpot_ms"]["median"] == lru.metrics["tpot_ms"]["median"]
    assert lru.workload.sha256 == sync.workload.sha256
    m = lru.metrics
    assert rows["lru"]["stall_share"] == pytest.approx(m["stall_ms_per_token"] / m["tpot_ms"]["mean"])


def test_identical_simulated_repetitions_are_collapsed_to_one_pair_per_prompt(report: Path):
    doc = json.loads((report / "report.json").read_text())
    ratio = doc["points"][0]["rows"][1]["ratio"]
    tp = {}
    for s in ("sync", "lru"):
        tp[s] = {(x["prompt_id"], x["repetition"]): x["tpot_ms"]
                 for x in load_run(report / s).samples if x["kind"] == "request"}
    assert sorted(tp["sync"]) == sorted(tp["lru"]) and len(tp["sync"]) == 6   # 2 prompts x 3 reps
    # the simulated clock repeats itself: 3 repetitions are one measurement, paired by prompt
    assert ratio["paired"] and ratio["n_pairs"] == 2 and ratio["collapsed_repetitions"] == 2
    assert ratio["unit"] == "prompt pairs"
    one = {k: v for k, v in tp["lru"].items() if k[1] == 0}
    base = {k: v for k, v in tp["sync"].items() if k[1] == 0}
    assert ratio["ratio"] == pytest.approx(np.median(list(one.values())) / np.median(list(base.values())))
    lru = load_run(report / "lru").metrics
    assert lru["repetitions"] == {"run": 3, "distinct": 1, "collapsed": 2}
    assert lru["tpot_ms"]["n"] == 2 and lru["tpot_ms"]["unit"] == "prompt"
    assert "identical" in (report / "report.md").read_text()


def test_repetitions_3_and_1_give_the_same_statistics_on_the_simulated_clock(tmp_path: Path):
    docs = {}
    for reps in (1, 3):
        r = invoke("compare", "--strategies", "sync,lru", "--model", "tiny-qwen3-moe",
                   "--set", "max_new_tokens=3", "--set", "limit=6", "--clock", "sim",
                   "--cache-budget", "0.3", "--repetitions", str(reps), "--out", tmp_path,
                   "--name", f"r{reps}", "--no-plots")
        assert r.exit_code == 0, r.output
        docs[reps] = json.loads((tmp_path / f"r{reps}" / "report.json").read_text())
    rows = {reps: {r["strategy"]: r for r in d["points"][0]["rows"]} for reps, d in docs.items()}
    a, b = rows[1]["lru"], rows[3]["lru"]
    assert a["ratio"]["p_value"] is not None                    # 6 prompts: a test was made
    for key in ("ratio", "ci95", "p_value", "p_holm", "n_pairs", "unit"):
        assert a["ratio"][key] == b["ratio"][key], key
    assert a["tpot_ms"] == b["tpot_ms"] and a["hit_rate_ci95"] == b["hit_rate_ci95"]


def test_runs_are_interleaved_and_every_repetition_starts_cold(report: Path):
    doc = json.loads((report / "report.json").read_text())
    sched = doc["schedule"]
    assert len(sched) == 6
    for rep in range(3):
        assert sorted(s for _, s, r in sched if r == rep) == ["lru", "sync"]
    # cold cache per run under a deterministic clock: every repetition measures the same TPOTs
    lru = load_run(report / "lru").samples
    by_rep = {r: sorted(x["tpot_ms"] for x in lru if x["kind"] == "request" and x["repetition"] == r)
              for r in range(3)}
    assert by_rep[0] == by_rep[1] == by_rep[2]


def test_markdown_and_html_state_the_clock_and_embed_the_plots(report: Path):
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    assert "simulated:a6000-pcie4" in md and "SIMULATED" in md
    assert "| lru |" in md
    assert "Accuracy was not measured" in md
    pngs = sorted(p.name for p in (report / "plots").glob("*.png"))
    assert pngs == ["bytes_per_token.png", "hit_rate_per_layer.png", "latency_by_position.png",
                    "step_latency.png"]                                   # no sweep: no TPOT curve
    assert html.count("src='data:image/png;base64,") == len(pngs)
    assert "simulated:a6000-pcie4" in html


def test_interleaved_schedule_is_seeded_and_complete():
    a = interleaved_schedule(2, ["sync", "lru", "oracle"], 4, seed=7)
    assert a == interleaved_schedule(2, ["sync", "lru", "oracle"], 4, seed=7)
    for rep in range(4):
        block = [(p, s) for p, s, r in a if r == rep]
        assert sorted(block) == sorted((p, s) for p in range(2) for s in ["sync", "lru", "oracle"])
    orders = {tuple((p, s) for p, s, r in a if r == rep) for rep in range(4)}
    assert len(orders) > 1                                   # not the same order every repetition


def test_sets_route_to_the_workload_or_the_strategies_that_have_the_field():
    wl, params = route_sets(["sync", "lru"], ["limit=2", "scope=global"])
    assert wl == {"limit": "2"} and params == {"sync": {}, "lru": {"scope": "global"}}
    _, params = route_sets(["sync", "lru"], ["lru.scope=layer"])
    assert params["lru"] == {"scope": "layer"}
    with pytest.raises(UserError, match="max_new_tokens"):
        route_sets(["sync"], ["max_new_tokenz=3"])
    with pytest.raises(UserError, match="--sweep"):
        SweepSpec.parse("cache_budgets=0.1,0.2")


# ----------------------------------------------------------------------------------------------
# comparing existing folders
# ----------------------------------------------------------------------------------------------
def test_compare_existing_folders_matches_the_live_report(report: Path, tmp_path: Path):
    r = invoke("compare", report / "sync", report / "lru", "--out", tmp_path, "--name", "again",
               "--no-plots")
    assert r.exit_code == 0, r.output
    live = json.loads((report / "report.json").read_text())["points"][0]["rows"]
    again = json.loads((tmp_path / "again" / "report.json").read_text())["points"][0]["rows"]
    assert [x["ratio"]["ratio"] for x in again] == [x["ratio"]["ratio"] for x in live]


def test_compare_refuses_results_with_different_workload_hashes(report: Path, tmp_path: Path):
    other = _copy(report / "lru", tmp_path / "lru-other",
                  edit=lambda res: res["workload"].update(sha256="0" * 64))
    r = invoke("compare", report / "sync", other, "--out", tmp_path / "out")
    assert r.exit_code == 2
    assert "workload.sha256 differs" in r.output
    assert not (tmp_path / "out").exists()                   # nothing written for a refusal


def test_compare_refuses_to_mix_measured_and_simulated_clocks(report: Path, tmp_path: Path):
    def measured(res):
        res["clock"].update(kind="cuda-events", label="cuda-events", profile=None)

    other = _copy(report / "lru", tmp_path / "lru-cuda", edit=measured)
    r = invoke("compare", report / "sync", other, "--out", tmp_path / "out")
    assert r.exit_code == 2
    assert "clock.label differs" in r.output


def test_compare_refuses_two_versions_of_one_strategy(report: Path, tmp_path: Path):
    bumped = _copy(report / "lru", tmp_path / "lru-v2",
                   edit=lambda res: res["strategy"].update(version=2))
    r = invoke("compare", report / "lru", bumped, "--out", tmp_path / "out")
    assert r.exit_code == 2
    assert "strategy.version of 'lru' differs: 1 in" in r.output.replace("\n", " ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, needle", [
    (lambda res: res.pop("schema_version"), "has no schema_version"),
    (lambda res: res.update(schema_version=99), "has schema_version 99"),
])
def test_compare_and_gate_refuse_a_missing_or_unknown_schema_version(report: Path, tmp_path: Path,
                                                                      edit, needle):
    bad = _copy(report / "lru", tmp_path / "lru-bad", edit=edit)
    for args in (("compare", report / "sync", bad, "--out", tmp_path / "out"),
                 ("gate", report / "lru", bad), ("gate", bad, report / "lru")):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and "result.json" in r.output
        assert "Traceback" not in r.output


# ----------------------------------------------------------------------------------------------
# the gate: its four exit codes
# ----------------------------------------------------------------------------------------------
def test_gate_passes_identical_results(report: Path):
    r = invoke("gate", report, report)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output


def test_gate_exit_1_when_a_strategy_got_slower(report: Path, tmp_path: Path):
    cand = tmp_path / "cand"
    shutil.copytree(report, cand)
    shutil.rmtree(cand / "lru")

    def slower(row):
        if row["kind"] == "request":
            row["tpot_ms"] *= 1.2
        return row

    _copy(report / "lru", cand / "lru", samples_edit=slower)
    r = invoke("gate", report, cand)
    assert r.exit_code == 1, r.output
    assert "lru/tpot_ms" in r.output and "REGRESSION" in r.output


def test_gate_exit_2_for_a_malformed_rule_or_a_missing_folder(report: Path, tmp_path: Path):
    r = invoke("gate", report, report, "--fail-on", "tpot_ms:5%")
    assert r.exit_code == 2 and "Malformed --fail-on rule" in r.output
    r = invoke("gate", report, tmp_path / "nowhere")
    assert r.exit_code == 2


def test_gate_skips_a_strategy_whose_version_changed_and_still_catches_a_regression(
        report: Path, tmp_path: Path):
    """What `baseline check` sees after a deliberate behaviour change bumps one strategy's
    version: that strategy is listed as not gated (table, note, JSON); the others are gated."""
    def bump(res):
        res["strategy"]["version"] += 1

    def slower(row):
        if row["kind"] == "request":
            row["tpot_ms"] *= 1.2
        return row

    cand = tmp_path / "cand"
    shutil.copytree(report, cand)
    shutil.rmtree(cand / "sync")
    _copy(report / "sync", cand / "sync", edit=bump)
    r = invoke("gate", report, cand)
    assert r.exit_code == 0, r.output
    assert "not gated" in r.output and "strategy version changed 1 -> 2" in r.output
    assert "moebench baseline update" in r.output
    r = invoke("gate", report, cand, "--json")
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 0 and any("sync: not gated" in n for n in doc["notes"])
    assert {v["metric"]: v["status"] for v in doc["verdicts"]}["sync"] == "not gated"
    assert not any(v["metric"].startswith("sync/") for v in doc["verdicts"])
    shutil.rmtree(cand / "lru")
    _copy(report / "lru", cand / "lru", samples_edit=slower)
    r = invoke("gate", report, cand)
    assert r.exit_code == 1, r.output
    assert "lru/tpot_ms" in r.output and "REGRESSION" in r.output and "not gated" in r.output


def test_gate_skips_a_bumped_strategy_against_the_committed_baseline(tmp_path: Path):
    """The committed CI baseline against a copy of itself in which one strategy (oracle) is one
    version on, everything else unchanged: the gate passes and says why oracle is not gated."""
    base = Path(__file__).resolve().parents[2] / "reports" / "baselines" / "smoke"
    cand = tmp_path / "smoke"
    shutil.copytree(base, cand)
    res = json.loads((cand / "oracle" / "result.json").read_text())
    old = res["strategy"]["version"]
    res["strategy"]["version"] = old + 1
    (cand / "oracle" / "result.json").write_text(json.dumps(res))
    doc = json.loads((cand / "report.json").read_text())
    for e in doc["results"]:
        if e["strategy"] == "oracle":
            e["result"]["strategy"]["version"] = old + 1
    (cand / "report.json").write_text(json.dumps(doc))
    r = invoke("gate", base, cand, "--json")
    out = json.loads(r.stdout)
    assert r.exit_code == 0, r.output
    assert out["notes"] == [f"oracle: not gated: strategy version changed {old} -> {old + 1}; "
                            "refresh the baseline with `moebench baseline update`"]
    assert not any(v["metric"].startswith("oracle/") for v in out["verdicts"])
    assert any(v["metric"] == "lru/tpot_ms" and v["status"] == "pass" for v in out["verdicts"])


def test_gate_exit_3_when_the_workloads_differ(report: Path, tmp_path: Path):
    other = _copy(report / "lru", tmp_path / "lru-other",
                  edit=lambda res: res["workload"].update(sha256="0" * 64))
    r = invoke("gate", report / "lru", other)
    assert r.exit_code == 3, r.output
    assert "workload.sha256 differs" in r.output


# ----------------------------------------------------------------------------------------------
# sweeps, and the baseline the CI gate uses
# ----------------------------------------------------------------------------------------------
def test_budget_sweep_gives_one_curve_per_strategy(tmp_path: Path):
    r = invoke("compare", "--strategies", "sync,lru", *TINY, "--sweep", "cache_budget=0.25,0.5",
               "--accuracy", "--out", tmp_path, "--name", "sw")
    assert r.exit_code == 0, r.output
    d = tmp_path / "sw"
    doc = json.loads((d / "report.json").read_text())
    assert [p["label"] for p in doc["points"]] == ["cache_budget=0.25", "cache_budget=0.5"]
    assert (d / "plots" / "tpot_vs_sweep.png").exists()
    lru = [{r["strategy"]: r for r in p["rows"]}["lru"] for p in doc["points"]]
    assert lru[1]["budget"]["experts"] == 2 * lru[0]["budget"]["experts"]
    assert lru[1]["hit_rate"] > lru[0]["hit_rate"]           # more cache, more hits
    assert (d / "cache_budget=0.5" / "lru" / "result.json").exists()
    if doc["accuracy_measured"]:
        assert all(r["accuracy"] for p in doc["points"] for r in p["rows"])
        # the terminal shows the accuracy too, per point, not only report.md
        assert r.output.count("accuracy against the lossless reference") == 2
        assert "greedy exact match" in r.output
    else:
        assert any("accuracy" in n and "not measured" in n for n in doc["notes"])
    g = invoke("gate", d, d)                                   # each point gated on its own
    assert g.exit_code == 0 and "cache_budget=0.5/lru/tpot_ms" in g.output


def test_baseline_check_passes_unchanged_and_fails_on_slower_hardware(tmp_path: Path, monkeypatch):
    base = tmp_path / "baselines" / "smoke"
    r = invoke("baseline", "update", "--dir", base, "--strategies", "sync,lru",
               "--model", "tiny-qwen3-moe", "--set", "max_new_tokens=4", "--set", "limit=2")
    assert r.exit_code == 0, r.output
    r = invoke("baseline", "check", "--dir", base, "--out", tmp_path, "--name", "same")
    assert r.exit_code == 0, r.output
    # The same profile name on a slower link (4x the copy latency, half the bandwidth): what a
    # change that slows every copy does, under an unchanged clock label.
    from moebench.offload.profile import load_profile

    slow = load_profile("a6000-pcie4")
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "a6000-pcie4.yaml").write_text(
        f"name: a6000-pcie4\nh2d_bandwidth_gbps: {slow.h2d_bandwidth_gbps / 2}\n"
        f"h2d_latency_us: {4 * slow.h2d_latency_us}\nmem_bandwidth_gbps: {slow.mem_bandwidth_gbps}\n"
        f"peak_tflops: {slow.peak_tflops}\nlaunch_overhead_us: {slow.launch_overhead_us}\n")
    monkeypatch.setenv("MOEBENCH_PROFILES", str(prof))
    r = invoke("baseline", "check", "--dir", base, "--out", tmp_path, "--name", "slower")
    assert r.exit_code == 1, r.output
    assert "sync/tpot_ms" in r.output


def test_the_committed_baseline_records_a_rerunnable_simulated_plan():
    """CI reruns this plan (scripts/ci_gate.sh -> `moebench baseline check`) and gates it."""
    from moebench.bench.compare import plan_from_report

    base = Path(__file__).resolve().parents[2] / "reports" / "baselines" / "smoke"
    plan = plan_from_report(base)
    doc = json.loads((base / "report.json").read_text())
    assert plan.base.clock == "sim" and doc["clock"]["kind"] == "simulated"
    assert plan.base.model == "default"                   # resolved name recorded in doc["model"]
    assert set(plan.strategies) == {r["strategy"] for r in doc["results"]}
    r = invoke("gate", base, base)
    assert r.exit_code == 0, r.output


def test_the_terminal_table_is_readable_at_80_columns(report: Path, monkeypatch):
    """At 80 columns the table drops its intervals instead of cutting names to `strat…`."""
    from rich.console import Console

    from moebench.cli import compare as cli_compare

    con = Console(width=80, force_terminal=True, record=True, color_system=None)
    monkeypatch.setattr(cli_compare, "console", lambda stderr=False: con)
    cli_compare._show_report(report, json_out=False)
    text = con.export_text()
    table = text[text.index("strategy"):text.index("* lossy")]
    assert "…" not in table and max(len(x) for x in table.splitlines()) <= 80
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip()}
    assert set(rows) == {"sync", "lru"}
    assert rows["lru"][2].endswith("×")                     # the ratio to sync, whole
