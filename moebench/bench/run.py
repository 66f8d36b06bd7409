"""One run: a workload through one strategy on the offloading engine, timed by one clock.

    prep = prepare(cfg)                      # workload, tokens, model, budget, clock (once)
    piece = run_strategy(prep, "lru", {})    # attach engine, warm up, decode every request
    result = build_result(prep, [piece])     # metrics -> result.json dict
    run(cfg)                                 # all of it, written to a new result folder

Every request decodes exactly `max_new_tokens` greedy tokens (EOS ignored) so every strategy runs
the same steps. Warm-up steps are run first and never counted. An interrupted run (Ctrl-C)
keeps the requests that finished and is written with `"status": "incomplete"`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from moebench import SCHEMA_VERSION, __version__
from moebench.calibration.provision import artifacts_for
from moebench.config import RunConfig, to_dict
from moebench.engine.session import Piece, Prepared, prepare, run_session
from moebench.strategy import build_strategy

log = logging.getLogger("moebench")


def run_strategy(prep: Prepared, name: str, params: dict | None = None, *, repetition: int = 0,
                 progress: Callable[[int], None] | None = None, keep_logits: bool = False,
                 record_trace: bool | None = None) -> Piece:
    """Strategy `name` with its artifacts provisioned (calibrated, recorded or from the cache),
    run once over the workload on the engine."""
    strategy = build_strategy(name, params)
    return run_session(prep, strategy, artifacts_for(prep, strategy), repetition=repetition,
                       progress=progress, keep_logits=keep_logits, record_trace=record_trace)


def build_result(prep: Prepared, pieces: list[Piece], *, source: str = "run") -> dict:
    """result.json for one strategy (pieces = its repetitions)."""
    from moebench.results.metrics import compute_metrics

    shape = prep.loaded.shape
    first = pieces[0]
    samples = [s for p in pieces for s in p.samples]
    layer_hits = [sum(p.layer_hits[i] for p in pieces) for i in range(shape.moe_layers)]
    layer_acts = [sum(p.layer_acts[i] for p in pieces) for i in range(shape.moe_layers)]
    link = prep.profile.h2d_bandwidth_gbps
    metrics = compute_metrics(samples, moe_layers=shape.moe_layers, layer_hits=layer_hits,
                              layer_acts=layer_acts, link_gbps=link, seed=prep.cfg.seed,
                              prediction=first.prediction,
                              extra={"peak_expert_bytes": max(p.peak_expert_bytes for p in pieces),
                                     "expert_pool_bytes": first.pool_bytes})
    clock_label = "cuda-events" if prep.clock == "cuda" else f"simulated:{prep.profile.name}"
    device = str(prep.device)
    device_memory = None
    if prep.device.type == "cuda":
        import torch
        device = f"{prep.device} ({torch.cuda.get_device_name(prep.device)})"
        device_memory = int(torch.cuda.get_device_properties(prep.device).total_memory)
    all_experts = shape.total_experts * shape.expert_bytes
    # Offload emulation: the slot pool is the budget, even on a GPU that could hold every expert.
    emulated = device_memory is not None and all_experts < device_memory and first.n_slots < shape.total_experts
    load_notes = list(getattr(prep.loaded, "notes", None) or [])
    if emulated:
        load_notes.append(f"offload emulated: every expert ({all_experts:,} bytes) would fit in "
                          f"device memory ({device_memory:,} bytes); the budget is enforced by a "
                          "fixed pool of expert slots")
    return {
        "schema_version": SCHEMA_VERSION,
        "moebench_version": __version__,
        "status": "complete" if all(p.complete for p in pieces) else "incomplete",
        "source": source,
        "model": {"name": prep.loaded.name, "arch": shape.arch, "hf_id": prep.loaded.hf_id,
                  "num_layers": shape.num_layers, "moe_layers": shape.moe_layers,
                  "num_experts": shape.num_experts, "top_k": shape.top_k,
                  "expert_bytes": shape.expert_bytes, "dtype": shape.dtype,
                  "snapshot": prep.loaded.snapshot},
        "strategy": first.strategy,
        "workload": {"name": prep.workload.name, "sha256": prep.workload_sha,
                     "n_prompts": len(prep.requests), "max_new_tokens": prep.workload.max_new_tokens,
                     "task": prep.workload.task, "repetitions": prep.workload.repetitions},
        "clock": {"kind": "cuda-events" if prep.clock == "cuda" else "simulated",
                  "profile": None if prep.clock == "cuda" else prep.profile.name,
                  "device": device, "label": clock_label,
                  "link_gbps_for_floor": link, "device_memory_bytes": device_memory},
        "budget": {"spec": prep.budget.text, "bytes": first.n_slots * shape.expert_bytes,
                   "experts": first.n_slots, "all_experts_bytes": all_experts,
                   "device_memory_bytes": device_memory, "offload_emulated": emulated},
        "seed": prep.cfg.seed,
        "repetition": prep.cfg.repetition,
        "notes": sorted({n for p in pieces for n in p.notes}) + load_notes + [
            "true router runs in the model graph for every strategy (simulated clock charges it "
            "only to strategies that use it)",
            "prefill fetches the distinct experts its tokens route to, one copy per expert"],
        "metrics": metrics,
        "accuracy": None,
        "outputs": [o for p in pieces for o in p.outputs],
    }


def write_run(prep: Prepared, result: dict, pieces: list[Piece], out_dir: Path | None = None) -> Path:
    from moebench.hardware.environment import environment
    from moebench.results.folders import new_run_dir, write_json, write_jsonl

    d = out_dir or new_run_dir(prep.cfg.out, result["strategy"]["name"], prep.loaded.name)
    cfg = to_dict(prep.cfg)
    cfg["workload_resolved"] = to_dict(prep.workload)
    cfg["budget_resolved"] = result["budget"]
    write_json(d / "config.json", cfg)
    write_json(d / "environment.json", environment())
    write_jsonl(d / "samples.jsonl", [s for p in pieces for s in p.samples])
    trace = [t for p in pieces for t in p.trace]
    if trace:
        from moebench.trace import write_trace
        write_trace(d / "trace.jsonl", trace, strategy=result["strategy"]["name"])
    write_json(d / "result.json", result)
    return d


def run(cfg: RunConfig, progress: Callable[[int], None] | None = None,
        on_prepared: Callable[[Prepared], None] | None = None) -> tuple[Path, dict]:
    prep = prepare(cfg)
    if on_prepared:
        on_prepared(prep)
    piece = run_strategy(prep, cfg.strategy, cfg.strategy_params, repetition=cfg.repetition,
                         progress=progress)
    result = build_result(prep, [piece])
    if cfg.accuracy:
        from moebench.accuracy.run import attach_accuracy
        attach_accuracy(prep, result, piece)
    d = write_run(prep, result, [piece])
    if not piece.complete:
        raise KeyboardInterrupt(str(d))
    return d, result
