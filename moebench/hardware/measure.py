"""Measure a hardware profile on this CUDA GPU, for one model, so the simulator can be checked.

What is measured (CUDA events unless said otherwise), and where it goes in the profile:

    pinned H2D, 64 KiB .. 256 MiB, 8 back-to-back copies per size  -> the curve, and a fit
        t(bytes) = latency + bytes / bandwidth                      -> h2d_bandwidth_gbps
    one expert's copy as the engine makes it (DevicePools.load)     -> h2d_latency_us
    pageable H2D (host wall clock: the copy blocks the host)        -> pageable_h2d_bandwidth_gbps
    a one-element kernel, 2000 times                                -> launch_overhead_us
    a 1 GiB device-to-device copy (read + write)                    -> mem_bandwidth_gbps
    a bf16 8192^3 matmul                                            -> peak_tflops
    the model's experts kernel on k resident experts, one token     -> expert_us (per expert)
    the model's router on one token                                 -> router_us
    final norm + LM head on one token                               -> lm_head_us
    a short `sync` decode through the engine under the CUDA clock:
        per-step compute (latency - stall) minus the parts above    -> attention_us (per layer)

The last one is a residual on purpose: eager batch-1 decode is bound by kernel launches and by
host work (hooks, the engine's bookkeeping, the router's ids read back each layer), which no
roofline sees, and the simulator then charges exactly what this machine spends per layer. The
copy model (latency + bandwidth) is measured independently of any decode, so `moebench
validate-sim` still tests something real: whether copies, overlap and stalls come out right.

Every measurement helper needs CUDA and is called only when `torch.cuda.is_available()`;
`fit_copy` and `profile_document` are pure.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from moebench.errors import UserError

SIZES = tuple(2 ** p for p in range(16, 29, 2))   # 64 KiB .. 256 MiB
NO_CUDA = ("calibrating a profile measures a CUDA GPU and none is available here; on this machine "
           "the simulator uses the built-in profiles (moebench/offload/profiles/*.yaml).")


@dataclass(frozen=True)
class CopyFit:
    latency_s: float
    bandwidth_gbps: float
    r2: float


def fit_copy(points: list[tuple[int, float]]) -> CopyFit:
    """Least-squares `t = latency + bytes / bandwidth` over (bytes, seconds) points (pure)."""
    if len(points) < 2:
        raise ValueError("a copy fit needs at least two sizes")
    xs = [float(b) for b, _ in points]
    ys = [float(t) for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if slope <= 0:
        raise ValueError("copy time does not grow with size; the measurement is broken")
    latency = max(0.0, my - slope * mx)
    ss_res = sum((y - (latency + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
    return CopyFit(latency, 1.0 / slope / 1e9, 1.0 - ss_res / ss_tot)


def require_cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise UserError(NO_CUDA)
    return torch


# ----------------------------------------------------------------------------------------------
# device measurements (CUDA only)
# ----------------------------------------------------------------------------------------------
def _time_events(fn: Any, reps: int, stream: Any = None) -> float:
    """Median seconds of `fn()` over `reps`, by an event pair on `stream` (default: current)."""
    torch = require_cuda()
    stream = stream or torch.cuda.current_stream()
    fn()                                                        # warm-up
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(stream)
        fn()
        b.record(stream)
        b.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return statistics.median(out)


def measure_h2d(device: Any, sizes: tuple[int, ...] = SIZES, *, pinned: bool = True,
                batch: int = 8, reps: int = 5) -> list[tuple[int, float]]:
    """(bytes, seconds per copy) for back-to-back H2D copies of each size."""
    torch = require_cuda()
    points = []
    stream = torch.cuda.Stream(device=device)
    for n in sizes:
        src = torch.empty(n, dtype=torch.uint8, pin_memory=pinned)
        src.fill_(1)
        dst = torch.empty(n, dtype=torch.uint8, device=device)
        k = max(1, min(batch, (1 << 30) // n)) if pinned else max(1, min(batch, (1 << 28) // n))

        def copies() -> None:
            with torch.cuda.stream(stream):
                for _ in range(k):
                    dst.copy_(src, non_blocking=pinned)

        if pinned:
            t = _time_events(copies, reps, stream)
        else:   # a pageable copy is staged by the host: time it on the host clock
            copies()
            torch.cuda.synchronize(device)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                copies()
                torch.cuda.synchronize(device)
                ts.append(time.perf_counter() - t0)
            t = statistics.median(ts)
        points.append((n, t / k))
        del src, dst
    return points


def layer0_store(loaded: Any) -> Any:
    """The loaded store, or a pinned store of MoE layer 0 alone (an eagerly loaded model)."""
    store = getattr(loaded, "expert_store", None)
    if store is not None:
        return store
    from moebench.weights.store import HostExpertStore
    from moebench.models.adapters import adapter_for

    ad = adapter_for(loaded.model)
    return HostExpertStore([{n: p.data for n, p in ad.expert_params(ad.moe[0]).items()}], pin=True)


def measure_expert_copy(store: Any, device: Any, reps: int = 5) -> float:
    """Seconds per expert for a layer's top-k copied the engine's way (one copy per tensor)."""
    torch = require_cuda()
    from moebench.weights.store import DevicePools

    k = min(8, store.num_experts)
    pools = DevicePools(store, k, device)
    stream = torch.cuda.Stream(device=device)

    def load() -> None:
        with torch.cuda.stream(stream):
            for e in range(k):
                pools.load((0, e), e)

    t = _time_events(load, reps, stream)
    del pools
    return t / k


def measure_launch_us(device: Any, n: int = 2000) -> float:
    torch = require_cuda()
    x = torch.zeros(1, device=device)

    def launches() -> None:
        for _ in range(n):
            x.add_(1.0)

    return _time_events(launches, 3) / n * 1e6


def measure_mem_bandwidth_gbps(device: Any, nbytes: int = 1 << 30) -> float:
    torch = require_cuda()
    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    t = _time_events(lambda: b.copy_(a), 5)
    return 2 * nbytes / t / 1e9


def measure_peak_tflops(device: Any, n: int = 8192) -> float:
    torch = require_cuda()
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = _time_events(lambda: a @ b, 5)
    return 2.0 * n ** 3 / t / 1e12


def measure_model_parts(loaded: Any, device: Any, reps: int = 50) -> dict[str, float]:
    """Per-call microseconds of the model's own experts kernel (k resident experts, one token,
    divided by k), its router and its final norm + LM head; all on the device."""
    torch = require_cuda()
    from moebench.engine.executor import reference_impl
    from moebench.weights.store import DevicePools, SlotExperts
    from moebench.models.adapters import adapter_for

    model = loaded.model
    adapter = adapter_for(model)
    v = adapter.moe[0]
    store = layer0_store(loaded)
    k = loaded.shape.top_k
    make = getattr(store, "make_pools", None)
    pools = make(k, device) if make else DevicePools(store, k, device)
    for e in range(k):
        pools.load((0, e), e)
    dtype = v.norm2.weight.dtype
    u = torch.randn(1, loaded.shape.hidden, device=device, dtype=dtype)  # [1, H]
    ids = torch.arange(k, device=device)[None]                          # [1, k]
    w = torch.softmax(torch.randn(1, k, device=device), -1).to(dtype)   # [1, k]
    impl = reference_impl(model, v.experts)
    view = getattr(pools, "compute_view", None)

    def experts_call() -> Any:   # what the executor does for one layer (unpacking included)
        tensors, idx = view(ids, list(range(k)), 0, k - 1) if view else (pools.pools, ids)
        return impl(SlotExperts(v.experts, tensors), u, idx, w)

    with torch.inference_mode():
        experts = _time_events(experts_call, reps)
        router = _time_events(lambda: v.router(u), reps)
        x = u[None]                                                     # [1, 1, H]
        head = _time_events(lambda: model.lm_head(model.model.norm(x)), reps)
    del pools
    return {"expert_us": experts / k * 1e6, "experts_layer_us": experts * 1e6,
            "router_us": router * 1e6, "lm_head_us": head * 1e6}


def measure_decode_compute(prep: Any, strategy: str = "sync") -> dict[str, float]:
    """Median per-step compute (latency - stall) and latency of decode steps, CUDA clock."""
    from moebench.engine.session import run_session
    from moebench.strategy import build_strategy

    piece = run_session(prep, build_strategy(strategy))
    steps = [s for s in piece.samples if s.get("kind") == "step"]
    if not steps:
        raise UserError("the calibration workload decoded no steps; give it max_new_tokens >= 2.")
    return {"compute_ms": statistics.median(s["compute_ms"] for s in steps),
            "latency_ms": statistics.median(s["latency_ms"] for s in steps),
            "stall_ms": statistics.median(s["stall_ms"] for s in steps), "steps": len(steps)}


# ----------------------------------------------------------------------------------------------
# the profile
# ----------------------------------------------------------------------------------------------
def attention_residual_us(compute_ms: float, parts: dict[str, float], *, moe_layers: int,
                          top_k: int, dense_layers: int = 0) -> float:
    """Per-layer non-expert time: step compute minus LM head, routers and experts (pure)."""
    layers = moe_layers + dense_layers
    rest = compute_ms * 1e3 - parts["lm_head_us"] - moe_layers * (parts["router_us"] +
                                                                  top_k * parts["expert_us"])
    return max(0.0, rest / max(1, layers))


def profile_document(*, name: str, gpu: dict, model: str, pinned: list, pageable: list,
                     fit: CopyFit, expert_copy_s: float, expert_bytes: int, launch_us: float,
                     mem_gbps: float, tflops: float, parts: dict, decode: dict,
                     attention_us: float, created: str) -> dict:
    """The YAML mapping `moebench.offload.profile.load_profile` reads (pure)."""
    link = f"PCIe gen {gpu.get('pcie_gen', '?')} x{gpu.get('pcie_width', '?')}"
    latency_us = max(0.0, (expert_copy_s - expert_bytes / (fit.bandwidth_gbps * 1e9)) * 1e6)
    return {
        "name": name,
        "description": f"{gpu.get('name', 'GPU')}, {link}: measured by moebench calibrate profile "
                       f"on {created} for {model}",
        "source": "measured",
        "h2d_bandwidth_gbps": round(fit.bandwidth_gbps, 3),
        "h2d_latency_us": round(latency_us, 3),
        "pageable_h2d_bandwidth_gbps": round(fit_copy(pageable).bandwidth_gbps, 3) if len(pageable) > 1 else 0.0,
        "mem_bandwidth_gbps": round(mem_gbps, 1),
        "mem_efficiency": 1.0,
        "peak_tflops": round(tflops, 1),
        "launch_overhead_us": round(launch_us, 3),
        "device_memory_gb": round(gpu.get("memory_bytes", 0) / 1e9, 1),
        "attention_us": round(attention_us, 3),
        "router_us": round(parts["router_us"], 3),
        "expert_us": round(parts["expert_us"], 3),
        "lm_head_us": round(parts["lm_head_us"], 3),
        "calibrated_for": model,
        "measured": {
            "created": created, "gpu": gpu,
            "h2d_pinned": [[int(b), b / t / 1e9] for b, t in pinned],
            "h2d_pageable": [[int(b), b / t / 1e9] for b, t in pageable],
            "h2d_fit": asdict(fit), "expert_copy_us": expert_copy_s * 1e6,
            "expert_bytes": expert_bytes, "model_parts_us": parts, "decode": decode,
        },
    }


def calibrate(prep: Any, *, name: str | None = None, progress: Any = None) -> dict:
    """Measure everything above on `prep`'s CUDA device and model; the profile mapping."""
    require_cuda()
    from moebench.hardware.environment import gpu_info

    say = progress or (lambda msg: None)
    dev = prep.device
    loaded = prep.loaded
    gpu = gpu_info()
    say("pinned H2D sweep")
    pinned = measure_h2d(dev, pinned=True)
    say("pageable H2D sweep")
    pageable = measure_h2d(dev, SIZES[:5], pinned=False, reps=3)
    fit = fit_copy(pinned)
    expert_copy = measure_expert_copy(layer0_store(loaded), dev)
    say("launch overhead, memory bandwidth, matmul peak")
    launch = measure_launch_us(dev)
    mem = measure_mem_bandwidth_gbps(dev)
    tflops = measure_peak_tflops(dev)
    # The decode first: it also puts an eagerly loaded model's non-expert weights on the device.
    say("a short sync decode under the CUDA clock")
    decode = measure_decode_compute(prep, "sync")
    say("experts, router and LM head kernels")
    parts = measure_model_parts(loaded, dev)
    shape = loaded.shape
    attn = attention_residual_us(decode["compute_ms"], parts, moe_layers=shape.moe_layers,
                                 top_k=shape.top_k, dense_layers=shape.num_layers - shape.moe_layers)
    created = time.strftime("%Y-%m-%d")
    label = (gpu.get("name") or "gpu").lower().replace(" ", "-")
    return profile_document(
        name=name or f"calibrated-{label}-{shape.name}", gpu=gpu, model=shape.name, pinned=pinned,
        pageable=pageable, fit=fit, expert_copy_s=expert_copy, expert_bytes=shape.expert_bytes,
        launch_us=launch, mem_gbps=mem, tflops=tflops, parts=parts, decode=decode,
        attention_us=attn, created=created)


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------
CALIBRATION_WORKLOAD = """# written by moebench calibrate profile: random-token prompts, a short decode
name: calibrate-profile
description: random-token prompts for profile calibration
generator: {kind: random-tokens, n: 2, length: 8}
max_new_tokens: 9
warmup_steps: 2
seed: 1234
"""


def calibration_prep(loaded: Any, out_dir: Any, *, cache_budget: str = "0.25") -> Any:
    """A CUDA-clock `Prepared` on the calibration workload (its YAML written to `out_dir`)."""
    from pathlib import Path

    from moebench.config import RunConfig
    from moebench.engine.session import prepare

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wl = out_dir / "calibrate-profile-workload.yaml"
    wl.write_text(CALIBRATION_WORKLOAD)
    cfg = RunConfig(model=loaded.name, strategy="sync", workload=str(wl), cache_budget=cache_budget,
                    clock="cuda", profile="h200-pcie5")
    return prepare(cfg, loaded=loaded)


def write_profile(doc: dict, path: Any) -> Any:
    """The profile YAML, atomically; `moebench ... --profile PATH` reads it."""
    from pathlib import Path

    import yaml

    from moebench.results.folders import atomic_write

    path = Path(path)
    atomic_write(path, f"# measured by `moebench calibrate profile`; use with --profile {path}\n"
                 + yaml.safe_dump(doc, sort_keys=False))
    return path


def profile_from_doc(doc: dict) -> Any:
    from moebench.config import from_dict
    from moebench.offload.profile import HardwareProfile

    return from_dict(HardwareProfile, doc, "calibrated profile")
