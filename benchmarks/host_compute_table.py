"""The simulated table of issue 15: every strategy's TPOT and its ratio to the oracle, with the
host-compute share of each host-executing one, on a qwen3-30b-a3b synthetic trace and on the
default model's recorded routing, on a6000-pcie4 and t4-pcie3, at budgets 0.05 / 0.1 / 0.25.
Every figure is simulated (the replay clock); the markdown table is printed, then name=value.

    .venv/bin/python benchmarks/host_compute_table.py [--steps 64] [--requests 4]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOEBENCH = [sys.executable, "-m", "moebench.cli"]
POLICIES = ["sync", "lru", "host-compute", "host-compute:decide=always",
            "host-compute:placement=layers+host_layers={half}", "host-compute:upload_cap=2", "oracle"]


def _replay(trace: Path, model: str, half: int, out: Path) -> list[dict]:
    pols = ",".join(p.format(half=half) for p in POLICIES)
    r = subprocess.run(MOEBENCH + ["replay", str(trace), "--model", model, "--strategies", pols,
                                   "--sweep", "cache_budget=0.05,0.1,0.25", "--profile",
                                   "a6000-pcie4,t4-pcie3", "--out", str(out), "--no-consistency",
                                   "--no-bounds", "--json"], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(r.stderr[-3000:] or "replay failed")
    return json.loads(r.stdout)["rows"]


def _table(title: str, rows: list[dict]) -> list[str]:
    out = [f"#### {title}", "", "| profile | budget | strategy | TPOT ms (median) | vs oracle | "
           "host share | hit / host rate |", "|---|---|---|---|---|---|---|"]
    oracle = {(r["profile"], r["budget"]): r.get("tpot_ms_median") for r in rows
              if r["policy"] == "oracle" and not r.get("skipped")}
    for r in sorted(rows, key=lambda r: (r["profile"], float(r["budget"]), POLICIES.index(
            r["policy"]) if r["policy"] in POLICIES else 99)):
        if r.get("skipped"):
            out.append(f"| {r['profile']} | {r['budget']} | {r['policy']} | skipped | | | |")
            continue
        o = oracle.get((r["profile"], r["budget"]))
        t = r["tpot_ms_median"]
        hs = r.get("host_share")
        out.append(f"| {r['profile']} | {r['budget']} | {r['policy']} | {t:.3f} | "
                   f"{'–' if not o else f'{t / o:.3f}'} | {'–' if hs is None else f'{100 * hs:.1f}%'} | "
                   f"{r['hit_rate']:.3f} / {r.get('host_rate') or 0:.3f} |")
    return out + [""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--requests", type=int, default=4)
    a = ap.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth = tmp / "qwen3.jsonl"
        subprocess.run(MOEBENCH + ["trace", "synth", "--model", "qwen3-30b-a3b", "--steps",
                                   str(a.steps), "--requests", str(a.requests), "--out", str(synth)],
                       check=True, cwd=ROOT, capture_output=True)
        rec = subprocess.run(MOEBENCH + ["run", "--strategy", "sync", "--record-trace", "--out",
                                         str(tmp / "runs"), "--json"], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        run_dir = next((tmp / "runs").iterdir())
        lines = ["Simulated (replay clock); `benchmarks/host_compute_table.py`.", ""]
        lines += _table(f"qwen3-30b-a3b, synthetic trace ({a.requests} requests x {a.steps} steps)",
                        _replay(synth, "qwen3-30b-a3b", 24, tmp / "r1"))
        lines += _table("default model (tiny-qwen3-trained), its recorded `smoke` routing",
                        _replay(run_dir, "default", 4, tmp / "r2"))
        del rec
    print("\n".join(lines))
    print(f"host_compute_table_seconds={time.time() - start:.1f}")


if __name__ == "__main__":
    main()
