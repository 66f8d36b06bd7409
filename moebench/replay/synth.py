"""Synthetic routing traces, for when no recording exists (`moebench trace synth`).

Legend: T decode steps, L MoE layers, E experts a layer, k experts a token (from the model).

Each step routes every layer to k distinct experts. Per layer and slot `j` of the k:

- **temporal reuse** `reuse`: with this probability slot j keeps the expert it had at the
  previous step (same layer, same request), so consecutive tokens share experts;
- **cross-layer correlation** `cross_layer`: otherwise, with this probability it takes
  `pi_l(expert of slot j at layer l-1, same step)`, a fixed random permutation per layer, so a
  layer's experts predict the next layer's (what next-gate and speculative predictors exploit);
- **popularity skew** `zipf`: otherwise a fresh draw from a Zipf law over the layer's experts,
  `p(rank r) ~ 1 / (r + 1)^zipf` (0 = uniform), the ranks permuted per layer so hot experts differ.

Duplicates within a step are re-drawn (fresh, never changing the oldest copy), so every row has
k distinct ids. Generation is vectorised over time, one layer after another: a slot that reuses
copies the value of its most recent non-reusing step (`np.maximum.accumulate`). Steps count
from 1 in every request (decode only, no prefill rows). `predictor_recall` adds a synthetic
next-layer predictor (`predicted["synthetic+1"]`): the true experts, each replaced by a random
other one with probability `1 - recall`. Same parameters and seed -> the same trace, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moebench.errors import UserError
from moebench.replay.traces import ReplayTrace, routing_sha256


@dataclass(frozen=True)
class SynthSpec:
    steps: int = 256                 # decode steps per request
    requests: int = 1
    zipf: float = 1.0
    reuse: float = 0.5
    cross_layer: float = 0.3
    predictor_recall: float | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 2 or self.requests < 1:
            raise UserError("a synthetic trace needs at least 2 steps and 1 request.")
        if self.zipf < 0:
            raise UserError("--zipf must not be negative (0 = uniform popularity).")
        for name in ("reuse", "cross_layer"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must be a probability in [0, 1], not {v}.")
        if self.predictor_recall is not None and not 0.0 <= self.predictor_recall <= 1.0:
            raise UserError("--predictor-recall must be in [0, 1].")


def _zipf_sampler(rng: np.random.Generator, E: int, s: float):
    p = 1.0 / np.arange(1, E + 1, dtype=np.float64) ** s
    cdf = np.cumsum(p / p.sum())
    perm = rng.permutation(E)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        r = np.searchsorted(cdf, rng.random(shape), side="right")
        return perm[np.minimum(r, E - 1)]
    return draw


def _fix_duplicates(y: np.ndarray, src: np.ndarray, fresh, rng: np.random.Generator, E: int) -> np.ndarray:
    """Redraw colliding slots at their source step until every row is distinct; returns x."""
    T, k = y.shape
    cols = np.arange(k)[None, :]
    for rnd in range(200):
        x = y[src, cols]                                          # [T, k]
        order = np.argsort(x * (T + 1) + src, axis=1, kind="stable")
        xs = np.take_along_axis(x, order, 1)
        dup_sorted = np.zeros_like(xs, dtype=bool)
        dup_sorted[:, 1:] = xs[:, 1:] == xs[:, :-1]               # keeps the oldest copy
        if not dup_sorted.any():
            return x
        dup = np.zeros_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, 1)
        t_idx, j_idx = np.nonzero(dup)
        at = src[t_idx, j_idx]
        n = len(at)
        y[at, j_idx] = fresh((n,)) if rnd < 50 else rng.integers(0, E, n)
    raise UserError("could not make the synthetic rows distinct; lower --zipf.")


def synthesize(moe_layers: int, num_experts: int, top_k: int, spec: SynthSpec) -> ReplayTrace:
    """A decode-only `ReplayTrace` of `spec.requests x spec.steps` steps."""
    spec.validate()
    L, E, k = moe_layers, num_experts, top_k
    if k > E:
        raise UserError(f"top-k {k} exceeds the {E} experts of a layer.")
    rng = np.random.default_rng(spec.seed)
    T = spec.steps * spec.requests
    starts = np.zeros(T, dtype=bool)
    starts[::spec.steps] = True                                  # reuse never crosses requests
    experts = np.empty((T, L, k), dtype=np.int32)                # [T, L, k]
    t_idx = np.arange(T)[:, None]
    prev = None
    for m in range(L):
        fresh = _zipf_sampler(rng, E, spec.zipf)
        y = fresh((T, k))                                        # [T, k] fresh draws
        if prev is not None and spec.cross_layer > 0:
            pi = rng.permutation(E)
            cross = rng.random((T, k)) < spec.cross_layer
            y = np.where(cross, pi[prev], y)
        reuse = rng.random((T, k)) < spec.reuse
        reuse[starts] = False
        src = np.where(reuse, 0, t_idx)                          # last non-reusing step
        src = np.maximum.accumulate(src, axis=0)
        x = _fix_duplicates(y, src, fresh, rng, E)
        experts[:, m] = x
        prev = x
    predictions = {}
    if spec.predictor_recall is not None:
        for t in range(T):
            for m in range(L):
                true = experts[t, m]
                keep = rng.random(k) < spec.predictor_recall
                pool = np.setdiff1d(np.arange(E), true)
                guess = np.where(keep, true, rng.choice(pool, k, replace=len(pool) < k))
                predictions[(t, m)] = {"synthetic+1": tuple(int(e) for e in dict.fromkeys(guess.tolist()))}
    request = np.repeat(np.arange(spec.requests, dtype=np.int64), spec.steps)
    step = np.tile(np.arange(1, spec.steps + 1, dtype=np.int64), spec.requests)
    return ReplayTrace(request, step, np.ones(T, dtype=np.int64), experts, None, {}, predictions,
                       sha256=routing_sha256(request, step, experts), source=f"synthetic {spec}")
