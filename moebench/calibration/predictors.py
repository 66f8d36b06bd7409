"""The learned parts of the predicting strategies, and how they are fitted (pure tensor code).

Legend: N calibration tokens, H hidden, E experts per layer, k experts per token, r predictor width.

- **Default vectors** (`DefaultVectors`, Default MoE, arXiv 2504.12463): per MoE layer an
  `(E x H)` float32 table of *unweighted* expert outputs `E_e(u)`, averaged over the calibration
  tokens routed to `e`. `method="mean"` is the plain mean over every routed token;
  `method="ema"` applies `DV_e <- beta * DV_e + (1 - beta) * mean_{x in batch routed to e} E_e(x)`
  once per calibration sequence (a batch), starting from the first batch that routes to `e`.
  An expert no calibration token reached keeps a zero vector (its count is stored).
- **Pre-attention predictor** (`TwoLinear`, arXiv 2511.10676): "2 linear functions" per layer
  (a "2-layer predictor"), `scores = W2 act(W1 h + b1) + b2` on the pre-attention normalised
  state `h = norm1_i(x_i)`, `W1 [r, H]`, `W2 [E, r]`. The activation between them is not in the
  published material moebench could read, so it is a parameter (`relu` by default; `none` is the
  old single affine map, no richer than a refitted router). `init="router"` starts it exactly at
  layer `i`'s own router on `h` (the zero-training variant): the router's SVD factors `A [m, H]`,
  `B [E, m]` go in as antisymmetric pairs, `W1 = [A; -A]`, `W2 = [B, -B]`, and
  `act(z) - act(-z) = z` for relu, gelu and silu; further units start with random `W1` rows and
  zero `W2` columns, so they change nothing at first and can learn. `init="random"` is the
  `nn.Linear` initialisation. Trained with `ranking_loss`.
- **Early-layer estimator** for `speculative`: a copy of layer `j`'s router weight (and bias),
  `(E x H)`, fine-tuned on the quasi-hidden state `q = norm2_j(s_{j-1} + dv_{j-1})` *as the run
  builds it* (the speculation chain: `s` and the routing layer `j-1` executed come from a forward
  in which the speculated layers run their speculated experts) to reproduce the true logits of
  layer `j` on that forward; executed through the router's own forward, so the architecture's
  softmax / top-k / renormalisation rule is kept exactly.

Splits are **by calibration sequence (prompt)**, never by token: `split_groups` holds out whole
prompts, so no prompt has tokens on both sides (neighbouring tokens of one prompt are nearly the
same state). `fit` is Adam, early-stopped on a seeded validation split of the *training prompts*;
the held-out prompts reported by `calibrate` are never seen. With a single training prompt there
is no validation split and `fit` keeps the last epoch (said in its report, `early_stopped`
False). `ranking_loss` is ranking-aware: a listwise term (cross-entropy of the predicted scores
against the true router's softmax, i.e. ListNet top-1 / KL up to a constant) plus a top-k margin
term (the weakest selected expert must beat the strongest unselected one by `margin`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# default vectors
# ----------------------------------------------------------------------------------------------
class DefaultVectors:
    """Accumulates per-expert unweighted outputs for every MoE layer."""

    def __init__(self, moe_layers: int, num_experts: int, hidden: int, *, method: str = "mean",
                 beta: float = 0.9):
        if method not in ("mean", "ema"):
            raise ValueError(f"method must be mean or ema, not {method!r}")
        self.method, self.beta = method, float(beta)
        self.table = torch.zeros(moe_layers, num_experts, hidden, dtype=torch.float64)   # [L, E, H]
        self.count = torch.zeros(moe_layers, num_experts, dtype=torch.int64)              # [L, E]

    def add_batch(self, layer: int, outputs: torch.Tensor, ids: torch.Tensor) -> None:
        """outputs [P, H] = E_{ids[p]}(u_p) for P (token, expert) pairs; ids [P]."""
        e_count = self.table.shape[1]
        sums = torch.zeros(e_count, outputs.shape[-1], dtype=torch.float64)
        sums.index_add_(0, ids, outputs.to(torch.float64))                                # [E, H]
        n = torch.bincount(ids, minlength=e_count)                                        # [E]
        seen = n > 0
        if self.method == "mean":
            self.table[layer] += sums
        else:
            batch_mean = sums[seen] / n[seen, None]
            first = self.count[layer, seen] == 0
            old = self.table[layer, seen]
            new = torch.where(first[:, None], batch_mean, self.beta * old + (1 - self.beta) * batch_mean)
            self.table[layer, seen] = new
        self.count[layer] += n

    def tables(self) -> torch.Tensor:
        """[L, E, H] float32."""
        if self.method == "mean":
            return (self.table / self.count.clamp(min=1)[..., None]).to(torch.float32)
        return self.table.to(torch.float32)


def default_vector_estimate(dv: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`dv_i = sum_k w_ik * DV_i[e_ik]`: dv [E, H], ids [T, k], weights [T, k] -> [T, H] float32."""
    return (weights.to(torch.float32)[..., None] * dv[ids]).sum(dim=-2)


# ----------------------------------------------------------------------------------------------
# the pre-attention "two linear functions"
# ----------------------------------------------------------------------------------------------
ACTIVATIONS = ("relu", "gelu", "silu", "none")


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "silu":
        return F.silu(x)
    if name == "none":
        return x
    raise ValueError(f"activation must be one of {ACTIVATIONS}, not {name!r}")


@dataclass
class TwoLinear:
    w1: torch.Tensor   # [r, H]
    b1: torch.Tensor   # [r]
    w2: torch.Tensor   # [E, r]
    b2: torch.Tensor   # [E]
    activation: str = "relu"

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """h [T, H] -> scores [T, E]."""
        x = h.to(self.w1.dtype)
        return F.linear(_act(self.activation, F.linear(x, self.w1, self.b1)), self.w2, self.b2)

    def params(self) -> list[torch.Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    def to(self, device: Any) -> TwoLinear:
        return TwoLinear(*(t.to(device) for t in self.params()), activation=self.activation)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.w1": self.w1, f"{prefix}.b1": self.b1,
                f"{prefix}.w2": self.w2, f"{prefix}.b2": self.b2}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str, activation: str = "relu") -> TwoLinear:
        return cls(*(t[f"{prefix}.{n}"].to(torch.float32) for n in ("w1", "b1", "w2", "b2")),
                   activation=activation)

    @classmethod
    def from_router(cls, weight: torch.Tensor, bias: torch.Tensor | None, rank: int, *,
                    activation: str = "none", seed: int = 0) -> TwoLinear:
        """A predictor of width `rank` that starts as the router weight [E, H] (up to rank).

        `activation="none"`: `W2 W1` = the rank-`rank` truncated SVD (`W1 = sqrt(S) Vh`,
        `W2 = U sqrt(S)`). Otherwise the SVD factors enter as antisymmetric pairs (`act(z) -
        act(-z) = z` for relu, gelu, silu), `rank // 2` of them, so the start is the rank-`rank//2`
        router exactly (the full router once `rank >= 2 min(E, H)`); the remaining units get
        seeded random `W1` rows and zero `W2` columns (no effect at the start, yet trainable)."""
        _act(activation, torch.zeros(1))            # validates the name
        w = weight.detach().to("cpu", torch.float32)
        n_e, n_h = w.shape
        u, s, vh = torch.linalg.svd(w, full_matrices=False)     # u [E, m], s [m], vh [m, H]
        root = s.sqrt()
        a, bm = root[:, None] * vh, u * root[None, :]            # A [m, H], B [E, m]: B A = W
        w1 = torch.zeros(rank, n_h)
        w2 = torch.zeros(n_e, rank)
        if activation == "none":
            r = min(rank, s.shape[0])
            w1[:r], w2[:, :r] = a[:r], bm[:, :r]
            used = rank                                           # padding stays zero (linear)
        else:
            p = min(rank // 2, s.shape[0])
            w1[:p], w1[p:2 * p] = a[:p], -a[:p]
            w2[:, :p], w2[:, p:2 * p] = bm[:, :p], -bm[:, :p]
            used = 2 * p
        if used < rank:                                           # free units: random in, zero out
            g = torch.Generator().manual_seed(seed)
            bound = 1.0 / n_h ** 0.5
            w1[used:] = (torch.rand(rank - used, n_h, generator=g) * 2 - 1) * bound
        b2 = torch.zeros(n_e) if bias is None else bias.detach().to("cpu", torch.float32).clone()
        return cls(w1.contiguous(), torch.zeros(rank), w2.contiguous(), b2, activation=activation)

    @classmethod
    def random(cls, hidden: int, width: int, num_experts: int, *, activation: str = "relu",
               seed: int = 0) -> TwoLinear:
        """`nn.Linear`'s default initialisation (uniform, bound 1/sqrt(fan_in)), seeded."""
        g = torch.Generator().manual_seed(seed)

        def uni(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            return (torch.rand(*shape, generator=g) * 2 - 1) / fan_in ** 0.5
        return cls(uni((width, hidden), hidden), uni((width,), hidden),
                   uni((num_experts, width), width), uni((num_experts,), width), activation=activation)


# ----------------------------------------------------------------------------------------------
# loss, metrics, training
# ----------------------------------------------------------------------------------------------
def topk_mask(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """ids [N, k] -> bool [N, E]."""
    return torch.zeros(ids.shape[0], num_experts, dtype=torch.bool).scatter_(1, ids, True)


def ranking_loss(scores: torch.Tensor, target_logits: torch.Tensor, target_ids: torch.Tensor,
                 *, margin: float = 1.0) -> torch.Tensor:
    """scores [N, E], target_logits [N, E], target_ids [N, k] -> scalar."""
    p = torch.softmax(target_logits.to(torch.float32), dim=-1)
    listwise = -(p * torch.log_softmax(scores, dim=-1)).sum(-1).mean()
    sel = topk_mask(target_ids, scores.shape[-1])
    weakest_selected = scores.masked_fill(~sel, float("inf")).min(-1).values
    strongest_other = scores.masked_fill(sel, float("-inf")).max(-1).values
    hinge = F.relu(margin - (weakest_selected - strongest_other)).mean()
    return listwise + hinge


def recall_at_k(scores: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean fraction of the true top-k (ids [N, k]) inside the top-k of scores [N, E]."""
    if ids.shape[0] == 0:
        return float("nan")
    k = ids.shape[1]
    pred = topk_mask(scores.topk(k, dim=-1).indices, scores.shape[-1])
    true = topk_mask(ids, scores.shape[-1])
    return float((pred & true).sum(-1).float().mean() / k)


def exact_set(scores: torch.Tensor, ids: torch.Tensor) -> float:
    if ids.shape[0] == 0:
        return float("nan")
    k = ids.shape[1]
    pred = topk_mask(scores.topk(k, dim=-1).indices, scores.shape[-1])
    return float((pred == topk_mask(ids, scores.shape[-1])).all(-1).float().mean())


def split(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices) of `n` units: a seeded permutation; at least one of
    each when n > 1. Units are prompts (`split_groups`), never the tokens of one prompt."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_held = min(n - 1, max(1, int(round(n * holdout)))) if n > 1 and holdout > 0 else 0
    return perm[n_held:], perm[:n_held]


def split_groups(groups: torch.Tensor, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices (train, held out) with whole groups held out: groups [N] is each token's
    calibration sequence (prompt) id; `split` picks the held-out prompts."""
    ids = torch.unique(groups)                                    # sorted prompt ids
    tr, ho = split(int(ids.numel()), holdout, seed)
    held = torch.isin(groups, ids[ho])
    return torch.nonzero(~held).reshape(-1), torch.nonzero(held).reshape(-1)


def n_groups(groups: torch.Tensor, idx: torch.Tensor) -> int:
    return int(torch.unique(groups[idx]).numel())


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    lr: float = 1e-2
    holdout: float = 0.2        # of the calibration prompts, never seen in training
    seed: int = 0
    margin: float = 1.0
    batch: int = 4096
    val_fraction: float = 0.2   # of the training prompts, for early stopping (held-out untouched)
    eval_every: int = 5


def fit(params: list[torch.Tensor], score_fn: Any, x: torch.Tensor, logits: torch.Tensor,
        ids: torch.Tensor, cfg: TrainConfig, groups: torch.Tensor | None = None) -> dict:
    """Adam on `ranking_loss(score_fn(x), logits, ids)`, in place on `params`, with early
    stopping: a seeded `val_fraction` of the given prompts (`groups` [N], each token's prompt id;
    None: every token its own group) is set aside and the parameters with the best validation
    recall@k (checked every `eval_every` epochs, the starting point included, so training never
    ends worse than its initialisation on validation) are kept. With one prompt there is no
    validation split: the last epoch is kept (`early_stopped` False). Deterministic on CPU."""
    with torch.inference_mode(False), torch.enable_grad():
        x, logits, ids = x.clone(), logits.clone(), ids.clone()   # never inference tensors
        groups = torch.arange(x.shape[0]) if groups is None else groups.clone()
        fit_idx, val_idx = split_groups(groups, cfg.val_fraction, cfg.seed + 2)
        xv, idv = x[val_idx], ids[val_idx]
        x, logits, ids = x[fit_idx], logits[fit_idx], ids[fit_idx]
        leaves = [p.requires_grad_(True) for p in params]
        early = xv.shape[0] > 0

        def val_recall() -> float:
            with torch.no_grad():
                return recall_at_k(score_fn(xv), idv) if early else float("nan")

        best = (val_recall(), 0, [p.detach().clone() for p in leaves])
        opt = torch.optim.Adam(leaves, lr=cfg.lr)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        n = x.shape[0]
        for epoch in range(1, cfg.epochs + 1):
            order = torch.randperm(n, generator=g) if n > cfg.batch else torch.arange(n)
            for i in range(0, n, cfg.batch):
                b = order[i:i + cfg.batch]
                loss = ranking_loss(score_fn(x[b]), logits[b], ids[b], margin=cfg.margin)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if not early:
                best = (float("nan"), epoch, None)
            elif epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                r = val_recall()
                if r > best[0] + 1e-9:
                    best = (r, epoch, [p.detach().clone() for p in leaves])
        if best[2] is not None:
            with torch.no_grad():
                for p, b in zip(leaves, best[2]):
                    p.copy_(b)
        for p in leaves:
            p.requires_grad_(False)
    return {"best_epoch": best[1], "val_recall_at_k": None if not early else best[0],
            "n_val": int(val_idx.numel()), "n_val_prompts": n_groups(groups, val_idx),
            "early_stopped": early}


def _heldout_report(groups: torch.Tensor, tr: torch.Tensor, ho: torch.Tensor) -> dict:
    return {"split": "prompt", "n_train": int(tr.numel()), "n_heldout": int(ho.numel()),
            "n_train_prompts": n_groups(groups, tr), "n_heldout_prompts": n_groups(groups, ho)}


def train_two_linear(h: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor,
                     router_w: torch.Tensor, router_b: torch.Tensor | None, *, width: int,
                     activation: str, init: str, cfg: TrainConfig,
                     router_scores: torch.Tensor) -> tuple[TwoLinear, dict]:
    """Fit one layer's pre-attention predictor. h [N, H], logits [N, E], ids [N, k], groups [N]
    (each token's prompt); router_scores [N, E] = the zero-training variant's scores on h, for
    the held-out baseline. Held out: whole prompts (`cfg.holdout` of them)."""
    h, logits = h.to(torch.float32), logits.to(torch.float32)
    tr, ho = split_groups(groups, cfg.holdout, cfg.seed)
    if init == "router":
        pred = TwoLinear.from_router(router_w, router_b, width, activation=activation, seed=cfg.seed)
    else:
        pred = TwoLinear.random(h.shape[1], width, logits.shape[1], activation=activation, seed=cfg.seed)
    stop = fit(pred.params(), pred, h[tr], logits[tr], ids[tr], cfg, groups[tr])
    with torch.no_grad():
        s_ho = pred(h[ho])
        r_ho = router_scores[ho].to(torch.float32)
        train_recall = recall_at_k(pred(h[tr]), ids[tr])
    return pred, {**_heldout_report(groups, tr, ho), **stop,
                  "heldout_recall_at_k": recall_at_k(s_ho, ids[ho]),
                  "heldout_exact_set": exact_set(s_ho, ids[ho]),
                  "router_heldout_recall_at_k": recall_at_k(r_ho, ids[ho]),
                  "router_heldout_exact_set": exact_set(r_ho, ids[ho]),
                  "train_recall_at_k": train_recall}


def train_router_copy(q: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor,
                      router_w: torch.Tensor, router_b: torch.Tensor | None, *, cfg: TrainConfig
                      ) -> tuple[dict, dict]:
    """Fit the early-layer estimator: a copy of the router, fine-tuned on quasi states q [N, H]
    (as the speculation chain builds them) against the true logits [N, E] / ids [N, k] of the
    same forward; groups [N] each token's prompt, whole prompts held out."""
    q, logits = q.to(torch.float32), logits.to(torch.float32)
    w = router_w.detach().to("cpu", torch.float32).clone()
    b = None if router_b is None else router_b.detach().to("cpu", torch.float32).clone()
    params = [w] + ([b] if b is not None else [])

    def score(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, b)

    tr, ho = split_groups(groups, cfg.holdout, cfg.seed)
    with torch.no_grad():
        before = score(q[ho])
        before_recall, before_exact = recall_at_k(before, ids[ho]), exact_set(before, ids[ho])
    stop = fit(params, score, q[tr], logits[tr], ids[tr], cfg, groups[tr])
    with torch.no_grad():
        after = score(q[ho])
    out = {"weight": w.detach()}
    if b is not None:
        out["bias"] = b.detach()
    return out, {**_heldout_report(groups, tr, ho), **stop,
                 "heldout_recall_at_k": recall_at_k(after, ids[ho]),
                 "heldout_exact_set": exact_set(after, ids[ho]),
                 "router_heldout_recall_at_k": before_recall, "router_heldout_exact_set": before_exact}


def route_with(router: Any, weights: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[Any, Any, Any]:
    """Run `router`'s own forward (its routing rule) with substituted parameters on x [T, H]."""
    from torch.func import functional_call

    params = {n: t.to(device=x.device, dtype=x.dtype) for n, t in weights.items()}
    return functional_call(router, params, (x.reshape(-1, x.shape[-1]),), strict=False)
