"""Hardware profiles: what the simulated clock charges for a copy and for a kernel.

A profile is a YAML file of public (or `moebench calibrate profile`-measured) figures:

    copy   = h2d_latency + bytes / h2d_bandwidth                       (the copy engine)
    kernel = max(flops / peak, bytes / (mem_bandwidth * efficiency)) + launch_overhead

Built-ins live in `moebench/offload/profiles/*.yaml`; a user passes `--profile my.yaml`, or drops files
in `$MOEBENCH_PROFILES` (a folder) to make them known by name.

A profile may name the **host** CPU beside the GPU (`host: epyc-9654`, a file of
`moebench/offload/profiles/hosts/`, or the figures inline): what strategies that compute experts
on the host (Fiddler, KTransformers, llama.cpp `--n-cpu-moe`) are charged:

    host kernel = max(flops / host_peak, bytes / (host_mem_bandwidth * efficiency)) + launches
    activation  = h2d_latency + bytes / h2d_bandwidth, each way (PCIe is symmetric)

A profile without host figures cannot run such a strategy (one sentence, exit 2): copies are
never free, and neither is host compute.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from moebench.config import from_dict
from moebench.errors import UserError, did_you_mean


def roofline_seconds(*, flops: float, nbytes: float, kernels: int, peak_tflops: float,
                     mem_bandwidth_gbps: float, mem_efficiency: float, launch_overhead_us: float) -> float:
    """`max(flops / peak, bytes / (bandwidth * efficiency)) + kernels * launch overhead`: the one
    kernel cost of the simulated clock, on the device and on the host."""
    compute = flops / (peak_tflops * 1e12)
    memory = nbytes / (mem_bandwidth_gbps * 1e9 * mem_efficiency)
    return max(compute, memory) + kernels * launch_overhead_us * 1e-6


@dataclass(frozen=True)
class HostProfile:
    """The host CPU's figures (public spec sheets; `source` says which)."""

    name: str
    mem_bandwidth_gbps: float           # DRAM: channels x MT/s x 8 bytes
    peak_tflops: float                  # all cores, in the experts' dtype (bf16 where supported)
    mem_efficiency: float = 0.6         # achieved / theoretical bandwidth of a GEMV (stated default)
    launch_overhead_us: float = 5.0     # one torch CPU op's dispatch
    cores: int = 0
    description: str = ""
    source: str = ""

    def validate(self, where: str) -> None:
        for key in ("mem_bandwidth_gbps", "peak_tflops"):
            if getattr(self, key) <= 0:
                raise UserError(f"{where}.{key} must be positive.")
        if not 0 < self.mem_efficiency <= 1:
            raise UserError(f"{where}.mem_efficiency must be in (0, 1].")
        if self.launch_overhead_us < 0:
            raise UserError(f"{where}.launch_overhead_us must not be negative.")

    def kernel_seconds(self, *, flops: float, nbytes: float, kernels: int = 1) -> float:
        return roofline_seconds(flops=flops, nbytes=nbytes, kernels=kernels,
                                peak_tflops=self.peak_tflops, mem_bandwidth_gbps=self.mem_bandwidth_gbps,
                                mem_efficiency=self.mem_efficiency,
                                launch_overhead_us=self.launch_overhead_us)


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    h2d_bandwidth_gbps: float
    h2d_latency_us: float
    mem_bandwidth_gbps: float
    peak_tflops: float
    launch_overhead_us: float
    pageable_h2d_bandwidth_gbps: float = 0.0
    mem_efficiency: float = 0.85
    device_memory_gb: float = 0.0
    description: str = ""
    source: str = "public"
    # Measured batch-1 times (`moebench calibrate profile`, one GPU and one model; 0 = use the
    # roofline alone). A cost is then the measured time plus what the roofline adds beyond batch 1
    # (more tokens, longer context): eager batch-1 decode is bound by launches and host work.
    attention_us: float = 0.0     # one layer's norm + attention + residual + engine overhead
    router_us: float = 0.0        # one layer's router
    expert_us: float = 0.0        # one expert at one token (a top-k layer / k)
    lm_head_us: float = 0.0       # final norm + LM head
    calibrated_for: str = ""      # the model the floors were measured on
    measured: dict = field(default_factory=dict)   # raw calibration data (curves, GPU, date)
    host: HostProfile | None = None    # the CPU beside the GPU (host-computing strategies)

    def require_host(self, who: str) -> HostProfile:
        if self.host is None:
            raise UserError(f"'{who}' computes experts on the host, but profile '{self.name}' has "
                            "no host figures; add `host: epyc-9654` (or another file of "
                            "moebench/offload/profiles/hosts/, or the figures inline) to it.")
        return self.host

    def validate(self, where: str) -> None:
        for key in ("h2d_bandwidth_gbps", "mem_bandwidth_gbps", "peak_tflops"):
            if getattr(self, key) <= 0:
                raise UserError(f"{where}.{key} must be positive.")
        for key in ("h2d_latency_us", "launch_overhead_us", "attention_us", "router_us",
                    "expert_us", "lm_head_us"):
            if getattr(self, key) < 0:
                raise UserError(f"{where}.{key} must not be negative.")
        if not 0 < self.mem_efficiency <= 1:
            raise UserError(f"{where}.mem_efficiency must be in (0, 1].")

    # Costs, in seconds -------------------------------------------------------------------------
    def copy_seconds(self, nbytes: int) -> float:
        return self.h2d_latency_us * 1e-6 + nbytes / (self.h2d_bandwidth_gbps * 1e9)

    def kernel_seconds(self, *, flops: float, nbytes: float, kernels: int = 1) -> float:
        return roofline_seconds(flops=flops, nbytes=nbytes, kernels=kernels,
                                peak_tflops=self.peak_tflops, mem_bandwidth_gbps=self.mem_bandwidth_gbps,
                                mem_efficiency=self.mem_efficiency,
                                launch_overhead_us=self.launch_overhead_us)

    def with_bandwidth(self, gbps: float) -> HardwareProfile:
        """The same GPU on another link (for `--sweep bandwidth=`)."""
        from dataclasses import replace
        return replace(self, name=f"{self.name}@{gbps:g}GBps", h2d_bandwidth_gbps=float(gbps))


def _builtin_dir() -> Path:
    return Path(str(resources.files("moebench.offload") / "profiles"))


def _search_dirs() -> list[Path]:
    dirs = [_builtin_dir()]
    extra = os.environ.get("MOEBENCH_PROFILES")
    if extra:
        dirs.insert(0, Path(extra))
    return dirs


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(_search_dirs()):
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")):
                found[p.stem] = p
    return found


def load_profile(name_or_path: str) -> HardwareProfile:
    """A profile by built-in name, by name in $MOEBENCH_PROFILES, or by YAML path."""
    path, data = _figures(name_or_path, available_profiles(), "hardware profile", "profile")
    if isinstance(data, dict) and isinstance(data.get("host"), str):
        data["host"] = _host_figures(data["host"], f"profile {path.name}")
    return from_dict(HardwareProfile, data, f"profile {path.name}")


def available_hosts() -> dict[str, Path]:
    d = _builtin_dir() / "hosts"
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def _host_figures(name: str, where: str) -> dict:
    return _figures(name, available_hosts(), f"host (in {where})", "host figures")[1]


def _figures(name_or_path: str, known: dict[str, Path], kind: str, what: str) -> tuple[Path, Any]:
    """A figures YAML by known name or by path: (its path, its mapping with `name` defaulted to
    the file's stem); an unknown name or invalid YAML is one sentence."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        if name_or_path not in known:
            raise UserError(f"unknown {kind} '{name_or_path}'{did_you_mean(name_or_path, known)}.")
        path = known[name_or_path]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if isinstance(data, dict) and "name" not in data:
        data["name"] = path.stem
    return path, data
