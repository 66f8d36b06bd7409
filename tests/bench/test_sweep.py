"""`moebench.bench.sweep`: plans, cells, the merged report and resuming, on the tiny random preset.

Every sweep here is 2 prompts x 4 new tokens on the simulated clock, inline (one process), so
a cell takes well under a second once the model is warm; the executors are compared in
tests/cli/test_sweep_cli.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from moebench.bench import sweep as S
from moebench.errors import UserError

STRATEGIES = ["sync", "lru", "speculative"]
BASE = {"strategies": STRATEGIES, "models": ["tiny-qwen3-moe"], "clock": "sim",
        "set": ["max_new_tokens=4", "limit=2"], "plots": False}
GRID = dict(BASE, budgets=[0.25, 0.5], profiles=["t4-pcie3", "a6000-pcie4"])


def plan(**changes) -> S.SweepPlan:
    return S.parse_plan({**GRID, **changes})


def manifest(d: Path) -> dict:
    return json.loads((d / "sweep.json").read_text())


def report(d: Path) -> dict:
    return json.loads((d / "report.json").read_text())


# ----------------------------------------------------------------------------------------------
# plans and cells (nothing runs)
# ----------------------------------------------------------------------------------------------
def test_cells_are_the_grid_labelled_by_what_varies():
    cells = plan().cells()
    assert [c.label for c in cells] == [
        "cache_budget=0.25,profile=t4-pcie3", "cache_budget=0.25,profile=a6000-pcie4",
        "cache_budget=0.5,profile=t4-pcie3", "cache_budget=0.5,profile=a6000-pcie4"]
    assert [c.id for c in cells] == ["0", "1", "2", "3"]
    assert cells[1].dir == "cells/1-cache_budget=0.25_profile=a6000-pcie4"
    assert cells[1].axes == {"model": "tiny-qwen3-moe", "workload": "smoke", "cache_budget": "0.25",
                             "profile": "a6000-pcie4", "bandwidth": None, "batch_size": None}
    # one axis varies: its label alone; none varies: one unlabelled cell, like a plain compare
    assert [c.label for c in plan(profiles=["t4-pcie3"]).cells()] == ["cache_budget=0.25", "cache_budget=0.5"]
    (only,) = S.parse_plan(BASE).cells()
    assert only.label == "" and only.dir == "cells/0"


def test_a_cell_is_one_whole_paired_comparison():
    p = plan(bandwidths=[12], batch_sizes=[2])
    cell = p.cells()[2]
    cp = p.compare_plan(cell)
    assert cp.strategies == tuple(STRATEGIES) and cp.baseline == "sync"       # every strategy
    assert (cp.base.model, cp.base.cache_budget, cp.base.profile, cp.base.clock) == (
        "tiny-qwen3-moe", "0.5", "t4-pcie3", "sim")
    assert cp.base.workload_overrides == {"max_new_tokens": "4", "limit": "2", "batch_size": "2"}
    assert (cp.sweep.key, cp.sweep.values) == ("bandwidth", ("12",))


def test_the_recorded_plan_reads_back_as_the_same_plan():
    p = plan(repetitions=2, seed=3, alpha=0.1)
    again = S.parse_plan(p.to_dict())
    assert again.identity() == p.identity()
    assert [c.label for c in again.cells()] == [c.label for c in p.cells()]
    # a scalar stands for a one-value axis
    assert S.parse_plan({**BASE, "budgets": 0.5}).values("budgets") == ("0.5",)


@pytest.mark.parametrize("changes, words", [
    ({"budget": [0.25]}, "unknown key 'budget' (did you mean 'budgets'?)"),
    ({"budgets": []}, "axis 'budgets' is empty"),
    ({"profiles": None}, "axis 'profiles' is empty"),
    ({"budgets": [0.25, 0.25]}, "budgets lists '0.25' twice"),
    ({"budgets": ["lots"]}, "cache budget 'lots' is not understood"),
    ({"budgets": [0.001]}, "holds 0 experts"),
    ({"strategies": ["sync", "lruu"]}, "unknown strategy 'lruu'"),
    ({"models": ["tiny-qwen9"]}, "unknown model 'tiny-qwen9'"),
    ({"profiles": ["t4"]}, "unknown hardware profile 't4'"),
    ({"workloads": ["smok"]}, "unknown workload 'smok'"),
    ({"bandwidths": [0]}, "a bandwidth is a positive number of GB/s"),
    ({"batch_sizes": [0]}, "batch size is at least 1"),
    ({"clock": "cuda"}, "set clock: sim"),
    ({"baseline": "oracle"}, "baseline 'oracle' is not among the strategies"),
    ({"repetitions": 0}, "repetitions must be at least 1"),
    ({"set": ["max_new_tokenz=4"]}, "--set max_new_tokenz"),
    ({"executor": "ray"}, "executor must be one of"),
    ({"jobs": 2}, "jobs 2 applies to the process executor only"),
    ({"slurm": {"partitions": "gpu"}}, "unknown key 'partitions' (did you mean 'partition'?)"),
])
def test_a_bad_plan_is_one_sentence(changes, words):
    with pytest.raises(UserError) as exc:
        S.parse_plan({**GRID, **changes})
    msg = str(exc.value)
    assert words in msg, msg
    assert "\n" not in msg


def test_a_plan_that_is_not_a_mapping_is_refused(tmp_path: Path):
    (tmp_path / "p.yaml").write_text("- sync\n- lru\n")
    with pytest.raises(UserError, match="must be a mapping"):
        S.load_plan(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("budgets: [0.25\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        S.load_plan(tmp_path / "q.yaml")
    with pytest.raises(UserError, match="does not exist"):
        S.load_plan(tmp_path / "none.yaml")


# ----------------------------------------------------------------------------------------------
# a sweep, merged
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("sweep")
    seen: list = []
    d = S.run_sweep(plan(), out, name="grid", progress=lambda what, done, total: seen.append((what, done, total)))
    return d, seen


def test_the_sweep_folder_holds_each_cell_and_the_merged_report(grid):
    d, seen = grid
    m = manifest(d)
    assert m["kind"] == "sweep" and m["plan"] == plan().to_dict()
    assert [(c["id"], c["status"], c["attempts"]) for c in m["cells"]] == [(str(i), "done", 1) for i in range(4)]
    assert m["history"][-1]["ran"] == ["0", "1", "2", "3"] and m["history"][-1]["kept"] == []
    for c in plan().cells():
        for f in ("report.json", "report.md", "sync/result.json", "speculative/samples.jsonl"):
            assert (d / c.dir / f).is_file(), (c.dir, f)
    assert not list((d / "cells").glob(".*"))          # no staging folder left behind
    for f in ("report.json", "report.md", "report.html"):
        assert (d / f).is_file()
    # progress says which cell of how many is running, and what inside it
    whats = [w for w, _, _ in seen]
    assert any(w.startswith("cell 1 of 4: cache_budget=0.25,profile=t4-pcie3 — ") for w in whats)
    assert any(w.startswith("cell 4 of 4: ") for w in whats)
    assert all(t == 4 for _, _, t in seen) and seen[-1][1] == 4


def test_the_merged_report_has_the_statistics_of_each_cell(grid):
    d, _ = grid
    doc = report(d)
    assert doc["sweep"] == "cache_budget × profile"
    assert [p["label"] for p in doc["points"]] == [c.label for c in plan().cells()]
    assert doc["points"][1]["axes"] == {"cache_budget": "0.25", "profile": "a6000-pcie4"}
    assert doc["points"][1]["sweep_value"] == "0.25 / a6000-pcie4"
    assert doc["plan"]["kind"] == "sweep" and doc["baseline"] == "sync"
    for point, cell in zip(doc["points"], plan().cells()):
        own = report(d / cell.dir)
        (only,) = own["points"]
        assert [r["strategy"] for r in point["rows"]] == STRATEGIES
        # every row as the cell's own report has it: medians, CIs, paired ratios to the baseline
        assert [dict(r, dir=f"{cell.dir}/{r['dir']}") for r in only["rows"]] == point["rows"]
        assert point["clock_label"] == f"simulated:{cell.axes['profile']}"
        assert point["rows"][1]["ratio"]["method"] != "baseline"
    assert len(doc["results"]) == 12
    assert doc["results"][0]["dir"] == f"{plan().cells()[0].dir}/{doc['results'][0]['strategy']}"
    # gate and export read a sweep report like any other
    from moebench.results.model import load_report

    runs = load_report(d).runs()
    assert runs[0].point == plan().cells()[0].label and len(runs[0].samples) > 0


def test_merging_again_with_plots_draws_the_sweep_plot(grid):
    d, _ = grid
    p = replace(plan(), plots=True)
    m = manifest(d)
    points = report(d)["points"]
    S.merge(d, p, p.cells(), m)
    assert (d / "plots" / "tpot_vs_sweep.png").is_file()
    assert "plots/tpot_vs_sweep.png" in (d / "report.md").read_text()
    assert report(d)["points"] == points                       # the same numbers, now with plots
    assert "plots/tpot_vs_sweep.png" in manifest(d)["report"]["files"]


def test_resume_on_a_finished_sweep_runs_nothing(grid, tmp_path: Path):
    d, _ = grid
    before = {c.id: (d / c.dir / "report.json").stat().st_mtime_ns for c in plan().cells()}
    S.run_sweep(plan(), d.parent, name=d.name, resume=True)
    m = manifest(d)
    assert m["history"][-1]["ran"] == [] and m["history"][-1]["kept"] == ["0", "1", "2", "3"]
    assert not (d / "plots").exists() or not any((d / "plots").iterdir())   # the earlier merge's plots went
    assert {c.id: (d / c.dir / "report.json").stat().st_mtime_ns for c in plan().cells()} == before


def test_resume_refuses_another_plan_and_writes_nothing(grid):
    d, _ = grid
    text = (d / "sweep.json").read_text()
    with pytest.raises(UserError) as exc:
        S.run_sweep(plan(budgets=[0.25, 1.0]), d.parent, name=d.name, resume=True)
    assert "holds a sweep of another plan (budgets:" in str(exc.value)
    assert (d / "sweep.json").read_text() == text
    with pytest.raises(UserError, match="already exists; pass --resume"):
        S.run_sweep(plan(), d.parent, name=d.name)


def test_resume_starts_a_sweep_that_is_not_there_yet(tmp_path: Path):
    d = S.run_sweep(S.parse_plan(BASE), tmp_path, name="new", resume=True)
    m = manifest(d)
    assert d == tmp_path / "new" and m["history"][-1]["ran"] == ["0"]
    (point,) = report(d)["points"]
    assert point["label"] == "" and "axes" not in point and report(d)["sweep"] is None


# ----------------------------------------------------------------------------------------------
# a cell that fails, a sweep that is stopped, and --resume
# ----------------------------------------------------------------------------------------------
THREE = dict(BASE, profiles=["t4-pcie3", "a6000-pcie4", "h100-pcie5"])


def _mtimes(d: Path, cells) -> dict:
    return {c.id: (d / c.dir / "report.json").stat().st_mtime_ns for c in cells
            if (d / c.dir / "report.json").exists()}


def test_a_failed_cell_is_recorded_and_resume_redoes_only_it(tmp_path: Path, monkeypatch):
    p = S.parse_plan(THREE)
    real = S.run_compare

    def failing(cplan, out, **kw):
        if cplan.base.profile == "a6000-pcie4":
            raise UserError("this cell was made to fail.")
        return real(cplan, out, **kw)
    monkeypatch.setattr(S, "run_compare", failing)
    d = S.run_sweep(p, tmp_path, name="s")
    m = manifest(d)
    assert [(c["status"], c["error"]) for c in m["cells"]] == [
        ("done", None), ("failed", "this cell was made to fail."), ("done", None)]
    doc = report(d)
    assert [pt["label"] for pt in doc["points"]] == ["profile=t4-pcie3", "profile=h100-pcie5"]
    assert {"strategy": "cell profile=a6000-pcie4", "reason": "this cell was made to fail."} in doc["skipped"]
    assert doc["notes"][0].startswith("incomplete sweep: 2 of 3 cells finished")
    kept = _mtimes(d, p.cells())

    monkeypatch.setattr(S, "run_compare", real)
    S.run_sweep(p, tmp_path, name="s", resume=True)
    m = manifest(d)
    assert m["history"][-1]["ran"] == ["1"] and m["history"][-1]["kept"] == ["0", "2"]
    assert [c["status"] for c in m["cells"]] == ["done"] * 3
    assert m["cells"][1]["attempts"] == 2
    now = _mtimes(d, p.cells())
    assert {k: now[k] for k in kept} == kept                   # the finished cells were not touched
    doc = report(d)
    assert len(doc["points"]) == 3 and not doc["skipped"]
    assert not any(n.startswith("incomplete sweep") for n in doc["notes"])


def test_sigterm_keeps_the_finished_cells_and_resume_runs_the_rest(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from moebench.cli import app

    p = S.parse_plan(THREE)
    (tmp_path / "plan.yaml").write_text(json.dumps(THREE))
    real, calls = S.run_compare, {"n": 0}

    def terminated_in_the_second_cell(cplan, out, *, progress=None, **kw):
        calls["n"] += 1
        if calls["n"] != 2:
            return real(cplan, out, progress=progress, **kw)

        def after_its_first_run(what, done, total):
            if progress:
                progress(what, done, total)
            if done == 1:
                signal.raise_signal(signal.SIGTERM)
        return real(cplan, out, progress=after_its_first_run, **kw)
    monkeypatch.setattr(S, "run_compare", terminated_in_the_second_cell)
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "plan.yaml"), "--out", str(tmp_path),
                                 "--name", "s"])
    assert r.exit_code == 143, r.output
    d = tmp_path / "s"
    assert f"terminated; finished work kept in {d}" in " ".join(r.output.split())
    m = manifest(d)
    assert [c["status"] for c in m["cells"]] == ["done", "interrupted", "pending"]
    assert m["history"][-1]["interrupted"] is True
    assert (d / "cells" / ".1.partial" / "report.json").is_file()      # the cut cell, not renamed
    assert [pt["label"] for pt in report(d)["points"]] == ["profile=t4-pcie3"]
    kept = _mtimes(d, p.cells())

    monkeypatch.setattr(S, "run_compare", real)
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "plan.yaml"), "--out", str(tmp_path),
                                 "--name", "s", "--resume"])
    assert r.exit_code == 0, r.output
    m = manifest(d)
    assert m["history"][-1]["ran"] == ["1", "2"] and m["history"][-1]["kept"] == ["0"]
    assert _mtimes(d, p.cells())["0"] == kept["0"]
    assert not (d / "cells" / ".1.partial").exists()
    assert len(report(d)["points"]) == 3


DRIVER = r"""
import os, signal, sys
import moebench.bench.compare as C

real, calls = C.write_report, {"n": 0}
def write_report_then_die(*a, **kw):
    out = real(*a, **kw)
    calls["n"] += 1
    if calls["n"] == 2:            # the second cell's report is whole, its folder not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    return out
C.write_report = write_report_then_die
import torch
torch.set_num_threads(1)
from moebench.cli import app
sys.argv = ["moebench", *sys.argv[1:]]
app()
"""


def test_a_killed_sweep_resumes_with_only_the_unfinished_cells(tmp_path: Path):
    p = S.parse_plan(THREE)
    (tmp_path / "plan.yaml").write_text(json.dumps(THREE))
    proc = subprocess.run([sys.executable, "-c", DRIVER, "sweep", str(tmp_path / "plan.yaml"),
                           "--out", str(tmp_path), "--name", "s"], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    d = tmp_path / "s"
    m = manifest(d)
    assert [c["status"] for c in m["cells"]] == ["done", "running", "pending"]
    assert (d / "cells" / ".1.partial" / "report.json").is_file()      # whole, but never renamed
    assert not (d / p.cells()[1].dir).exists()
    kept = (d / p.cells()[0].dir / "report.json").read_bytes(), _mtimes(d, p.cells())["0"]

    S.run_sweep(p, tmp_path, name="s", resume=True)
    m = manifest(d)
    assert m["history"][-1]["ran"] == ["1", "2"] and m["history"][-1]["kept"] == ["0"]
    assert [c["attempts"] for c in m["cells"]] == [1, 2, 1]
    assert ((d / p.cells()[0].dir / "report.json").read_bytes(), _mtimes(d, p.cells())["0"]) == kept
    assert not (d / "cells" / ".1.partial").exists()
    assert [pt["label"] for pt in report(d)["points"]] == [c.label for c in p.cells()]


def test_the_slurm_executor_asks_for_what_the_plan_says(tmp_path: Path, monkeypatch):
    """The sbatch script submitit would submit (a fake srun on PATH: no cluster here)."""
    pytest.importorskip("submitit")
    from types import SimpleNamespace

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("srun", "sbatch"):
        (bin_ / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_ / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    p = S.parse_plan(dict(GRID, executor="slurm", clock="sim",
                          slurm={"partition": "gpu", "time_min": 90, "gpus_per_node": 1,
                                 "cpus_per_task": 8, "array_parallelism": 2,
                                 "setup": ["module load cuda"], "additional": {"account": "proj"}}))
    S.check_executor(p)                         # sbatch and srun are found: no sentence
    ex = S._submitit_executor(SimpleNamespace(plan=p, d=tmp_path / "s"))
    script = ex._executor._make_submission_file_text("CMD", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --account=proj", "module load cuda"):
        assert line in script, (line, script)
    assert isinstance(S.CellJob(str(tmp_path)), __import__("submitit").helpers.Checkpointable)


def test_compare_plan_from_a_sweep_report_says_what_to_do_instead(grid):
    from moebench.bench.compare import plan_from_report

    d, _ = grid
    with pytest.raises(UserError, match="sweep's merged report"):
        plan_from_report(d)
