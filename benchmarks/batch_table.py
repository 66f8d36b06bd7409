"""The simulated table of issue 16: what batching does to each strategy. A qwen3-30b-a3b synthetic
trace (batch-1 routing) is replayed with its requests composed into batches of 1, 4 and 16
(`moebench replay --sweep batch_size=...`), on a6000-pcie4 at budget 0.25: per strategy and B,
TPOT (each request's time per output token), throughput (output tokens/s), the union of experts
per layer and step, bytes per step and per token, and the hit rate per access. Every figure is
simulated (the replay clock); the markdown table is printed, then name=value.

    .venv/bin/python benchmarks/batch_table.py [--steps 64] [--requests 16] [--batch 1,4,16]
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
POLICIES = ["sync", "lru", "lru-global", "lfu", "belady", "oracle"]


def _mb(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--batch", default="1,4,16")
    ap.add_argument("--budget", default="0.25")
    ap.add_argument("--profile", default="a6000-pcie4")
    a = ap.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "qwen3.jsonl"
        subprocess.run(MOEBENCH + ["trace", "synth", "--model", "qwen3-30b-a3b", "--steps",
                                   str(a.steps), "--requests", str(a.requests), "--out", str(synth)],
                       check=True, cwd=ROOT, capture_output=True)
        r = subprocess.run(MOEBENCH + ["replay", str(synth), "--model", "qwen3-30b-a3b",
                                       "--strategies", ",".join(POLICIES), "--sweep",
                                       f"batch_size={a.batch}", "--cache-budget", a.budget,
                                       "--profile", a.profile, "--out", str(Path(tmp) / "r"),
                                       "--no-consistency", "--no-bounds", "--json"],
                           capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            sys.exit(r.stderr[-3000:] or "replay failed")
        rows = json.loads(r.stdout)["rows"]
    lines = [f"Simulated (replay clock, {a.profile}, budget {a.budget}); qwen3-30b-a3b synthetic "
             f"trace, {a.requests} requests x {a.steps} decode steps, composed into batches; "
             "`benchmarks/batch_table.py`.", "",
             "| B | strategy | TPOT ms (median) | throughput tok/s | union / layer | H2D MB / step | "
             "H2D MB / token | hit rate |", "|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda x: (x["batch_size"], POLICIES.index(x["policy"]))):
        if row.get("skipped"):
            lines.append(f"| {row['batch_size']} | {row['policy']} | skipped | | | | | |")
            continue
        union = row.get("union_per_layer")
        lines.append(f"| {row['batch_size']} | {row['policy']} | {row['tpot_ms_median']:.2f} | "
                     f"{row['throughput_tokens_per_s']:.1f} | "
                     f"{'8 (top-k)' if union is None else f'{union:.2f}'} | "
                     f"{_mb(row.get('h2d_bytes_per_step'))} | {_mb(row.get('h2d_bytes_per_token'))} | "
                     f"{row['hit_rate']:.3f} |")
    print("\n".join(lines))
    print(f"batch_table_seconds={time.time() - start:.1f}")


if __name__ == "__main__":
    main()
