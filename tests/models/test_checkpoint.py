"""Lazy offline checkpoint loading (moebench.models.checkpoint): a `save_pretrained` folder loads
through the lazy path with experts read one at a time, matches the eager model bit for bit
through the engine, keeps host memory near one copy, and MXFP4 experts stay packed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from moebench.config import RunConfig
from moebench.errors import UserError
from moebench.models.adapters import adapter_for
from moebench.models.loading import load_model

PRESETS = ("tiny-qwen3-moe", "tiny-gpt-oss")
RUN = RunConfig(model="x", workload="smoke", workload_overrides={"max_new_tokens": "4", "limit": "2"})
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """preset -> (eager LoadedModel, folder written by save_pretrained)."""
    torch.set_num_threads(1)
    out = {}
    for name in PRESETS:
        eager = load_model(name)
        folder = tmp_path_factory.mktemp(name)
        eager.model.save_pretrained(folder)
        out[name] = (eager, folder)
    return out


def _run(loaded, strategy="sync"):
    from moebench.bench.run import run_strategy
    from moebench.engine.session import prepare

    prep = prepare(RUN, loaded=loaded)
    piece = run_strategy(prep, strategy, {}, keep_logits=True)
    return piece


@pytest.mark.parametrize("name", PRESETS)
def test_lazy_load_matches_eager_through_the_engine(saved, name):
    eager, folder = saved[name]
    lazy = load_model(str(folder), lazy=True)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert lazy.expert_store is not None and lazy.load_stats.layout in ("per-expert", "fused")
    ad = adapter_for(eager.model)
    for v in ad.moe:                      # the store holds exactly the model's fused experts
        for n, p in ad.expert_params(v).items():
            assert torch.equal(lazy.expert_store.layers[v.moe_index][n], p.data), n
    for v in adapter_for(lazy.model).moe:  # and the model itself holds none of them
        assert all(getattr(v.experts, n).numel() == 0 for n in ad.expert_param_names)
    a, b = _run(eager), _run(lazy)
    assert [o["token_ids"] for o in a.outputs] == [o["token_ids"] for o in b.outputs]
    for key in a.logits:
        assert all(torch.equal(x, y) for x, y in zip(a.logits[key], b.logits[key]))


@pytest.mark.parametrize("name", PRESETS)
def test_lazy_model_runs_without_the_engine_too(saved, name):
    """Calibration passes run the unmodified model: it gathers experts from the store."""
    eager, folder = saved[name]
    lazy = load_model(str(folder), lazy=True)
    ids = torch.tensor([[5, 17, 300, 9, 44, 1023]])
    with torch.inference_mode():
        assert torch.equal(eager.model(input_ids=ids).logits, lazy.model(input_ids=ids).logits)


class _Counting:
    """A `safetensors.safe_open` stand-in that records every read (name, kind, bytes)."""

    reads: list = []
    real = None

    def __init__(self, path, framework="pt", device="cpu"):
        self._h = _Counting.real(path, framework=framework, device=device)

    def __enter__(self):
        self._h.__enter__()
        return self

    def __exit__(self, *exc):
        return self._h.__exit__(*exc)

    def keys(self):
        return self._h.keys()

    def get_tensor(self, key):
        t = self._h.get_tensor(key)
        _Counting.reads.append((key, "tensor", t.numel() * t.element_size()))
        return t

    def get_slice(self, key):
        return _Slice(self._h.get_slice(key), key)


class _Slice:
    def __init__(self, s, key):
        self._s, self._key = s, key

    def get_shape(self):
        return self._s.get_shape()

    def get_dtype(self):
        return self._s.get_dtype()

    def __getitem__(self, idx):
        t = self._s[idx]
        _Counting.reads.append((self._key, "slice", t.numel() * t.element_size()))
        return t


@pytest.mark.parametrize("name", PRESETS)
def test_experts_are_read_one_expert_at_a_time(saved, name, monkeypatch):
    import safetensors

    eager, folder = saved[name]
    _Counting.real = safetensors.safe_open
    _Counting.reads = []
    monkeypatch.setattr(safetensors, "safe_open", _Counting)
    lazy = load_model(str(folder), lazy=True)
    shape = eager.shape
    ad = adapter_for(eager.model)
    expert_reads = [r for r in _Counting.reads if ".experts." in r[0]]
    per_expert = {n: p.data[0].numel() * p.data.element_size()
                  for n, p in ad.expert_params(ad.moe[0]).items()}
    n_tensors = 3 if lazy.load_stats.layout == "per-expert" else len(per_expert)
    assert len(expert_reads) == shape.moe_layers * shape.num_experts * n_tensors
    assert all(kind == "slice" for _, kind, _ in expert_reads) or lazy.load_stats.layout == "per-expert"
    largest = max(per_expert.values())
    assert max(b for _, _, b in expert_reads) <= largest            # never more than one expert
    assert sum(b for _, _, b in expert_reads) == lazy.expert_store.total_bytes
    others = [k for k, _, _ in _Counting.reads if ".experts." not in k]
    assert len(others) == len(set(others))                          # each non-expert read once
    assert lazy.load_stats.expert_reads == len(expert_reads)


def test_size_and_env_decide_the_lazy_path(saved, monkeypatch):
    _, folder = saved["tiny-qwen3-moe"]
    monkeypatch.setenv("MOEBENCH_LAZY_LOAD", "auto")
    assert getattr(load_model(str(folder)), "expert_store", None) is None      # small: eager
    monkeypatch.setenv("MOEBENCH_LAZY_BYTES", "1000")
    assert load_model(str(folder)).expert_store is not None                    # big: lazy
    monkeypatch.setenv("MOEBENCH_LAZY_LOAD", "0")
    assert getattr(load_model(str(folder)), "expert_store", None) is None


def test_missing_tensor_is_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = saved["tiny-qwen3-moe"]
    sd = load_file(str(folder / "model.safetensors"))
    del sd["model.layers.1.self_attn.q_proj.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(UserError, match="layers.1.self_attn.q_proj.weight"):
        load_model(str(tmp_path), lazy=True)


def test_missing_checkpoint_names_where_it_looked(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from moebench.cli import app

    monkeypatch.setenv("MOEBENCH_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    r = CliRunner().invoke(app, ["run", "--model", "qwen3-30b-a3b", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "Qwen/Qwen3-30B-A3B" in r.output and str(tmp_path / "models") in r.output
    assert "Traceback" not in r.output


# ----------------------------------------------------------------------------------------------
# MXFP4 (GPT-OSS): packed on the host, copied packed, unpacked on the device, exact
# ----------------------------------------------------------------------------------------------
def _mxfp4_folder(saved, dst: Path) -> tuple[dict, Path]:
    from safetensors.torch import load_file, save_file

    from moebench.weights.mxfp4 import quantize

    _, folder = saved["tiny-gpt-oss"]
    sd = load_file(str(folder / "model.safetensors"))
    out = {}
    for k, v in sd.items():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = quantize(v.transpose(1, 2))     # hub layout: [E, out, in/32, 16]
            out[k + "_blocks"], out[k + "_scales"] = blocks, scales
        else:
            out[k] = v
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return out, dst


def test_mxfp4_experts_stay_packed_and_match_transformers_dequantisation(saved, tmp_path):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from moebench.bench.run import build_result, run_strategy
    from moebench.engine.session import prepare

    tensors, folder = _mxfp4_folder(saved, tmp_path)
    lazy = load_model(str(folder))                           # MXFP4: lazy by default
    assert lazy.load_stats.layout == "mxfp4"
    h = i = 64
    packed = 3 * h * i // 2 + 3 * h * i // 32 + (2 * i + h) * 4    # blocks + scales + fp32 biases
    assert lazy.expert_store.expert_bytes == lazy.shape.expert_bytes == packed
    assert lazy.expert_store.layers[0]["gate_up_proj_blocks"].dtype == torch.uint8
    # reference: the same model with experts dequantised by transformers' own code
    ref = load_model("tiny-gpt-oss")
    for v in adapter_for(ref.model).moe:
        pre = f"model.layers.{v.index}.mlp.experts."
        for p in ("gate_up_proj", "down_proj"):
            getattr(v.experts, p).data.copy_(convert_moe_packed_tensors(
                tensors[pre + p + "_blocks"], tensors[pre + p + "_scales"], dtype=torch.float32))
    a, b = _run(ref, "lru"), _run(lazy, "lru")
    for key in a.logits:
        assert all(torch.equal(x, y) for x, y in zip(a.logits[key], b.logits[key]))
    prep = prepare(RUN, loaded=lazy)
    piece = run_strategy(prep, "sync", {})
    res = build_result(prep, [piece])
    assert any("MXFP4 experts kept packed" in n for n in res["notes"])
    sync_bytes = res["metrics"]["h2d_bytes_per_token"]
    assert sync_bytes == lazy.shape.top_k * lazy.shape.moe_layers * packed   # copies move packed bytes
    assert res["budget"]["device_memory_bytes"] is None and res["budget"]["offload_emulated"] is False


def test_mxfp4_roundtrip_is_exact_on_the_grid():
    from moebench.weights.mxfp4 import FP4_VALUES, dequantize, quantize

    torch.manual_seed(0)
    codes = torch.randint(0, 16, (3, 5, 64))
    grid = torch.tensor(FP4_VALUES)[codes] * 2.0 ** torch.randint(-4, 4, (3, 5, 2)).repeat_interleave(32, -1)
    blocks, scales = quantize(grid)
    assert torch.equal(dequantize(blocks, scales, torch.float32), grid.transpose(-2, -1))


# ----------------------------------------------------------------------------------------------
# host memory: one copy of the weights
# ----------------------------------------------------------------------------------------------
MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    from moebench.models.loading import load_model
    assert "transformers" not in sys.modules
    load_model(sys.argv[1], lazy=True)             # warm-up on a small folder: imports, tokenizer
    import huggingface_hub.constants as hc
    offline = bool(hc.HF_HUB_OFFLINE)              # read when huggingface_hub was imported
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                # reset the peak RSS to the current RSS
    before = status("VmRSS")
    loaded = load_model(sys.argv[2], lazy=True)
    peak = status("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "store": loaded.expert_store.total_bytes,
                      "offline": offline}))
""")


def test_peak_host_memory_stays_near_one_copy(saved, tmp_path):
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("cannot reset the peak RSS here")
    from transformers import AutoModelForCausalLM

    from moebench.models.loading import _build_config
    from moebench.models.presets import PRESETS as TABLE

    cfg = dict(TABLE["tiny-qwen3-moe"].config, hidden_size=128, head_dim=32, moe_intermediate_size=256)
    torch.manual_seed(0)
    big = AutoModelForCausalLM.from_config(_build_config(cfg), dtype=torch.float32)
    big.save_pretrained(tmp_path)
    del big
    ckpt = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    _, small = saved["tiny-qwen3-moe"]
    probe = tmp_path / "probe.py"
    probe.write_text(MEMORY_PROBE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run([sys.executable, str(probe), str(small), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["offline"], "HF_HUB_OFFLINE was not set before huggingface_hub was imported"
    assert m["store"] > 0.9 * ckpt                    # the experts are most of the checkpoint
    delta = m["peak"] - m["before"]
    assert delta >= 0.9 * m["store"]                  # the store really is in memory ...
    assert delta < 1.5 * ckpt, (delta, ckpt)          # ... and nothing like a second copy (eager: ~3x)
