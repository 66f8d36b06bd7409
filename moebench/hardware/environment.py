"""What machine produced a result: versions, GPU, driver, PCIe link, NVML clocks (when present)."""
from __future__ import annotations

from typing import Any

from moebench.results.machine import machine


def gpu_info() -> dict[str, Any]:
    """NVML facts when a driver is present; `{"available": False}` otherwise (never raises)."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False}
    info: dict[str, Any] = {"available": True, "name": torch.cuda.get_device_name(0),
                            "capability": list(torch.cuda.get_device_capability(0)),
                            "memory_bytes": torch.cuda.get_device_properties(0).total_memory,
                            "cuda": torch.version.cuda}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        info["pcie_gen"] = pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h)
        info["pcie_width"] = pynvml.nvmlDeviceGetCurrPcieLinkWidth(h)
        info["pcie_gen_max"] = pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h)
        info["pcie_width_max"] = pynvml.nvmlDeviceGetMaxPcieLinkWidth(h)
        # an idle GPU may train its link down to gen 1: the max is what copies will see
        info["pcie"] = (f"gen {info['pcie_gen']} x{info['pcie_width']} (max gen "
                        f"{info['pcie_gen_max']} x{info['pcie_width_max']})")
        info["sm_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
        info["mem_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)
        pynvml.nvmlShutdown()
    except Exception as exc:  # NVML is optional: any failure just means fewer facts
        info["nvml_error"] = type(exc).__name__
    return info


def environment() -> dict[str, Any]:
    """`machine()` plus what torch sees: versions, CUDA, threads, the GPU (a live run's)."""
    import torch
    import transformers

    env = machine()
    created = env.pop("created")
    env.update({"torch": torch.__version__, "transformers": transformers.__version__,
                "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads(),
                "gpu": gpu_info(), "created": created})
    return env
