"""Shared fixtures. Tests run on CPU with tiny presets; one torch thread keeps 2-core CI steady.

Nothing here imports torch at module level: `tests/core` (the torch-free core: cache, policies,
protocol, replay, oracle) runs in an environment without torch or transformers.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("torch") is not None:   # absent where only tests/core runs
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _artifact_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration artifacts go to a per-session temporary cache, never the user's."""
    if "MOEBENCH_CACHE" not in os.environ:
        monkeypatch.setenv("MOEBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "moebench-cache"))


@pytest.fixture(scope="module")
def qwen():
    """The tiny random Qwen3-MoE preset, loaded once per test module."""
    from moebench.models.loading import load_model

    return load_model("tiny-qwen3-moe", seed=0)


@pytest.fixture()
def cache(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A fresh, empty artifact cache for this one test (its folder)."""
    monkeypatch.setenv("MOEBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


requires_gpu = pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
