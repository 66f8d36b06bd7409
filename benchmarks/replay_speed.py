"""How fast does a hit-rate replay go? LRU and Belady over a Qwen3-30B-A3B-shaped trace.

A synthetic trace shaped like Qwen3-30B-A3B (48 MoE layers x 128 experts, top-8) of 20,000
decode steps (7.68 M expert activations) is replayed through the exact fast paths of
`moebench.replay.fast` (`lru`: per-layer LRU as `moebench run --strategy lru` keeps it, and
`belady`: global MIN) at one cache budget. The figure is activations replayed per second of CPU
time of this single-threaded process (`time.process_time`, so other jobs on a shared machine do
not count against it; the wall-clock rate is printed beside it). The trace's generation is not
timed; building the replay's group arrays is.

    python benchmarks/replay_speed.py                     # the target configuration
    python benchmarks/replay_speed.py --steps 2000        # a quick look
    python benchmarks/replay_speed.py --budget 0.1 --repeat 3

Target (issue 8): replay_activations_per_second >= 2,000,000 on one CPU core.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--budget", default="0.25", help="cache budget (fraction of all experts, or 8GB, 16/layer)")
    ap.add_argument("--repeat", type=int, default=1, help="best of N (per policy)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from moebench.config import BudgetSpec
    from moebench.models.presets import model_shape
    from moebench.replay.engine import build_schedule
    from moebench.replay.fast import fast_hit_rates, group_sequence
    from moebench.replay.synth import SynthSpec, synthesize

    shape = model_shape("qwen3-30b-a3b")
    spec = SynthSpec(steps=args.steps, zipf=1.0, reuse=0.5, cross_layer=0.3, seed=args.seed)
    t = time.perf_counter()
    trace = synthesize(shape.moe_layers, shape.num_experts, shape.top_k, spec)
    print(f"trace: {shape.moe_layers} layers x {shape.num_experts} experts, top-{shape.top_k}, "
          f"{args.steps} steps ({spec}); generated in {time.perf_counter() - t:.1f} s (not timed)")
    n_slots = BudgetSpec.parse(args.budget).slots(moe_layers=shape.moe_layers,
                                                  num_experts=shape.num_experts,
                                                  expert_bytes=shape.expert_bytes)
    total_acts = 0
    total_cpu = total_wall = 0.0
    for policy in ("lru", "belady"):
        best_cpu = best_wall = float("inf")
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            seq = group_sequence(trace, build_schedule(trace, 0), shape.num_experts)
            hr = fast_hit_rates(seq, policy, n_slots)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
        acts = hr["activations"]
        total_acts += acts
        total_cpu += best_cpu
        total_wall += best_wall
        print(f"{policy}: budget {args.budget} = {n_slots} experts, hit rate {hr['hit_rate']:.4f}, "
              f"{acts:,} activations in {best_cpu:.2f} s CPU ({best_wall:.2f} s wall): "
              f"{acts / best_cpu:,.0f} /s CPU, {acts / best_wall:,.0f} /s wall")
    print(f"both: {total_acts:,} activations, {total_cpu:.2f} s CPU, {total_wall:.2f} s wall; "
          f"wall-clock rate {total_acts / total_wall:,.0f} /s")
    print(f"replay_activations_per_second={total_acts / total_cpu:.0f}")


if __name__ == "__main__":
    main()
