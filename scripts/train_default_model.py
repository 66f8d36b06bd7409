"""Train the small Qwen3-MoE model shipped as moebench's default CPU/CI model.

Why: a random-initialised MoE routes unrealistically (reuse and expert concentration are
artefacts of ``initializer_range``), so offloading/prefetching hit rates measured on one mean
nothing. This script trains a tiny ``Qwen3MoeForCausalLM`` -- the class of Qwen3-30B-A3B -- just
long enough for its routers to carry real structure, on one CPU thread in well under 45 minutes.

Data: the corpus of ``train_tokenizer.py`` (stdlib ``*.py`` + GSM8K train if present),
tokenised with the bundled tokenizer, each document followed by ``<|endoftext|>``. The last 2%
of each source's token stream is held out (so the held-out set holds both code -- the tail of the
sorted stdlib, i.e. ``xml*``/``zipfile``/``zoneinfo`` -- and GSM8K prose). Training samples random
windows of the remaining stream with a fixed-seed generator.

Output: ``moebench/models/embedded/tiny-qwen3-trained/`` with ``config.json``,
``model.safetensors`` (bfloat16, the config says so), the tokenizer files and ``CARD.md``
(corpus, shape, training figures, held-out perplexity of the trained model and of a
random-init model of the same shape and seed, versions, the command that reproduces it).

Examples::

    .venv/bin/python scripts/train_default_model.py                      # the shipped model
    .venv/bin/python scripts/train_default_model.py --steps 20 --out /tmp/m   # smoke run
    nohup .venv/bin/python scripts/train_default_model.py > /tmp/train_default.log 2>&1 &
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from train_tokenizer import (
    EOT,
    TOKENIZER_DIR,
    EMBEDDED_DIR,
    corpus_documents,
    resolve_gsm8k,
)

MODEL_DIR = EMBEDDED_DIR / "tiny-qwen3-trained"
HELDOUT_FRACTION = 0.02
MAX_WEIGHTS_BYTES = 25 * 1024 * 1024


def model_config(vocab_size: int, eot_id: int):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        moe_intermediate_size=64,
        intermediate_size=256,  # unused: every layer is sparse (mlp_only_layers=[])
        num_experts=32,
        num_experts_per_tok=4,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        rms_norm_eps=1e-6,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
    )


@dataclass(frozen=True)
class TokenSplit:
    train: torch.Tensor  # [N_train] int64
    heldout: dict[str, torch.Tensor]  # source -> [N_src] int64
    source_tokens: dict[str, int]  # source -> total tokens (train + held-out)
    source_docs: dict[str, int]


def tokenise_and_split(gsm8k: Path | None) -> TokenSplit:
    """Tokenise each source as one stream; its last HELDOUT_FRACTION is held out."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    eot = tok.token_to_id(EOT)
    docs = corpus_documents(gsm8k)
    streams: dict[str, list[int]] = {}
    n_docs: dict[str, int] = {}
    for doc, enc in zip(docs, tok.encode_batch([d.text for d in docs])):
        streams.setdefault(doc.source, []).extend(enc.ids + [eot])
        n_docs[doc.source] = n_docs.get(doc.source, 0) + 1
    train_parts, heldout = [], {}
    for src, ids in streams.items():
        cut = len(ids) - int(len(ids) * HELDOUT_FRACTION)
        t = torch.tensor(ids, dtype=torch.long)
        train_parts.append(t[:cut])
        heldout[src] = t[cut:]
    return TokenSplit(
        torch.cat(train_parts), heldout, {s: len(v) for s, v in streams.items()}, n_docs
    )


@torch.no_grad()
def heldout_loss(model, tokens: torch.Tensor, seq_len: int, batch: int) -> tuple[float, int]:
    """Mean next-token NLL over non-overlapping windows of ``tokens``; returns (loss, n_pred)."""
    model.eval()
    n_win = len(tokens) // seq_len
    windows = tokens[: n_win * seq_len].view(n_win, seq_len)  # [W, L]
    total, count = 0.0, 0
    for i in range(0, n_win, batch):
        x = windows[i : i + batch]  # [B, L]
        logits = model(input_ids=x, output_router_logits=False).logits.float()  # [B, L, V]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += x[:, 1:].numel()
    return total / count, count


def evaluate(model, split: TokenSplit, seq_len: int, batch: int) -> dict[str, float]:
    """Held-out loss per source and over all held-out tokens (prediction-weighted)."""
    out, tot, cnt = {}, 0.0, 0
    for src, toks in split.heldout.items():
        loss, n = heldout_loss(model, toks, seq_len, batch)
        out[src] = loss
        tot, cnt = tot + loss * n, cnt + n
    out["all"] = tot / cnt
    out["n_pred"] = cnt
    return out


def lr_at(step: int, steps: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(model, lr: float, weight_decay: float):
    # No decay on norms (1-D) or the tied embedding: decaying them only hurts a model this small.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed_tokens" not in name else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8,
    )


def train(model, split: TokenSplit, args) -> dict[str, float]:
    opt = build_optimizer(model, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    n_start = len(split.train) - args.seq_len
    t0 = time.perf_counter()
    ce_acc, aux_acc, n_acc = 0.0, 0.0, 0
    last = {}
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        starts = torch.randint(0, n_start, (args.batch,), generator=gen)  # [B]
        x = torch.stack([split.train[s : s + args.seq_len] for s in starts.tolist()])  # [B, L]
        out = model(input_ids=x, labels=x, output_router_logits=True)
        # out.loss already includes router_aux_loss_coef * aux_loss (load balancing).
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        aux = float(out.aux_loss.detach())
        ce_acc += float(out.loss.detach()) - model.config.router_aux_loss_coef * aux
        aux_acc += aux
        n_acc += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.perf_counter() - t0
            last = {"ce": ce_acc / n_acc, "aux": aux_acc / n_acc}
            eta = el / (step + 1) * (args.steps - step - 1)
            print(f"step {step + 1:5d}/{args.steps}  loss {last['ce']:.4f}  aux {last['aux']:.3f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  elapsed {el:7.1f}s  eta {eta:6.0f}s", flush=True)
            ce_acc, aux_acc, n_acc = 0.0, 0.0, 0
    last["wall_s"] = time.perf_counter() - t0
    return last


def save(model, out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER_DIR / name, out_dir / name)
    weights = out_dir / "model.safetensors"
    weights.chmod(0o644)  # safetensors writes 0600; the file ships in the package
    size = weights.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise SystemExit(f"model.safetensors is {size / 1e6:.1f} MB > 25 MiB budget")
    return size


def write_card(out_dir: Path, info: dict) -> None:
    import tokenizers
    import transformers

    ev_t, ev_r = info["eval_trained"], info["eval_random"]

    def row(name, ev):
        return (f"| {name} | {ev['all']:.3f} | {math.exp(ev['all']):.1f} | "
                + " | ".join(f"{math.exp(ev[s]):.1f}" for s in info["sources"]) + " |")

    src_cols = " | ".join(f"ppl {s}" for s in info["sources"])
    cfg = info["config"]
    card = f"""# tiny-qwen3-trained

A small, actually-trained `Qwen3MoeForCausalLM` (the class of Qwen3-30B-A3B), shipped as
moebench's default model for CPU runs and CI. It exists because random-initialised MoE models
route unrealistically; this one is trained just long enough for its routers to carry structure.
It is not a useful language model.

## Corpus

- Python {platform.python_version()} standard library `*.py` (`sysconfig.get_paths()["stdlib"]`,
  sorted relative paths, skipping `test`, `tests`, `idle_test`, `site-packages` directories):
  {info['source_docs'].get('stdlib', 0)} files, {info['source_tokens'].get('stdlib', 0):,} tokens.
- GSM8K train (question + newline + answer): {info['source_docs'].get('gsm8k', 0)} records,
  {info['source_tokens'].get('gsm8k', 0):,} tokens{'' if 'gsm8k' in info['sources'] else ' (absent: skipped)'}.
- Each document is followed by `<|endoftext|>`. Held out: the last {HELDOUT_FRACTION:.0%} of each
  source's token stream ({info['eval_trained']['n_pred']:,} predicted tokens); training used the rest
  ({info['train_tokens']:,} tokens), sampled as random windows.

## Tokenizer

Byte-level BPE (`tokenizers`), vocab {cfg.vocab_size}, one special token `<|endoftext|>`
(id {cfg.eos_token_id}; bos = eos = pad), trained on the same corpus by `scripts/train_tokenizer.py`.
Files: `tokenizer.json`, `tokenizer_config.json` (copies of `moebench/models/embedded/tokenizer/`).

## Shape

| field | value |
|---|---|
| layers | {cfg.num_hidden_layers} (all MoE) |
| hidden | {cfg.hidden_size} |
| attention heads / kv heads / head dim | {cfg.num_attention_heads} / {cfg.num_key_value_heads} / {cfg.head_dim} |
| experts / top-k | {cfg.num_experts} / {cfg.num_experts_per_tok} (norm_topk_prob={cfg.norm_topk_prob}) |
| expert intermediate | {cfg.moe_intermediate_size} |
| max positions | {cfg.max_position_embeddings} |
| tied embeddings | {cfg.tie_word_embeddings} |
| parameters | {info['n_params']:,} ({info['n_expert_params']:,} in experts) |
| stored dtype | bfloat16 (`model.safetensors`, {info['weights_bytes'] / 1e6:.2f} MB) |

## Training

| field | value |
|---|---|
| seed | {info['args'].seed} |
| steps | {info['args'].steps} |
| batch x seq len | {info['args'].batch} x {info['args'].seq_len} ({info['args'].batch * info['args'].seq_len} tokens/step, {info['args'].steps * info['args'].batch * info['args'].seq_len:,} total) |
| optimiser | AdamW (0.9, 0.95), peak lr {info['args'].lr}, {info['args'].warmup} warmup steps, cosine to 10%, weight decay {info['args'].weight_decay} (matrices), clip {info['args'].clip} |
| load balancing | router aux loss, coef {cfg.router_aux_loss_coef} |
| final train loss (CE, mean of last {info['args'].log_every} steps) | {info['final']['ce']:.4f} (aux {info['final']['aux']:.3f}) |
| wall time | {info['final']['wall_s'] / 60:.1f} min on {info['threads']} CPU thread ({platform.processor() or platform.machine()}) |
| versions | torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, Python {platform.python_version()} |

## Held-out evaluation

Teacher-forced next-token loss over non-overlapping {info['args'].seq_len}-token windows of the held-out
tokens. The trained row uses the saved bfloat16 weights loaded back as float32; the random row is
a random-init model of the same config and seed (`initializer_range` {cfg.initializer_range}).

| model | loss | ppl | {src_cols} |
|---|---|---|{'---|' * len(info['sources'])}
{row('trained', ev_t)}
{row('random init', ev_r)}

## Reproduce

```
cd <repo root>
{info['command']}
```
"""
    (out_dir / "CARD.md").write_text(card)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gsm8k", default="../shared/data/gsm8k/train.jsonl",
                    help="GSM8K train.jsonl, relative to the repo root (skipped if absent)")
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--out", default=str(MODEL_DIR))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from transformers import Qwen3MoeForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"))
    eot_id = tok.convert_tokens_to_ids(EOT)
    t0 = time.perf_counter()
    split = tokenise_and_split(resolve_gsm8k(args.gsm8k))
    sources = list(split.heldout)
    print(f"corpus: {split.source_tokens} tokens, train {len(split.train):,}, held-out "
          f"{ {s: len(v) for s, v in split.heldout.items()} } ({time.perf_counter() - t0:.1f}s)", flush=True)

    config = model_config(len(tok), eot_id)

    def fresh_model():
        torch.manual_seed(args.seed)
        # eager experts: the per-expert loop is the fastest CPU path (batched_mm is ~30x slower).
        return Qwen3MoeForCausalLM._from_config(config, experts_implementation="eager", dtype=torch.float32)

    model = fresh_model()
    n_params = sum(p.numel() for p in model.parameters())
    n_expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    print(f"model: {n_params:,} parameters ({n_expert:,} in experts)", flush=True)

    final = train(model, split, args)
    print(f"training done in {final['wall_s']:.1f}s", flush=True)
    out_dir = Path(args.out)
    weights_bytes = save(model, out_dir)
    print(f"saved {out_dir} (model.safetensors {weights_bytes / 1e6:.2f} MB)", flush=True)

    trained = Qwen3MoeForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
    ev_t = evaluate(trained, split, args.seq_len, args.eval_batch)
    ev_r = evaluate(fresh_model(), split, args.seq_len, args.eval_batch)
    for name, ev in (("trained", ev_t), ("random-init", ev_r)):
        per = "  ".join(f"{s} {math.exp(ev[s]):.1f}" for s in sources)
        print(f"held-out {name:11s}: loss {ev['all']:.4f}  ppl {math.exp(ev['all']):.2f}  ({per})", flush=True)

    command = ".venv/bin/python scripts/train_tokenizer.py\n" + (
        ".venv/bin/python scripts/train_default_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    ).rstrip() + "\n.venv/bin/python scripts/routing_report.py"
    write_card(out_dir, {
        "args": args, "config": config, "sources": sources, "final": final,
        "eval_trained": ev_t, "eval_random": ev_r, "n_params": n_params, "n_expert_params": n_expert,
        "weights_bytes": weights_bytes, "train_tokens": len(split.train),
        "source_tokens": split.source_tokens, "source_docs": split.source_docs,
        "threads": args.threads, "command": command,
    })
    print(f"wrote {out_dir / 'CARD.md'}; total {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    # The machine is shared: keep the tokenizers' rayon pool to one thread too.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
