"""How fast does a hit-rate replay go? LRU and Belady over a Qwen3-30B-A3B-shaped trace.

A synthetic trace shaped like Qwen3-30B-A3B (48 MoE layers x 128 experts, top-8) of 20,000
decode steps (7.68 M expert activations) is replayed through the exact fast paths of
`moebench.replay.fast` at one cache budget, for each of `lru` (per-layer LRU, as
`moebench run --strategy lru` keeps it), `lru-global` and `belady` (global MIN). The figure is
activations replayed per second of CPU time of this single-threaded process
(`time.process_time`, so other jobs on a shared machine do not count against it; the wall-clock
rate is printed beside it). Timed, per policy: building the replay's group arrays
(`group_sequence`) and the replay (`fast_hit_rates`). Not timed: the trace's generation, and
the compiled kernels' one-off compile (or load from numba's cache), which is printed on its own
line. The kernels are numba `njit` without `parallel`, so they run on the calling thread only
(NUMBA_NUM_THREADS and the BLAS thread counts are set to 1 here all the same).

Each policy prints `<policy>_activations_per_second=`; the last line,
`replay_activations_per_second=`, is the **minimum of the three** (the slowest policy's rate),
so it meets a target only when every policy does. The combined rate (all activations over all
CPU seconds) is printed beside it.

    python benchmarks/replay_speed.py                     # the target configuration
    python benchmarks/replay_speed.py --steps 2000        # a quick look
    python benchmarks/replay_speed.py --budget 0.1 --repeat 3
    python benchmarks/replay_speed.py --plain             # the plain Python/numpy paths (no numba)

Target (issue 17): replay_activations_per_second >= 10,000,000 on one CPU core.
"""
from __future__ import annotations

import argparse
import os
import time

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

POLICIES = ("lru", "lru-global", "belady")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--budget", default="0.25", help="cache budget (fraction of all experts, or 8GB, 16/layer)")
    ap.add_argument("--repeat", type=int, default=1, help="best of N (per policy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, of " + ", ".join(POLICIES))
    ap.add_argument("--plain", action="store_true", help="the plain Python/numpy paths, not the compiled kernels")
    args = ap.parse_args()

    from moebench.config import BudgetSpec
    from moebench.models.presets import model_shape
    from moebench.replay.engine import build_schedule
    from moebench.replay.fast import compiled_available, fast_hit_rates, group_sequence
    from moebench.replay.synth import SynthSpec, synthesize

    shape = model_shape("qwen3-30b-a3b")
    spec = SynthSpec(steps=args.steps, zipf=1.0, reuse=0.5, cross_layer=0.3, seed=args.seed)
    t = time.perf_counter()
    trace = synthesize(shape.moe_layers, shape.num_experts, shape.top_k, spec)
    print(f"trace: {shape.moe_layers} layers x {shape.num_experts} experts, top-{shape.top_k}, "
          f"{args.steps} steps ({spec}); generated in {time.perf_counter() - t:.1f} s (not timed)")
    compiled = False if args.plain else compiled_available()
    if compiled:
        from moebench.replay import kernels
        import numba
        secs = kernels.warm_up()
        print(f"paths: compiled kernels (numba {numba.__version__}, single-threaded); compiled or "
              f"loaded from numba's cache in {secs:.2f} s wall (not timed)")
    else:
        print("paths: plain Python/numpy" + ("" if args.plain else " (numba is not installed)"))
    n_slots = BudgetSpec.parse(args.budget).slots(moe_layers=shape.moe_layers,
                                                  num_experts=shape.num_experts,
                                                  expert_bytes=shape.expert_bytes)
    rates = {}
    total_acts = 0
    total_cpu = total_wall = 0.0
    for policy in args.policies.split(","):
        best_cpu = best_wall = float("inf")
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            seq = group_sequence(trace, build_schedule(trace, 0), shape.num_experts)
            hr = fast_hit_rates(seq, policy, n_slots, compiled=compiled)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
            del seq
        acts = hr["activations"]
        total_acts += acts
        total_cpu += best_cpu
        total_wall += best_wall
        rates[policy] = acts / best_cpu
        print(f"{policy}: budget {args.budget} = {n_slots} experts, hit rate {hr['hit_rate']:.4f}, "
              f"{acts:,} activations in {best_cpu:.3f} s CPU ({best_wall:.3f} s wall): "
              f"{acts / best_cpu:,.0f} /s CPU, {acts / best_wall:,.0f} /s wall")
    for policy, rate in rates.items():
        print(f"{policy.replace('-', '_')}_activations_per_second={rate:.0f}")
    print(f"all {len(rates)}: {total_acts:,} activations, {total_cpu:.3f} s CPU, {total_wall:.3f} s "
          f"wall; combined rate {total_acts / total_cpu:,.0f} /s CPU, {total_acts / total_wall:,.0f} "
          f"/s wall; the figure below is the slowest policy's rate")
    print(f"replay_activations_per_second={min(rates.values()):.0f}")


if __name__ == "__main__":
    main()
