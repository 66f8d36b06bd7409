"""The learned parts of the predicting strategies, and how they are fitted (pure tensor code).

Legend: N calibration tokens, H hidden, E experts per layer, k experts per token, r predictor width.

- **Default vectors** (`DefaultVectors`, Default MoE, arXiv 2504.12463): per MoE layer an
  `(E x H)` float32 table of *unweighted* expert outputs `E_e(u)`, averaged over the calibration
  tokens routed to `e`. `method="mean"` is the plain mean over every routed token;
  `method="ema"` applies `DV_e <- beta * DV_e + (1 - beta) * mean_{x in batch routed to e} E_e(x)`
  once per calibration sequence (a batch), starting from the first batch that routes to `e`.
  An expert no calibration token reached keeps a zero vector (its count is stored).
- **Pre-attention predictor** (`TwoLinear`, arXiv 2511.10676): "two linear functions" per layer,
  `scores = W2 (W1 h + b1) + b2` on the pre-attention normalised state `h = norm1_i(x_i)`; no
  non-linearity between them (the paper's wording; the composition is a rank-`r` affine map).
  It is initialised from a truncated SVD of layer `i`'s own router (so before training it *is*
  the zero-training router variant, up to rank) and trained with `ranking_loss`.
- **Early-layer estimator** for `speculative`: a copy of layer `i+1`'s router weight (and bias),
  `(E x H)`, fine-tuned on the quasi-hidden state `q = norm2_{i+1}(s_i + dv_i)` to reproduce the
  true logits of layer `i+1`; executed through the router's own forward, so the architecture's
  softmax / top-k / renormalisation rule is kept exactly.

Training (`fit`) is Adam, early-stopped on a seeded validation split of the training tokens;
the held-out split reported by `calibrate` is never seen. `ranking_loss` is ranking-aware: a listwise term (cross-entropy of the predicted scores against
the true router's softmax, i.e. ListNet top-1 / KL up to a constant) plus a top-k margin term
(the weakest selected expert must beat the strongest unselected one by `margin`).
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
@dataclass
class TwoLinear:
    w1: torch.Tensor   # [r, H]
    b1: torch.Tensor   # [r]
    w2: torch.Tensor   # [E, r]
    b2: torch.Tensor   # [E]

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """h [T, H] -> scores [T, E]."""
        x = h.to(self.w1.dtype)
        return F.linear(F.linear(x, self.w1, self.b1), self.w2, self.b2)

    def params(self) -> list[torch.Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    def to(self, device: Any) -> TwoLinear:
        return TwoLinear(*(t.to(device) for t in self.params()))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.w1": self.w1, f"{prefix}.b1": self.b1,
                f"{prefix}.w2": self.w2, f"{prefix}.b2": self.b2}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str) -> TwoLinear:
        return cls(*(t[f"{prefix}.{n}"].to(torch.float32) for n in ("w1", "b1", "w2", "b2")))

    @classmethod
    def from_router(cls, weight: torch.Tensor, bias: torch.Tensor | None, rank: int) -> TwoLinear:
        """W2 W1 = the rank-`rank` truncated SVD of the router weight [E, H]."""
        w = weight.detach().to("cpu", torch.float32)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)     # u [E, m], s [m], vh [m, H]
        r = min(rank, s.shape[0])
        root = s[:r].sqrt()
        w1 = root[:, None] * vh[:r]                              # [r, H]
        w2 = u[:, :r] * root[None, :]                            # [E, r]
        if r < rank:   # pad: extra directions start at zero
            w1 = torch.cat([w1, torch.zeros(rank - r, w.shape[1])])
            w2 = torch.cat([w2, torch.zeros(w.shape[0], rank - r)], dim=1)
        b2 = torch.zeros(w.shape[0]) if bias is None else bias.detach().to("cpu", torch.float32).clone()
        return cls(w1.contiguous(), torch.zeros(rank), w2.contiguous(), b2)


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
    """(train indices, held-out indices): a seeded permutation; at least one of each when n > 1."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_held = min(n - 1, max(1, int(round(n * holdout)))) if n > 1 and holdout > 0 else 0
    return perm[n_held:], perm[:n_held]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    lr: float = 1e-2
    holdout: float = 0.2
    seed: int = 0
    margin: float = 1.0
    batch: int = 4096
    val_fraction: float = 0.2   # of the training tokens, for early stopping (held-out untouched)
    eval_every: int = 5


def fit(params: list[torch.Tensor], score_fn: Any, x: torch.Tensor, logits: torch.Tensor,
        ids: torch.Tensor, cfg: TrainConfig) -> dict:
    """Adam on `ranking_loss(score_fn(x), logits, ids)`, in place on `params`, with early
    stopping: a seeded `val_fraction` of the given tokens is set aside and the parameters with
    the best validation recall@k (checked every `eval_every` epochs, the starting point
    included, so training never ends worse than its initialisation on validation) are kept.
    Deterministic on CPU for a seed."""
    with torch.inference_mode(False), torch.enable_grad():
        x, logits, ids = x.clone(), logits.clone(), ids.clone()   # never inference tensors
        fit_idx, val_idx = split(x.shape[0], cfg.val_fraction, cfg.seed + 2)
        xv, idv = x[val_idx], ids[val_idx]
        x, logits, ids = x[fit_idx], logits[fit_idx], ids[fit_idx]
        leaves = [p.requires_grad_(True) for p in params]

        def val_recall() -> float:
            with torch.no_grad():
                return recall_at_k(score_fn(xv), idv) if xv.shape[0] else 0.0

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
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                r = val_recall()
                if r > best[0] + 1e-9:
                    best = (r, epoch, [p.detach().clone() for p in leaves])
        with torch.no_grad():
            for p, b in zip(leaves, best[2]):
                p.copy_(b)
        for p in leaves:
            p.requires_grad_(False)
    return {"best_epoch": best[1], "val_recall_at_k": best[0], "n_val": int(val_idx.numel())}


def train_two_linear(h: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor, router_w: torch.Tensor,
                     router_b: torch.Tensor | None, *, rank: int, cfg: TrainConfig,
                     router_scores: torch.Tensor) -> tuple[TwoLinear, dict]:
    """Fit one layer's pre-attention predictor. h [N, H], logits [N, E], ids [N, k];
    router_scores [N, E] = the zero-training variant's scores on h, for the held-out baseline."""
    h, logits = h.to(torch.float32), logits.to(torch.float32)
    tr, ho = split(h.shape[0], cfg.holdout, cfg.seed)
    pred = TwoLinear.from_router(router_w, router_b, rank)
    stop = fit(pred.params(), pred, h[tr], logits[tr], ids[tr], cfg)
    with torch.no_grad():
        s_ho = pred(h[ho])
    return pred, {"n_train": int(tr.numel()), "n_heldout": int(ho.numel()), **stop,
                  "heldout_recall_at_k": recall_at_k(s_ho, ids[ho]),
                  "heldout_exact_set": exact_set(s_ho, ids[ho]),
                  "router_heldout_recall_at_k": recall_at_k(router_scores[ho].to(torch.float32), ids[ho]),
                  "train_recall_at_k": recall_at_k(pred(h[tr]).detach(), ids[tr])}


def train_router_copy(q: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor, router_w: torch.Tensor,
                      router_b: torch.Tensor | None, *, cfg: TrainConfig) -> tuple[dict, dict]:
    """Fit the early-layer estimator: a copy of the router, fine-tuned on quasi states q [N, H]."""
    q, logits = q.to(torch.float32), logits.to(torch.float32)
    w = router_w.detach().to("cpu", torch.float32).clone()
    b = None if router_b is None else router_b.detach().to("cpu", torch.float32).clone()
    params = [w] + ([b] if b is not None else [])

    def score(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, b)

    tr, ho = split(q.shape[0], cfg.holdout, cfg.seed)
    with torch.no_grad():
        before = recall_at_k(score(q[ho]), ids[ho])
    stop = fit(params, score, q[tr], logits[tr], ids[tr], cfg)
    with torch.no_grad():
        after = recall_at_k(score(q[ho]), ids[ho])
    out = {"weight": w.detach()}
    if b is not None:
        out["bias"] = b.detach()
    return out, {"n_train": int(tr.numel()), "n_heldout": int(ho.numel()), **stop,
                 "heldout_recall_at_k": after, "router_heldout_recall_at_k": before}


def route_with(router: Any, weights: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[Any, Any, Any]:
    """Run `router`'s own forward (its routing rule) with substituted parameters on x [T, H]."""
    from torch.func import functional_call

    params = {n: t.to(device=x.device, dtype=x.dtype) for n, t in weights.items()}
    return functional_call(router, params, (x.reshape(-1, x.shape[-1]),), strict=False)
