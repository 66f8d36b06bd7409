"""result.json for one strategy: the one builder live runs and replay share.

`RunContext` says where the numbers come from (model, workload, budget, clock, device, seed); a
`Piece` is what one strategy produced on one repetition; `result_document(ctx, pieces)` is the
result.json dict (`moebench.results.model.load_run` reads it back).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moebench import SCHEMA_VERSION, __version__
from moebench.results.metrics import compute_metrics


@dataclass(frozen=True)
class RunContext:
    """Where a result's numbers come from, besides the strategy's pieces."""

    model: str
    hf_id: str | None
    snapshot: str
    shape: Any                          # moebench.offload.shapes.ModelShape
    workload: str
    workload_sha: str
    n_prompts: int
    max_new_tokens: int
    task: str
    repetitions: int
    clock: str                          # "cuda" | "sim"
    profile: Any                        # the hardware profile (the simulated clock's, the floor's link)
    device: str                         # e.g. "cpu", "cuda:0 (NVIDIA H200)", "none (trace replay)"
    device_memory: int | None = None
    seed: int = 0
    repetition: int = 0
    load_notes: tuple[str, ...] = ()
    batch_size: int = 1                 # prompts decoded together


@dataclass
class Piece:
    """What one strategy produced on one repetition."""

    strategy: dict
    samples: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    prediction: dict | None = None
    trace: list = field(default_factory=list)
    warmup_trace: list = field(default_factory=list)   # the untimed warm-up's rows (request -1)
    logits: dict = field(default_factory=dict)
    budget: Any = None                  # moebench.offload.budget.Budget
    peak_expert_bytes: int = 0
    pool_bytes: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)


def result_document(ctx: RunContext, pieces: list[Piece], *, source: str = "run") -> dict:
    """result.json for one strategy (pieces = its repetitions)."""
    shape = ctx.shape
    first = pieces[0]
    samples = [s for p in pieces for s in p.samples]
    link = ctx.profile.h2d_bandwidth_gbps
    metrics = compute_metrics(samples, moe_layers=shape.moe_layers, link_gbps=link, seed=ctx.seed,
                              prediction=first.prediction,
                              extra={"peak_expert_bytes": max(p.peak_expert_bytes for p in pieces),
                                     "expert_pool_bytes": first.pool_bytes})
    cuda = ctx.clock == "cuda"
    clock_label = "cuda-events" if cuda else f"simulated:{ctx.profile.name}"
    device, device_memory = ctx.device, ctx.device_memory
    budget = first.budget
    all_experts = budget.all_experts_bytes
    # Offload emulation: the slot pool is the budget, even on a GPU that could hold every expert.
    emulated = device_memory is not None and all_experts < device_memory and budget.experts < budget.total_experts
    load_notes = list(ctx.load_notes)
    if emulated:
        load_notes.append(f"offload emulated: every expert ({all_experts:,} bytes) would fit in "
                          f"device memory ({device_memory:,} bytes); the budget is enforced by a "
                          "fixed pool of expert slots")
    return {
        "schema_version": SCHEMA_VERSION,
        "moebench_version": __version__,
        "status": "complete" if all(p.complete for p in pieces) else "incomplete",
        "source": source,
        "model": {"name": ctx.model, "arch": shape.arch, "hf_id": ctx.hf_id,
                  "num_layers": shape.num_layers, "moe_layers": shape.moe_layers,
                  "num_experts": shape.num_experts, "top_k": shape.top_k,
                  "expert_bytes": shape.expert_bytes, "dtype": shape.dtype,
                  "snapshot": ctx.snapshot,
                  # always-resident shared experts (DeepSeek, Qwen2-MoE), out of a byte budget
                  **({"shared_expert_bytes": shape.shared_bytes}
                     if getattr(shape, "shared_bytes", 0) else {})},
        "strategy": first.strategy,
        # calibrated on prompts of its own evaluation workload (details: strategy.artifacts)
        "in_sample": any(bool(a.get("in_sample")) for a in first.strategy.get("artifacts", ())),
        "workload": {"name": ctx.workload, "sha256": ctx.workload_sha,
                     "n_prompts": ctx.n_prompts, "max_new_tokens": ctx.max_new_tokens,
                     "task": ctx.task, "repetitions": ctx.repetitions,
                     **({"batch_size": ctx.batch_size} if ctx.batch_size != 1 else {})},
        "clock": {"kind": "cuda-events" if cuda else "simulated",
                  "profile": None if cuda else ctx.profile.name,
                  "device": device, "label": clock_label,
                  "link_gbps_for_floor": link, "device_memory_bytes": device_memory},
        "budget": {"spec": budget.spec, "held": budget.held, "forced_by_strategy": budget.forced is not None,
                   "bytes": budget.bytes,
                   "experts": budget.experts, "all_experts_bytes": all_experts,
                   "device_memory_bytes": device_memory, "offload_emulated": emulated},
        "seed": ctx.seed,
        "repetition": ctx.repetition,
        "notes": sorted({n for p in pieces for n in p.notes}) + load_notes + [
            "true router runs in the model graph for every strategy (simulated clock charges it "
            "only to strategies that use it)",
            "prefill fetches the distinct experts its prompt tokens execute, one copy per expert "
            "(a strategy that copies otherwise in prefill says so in its own note)"],
        "metrics": metrics,
        "accuracy": None,
        "outputs": [o for p in pieces for o in p.outputs],
    }
