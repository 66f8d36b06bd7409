"""Local routing consistency of a trace: does this model suit expert offloading at all?

Two figures from Liang et al., "Not All Models Suit Expert Offloading: On Local Routing
Consistency of Mixture-of-Expert Models" (arXiv 2505.16056), computed as their published code
does (github.com/ljcleo/moe-lrc, `src/30_srp_calc.py`, `31_srp_refine.py`, `41_sch_calc.py`).
A *sequence* is one request's steps in order (the prefill row is its last prompt token); every
sequence is cut into segments of `m` consecutive tokens at every start position.

**SRP, segment routing best performance.** For one segment and one layer let `c_e` be how many
of its `m` tokens route to expert `e`. Serving the whole segment with the fixed group
`G_v = {e : c_e >= v}` covers `sum_{e in G_v} c_e` of its `m * k` activations and "predicts"
`|G_v| * m`. Summed over all segments (and, model-wide, all layers), for each threshold `v`:
`F1(v) = 2 * matches / (predictions + activations)`; SRP(m) is the best F1 over `v`. SRP = 1
means every segment of `m` tokens uses one fixed set of k experts; low SRP means no fixed group
serves a segment well. `group_ratio` is `|G_v| / k` at the best `v`.

**SCH, segment cache best hit rate.** A cache of `c` experts per layer that knows the next `m`
tokens: before token `i` it ranks every expert seen so far by (uses in tokens `i .. i+m-1`,
then most recent use) and holds the top `c`; an activation hits when its expert ranks below `c`.
An expert's first use ranks at the number of distinct experts seen so far (a cache that is not
full yet had room for it), as in the paper's code. SCH is reported per layer and as the mean
over layers (the paper also pools all layers into one cache; that variant is not computed).

    figs = routing_consistency(trace, num_experts=128)          # dict, JSON-ready
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SOURCE = ("Liang et al., arXiv 2505.16056 (SRP, SCH); definitions as in github.com/ljcleo/moe-lrc "
          "src/30_srp_calc.py, 31_srp_refine.py, 41_sch_calc.py")


def _sequences(trace) -> list[np.ndarray]:
    """Per request, its steps in trace order: [T_r, L, k] expert ids (-1 padding)."""
    out = []
    for r in dict.fromkeys(trace.request.tolist()):
        idx = np.flatnonzero(trace.request == r)
        out.append(trace.experts[idx])
    return out


def _onehot(X: np.ndarray, E: int) -> np.ndarray:
    """[T, k] ids -> [T, E] int32 indicator (padding ignored)."""
    T = X.shape[0]
    O = np.zeros((T, E + 1), dtype=np.int32)
    O[np.arange(T)[:, None], np.where(X >= 0, X, E)] = 1
    return O[:, :E]


def srp(trace, num_experts: int, lengths: Sequence[int]) -> dict:
    """SRP per segment length, model-wide and per layer."""
    L = trace.moe_layers
    seqs = _sequences(trace)
    res: dict = {"model": {}, "per_layer": {}}
    for m in lengths:
        hist_layers = np.zeros((L, m + 1), dtype=np.int64)    # [L, v] (segment, expert) pairs with count v
        for S in seqs:
            T = S.shape[0]
            if T < m:
                continue
            for layer in range(L):
                C = np.zeros((T + 1, num_experts), dtype=np.int32)
                np.cumsum(_onehot(S[:, layer, :], num_experts), axis=0, out=C[1:])
                win = C[m:] - C[:-m]                            # [T - m + 1, E] counts c_e
                hist_layers[layer] += np.bincount(win.reshape(-1), minlength=m + 1)[:m + 1]
        if not hist_layers.any():
            continue
        res["model"][m] = _best_f1(hist_layers.sum(0), m)
        res["per_layer"][m] = [_best_f1(h, m)["srp"] for h in hist_layers]
    return res


def _best_f1(hist: np.ndarray, m: int) -> dict:
    v = np.arange(m + 1)
    matches = np.cumsum((v * hist)[::-1])[::-1]               # sum over counts >= v
    preds = np.cumsum(hist[::-1])[::-1] * m
    acts = matches[0]
    f1 = 2.0 * matches[1:] / np.maximum(preds[1:] + acts, 1)  # thresholds v = 1..m
    best = int(np.argmax(f1))
    return {"srp": float(f1[best]), "threshold": best + 1,
            "group_ratio": float(preds[best + 1] / acts) if acts else None}


def sch_layer(X: np.ndarray, E: int, m: int, caches: Sequence[int]) -> np.ndarray:
    """One sequence of one layer `X [T, k]`: hits at each cache size, `[len(caches)]` counts."""
    T, k = X.shape
    O = _onehot(X, E)                                          # [T, E]
    C = np.zeros((T + 1, E), dtype=np.int64)
    np.cumsum(O, axis=0, out=C[1:])
    hi = np.minimum(np.arange(T) + m, T)
    F = C[hi] - C[:-1]                                         # [T, E] uses in tokens i..i+m-1
    stamp = np.where(X >= 0, np.arange(T)[:, None] * k + np.arange(k)[None, :], -1)
    A = np.full((T, E + 1), -1, dtype=np.int64)
    A[np.arange(T)[:, None], np.where(X >= 0, X, E)] = stamp
    last = np.full((T, E), -1, dtype=np.int64)                 # last use before token i
    last[1:] = np.maximum.accumulate(A[:-1, :E], axis=0)
    seen = last >= 0
    key = F * (T * k + 1) + last                               # (future uses, recency), larger first
    key = np.where(seen, key, -1)
    valid = X >= 0
    xi = np.where(valid, X, 0)
    mine = np.take_along_axis(key, xi, 1)                      # [T, k]
    # rank among seen experts: how many have a larger key
    rank = (key[:, None, :] > mine[:, :, None]).sum(-1)         # [T, k]
    first = valid & ~np.take_along_axis(seen, xi, 1)
    n_seen = seen.sum(1)[:, None]                              # [T, 1]
    rank = np.where(first, n_seen + np.cumsum(first, axis=1) - 1, rank)
    r = rank[valid]
    return np.array([(r < c).sum() for c in caches], dtype=np.int64)


def sch(trace, num_experts: int, lengths: Sequence[int], caches: Sequence[int]) -> dict:
    L = trace.moe_layers
    seqs = _sequences(trace)
    res: dict = {"cache_sizes": list(caches), "mean": {}, "per_layer": {}}
    for m in lengths:
        hits = np.zeros((L, len(caches)), dtype=np.int64)
        acts = np.zeros(L, dtype=np.int64)
        for S in seqs:
            for layer in range(L):
                X = S[:, layer, :]
                hits[layer] += sch_layer(X, num_experts, m, caches)
                acts[layer] += int((X >= 0).sum())
        if not acts.any():
            continue
        rates = hits / np.maximum(acts, 1)[:, None]           # [L, C]
        res["mean"][m] = {int(c): float(x) for c, x in zip(caches, rates.mean(0))}
        res["per_layer"][m] = {int(c): rates[:, i].tolist() for i, c in enumerate(caches)}
    return res


def routing_consistency(trace, num_experts: int, *, lengths: Sequence[int] = (2, 4, 8, 16, 32),
                        cache_multiples: Sequence[int] = (1, 2, 4), max_steps: int = 4096) -> dict:
    """SRP and SCH for the trace (JSON-ready). Sequences longer than `max_steps` tokens are cut
    (said in `notes`); lengths longer than every sequence are left out."""
    from moebench.replay.traces import ReplayTrace

    k = trace.top_k
    notes = []
    if max(np.bincount(np.unique(trace.request, return_inverse=True)[1])) > max_steps:
        keep = np.zeros(trace.n_steps, dtype=bool)
        for r in np.unique(trace.request):
            keep[np.flatnonzero(trace.request == r)[:max_steps]] = True
        trace = ReplayTrace(trace.request[keep], trace.step[keep], trace.tokens[keep],
                            trace.experts[keep], None)
        notes.append(f"sequences cut to their first {max_steps} steps")
    longest = max(np.bincount(np.unique(trace.request, return_inverse=True)[1]))
    lengths = [m for m in lengths if m <= longest]
    caches = [min(num_experts, c * k) for c in cache_multiples]
    return {"source": SOURCE, "segment_lengths": lengths, "top_k": k,
            "srp": srp(trace, num_experts, lengths),
            "sch": sch(trace, num_experts, lengths, caches), "notes": notes}
