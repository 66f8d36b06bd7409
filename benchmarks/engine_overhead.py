"""Engine overhead: decode-step wall time through moebench's executor (every expert resident,
`all-resident`, simulated clock bookkeeping included) against the unmodified model, in the same
process, interleaved round by round so drift hits both alike.

    python benchmarks/engine_overhead.py [--model default] [--steps 24] [--rounds 7]

Prints per-round medians and, last, `engine_overhead_ratio=<median engine / median reference>`.
Target: <= 1.10. This is CPU wall-clock of the host-side engine (hooks, scheduling, slot lookup),
not a GPU timing.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def decode_steps(model, prompt, steps, engine=None):
    from moebench.engine.session import _cache_kwarg

    kw = _cache_kwarg(model)
    times = []
    with torch.inference_mode():
        if engine:
            engine.begin_request(0)
            engine.begin_step("prefill", 0, prompt.shape[1])
        out = model(input_ids=prompt, use_cache=True)
        if engine:
            engine.end_step()
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
        for pos in range(1, steps + 1):
            t0 = time.perf_counter()
            if engine:
                engine.begin_step("decode", pos, 1)
            out = model(input_ids=nxt[:, None], use_cache=True, **{kw: past})
            if engine:
                engine.end_step()
            times.append(time.perf_counter() - t0)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from moebench.engine.executor import OffloadEngine
    from moebench.offload.clock import SimTimeline
    from moebench.models.loading import load_model
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
    decode_steps(ref.model, prompt, 4)
    decode_steps(sub.model, prompt, 4, eng)
    ref_med, eng_med = [], []
    for r in range(args.rounds):
        a = statistics.median(decode_steps(ref.model, prompt, args.steps))
        b = statistics.median(decode_steps(sub.model, prompt, args.steps, eng))
        ref_med.append(a)
        eng_med.append(b)
        print(f"round {r}: reference {a * 1e3:.3f} ms/step, engine {b * 1e3:.3f} ms/step, ratio {b / a:.3f}")
    ratio = statistics.median(eng_med) / statistics.median(ref_med)
    print(f"model={ref.name} steps={args.steps} rounds={args.rounds} threads={args.threads}")
    print(f"engine_overhead_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
