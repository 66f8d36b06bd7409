"""docs/ci.md: the shell steps are scripts/ci_example.sh verbatim, the GitHub workflow runs that
script and publishes the files it writes, and the workflow's gate step itself runs here: on a tiny
baseline made by the test (every step, the rerun included: pass, exit 0), and on a candidate the
test built slower than the committed baseline (a JUnit failure, exit 1)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from moebench.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ci.md"
SCRIPT = ROOT / "scripts" / "ci_example.sh"
BASELINE = ROOT / "reports" / "baselines" / "smoke"
MOEBENCH = Path(sys.executable).parent / "moebench"
OUTPUTS = ("gate.xml", "benchmark-smaller.json", "benchmark-bigger.json", "bencher.json", "results.csv")

needs_cli = pytest.mark.skipif(not MOEBENCH.exists(), reason="no moebench console script beside python")


def _workflow() -> dict:
    (block,) = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    return yaml.safe_load(block)


def _steps() -> list[dict]:
    return _workflow()["jobs"]["gate"]["steps"]


def _gate_step() -> dict:
    (step,) = [s for s in _steps() if "scripts/ci_example.sh" in s.get("run", "")]
    return step


def _uses(prefix: str) -> list[dict]:
    return [s for s in _steps() if s.get("uses", "").startswith(prefix)]


def test_the_docs_hold_the_script_verbatim():
    m = re.search(r"<!-- BEGIN scripts/ci_example.sh -->\n```bash\n(.*?)```\n<!-- END scripts/ci_example.sh -->",
                  DOC.read_text(), flags=re.S)
    assert m is not None
    assert m.group(1) == SCRIPT.read_text()


def test_the_workflow_gates_the_committed_baseline_on_a_cpu_runner_and_publishes_what_it_wrote():
    wf = _workflow()
    job = wf["jobs"]["gate"]
    assert job["runs-on"].startswith("ubuntu")
    step = _gate_step()
    assert step["env"]["MOEBENCH_BASELINE"] == "reports/baselines/smoke"
    assert (ROOT / step["env"]["MOEBENCH_BASELINE"] / "report.json").exists()
    out = step["env"]["MOEBENCH_CI_OUT"]
    (junit,) = _uses("mikepenz/action-junit-report")
    assert junit["with"]["report_paths"] == f"{out}/gate.xml" and "cancelled()" in junit["if"]
    tools = {s["with"]["tool"]: s["with"]["output-file-path"]
             for s in _uses("benchmark-action/github-action-benchmark")}
    assert tools == {"customSmallerIsBetter": f"{out}/benchmark-smaller.json",
                     "customBiggerIsBetter": f"{out}/benchmark-bigger.json"}
    # the plan the workflow reruns is on the simulated clock: a CPU runner gives the same numbers
    doc = json.loads((BASELINE / "report.json").read_text())
    assert doc["plan"]["clock"] == "sim" and doc["clock"]["kind"] == "simulated"


def _run_gate_step(out: Path, **env: str) -> subprocess.CompletedProcess:
    """The workflow's gate step, as the runner would run it (its `run` and `env`), with the output
    folder moved under the test's tmp and `moebench` taken from this environment."""
    step = _gate_step()
    full = {**os.environ, **step["env"], "MOEBENCH_CI_OUT": str(out), "MOEBENCH": str(MOEBENCH), **env}
    return subprocess.run(["bash", "-c", step["run"]], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=300)


def _check_outputs(out: Path, candidate: Path) -> ET.Element:
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    smaller = json.loads((out / "benchmark-smaller.json").read_text())
    bigger = json.loads((out / "benchmark-bigger.json").read_text())
    strategies = {e["result"]["strategy"]["name"]
                  for e in json.loads((candidate / "report.json").read_text())["results"]}
    assert {e["name"].split("/")[1] for e in smaller} == strategies
    assert all(e["name"].startswith("simulated:") for e in smaller + bigger)
    assert {e["name"].rsplit("/", 1)[1] for e in bigger} == {"hit_rate"}
    assert set(json.loads((out / "bencher.json").read_text())) == {
        e["name"].rsplit("/", 1)[0] for e in smaller}
    with (out / "results.csv").open() as f:
        assert {r["strategy"] for r in csv.DictReader(f)} == strategies
    return ET.parse(out / "gate.xml").getroot().find("testsuite")


@pytest.fixture(scope="module")
def tiny_baseline(tmp_path_factory) -> Path:
    """A baseline as small as it gets: the plan the workflow reruns, made like the real one."""
    import torch

    parent = tmp_path_factory.mktemp("ci")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(app, ["compare", "--model", "tiny-qwen3-moe", "--set", "limit=2",
                                     "--set", "max_new_tokens=3", "--strategies", "sync,lru",
                                     "--clock", "sim", "--no-plots", "--out", str(parent),
                                     "--name", "baseline"])
    finally:
        torch.set_num_threads(n)
    assert r.exit_code == 0, r.output
    return parent / "baseline"


@needs_cli
def test_the_gate_step_reruns_the_baseline_passes_and_writes_every_file(tiny_baseline: Path, tmp_path: Path):
    out = tmp_path / "moebench-ci"
    p = _run_gate_step(out, MOEBENCH_BASELINE=str(tiny_baseline))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS (exit 0)" in p.stdout and "ci: gate exit 0" in p.stdout
    assert (out / "candidate" / "report.json").exists()
    suite = _check_outputs(out, out / "candidate")
    assert suite.get("failures") == suite.get("errors") == "0" and suite.get("tests") == "6"

    again = _run_gate_step(out, MOEBENCH_BASELINE=str(tiny_baseline))     # never over old output
    assert again.returncode == 2 and "is not empty" in again.stderr


@needs_cli
def test_the_gate_step_fails_a_slower_candidate_with_a_junit_failure(tmp_path: Path):
    cand = tmp_path / "slower"
    shutil.copytree(BASELINE, cand)
    d = cand / "sync"
    rows = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines() if x]
    for row in rows:
        if row.get("kind") == "request":
            row["tpot_ms"] *= 1.05
    (d / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    out = tmp_path / "moebench-ci"
    p = _run_gate_step(out, MOEBENCH_CANDIDATE=str(cand))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "REGRESSION (exit 1)" in p.stdout and "ci: gate exit 1" in p.stdout
    suite = _check_outputs(out, cand)                  # the numbers are written whatever the verdict
    failed = [(c.get("classname"), c.get("name")) for c in suite.iter("testcase")
              if c.find("failure") is not None]
    assert failed == [("simulated:a6000-pcie4/sync", "tpot_ms")]
