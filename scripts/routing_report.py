"""Measure routing structure of the embedded trained model against a random-init twin.

Offloading and prefetching strategies live on three properties of a router, so those are what
this script measures, per layer, teacher-forced over held-out text:

* **reuse** -- |E_t ∩ E_{t-1}| / k for consecutive tokens of a sequence: what an LRU-style
  expert cache can hope to hit during decode (uniform random routing gives k/E).
* **popularity skew** -- the share of all activations that go to the most popular 25% of
  experts (uniform: 0.25) and the entropy of the popularity distribution divided by log E
  (uniform: 1.0): how much a static "keep the hot experts resident" policy gains.
* **next-layer recall@k** -- apply layer i+1's router to layer i's post-attention residual
  ``u_i`` (normalised by layer i+1's ``post_attention_layernorm``):
  ``topk(softmax(W_gate[i+1] · norm2[i+1](u_i)))``, and count how much of layer i+1's true
  top-k it recovers: how well a speculative prefetcher can guess one layer ahead.

The random-init model has the same config and seed (``initializer_range`` as configured,
0.02 by default). The figures are printed and written as a "Routing" section of the embedded
model's ``CARD.md`` (replacing any previous one).

Examples::

    .venv/bin/python scripts/routing_report.py
    .venv/bin/python scripts/routing_report.py --sequences 64 --seq-len 128 --no-card
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from train_default_model import MODEL_DIR, tokenise_and_split
from train_tokenizer import resolve_gsm8k


@dataclass(frozen=True)
class LayerRouting:
    layer: int
    reuse: float
    top25_share: float
    entropy: float  # normalised, 1.0 = uniform
    next_recall: float | None  # None for the last layer


def heldout_windows(gsm8k: Path | None, n_seq: int, seq_len: int) -> torch.Tensor:
    """``n_seq`` windows evenly spaced over the held-out stream (stdlib, then GSM8K)."""
    split = tokenise_and_split(gsm8k)
    stream = torch.cat(list(split.heldout.values()))  # [N]
    starts = torch.linspace(0, len(stream) - seq_len, n_seq).long()  # [S]
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])  # [S, L]


@torch.no_grad()
def capture(model, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run ``x`` [S, L]; return per layer the router top-k [S, L, k] and post-attn residual [S, L, D]."""
    layers = model.model.layers
    topk: list[torch.Tensor | None] = [None] * len(layers)
    resid: list[torch.Tensor | None] = [None] * len(layers)
    handles = []
    for i, layer in enumerate(layers):
        def gate_hook(_m, _inp, out, i=i):
            # Qwen3MoeTopKRouter returns (router_logits, router_scores, router_indices).
            topk[i] = out[2].view(*x.shape, -1)  # [S, L, k]

        def norm_hook(_m, inp, i=i):
            resid[i] = inp[0].detach().clone()  # [S, L, D]

        handles.append(layer.mlp.gate.register_forward_hook(gate_hook))
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(norm_hook))
    try:
        model.eval()
        model(input_ids=x, use_cache=False, output_router_logits=False)
    finally:
        for h in handles:
            h.remove()
    return topk, resid


def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a ∩ b| / k per row; a, b [..., k] expert ids -> [...]."""
    return (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1).float().mean(-1)


@torch.no_grad()
def routing_metrics(model, x: torch.Tensor) -> list[LayerRouting]:
    topk, resid = capture(model, x)
    layers = model.model.layers
    n_exp = model.config.num_experts
    k = model.config.num_experts_per_tok
    out = []
    for i, e in enumerate(topk):  # e: [S, L, k]
        reuse = float(overlap(e[:, 1:], e[:, :-1]).mean())
        counts = torch.bincount(e.reshape(-1), minlength=n_exp).float()  # [E]
        p = counts / counts.sum()
        top25 = float(p.sort(descending=True).values[: max(1, n_exp // 4)].sum())
        ent = float(-(p[p > 0] * p[p > 0].log()).sum() / torch.log(torch.tensor(float(n_exp))))
        recall = None
        if i + 1 < len(layers):
            nxt = layers[i + 1]
            h = nxt.post_attention_layernorm(resid[i])  # [S, L, D]
            logits = torch.nn.functional.linear(h, nxt.mlp.gate.weight)  # [S, L, E]
            pred = logits.softmax(-1).topk(k, dim=-1).indices  # [S, L, k]
            recall = float(overlap(pred, topk[i + 1]).mean())
        out.append(LayerRouting(i, reuse, top25, ent, recall))
    return out


def mean_row(rows: list[LayerRouting]) -> LayerRouting:
    rec = [r.next_recall for r in rows if r.next_recall is not None]
    n = len(rows)
    return LayerRouting(
        -1, sum(r.reuse for r in rows) / n, sum(r.top25_share for r in rows) / n,
        sum(r.entropy for r in rows) / n, sum(rec) / len(rec) if rec else None,
    )


def markdown_table(results: dict[str, list[LayerRouting]]) -> str:
    lines = [
        "| model | layer | reuse | top-25% share | popularity entropy | next-layer recall@k |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows + [mean_row(rows)]:
            layer = "mean" if r.layer < 0 else str(r.layer)
            rec = "—" if r.next_recall is None else f"{r.next_recall:.3f}"
            lines.append(f"| {name} | {layer} | {r.reuse:.3f} | {r.top25_share:.3f} | {r.entropy:.3f} | {rec} |")
    return "\n".join(lines)


def write_card_section(card: Path, body: str) -> None:
    text = card.read_text() if card.exists() else ""
    head = text.split("\n## Routing\n", 1)[0].rstrip("\n")
    card.write_text(head + "\n\n## Routing\n\n" + body.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--gsm8k", default="../shared/data/gsm8k/train.jsonl",
                    help="GSM8K train.jsonl, relative to the repo root (skipped if absent)")
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-init twin")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-card", action="store_true", help="print only; leave CARD.md alone")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from transformers import Qwen3MoeForCausalLM

    t0 = time.perf_counter()
    x = heldout_windows(resolve_gsm8k(args.gsm8k), args.sequences, args.seq_len)  # [S, L]
    trained = Qwen3MoeForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                  experts_implementation="eager")
    torch.manual_seed(args.seed)
    random_init = Qwen3MoeForCausalLM._from_config(trained.config, dtype=torch.float32,
                                                   experts_implementation="eager")
    results = {"trained": routing_metrics(trained, x), "random init": routing_metrics(random_init, x)}
    cfg = trained.config
    table = markdown_table(results)
    print(table)
    body = (
        f"Teacher-forced over {args.sequences} held-out windows x {args.seq_len} tokens "
        f"(evenly spaced over the held-out stdlib + GSM8K tokens); {cfg.num_experts} experts, "
        f"top-{cfg.num_experts_per_tok}, so uniform random routing gives reuse "
        f"{cfg.num_experts_per_tok / cfg.num_experts:.3f}, top-25% share 0.250, entropy 1.000, "
        f"recall {cfg.num_experts_per_tok / cfg.num_experts:.3f}. The random-init row is the same "
        f"config with seed {args.seed} (`initializer_range` {cfg.initializer_range}).\n\n"
        "- reuse: |E_t ∩ E_{t-1}| / k for consecutive tokens.\n"
        "- top-25% share: share of activations taken by the most popular quarter of experts.\n"
        "- popularity entropy: entropy of expert popularity / log E.\n"
        "- next-layer recall@k: recall of layer i+1's top-k by "
        "`topk(softmax(W_gate[i+1] · norm2[i+1](u_i)))`, u_i = layer i's post-attention residual.\n\n"
        + table + "\n\nReproduce: `.venv/bin/python scripts/routing_report.py`\n"
    )
    if not args.no_card:
        card = Path(args.model) / "CARD.md"
        write_card_section(card, body)
        print(f"wrote Routing section to {card}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
