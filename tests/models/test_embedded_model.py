"""The embedded trained Qwen3-MoE model: it loads offline, has the promised shape, its
tokenizer round-trips, and it is actually trained (held-out perplexity far below a random-init
model of the same shape)."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

EMBEDDED = Path(__file__).resolve().parents[2] / "moebench" / "models" / "embedded"
MODEL_DIR = EMBEDDED / "tiny-qwen3-trained"
TOKENIZER_DIR = EMBEDDED / "tokenizer"
EOT = "<|endoftext|>"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def model():
    m = transformers.Qwen3MoeForCausalLM.from_pretrained(
        str(MODEL_DIR), dtype=torch.float32, local_files_only=True
    )
    return m.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)


def heldout_stdlib_text() -> str:
    # The last file of the sorted stdlib corpus lies in the training script's held-out 2%.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for rel in ("zoneinfo/_zoneinfo.py", "zipimport.py"):
        if (stdlib / rel).exists():
            return (stdlib / rel).read_text(encoding="utf-8", errors="replace")
    pytest.skip("no held-out stdlib file found")


def test_folder_contents():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "CARD.md"):
        assert (MODEL_DIR / name).is_file(), name
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    card = (MODEL_DIR / "CARD.md").read_text()
    assert "## Held-out evaluation" in card and "## Routing" in card


def test_shape(model):
    cfg = model.config
    assert cfg.model_type == "qwen3_moe"
    assert cfg.num_hidden_layers >= 8
    assert cfg.num_experts >= 32
    assert cfg.num_experts_per_tok > 1
    assert list(cfg.mlp_only_layers) == [] and cfg.decoder_sparse_step == 1  # every layer is MoE
    assert all(hasattr(layer.mlp, "gate") for layer in model.model.layers)
    assert next(model.parameters()).dtype == torch.float32


def test_stored_dtype_is_declared():
    cfg = transformers.AutoConfig.from_pretrained(str(MODEL_DIR), local_files_only=True)
    assert str(cfg.dtype).removeprefix("torch.") == "bfloat16"


@pytest.mark.parametrize("folder", [MODEL_DIR, TOKENIZER_DIR], ids=["model", "bundled"])
def test_tokenizer_round_trip(folder):
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = "def add(a, b):\n    return a + b  # Natalia sold 48/2 = 24 clips. ünïcode"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # it actually merges
    assert tok.eos_token == EOT and tok.pad_token == EOT and len(tok) <= 4096


def test_tokenizer_file_loads_directly():
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"))
    assert tok.convert_tokens_to_ids(EOT) == 0


@torch.no_grad()
def perplexity(model, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids, output_router_logits=False, use_cache=False).logits  # [B, L, V]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )
    return math.exp(float(nll))


def test_trained_far_better_than_random(model, tokenizer):
    ids = tokenizer.encode(heldout_stdlib_text(), verbose=False)  # longer than 512 on purpose
    assert len(ids) >= 384
    x = torch.tensor(ids[-384:]).view(3, 128)  # [B, L] a few hundred held-out tokens
    torch.manual_seed(0)
    random_init = transformers.Qwen3MoeForCausalLM(model.config).float().eval()
    ppl_trained, ppl_random = perplexity(model, x), perplexity(random_init, x)
    assert ppl_random > 1000  # sanity: a random model is near-uniform over the vocab
    assert ppl_trained < 0.25 * ppl_random, (ppl_trained, ppl_random)
