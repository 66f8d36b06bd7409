"""Engine overhead: decode-step wall time through moebench's executor (every expert resident,
`all-resident`, simulated clock bookkeeping included) against the unmodified model, in the same
process. Both decode the same prompt greedily; their steps alternate one by one (reference step
p, engine step p, reference step p+1, ...), so drift and other tenants hit both alike.

    python benchmarks/engine_overhead.py [--model default] [--steps 32] [--rounds 15]

Per round: the median step time of each, and their ratio. Prints every round and, last,
`engine_overhead_ratio=<median over rounds of (median engine step / median reference step)>`.
Target: <= 1.05. This is CPU wall-clock of the host-side engine (hooks, scheduling, slot lookup,
clock bookkeeping): the model work is the same on both sides (the engine runs the model's own
experts kernel over `E` cache slots per layer, exactly as wide as the unmodified model's).
Garbage collection is paused while timing (both sides alike).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch


def _step(model, kw, nxt, past, engine, pos):
    t0 = time.perf_counter()
    if engine:
        engine.begin_step("decode", pos, 1)
    out = model(input_ids=nxt[:, None], use_cache=True, logits_to_keep=1, **{kw: past})
    if engine:
        engine.end_step()
    dt = time.perf_counter() - t0
    return dt, out.past_key_values, out.logits[:, -1].argmax(-1)


def _prefill(model, prompt, engine):
    if engine:
        engine.begin_request(0)
        engine.begin_step("prefill", 0, prompt.shape[1])
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    if engine:
        engine.end_step()
    return out.past_key_values, out.logits[:, -1].argmax(-1)


def interleaved(ref, sub, prompt, steps, engine):
    """One round: both prefill, then `steps` decode steps alternating reference / engine.
    Returns (reference step times, engine step times) and checks both chose the same tokens."""
    from moebench.engine.session import _cache_kwarg

    kw_r, kw_s = _cache_kwarg(ref), _cache_kwarg(sub)
    ta, tb = [], []
    with torch.inference_mode():
        pa, na = _prefill(ref, prompt, None)
        pb, nb = _prefill(sub, prompt, engine)
        for pos in range(1, steps + 1):
            a, pa, na = _step(ref, kw_r, na, pa, None, pos)
            b, pb, nb = _step(sub, kw_s, nb, pb, engine, pos)
            if not torch.equal(na, nb):
                raise SystemExit(f"the engine chose another token than the model at step {pos}")
            ta.append(a)
            tb.append(b)
    return ta, tb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from moebench.engine.executor import OffloadEngine
    from moebench.models.loading import load_model
    from moebench.offload.clock import SimTimeline
    from moebench.offload.profile import load_profile
    from moebench.strategy import build_strategy

    ref = load_model(args.model, seed=0)
    sub = load_model(args.model, seed=0)
    prof = load_profile("a6000-pcie4")
    shape = sub.shape
    eng = OffloadEngine(sub, build_strategy("all-resident"), n_slots=shape.total_experts,
                        timeline=SimTimeline(prof), profile=prof, device=torch.device("cpu")).attach()
    eng.prefill_warm()
    prompt = torch.tensor([ref.tokenizer("def main(argv=None):\n    parser = ")["input_ids"]])
    interleaved(ref.model, sub.model, prompt, 4, eng)                    # warm-up, not counted
    ratios, ref_med, eng_med = [], [], []
    gc.collect()
    gc.disable()
    try:
        for r in range(args.rounds):
            ta, tb = interleaved(ref.model, sub.model, prompt, args.steps, eng)
            a, b = statistics.median(ta), statistics.median(tb)
            ref_med.append(a)
            eng_med.append(b)
            ratios.append(b / a)
            print(f"round {r}: reference {a * 1e3:.3f} ms/step, engine {b * 1e3:.3f} ms/step, "
                  f"ratio {b / a:.3f}")
    finally:
        gc.enable()
    ratio = statistics.median(ratios)
    print(f"model={ref.name} steps={args.steps} rounds={args.rounds} threads={args.threads}")
    print(f"reference_ms={statistics.median(ref_med) * 1e3:.3f} engine_ms={statistics.median(eng_med) * 1e3:.3f} "
          f"ratio_of_medians={statistics.median(eng_med) / statistics.median(ref_med):.3f} "
          f"round_ratios=[{min(ratios):.3f}, {max(ratios):.3f}]")
    print(f"engine_overhead_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
