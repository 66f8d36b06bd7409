"""The preset table (gpt-fast's `ModelArgs.from_name`, for MoE checkpoints).

Real presets name a Hugging Face id and carry the config figures the simulator needs, so
`moebench replay --model qwen3-30b-a3b` works with no weights on disk; their weights load only
from a local folder (`$MOEBENCH_MODELS/<preset>`, or the local HF cache). Tiny presets are
built from their config with a seeded random init and need no download; they keep each
architecture's routing rule and top-k. The embedded default is a small Qwen3-MoE that was
actually trained (see `moebench/models/embedded/tiny-qwen3-trained/CARD.md`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from moebench.errors import UserError, did_you_mean
from moebench.offload.shapes import ModelShape, shape_from_config

EMBEDDED_DEFAULT = "tiny-qwen3-trained"


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    hf_id: str | None
    config: dict = field(default_factory=dict)
    embedded: str | None = None     # folder under moebench/models/embedded
    tiny: bool = False
    description: str = ""


_QWEN3_30B = dict(
    model_type="qwen3_moe", hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
    num_key_value_heads=4, head_dim=128, moe_intermediate_size=768, intermediate_size=6144,
    num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, vocab_size=151936,
    decoder_sparse_step=1, mlp_only_layers=[], dtype="bfloat16",
)
_GPT_OSS_20B = dict(
    model_type="gpt_oss", hidden_size=2880, num_hidden_layers=24, num_attention_heads=64,
    num_key_value_heads=8, head_dim=64, intermediate_size=2880, num_local_experts=32,
    num_experts_per_tok=4, vocab_size=201088, dtype="bfloat16",
    quantization_config={"quant_method": "mxfp4"},
)
_GPT_OSS_120B = dict(_GPT_OSS_20B, num_hidden_layers=36, num_local_experts=128)
_MIXTRAL = dict(
    model_type="mixtral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, intermediate_size=14336, num_local_experts=8,
    num_experts_per_tok=2, vocab_size=32000, dtype="bfloat16",
)
_OLMOE = dict(
    model_type="olmoe", hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
    num_key_value_heads=16, head_dim=128, intermediate_size=1024, num_experts=64,
    num_experts_per_tok=8, norm_topk_prob=False, vocab_size=50304, dtype="bfloat16",
)
# Published configs (config.json on the Hugging Face hub), the keys the shapes read.
_DEEPSEEK_V2_LITE = dict(
    model_type="deepseek_v2", hidden_size=2048, num_hidden_layers=27, num_attention_heads=16,
    num_key_value_heads=16, intermediate_size=10944, moe_intermediate_size=1408,
    n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
    moe_layer_freq=1, n_group=1, topk_group=1, topk_method="greedy", norm_topk_prob=False,
    scoring_func="softmax", routed_scaling_factor=1.0, kv_lora_rank=512, q_lora_rank=None,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=102400,
    dtype="bfloat16",
)
_DEEPSEEK_V3 = dict(
    model_type="deepseek_v3", hidden_size=7168, num_hidden_layers=61, num_attention_heads=128,
    num_key_value_heads=128, intermediate_size=18432, moe_intermediate_size=2048,
    n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, first_k_dense_replace=3,
    moe_layer_freq=1, n_group=8, topk_group=4, topk_method="noaux_tc", norm_topk_prob=True,
    scoring_func="sigmoid", routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=129280,
    num_nextn_predict_layers=1, dtype="bfloat16",
    quantization_config={"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                         "weight_block_size": [128, 128]},
)
_QWEN15_MOE = dict(
    model_type="qwen2_moe", hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
    num_key_value_heads=16, intermediate_size=5632, moe_intermediate_size=1408,
    shared_expert_intermediate_size=5632, num_experts=60, num_experts_per_tok=4,
    norm_topk_prob=False, decoder_sparse_step=1, vocab_size=151936, dtype="bfloat16",
)
_QWEN2_57B = dict(
    model_type="qwen2_moe", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, intermediate_size=18944, moe_intermediate_size=2560,
    shared_expert_intermediate_size=20480, num_experts=64, num_experts_per_tok=8,
    norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[], vocab_size=151936,
    dtype="bfloat16",
)
_QWEN3_235B = dict(
    model_type="qwen3_moe", hidden_size=4096, num_hidden_layers=94, num_attention_heads=64,
    num_key_value_heads=4, head_dim=128, moe_intermediate_size=1536, intermediate_size=12288,
    num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, vocab_size=151936,
    decoder_sparse_step=1, mlp_only_layers=[], dtype="bfloat16",
)
_MIXTRAL_8X22B = dict(
    model_type="mixtral", hidden_size=6144, num_hidden_layers=56, num_attention_heads=48,
    num_key_value_heads=8, head_dim=128, intermediate_size=16384, num_local_experts=8,
    num_experts_per_tok=2, vocab_size=32000, dtype="bfloat16",
)
# Tiny presets: Qwen3-30B-A3B keeps top-8 and hidden/width ~ 2.67; GPT-OSS-20B keeps 32 experts,
# top-4, width == hidden, biases, the clamped SwiGLU and the alternating sliding window.
_TINY_QWEN3 = dict(
    model_type="qwen3_moe", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, moe_intermediate_size=24, intermediate_size=96,
    num_experts=32, num_experts_per_tok=8, norm_topk_prob=True, vocab_size=4096,
    decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=1024,
    tie_word_embeddings=True, dtype="float32",
)
_TINY_GPT_OSS = dict(
    model_type="gpt_oss", hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=1, head_dim=8, intermediate_size=64, num_local_experts=32,
    num_experts_per_tok=4, vocab_size=4096, sliding_window=32, max_position_embeddings=1024,
    layer_types=["sliding_attention", "full_attention"] * 2, tie_word_embeddings=True,
    dtype="float32", rope_parameters={"rope_type": "default", "rope_theta": 150000.0},
)

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("qwen3-30b-a3b", "qwen3_moe", "Qwen/Qwen3-30B-A3B", _QWEN3_30B,
           description="Qwen3-30B-A3B, 48 x 128 experts, top-8, bf16"),
    Preset("gpt-oss-20b", "gpt_oss", "openai/gpt-oss-20b", _GPT_OSS_20B,
           description="GPT-OSS-20B, 24 x 32 experts, top-4, MXFP4 experts"),
    Preset("gpt-oss-120b", "gpt_oss", "openai/gpt-oss-120b", _GPT_OSS_120B,
           description="GPT-OSS-120B, 36 x 128 experts, top-4, MXFP4 experts"),
    Preset("mixtral-8x7b", "mixtral", "mistralai/Mixtral-8x7B-v0.1", _MIXTRAL,
           description="Mixtral-8x7B, 32 x 8 experts, top-2, bf16"),
    Preset("olmoe-1b-7b", "olmoe", "allenai/OLMoE-1B-7B-0924", _OLMOE,
           description="OLMoE-1B-7B, 16 x 64 experts, top-8, bf16"),
    Preset("deepseek-v2-lite", "deepseek_v2", "deepseek-ai/DeepSeek-V2-Lite", _DEEPSEEK_V2_LITE,
           description="DeepSeek-V2-Lite, 26 x 64 routed experts (+2 shared), top-6, first layer "
                       "dense, MLA, bf16"),
    Preset("deepseek-v3", "deepseek_v3", "deepseek-ai/DeepSeek-V3", _DEEPSEEK_V3,
           description="DeepSeek-V3, 58 x 256 routed experts (+1 shared), top-8, first 3 layers "
                       "dense, MLA, FP8 experts"),
    Preset("qwen1.5-moe-a2.7b", "qwen2_moe", "Qwen/Qwen1.5-MoE-A2.7B", _QWEN15_MOE,
           description="Qwen1.5-MoE-A2.7B, 24 x 60 experts (+1 gated shared), top-4, bf16"),
    Preset("qwen2-57b-a14b", "qwen2_moe", "Qwen/Qwen2-57B-A14B", _QWEN2_57B,
           description="Qwen2-57B-A14B, 28 x 64 experts (+1 gated shared), top-8, bf16"),
    Preset("qwen3-235b-a22b", "qwen3_moe", "Qwen/Qwen3-235B-A22B", _QWEN3_235B,
           description="Qwen3-235B-A22B, 94 x 128 experts, top-8, bf16"),
    Preset("mixtral-8x22b", "mixtral", "mistralai/Mixtral-8x22B-v0.1", _MIXTRAL_8X22B,
           description="Mixtral-8x22B, 56 x 8 experts, top-2, bf16"),
    Preset("tiny-qwen3-moe", "qwen3_moe", None, _TINY_QWEN3, tiny=True,
           description="random-init Qwen3-MoE, 4 x 32 experts, top-8 (tests)"),
    Preset("tiny-gpt-oss", "gpt_oss", None, _TINY_GPT_OSS, tiny=True,
           description="random-init GPT-OSS, 4 x 32 experts, top-4 (tests)"),
    Preset(EMBEDDED_DEFAULT, "qwen3_moe", None, {}, embedded=EMBEDDED_DEFAULT,
           description="trained Qwen3-MoE shipped in the package (the default)"),
]}


def embedded_dir(name: str) -> Path:
    return Path(str(resources.files("moebench.models") / "embedded" / name))


def tokenizer_dir() -> Path:
    return embedded_dir("tokenizer")


def default_model_name() -> str:
    """The embedded trained model when it ships, else the random tiny Qwen3 preset."""
    if (embedded_dir(EMBEDDED_DEFAULT) / "config.json").exists():
        return EMBEDDED_DEFAULT
    return "tiny-qwen3-moe"


def get_preset(name: str) -> Preset:
    if name in ("default", ""):
        name = default_model_name()
    if name not in PRESETS:
        raise UserError(f"unknown model '{name}'{did_you_mean(name, PRESETS)}; "
                        "or pass a local checkpoint folder.")
    return PRESETS[name]


def hf_cache_dirs() -> list[Path]:
    roots = []
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        roots.append(Path(os.environ["HF_HOME"]) / "hub")
    roots.append(Path.home() / ".cache" / "huggingface" / "hub")
    return roots


def candidate_dirs(preset: Preset) -> list[Path]:
    """Every place a real preset's weights are looked for, in order."""
    places: list[Path] = []
    if os.environ.get("MOEBENCH_MODELS"):
        places.append(Path(os.environ["MOEBENCH_MODELS"]) / preset.name)
    if preset.hf_id:
        for root in hf_cache_dirs():
            snap_root = root / ("models--" + preset.hf_id.replace("/", "--")) / "snapshots"
            if snap_root.is_dir():
                places.extend(sorted(p for p in snap_root.iterdir() if p.is_dir()))
            else:
                places.append(snap_root / "<revision>")
    return places


def local_path(preset: Preset) -> Path | None:
    if preset.embedded:
        d = embedded_dir(preset.embedded)
        return d if (d / "config.json").exists() else None
    for d in candidate_dirs(preset):
        if (d / "config.json").exists():
            return d
    return None


def is_available(preset: Preset) -> bool:
    return preset.tiny or local_path(preset) is not None


def resolve_config(name_or_path: str) -> tuple[dict, str, Preset | None, Path | None]:
    """(config dict, display name, preset or None, local folder or None) without loading weights."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() or "/" in name_or_path or name_or_path.startswith("."):
        if not (path / "config.json").exists():
            raise UserError(f"model folder {path} has no config.json.")
        return _read_json(path / "config.json"), path.name, None, path
    preset = get_preset(name_or_path)
    if preset.tiny:
        return dict(preset.config), preset.name, preset, None
    local = local_path(preset)
    if local is not None:
        return _read_json(local / "config.json"), preset.name, preset, local
    return dict(preset.config), preset.name, preset, None


def model_shape(name_or_path: str, dtype: str | None = None) -> ModelShape:
    """The shape a live run of this model has, from its config alone (the embedded default
    model runs in float32, as `moebench.models.loading` loads it, whatever its config says)."""
    cfg, name, preset, _ = resolve_config(name_or_path)
    if not cfg:
        raise UserError(f"model '{name}' has no config on disk.")
    if dtype is None and preset is not None and preset.embedded:
        dtype = "float32"
    return shape_from_config(cfg, name=name, dtype=dtype)


def shape_summary(name: str) -> dict:
    """What `moebench models --json` says of a preset's shape (None where it has no config)."""
    keys = ("num_layers", "moe_layers", "num_experts", "top_k", "expert_bytes", "shared_experts",
            "shared_expert_bytes", "dtype")
    try:
        s = model_shape(name)
    except UserError:
        return dict.fromkeys(keys)
    return {"num_layers": s.num_layers, "moe_layers": s.moe_layers, "num_experts": s.num_experts,
            "top_k": s.top_k, "expert_bytes": s.expert_bytes, "shared_experts": s.shared_experts,
            "shared_expert_bytes": s.shared_bytes, "dtype": s.dtype}


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {p}: {exc}.") from None
