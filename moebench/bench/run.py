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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moebench import SCHEMA_VERSION, __version__
from moebench.config import BudgetSpec, RunConfig, to_dict
from moebench.errors import UserError
from moebench.offload.budget import strategy_slots

log = logging.getLogger("moebench")


@dataclass
class Prepared:
    cfg: RunConfig
    workload: Any
    requests: list
    workload_sha: str
    loaded: Any
    budget: BudgetSpec
    profile: Any
    clock: str          # "cuda" | "sim"
    device: Any
    memo: dict = field(default_factory=dict)   # per-prep caches (calibration artifacts, recorded traces)


@dataclass
class Piece:
    """What one strategy produced on one repetition."""

    strategy: dict
    samples: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    layer_hits: list[int] = field(default_factory=list)
    layer_acts: list[int] = field(default_factory=list)
    prediction: dict | None = None
    trace: list = field(default_factory=list)
    warmup_trace: list = field(default_factory=list)   # the untimed warm-up's rows (request -1)
    logits: dict = field(default_factory=dict)
    n_slots: int = 0
    peak_expert_bytes: int = 0
    pool_bytes: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)


def resolve_device_and_clock(clock: str, device: str = "auto") -> tuple[Any, str]:
    import torch

    has_cuda = torch.cuda.is_available()
    if clock == "cuda" and not has_cuda:
        raise UserError("--clock cuda needs a CUDA GPU, and none is available here; use --clock sim.")
    if device == "auto":
        dev = torch.device("cuda" if has_cuda else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and not has_cuda:
            raise UserError(f"device '{device}' is not available here.")
    kind = "cuda" if (clock == "cuda" or (clock == "auto" and dev.type == "cuda")) else "sim"
    if kind == "cuda" and dev.type != "cuda":
        raise UserError("--clock cuda needs the model on a CUDA device.")
    return dev, kind


def prepare(cfg: RunConfig, loaded: Any = None) -> Prepared:
    from moebench.models.loading import load_model
    from moebench.offload.profile import load_profile
    from moebench.workloads.spec import build_requests, load_workload, workload_sha256

    wl = load_workload(cfg.workload, cfg.workload_overrides)
    budget = BudgetSpec.parse(cfg.cache_budget)
    profile = load_profile(cfg.profile)
    device, clock = resolve_device_and_clock(cfg.clock, cfg.device)
    if loaded is None:
        loaded = load_model(cfg.model, seed=cfg.seed, device=device)
    reqs = build_requests(wl, loaded.tokenizer, loaded.model.config.vocab_size)
    return Prepared(cfg, wl, reqs, workload_sha256(wl, reqs), loaded, budget, profile, clock, device)


def run_strategy(prep: Prepared, name: str, params: dict | None = None, *, repetition: int = 0,
                 progress: Callable[[int], None] | None = None, keep_logits: bool = False,
                 record_trace: bool | None = None, artifacts: dict | None = None,
                 trace_source: Any = None) -> Piece:
    """Attach the engine with strategy `name`, run the workload once, detach."""
    import torch

    from moebench.engine.executor import OffloadEngine
    from moebench.engine.timeline import make_timeline
    from moebench.strategy import build_strategy

    strategy = build_strategy(name, params)
    n_slots = strategy_slots(prep.budget.text, prep.loaded.shape, strategy)
    record = prep.cfg.record_trace if record_trace is None else record_trace
    if artifacts is None or trace_source is None:
        from moebench.calibration.provision import artifacts_for  # strategies that need training or a trace
        a, t = artifacts_for(prep, strategy)
        artifacts = a if artifacts is None else artifacts
        trace_source = t if trace_source is None else trace_source
    timeline = make_timeline(prep.clock, prep.profile, prep.device)
    engine = OffloadEngine(prep.loaded, strategy, n_slots=n_slots, timeline=timeline,
                           profile=prep.profile, device=prep.device, artifacts=artifacts,
                           record_trace=record, trace_source=trace_source)
    piece = Piece(strategy=strategy.describe(), n_slots=n_slots)
    if artifacts:   # what calibration did (notes) and which artifacts the strategy runs on
        piece.notes.extend(artifacts.get("_notes", ()))
        if artifacts.get("_provenance"):
            piece.strategy["artifacts"] = artifacts["_provenance"]
    engine.attach()
    try:
        engine.prefill_warm()
        model = prep.loaded.model
        wl = prep.workload
        m = prep.loaded.shape.moe_layers
        piece.layer_hits, piece.layer_acts = [0] * m, [0] * m
        with torch.inference_mode():
            if wl.warmup_steps and prep.requests:
                _decode(engine, model, prep.requests[0].input_ids, wl.warmup_steps + 1, prep.device,
                        request=-1, record=None)
            piece.warmup_trace = list(engine.trace)
            engine.trace.clear()
            engine.protocol.reset_counters()
            try:
                for rep in range(wl.repetitions):
                    for ri, req in enumerate(prep.requests):
                        rid = rep * len(prep.requests) + ri
                        rows: list[dict] = []
                        logits: list = [] if keep_logits else None
                        tokens = _decode(engine, model, req.input_ids, wl.max_new_tokens, prep.device,
                                         request=rid, record=rows, logits=logits, progress=progress)
                        _finish_request(piece, rows, req, tokens, repetition * wl.repetitions + rep)
                        if keep_logits:
                            piece.logits[(rep, req.id)] = logits
            except KeyboardInterrupt:
                piece.complete = False
                piece.notes.append("interrupted: only finished requests are kept")
        piece.prediction = engine.protocol.prediction()
        piece.trace = list(engine.trace)
        piece.peak_expert_bytes = engine.cache.peak_resident * engine.cache.expert_bytes
        piece.pool_bytes = engine.pools.allocated_bytes
    finally:
        engine.detach()
    return piece


def _decode(engine: Any, model: Any, prompt: tuple[int, ...], n_new: int, device: Any, *,
            request: int, record: list | None, logits: list | None = None,
            progress: Callable[[int], None] | None = None) -> list[int]:
    """Greedy decode exactly `n_new` tokens with a KV cache; one engine step per forward."""
    import torch

    engine.begin_request(request)
    ids = torch.tensor([list(prompt)], device=device)                        # [1, T]
    engine.begin_step("prefill", 0, ids.shape[1])
    out = model(input_ids=ids, use_cache=True)
    st = engine.end_step()
    past = out.past_key_values
    last = out.logits[:, -1, :]                                              # [1, V]
    nxt = last.argmax(-1)                                                    # [1]
    tokens = [int(nxt)]
    if logits is not None:
        logits.append(last[0].detach().to("cpu", copy=True))
    if record is not None:
        record.append(st.row(request))
    if progress:
        progress(1)
    for pos in range(1, n_new):
        engine.begin_step("decode", pos, 1)
        out = model(input_ids=nxt[:, None], use_cache=True, **{_cache_kwarg(model): past})
        st = engine.end_step()
        past = out.past_key_values
        last = out.logits[:, -1, :]
        nxt = last.argmax(-1)
        tokens.append(int(nxt))
        if logits is not None:
            logits.append(last[0].detach().to("cpu", copy=True))
        if record is not None:
            row = st.row(request)
            record.append(row)
            engine_hits, engine_acts = st.layer_hits, st.layer_acts
            row["_layer_hits"], row["_layer_acts"] = engine_hits, engine_acts
        if progress:
            progress(1)
    return tokens


def _cache_kwarg(model: Any) -> str:
    """KV-cache keyword: `cache` from transformers 5.24, `past_key_values` before (both accepted
    for a while; the new name avoids a deprecation warning per step)."""
    import inspect

    cls = type(model)
    name = getattr(cls, "_moebench_cache_kwarg", None)
    if name is None:
        params = inspect.signature(cls.forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        cls._moebench_cache_kwarg = name
    return name


def _finish_request(piece: Piece, rows: list[dict], req: Any, tokens: list[int], repetition: int) -> None:
    prefill, decode = rows[0], rows[1:]
    ttft = prefill["latency_ms"]
    e2e = ttft + sum(r["latency_ms"] for r in decode)
    for r in decode:
        for i, (h, a) in enumerate(zip(r.pop("_layer_hits"), r.pop("_layer_acts"))):
            piece.layer_hits[i] += h
            piece.layer_acts[i] += a
        r.pop("phase")
        piece.samples.append({"prompt_id": req.id, "repetition": repetition, **r})
    piece.samples.append({"kind": "request", "prompt_id": req.id, "repetition": repetition,
                          "ttft_ms": ttft, "tpot_ms": (e2e - ttft) / max(1, len(tokens) - 1),
                          "e2e_ms": e2e, "n_out": len(tokens),
                          "prefill_h2d_bytes": prefill["h2d_bytes"]})
    piece.outputs.append({"prompt_id": req.id, "repetition": repetition,
                          "prompt_token_ids": list(req.input_ids), "token_ids": tokens})


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
