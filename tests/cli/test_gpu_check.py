"""The prepared GPU check must not rot: its dry run (tiny model, simulated clock) runs the same
script end to end from the source tree, without matplotlib, and writes its table and JSON."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

# Runs the check with matplotlib made unimportable (the GPU image has none) and moebench taken
# from the source tree only (no installed package is needed there).
LAUNCH = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("matplotlib is not installed on the GPU image")
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shell_wrapper_is_valid_bash():
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dry_run_writes_the_table_and_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MOEBENCH_CACHE=str(tmp_path / "cache"),
               OUT=str(tmp_path / "out"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", LAUNCH, str(SCRIPT), "--dry-run", "--prompts", "1",
           "--new-tokens", "3", "--strategies", "sync,lru,no-such-strategy"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    doc = json.loads((out / "gpu_check.json").read_text())
    s = doc["summary"]
    assert s["dry_run"] and s["clock"].startswith("simulated")
    assert "no-such-strategy" in s["skipped"]
    rows = {r["strategy"]: r for r in doc["validate_sim"]["rows"]}
    assert set(rows) == {"sync", "lru"}
    # simulated against simulated with the same profile: zero error, same tokens
    assert all(r["tpot_rel_error"] == 0.0 and r["tokens_identical"] for r in rows.values())
    assert rows["sync"]["hit_rate_measured"] == 0.0 and rows["lru"]["hit_rate_measured"] > 0.0
    f = s["figures"]
    assert "pinned_h2d_gbps" not in f and f["profile_h2d_gbps"] == 53.0   # nothing called measured
    assert f["sync_floor_ms"] == pytest.approx(
        rows["sync"]["h2d_bytes_per_token"] / 53e9 * 1e3 + f["sync_compute_ms"], abs=2e-3)
    lines = r.stdout.strip().splitlines()
    assert lines[-1].startswith("elapsed_s=") and any(ln.startswith("sync_efficiency=") for ln in lines)
    assert "DRY RUN" in (out / "gpu_check.md").read_text()
    assert "matplotlib" not in r.stderr


def test_without_a_gpu_the_real_check_refuses(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    mod = _gpu_check_module()
    assert mod.main(["--out", str(tmp_path)]) == 2


def test_layer_choice_respects_time_and_memory():
    mod = _gpu_check_module()
    args = mod.parse(["--out", "x"])
    eb = 3 * 2048 * 768 * 2
    roomy = mod.choose_layers(args, 50.0, eb, 8, 128, 128 << 30, 139 << 30)
    assert roomy == 48                                            # an H200 box fits the real model
    slow = mod.choose_layers(args, 5.0, eb, 8, 128, 128 << 30, 139 << 30)
    assert 1 <= slow < roomy                                      # a slow link: fewer layers
    small = mod.choose_layers(args, 50.0, eb, 8, 128, 16 << 30, 139 << 30)
    assert small * 128 * eb <= 0.5 * (16 << 30)                   # host memory caps the store
    assert mod.choose_layers(mod.parse(["--layers", "7"]), 50.0, eb, 8, 128, 1, 1) == 7


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no project .venv")
def test_dry_run_of_the_wrapper_uses_the_projects_environment(tmp_path):
    """`bash benchmarks/gpu_check.sh --dry-run` on the CPU machine: the system python3 has no
    torch, so the wrapper must pick the project's .venv (a CUDA image has torch in python3)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OUT": str(tmp_path / "out"),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "gpu_check: torch" in r.stdout and "elapsed_s=" in r.stdout
