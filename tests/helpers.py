"""Small shared helpers for tests (not fixtures)."""
from __future__ import annotations

from typing import Any


def reference_decode(model: Any, prompt: list[int], n_new: int) -> tuple[list[int], list[Any]]:
    """Greedy decode with the unmodified model, step by step with its KV cache (same loop shape
    as the runner, and as `generate`: the last position's logits only): tokens and the
    last-position logits of every step."""
    import torch

    from moebench.engine.session import _cache_kwarg

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        past, last = out.past_key_values, out.logits[:, -1, :]
        tokens, logits = [int(last.argmax(-1))], [last[0].clone()]
        for _ in range(1, n_new):
            nxt = torch.tensor([[tokens[-1]]])
            out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{_cache_kwarg(model): past})
            past, last = out.past_key_values, out.logits[:, -1, :]
            tokens.append(int(last.argmax(-1)))
            logits.append(last[0].clone())
    return tokens, logits


def generate_greedy(model: Any, prompt: list[int], n_new: int) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    return out[0, ids.shape[1]:].tolist()
