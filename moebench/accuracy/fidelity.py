"""What a lossy offloading strategy costs in accuracy.

Some strategies change the numbers the model computes (a quantised or skipped expert, a
substituted one). moebench prices that loss three ways, each against the *lossless reference
run on the same workload* (docs/measurement.md, "Lossless means bit-identical"):

- **Greedy agreement** — decode greedily under both and compare the token ids:
  `token_agreement` gives the first divergence position and the matching fraction;
  `exact_match_rate` the share of prompts reproduced token for token. A lossless strategy
  must score 1.0; anything less is a bug.
- **Teacher-forced fidelity** — feed the reference tokens through both and compare the
  next-token distributions row by row: KL(ref || cand) (mean and p99), top-1 agreement and
  the perplexity of the reference tokens under each (`Fidelity`, `FidelityAccumulator`).
  It sees damage long before a greedy token flips.
- **Task accuracy** — GSM8K final-number match: `build_gsm8k_prompt` makes the few-shot
  prompt, `extract_model_answer` reads the final number back out of a generation,
  `extract_reference_answer` reads the gold one, and `answers_match` compares them
  numerically. Accuracy deltas are then paired by item (see `stats`).

Everything here is pure: no files, no printing, no globals (answers: `moebench.workloads.answers`; prompts and data files: `moebench.workloads.datasets`). torch is
imported inside the tensor functions so importing this module stays instant.

    prompt = build_gsm8k_prompt(item["question"], select_shots(train, n_shot=8, seed=0))
    correct = answers_match(extract_model_answer(text), extract_reference_answer(item["answer"]))

    acc = FidelityAccumulator()
    for ref_logits, cand_logits, targets in rows:     # [N, V], [N, V], [N]
        acc.add(ref_logits, cand_logits, targets)
    fidelity = acc.result()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------------
# Teacher-forced fidelity
#
# Legend: N predicted positions (rows), V vocabulary size.


@dataclass(frozen=True)
class Fidelity:
    """How closely a candidate's next-token distributions follow the lossless reference.

    n_tokens: predicted positions compared.
    kl_mean, kl_p99: KL(ref || cand) per position in nats, mean and 99th percentile
        (linear interpolation, as numpy's default). 0.0 exactly when the logits are identical.
    top1_agreement: share of positions where both put their highest logit on the same token.
    ppl_ref, ppl_cand: perplexity of the target tokens under each.
    ppl_ratio: ppl_cand / ppl_ref; above 1.0 means the candidate is more surprised.
    """

    n_tokens: int
    kl_mean: float
    kl_p99: float
    top1_agreement: float
    ppl_ref: float
    ppl_cand: float
    ppl_ratio: float


def kl_per_token(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || cand) of each row's softmax, in float64 nats: `[N, V], [N, V] -> [N]`.

    Computed from log_softmax so tiny probabilities do not underflow to log(0). Tokens the
    reference gives probability 0 contribute nothing (0 * log 0 = 0), even where the
    candidate masks them too; rounding can leave a row at -1e-17, so rows are clamped at 0.
    """
    import torch

    _check_logits(ref_logits, cand_logits)
    log_p = torch.log_softmax(ref_logits.double(), dim=-1)  # [N, V]
    log_q = torch.log_softmax(cand_logits.double(), dim=-1)  # [N, V]
    p = log_p.exp()  # [N, V]
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))  # [N, V]
    return terms.sum(dim=-1).clamp_min(0.0)  # [N]


@dataclass
class FidelityAccumulator:
    """Collects fidelity over many batches (prompts, shards) and summarises them exactly.

    Sums are enough for the means and perplexities, but a p99 needs every per-token KL, so
    those are kept (8 bytes a token, on the CPU). Logits are processed in row chunks so the
    float64 temporaries stay small even for a 150k-token vocabulary.
    """

    n_tokens: int = 0
    agree: int = 0
    nll_ref: float = 0.0
    nll_cand: float = 0.0
    kl_values: list = field(default_factory=list, repr=False)  # float64 CPU tensors [n_i]

    def add(
        self, ref_logits: torch.Tensor, cand_logits: torch.Tensor, target_ids: torch.Tensor
    ) -> None:
        """Adds N positions: row j of each `[N, V]` logits tensor predicts `target_ids[j]`."""
        import torch

        _check_logits(ref_logits, cand_logits)
        n, vocab = ref_logits.shape
        if target_ids.shape != (n,) or target_ids.dtype.is_floating_point:
            raise ValueError(
                f"target_ids must be an integer tensor of shape [{n}], one per logits row; "
                f"got {target_ids.dtype} {list(target_ids.shape)}"
            )
        if n and not (0 <= int(target_ids.min()) and int(target_ids.max()) < vocab):
            raise ValueError(f"target_ids must lie in [0, {vocab}), the vocabulary of the logits")
        chunk = max(1, 2**24 // max(vocab, 1))
        for start in range(0, n, chunk):
            ref = ref_logits[start : start + chunk]  # [n, V]
            cand = cand_logits[start : start + chunk]  # [n, V]
            targets = target_ids[start : start + chunk].long().to(ref.device)  # [n]
            self.kl_values.append(kl_per_token(ref, cand).cpu())
            self.agree += int((ref.argmax(dim=-1) == cand.argmax(dim=-1)).sum())
            self.nll_ref += float(torch.nn.functional.cross_entropy(ref.double(), targets, reduction="sum"))
            self.nll_cand += float(torch.nn.functional.cross_entropy(cand.double(), targets, reduction="sum"))
            self.n_tokens += ref.shape[0]

    def merge(self, other: FidelityAccumulator) -> FidelityAccumulator:
        """A new accumulator holding both sets of positions; neither input changes."""
        return FidelityAccumulator(
            n_tokens=self.n_tokens + other.n_tokens,
            agree=self.agree + other.agree,
            nll_ref=self.nll_ref + other.nll_ref,
            nll_cand=self.nll_cand + other.nll_cand,
            kl_values=[*self.kl_values, *other.kl_values],
        )

    def result(self) -> Fidelity:
        """The summary of every position added so far; raises ValueError if there are none."""
        import torch

        if self.n_tokens == 0:
            raise ValueError("fidelity needs at least one predicted position; none were added")
        kl = torch.cat(self.kl_values)  # [N]
        mean_nll_ref = self.nll_ref / self.n_tokens
        mean_nll_cand = self.nll_cand / self.n_tokens
        return Fidelity(
            n_tokens=self.n_tokens,
            kl_mean=float(kl.sum()) / self.n_tokens,
            kl_p99=float(torch.quantile(kl, 0.99)),
            top1_agreement=self.agree / self.n_tokens,
            ppl_ref=math.exp(mean_nll_ref),
            ppl_cand=math.exp(mean_nll_cand),
            # exp of the difference, not a quotient: exactly 1.0 when the two NLLs are equal.
            ppl_ratio=math.exp(mean_nll_cand - mean_nll_ref),
        )


def fidelity_from_logits(
    ref_logits: torch.Tensor, cand_logits: torch.Tensor, target_ids: torch.Tensor
) -> Fidelity:
    """Fidelity of one batch: `[N, V]` reference and candidate logits, `[N]` targets."""
    acc = FidelityAccumulator()
    acc.add(ref_logits, cand_logits, target_ids)
    return acc.result()


def merge_fidelity(parts: Sequence[Fidelity]) -> Fidelity:
    """Token-weighted combination of summaries already computed.

    Means, top-1 agreement and perplexities combine exactly (perplexity through its log,
    the mean NLL). A p99 cannot be rebuilt from p99s: the pooled one lies between the
    smallest and the largest part's, so this reports the largest, an upper bound. When the
    exact pooled p99 matters, keep `FidelityAccumulator`s and `merge` those instead.
    """
    parts = [p for p in parts if p.n_tokens > 0]
    if not parts:
        raise ValueError("merge_fidelity needs at least one part with predicted positions")
    n = sum(p.n_tokens for p in parts)
    mean_nll_ref = sum(p.n_tokens * math.log(p.ppl_ref) for p in parts) / n
    mean_nll_cand = sum(p.n_tokens * math.log(p.ppl_cand) for p in parts) / n
    return Fidelity(
        n_tokens=n,
        kl_mean=sum(p.n_tokens * p.kl_mean for p in parts) / n,
        kl_p99=max(p.kl_p99 for p in parts),
        top1_agreement=sum(p.n_tokens * p.top1_agreement for p in parts) / n,
        ppl_ref=math.exp(mean_nll_ref),
        ppl_cand=math.exp(mean_nll_cand),
        ppl_ratio=math.exp(mean_nll_cand - mean_nll_ref),
    )


def _check_logits(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> None:
    if ref_logits.dim() != 2 or ref_logits.shape != cand_logits.shape:
        raise ValueError(
            "reference and candidate logits must both be [N, V] with the same shape; got "
            f"{list(ref_logits.shape)} and {list(cand_logits.shape)}"
        )
    if not (ref_logits.dtype.is_floating_point and cand_logits.dtype.is_floating_point):
        raise ValueError(
            f"logits must be floating point; got {ref_logits.dtype} and {cand_logits.dtype}"
        )


# --------------------------------------------------------------------------------------------
# Greedy agreement


def token_agreement(ref_ids: Sequence[int], cand_ids: Sequence[int]) -> dict:
    """How a candidate's greedy tokens compare with the reference's.

    exact_match: the two sequences are identical (same length, same ids).
    first_divergence: the first index where they differ, the shorter length if one is a
        prefix of the other, None when they are identical.
    match_fraction: equal positions over the first min(len) positions; 1.0 for two empty
        sequences, 0.0 when exactly one is empty.
    """
    ref, cand = [int(t) for t in ref_ids], [int(t) for t in cand_ids]
    common = min(len(ref), len(cand))
    equal = [ref[i] == cand[i] for i in range(common)]
    first = next((i for i, same in enumerate(equal) if not same), None)
    if first is None and len(ref) != len(cand):
        first = common
    if common:
        fraction = sum(equal) / common
    else:
        fraction = 1.0 if len(ref) == len(cand) else 0.0
    return {"exact_match": ref == cand, "first_divergence": first, "match_fraction": fraction}


def exact_match_rate(pairs: Iterable[tuple[Sequence[int], Sequence[int]]]) -> float:
    """Share of (reference, candidate) token-id pairs that are identical."""
    matches = [token_agreement(ref, cand)["exact_match"] for ref, cand in pairs]
    if not matches:
        raise ValueError("exact_match_rate needs at least one (reference, candidate) pair")
    return sum(matches) / len(matches)
