"""`moebench sweep PLAN.yaml`: the same merged report whichever executor ran the cells; bad plans.

The grid is 2 budgets x 2 profiles x sync, lru, speculative on the tiny random preset, 2 prompts x
4 new tokens, simulated clock. `process` starts one `python -m moebench.cli sweep-cell` per cell
(2 at a time); `submitit-local` runs the submitit path (the one Slurm uses) on this machine.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from moebench.cli import app

ROOT = Path(__file__).resolve().parents[2]
PLAN = {"strategies": ["sync", "lru", "speculative"], "models": ["tiny-qwen3-moe"],
        "budgets": [0.25, 0.5], "profiles": ["t4-pcie3", "a6000-pcie4"], "clock": "sim",
        "set": ["max_new_tokens=4", "limit=2"], "plots": False}
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_sentence(r) -> str:
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    text = " ".join(" ".join(lines).split())
    assert text.startswith("error: ") and text.count("error:") == 1, r.output
    return text


def normalised(doc):
    """report.json without what may differ between two identical sweeps: timestamps,
    durations and absolute paths (none of the numbers)."""
    if isinstance(doc, dict):
        return {k: normalised(v) for k, v in doc.items()
                if not re.search(r"(_at|timestamp|date|wall|elapsed|duration)$", k)}
    if isinstance(doc, list):
        return [normalised(v) for v in doc]
    if isinstance(doc, str) and doc.startswith("/"):
        return "<path>"
    return doc


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("plan") / "grid.yaml"
    p.write_text(yaml.safe_dump(PLAN))
    return p


@pytest.fixture(scope="module")
def sweeps(plan_file: Path, tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("submitit")
    out = tmp_path_factory.mktemp("sweeps")
    got = {}
    for executor, extra in (("inline", []), ("process", ["--jobs", "2"]), ("submitit-local", [])):
        r = invoke("sweep", plan_file, "--out", out, "--name", executor, "--executor", executor, *extra)
        assert r.exit_code == 0, r.output
        got[executor] = out / executor
    return got


def test_every_executor_gives_the_same_report(sweeps):
    docs = {name: json.loads((d / "report.json").read_text()) for name, d in sweeps.items()}
    ref = docs["inline"]
    assert [p["label"] for p in ref["points"]] == [
        "cache_budget=0.25,profile=t4-pcie3", "cache_budget=0.25,profile=a6000-pcie4",
        "cache_budget=0.5,profile=t4-pcie3", "cache_budget=0.5,profile=a6000-pcie4"]
    assert all([r["strategy"] for r in p["rows"]] == ["sync", "lru", "speculative"] for p in ref["points"])
    for name in ("process", "submitit-local"):
        assert normalised(docs[name]) == normalised(ref), name
        cells = json.loads((sweeps[name] / "sweep.json").read_text())["cells"]
        assert [c["status"] for c in cells] == ["done"] * 4
        for c in cells:                 # each cell's own report too
            mine = json.loads((sweeps[name] / c["dir"] / "report.json").read_text())
            theirs = json.loads((sweeps["inline"] / c["dir"] / "report.json").read_text())
            assert normalised(mine) == normalised(theirs), (name, c["dir"])
    history = json.loads((sweeps["submitit-local"] / "sweep.json").read_text())["history"]
    assert history[-1]["executor"] == "submitit-local" and history[-1]["ran"] == ["0", "1", "2", "3"]


def test_the_sweep_prints_the_merged_tables(sweeps, plan_file, tmp_path: Path):
    r = invoke("sweep", plan_file, "--out", sweeps["inline"].parent, "--name", "inline", "--resume")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "cache_budget=0.5,profile=a6000-pcie4" in text
    assert "4 of 4 cells done (0 run now, 4 kept from before)" in text


def test_resume_refuses_another_plan(sweeps, tmp_path: Path):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(dict(PLAN, profiles=["t4-pcie3", "h100-pcie5"])))
    before = (sweeps["inline"] / "sweep.json").read_text()
    text = one_sentence(invoke("sweep", other, "--out", sweeps["inline"].parent, "--name", "inline",
                               "--resume"))
    assert "holds a sweep of another plan (profiles:" in text
    assert (sweeps["inline"] / "sweep.json").read_text() == before
    text = one_sentence(invoke("sweep", other, "--out", sweeps["inline"].parent, "--name", "inline"))
    assert "already exists; pass --resume" in text


# ----------------------------------------------------------------------------------------------
# no work: dry runs and bad plans
# ----------------------------------------------------------------------------------------------
def test_the_example_plan_dry_runs(tmp_path: Path):
    out = tmp_path / "out"
    r = invoke("sweep", ROOT / "examples" / "sweep.yaml", "--dry-run", "--out", out)
    assert r.exit_code == 0, r.output
    assert "sweep: 4 cells" in r.output and "t4-pcie3" in r.output
    r = invoke("sweep", ROOT / "examples" / "sweep.yaml", "--dry-run", "--json", "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [c["label"] for c in doc["cells"]] == [
        "cache_budget=0.125,profile=t4-pcie3", "cache_budget=0.125,profile=a6000-pcie4",
        "cache_budget=0.25,profile=t4-pcie3", "cache_budget=0.25,profile=a6000-pcie4"]
    assert doc["execution"]["executor"] == "inline"
    assert not out.exists()


@pytest.mark.parametrize("changes, words", [
    ({"budget": [0.25]}, "unknown key 'budget' (did you mean 'budgets'?)"),
    ({"budgets": []}, "axis 'budgets' is empty"),
    ({"budgets": ["0.25", "huge"]}, "cache budget 'huge' is not understood"),
    ({"strategies": ["sync", "nope"]}, "unknown strategy 'nope'"),
    ({"models": ["tiny-qwen3-moe", "tiny-nothing"]}, "unknown model 'tiny-nothing'"),
    ({"profiles": ["t4-pcie3", "a100"]}, "unknown hardware profile 'a100'"),
    ({"clock": "auto"}, "set clock: sim"),
    ({"executor": "ray"}, "executor must be one of"),
])
def test_a_bad_plan_is_one_sentence_and_writes_nothing(tmp_path: Path, changes, words):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**PLAN, **changes}))
    out = tmp_path / "out"
    text = one_sentence(invoke("sweep", p, "--out", out, "--name", "s"))
    assert words in text, text
    assert not out.exists()


def test_bad_invocations_are_one_sentence(plan_file: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    assert "--resume needs --name" in one_sentence(invoke("sweep", plan_file, "--out", out, "--resume"))
    assert "jobs 2 applies to the process executor" in one_sentence(
        invoke("sweep", plan_file, "--out", out, "--jobs", "2"))
    assert "unknown executor 'lsf'" in one_sentence(invoke("sweep", plan_file, "--out", out,
                                                           "--executor", "lsf"))
    assert "does not exist" in one_sentence(invoke("sweep", tmp_path / "none.yaml", "--out", out))
    assert not out.exists()


def test_the_slurm_executor_says_what_is_missing(plan_file: Path, tmp_path: Path, monkeypatch):
    import importlib.util

    from moebench.bench import sweep as S

    out = tmp_path / "out"
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "submitit" else find(name, *a))
    text = one_sentence(invoke("sweep", plan_file, "--out", out, "--executor", "slurm"))
    assert "needs submitit" in text and "pip install 'moebench[slurm]'" in text
    monkeypatch.setattr(importlib.util, "find_spec", find)
    pytest.importorskip("submitit")
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    assert "sbatch" in one_sentence(invoke("sweep", plan_file, "--out", out, "--executor", "slurm"))
    assert not out.exists()


def test_sweep_cell_is_hidden():
    r = invoke("--help")
    assert r.exit_code == 0
    assert " sweep " in r.output and "sweep-cell" not in r.output
