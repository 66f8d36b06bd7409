"""What a lossy offloading strategy costs in accuracy.

Some strategies change the numbers the model computes (a quantised or skipped expert, a
substituted one). moebench prices that loss three ways, each against the *lossless reference
run on the same workload* (MEASUREMENT.md, "Accuracy"):

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

Everything here is pure: no files except `load_jsonl`, no printing, no globals. torch is
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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------------
# Numbers: one grammar shared by the strict parser (normalize_number) and the scanner that
# finds numbers inside free text (extract_model_answer), so whatever the scanner finds the
# parser accepts.

# Thousands groups must be exact ("1,234,567"); "1,2345" is not one number.
_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_FRACTION = r"\d+/\d+(?!\d)"
_MINUS = "-\u2212"  # ASCII hyphen-minus and the Unicode minus sign
_MINUS_CLASS = r"\-\u2212"  # the same, escaped for a [...] class ("+-\u2212" would be a range)

_STRICT_NUMBER = re.compile(
    rf"(?P<sign>[+{_MINUS_CLASS}])?\$?\s*(?P<sign2>[+{_MINUS_CLASS}])?"
    rf"(?:(?P<frac>{_FRACTION})|(?P<dec>{_DECIMAL}))"
)
# In running text a minus only counts when it cannot be subtraction: "5-3" is 5 and 3.
_TEXT_NUMBER = re.compile(
    rf"(?P<sign>(?<![\w)\]}}.])[{_MINUS_CLASS}])?(?:\$(?P<sign2>[{_MINUS_CLASS}])?)?"
    rf"(?P<body>{_FRACTION}|{_DECIMAL})"
)


def normalize_number(text: str) -> str | None:
    """The canonical form of a number written as `text`, or None if it is not one number.

    Accepts an optional sign, a `$`, thousands commas, a trailing `.` or `%`, leading-dot
    decimals and simple fractions. Canonical means: no commas or currency, no trailing
    zeros after the point, no needless point, no negative zero, fractions kept as fractions::

        "1,234" -> "1234"   "$1,234.50" -> "1234.5"   "7.0" -> "7"   "-0" -> "0"
        ".5" -> "0.5"       "42%" -> "42"             "3/4" -> "3/4" "06/08" -> "6/8"
        "forty" -> None     "1/0" -> None             "1,2345" -> None
    """
    s = text.strip()
    while s and s[-1] in ".%":
        s = s[:-1].rstrip()
    m = _STRICT_NUMBER.fullmatch(s)
    if m is None or (m["sign"] and m["sign2"]):
        return None
    negative = (m["sign"] or m["sign2"] or "+") in _MINUS
    if m["frac"] is not None:
        num, den = (int(part) for part in m["frac"].split("/"))
        if den == 0:
            return None
        return f"{'-' if negative and num else ''}{num}/{den}"
    value = Decimal(m["dec"].replace(",", ""))
    if value == 0:
        return "0"
    # normalize() drops trailing zeros ("12.50" -> "12.5") but writes 100 as 1E+2; "f" undoes that.
    canonical = format(value.normalize(), "f")
    return f"-{canonical}" if negative else canonical


def _as_fraction(canonical: str) -> Fraction:
    """Exact value of a string that `normalize_number` produced."""
    if "/" in canonical:
        return Fraction(canonical)
    return Fraction(Decimal(canonical))


# --------------------------------------------------------------------------------------------
# GSM8K answers


def extract_reference_answer(answer_field: str) -> str:
    """GSM8K's gold answer: the canonical number after the last `####` of the answer field.

    The dataset writes it like "#### 2,125" or "#### 18"; this returns "2125" or "18".
    Raises ValueError when there is no `####` or what follows it is not a number.
    """
    head, marker, tail = answer_field.rpartition("####")
    if not marker:
        raise ValueError(
            f"GSM8K answer field has no '####' marker before its final answer: {_snippet(answer_field)}"
        )
    canonical = normalize_number(tail)
    if canonical is None:
        raise ValueError(
            f"GSM8K answer field has no number after its last '####': {_snippet(tail)}"
        )
    return canonical


# A model that keeps going after its answer usually starts the next few-shot example.
_NEW_EXAMPLE = re.compile(r"(?:^|(?<=\s))(?:Question|Q)\s*:")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is|was|=|:)\s*:?", re.IGNORECASE)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")


def extract_model_answer(generated: str) -> str | None:
    """The final number a model gave in `generated`, in canonical form; None if there is none.

    The text is first cut at the start of a new few-shot example ("Question:" / "Q:"), since
    a base model often invents the next one. Then, in order of how explicitly the model
    committed to an answer:

    1. the first number after the last `####` (the GSM8K format the shots teach),
    2. the first number inside the last `\\boxed{...}`,
    3. the first number after the last "answer is" / "answer:" on that line,
    4. the last number anywhere.

    Pass only the model's continuation, not the prompt: the prompt's own "Question:" lines
    would cut everything away. Units, currency, percent signs, bold markers and trailing
    prose are ignored:
    "The total is $1,234." -> "1234", "**42** apples" -> "42", "\\boxed{\\frac{3}{4}}" -> "3/4".
    """
    cut = _NEW_EXAMPLE.search(generated)
    text = generated[: cut.start()] if cut else generated
    text = _LATEX_FRAC.sub(r"\1/\2", text)

    _, marker, after_marker = text.rpartition("####")
    if marker and (found := _first_number(after_marker)) is not None:
        return found

    boxed = _boxed_contents(text)
    if boxed and (found := _first_number(boxed[-1])) is not None:
        return found

    for m in reversed(list(_ANSWER_IS.finditer(text))):
        rest = text[m.end():].lstrip()
        if (found := _first_number(rest.split("\n", 1)[0])) is not None:
            return found

    return _last_number(text)


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether a predicted answer equals the gold one as numbers.

    Both sides are normalised first, so "1,234.0" matches "1234" and "0.75" matches "3/4".
    Two integers must be equal exactly; otherwise a difference up to 1e-6 counts as equal
    (a model that writes 0.333333 for 1/3 is right). A missing or non-numeric prediction
    never matches; a non-numeric gold answer is a caller's bug and raises ValueError.
    """
    gold_canonical = normalize_number(gold)
    if gold_canonical is None:
        raise ValueError(f"gold answer is not a number: {_snippet(gold)}")
    if pred is None:
        return False
    pred_canonical = normalize_number(pred)
    if pred_canonical is None:
        return False
    p, g = _as_fraction(pred_canonical), _as_fraction(gold_canonical)
    if p.denominator == 1 and g.denominator == 1:
        return p == g
    return abs(p - g) <= Fraction(1, 10**6)


def _first_number(text: str) -> str | None:
    for m in _TEXT_NUMBER.finditer(text):
        if (canonical := _canonical_match(m)) is not None:
            return canonical
    return None


def _last_number(text: str) -> str | None:
    for m in reversed(list(_TEXT_NUMBER.finditer(text))):
        if (canonical := _canonical_match(m)) is not None:
            return canonical
    return None


def _canonical_match(m: re.Match[str]) -> str | None:
    minus = "-" if (m["sign"] or m["sign2"]) else ""
    return normalize_number(minus + m["body"])


def _boxed_contents(text: str) -> list[str]:
    """The contents of every `\\boxed{...}` in `text`, braces balanced (so nesting works)."""
    contents = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                contents.append(text[start:i])
                break
    return contents


def _snippet(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# Few-shot prompts and data files live in moebench.workloads.datasets (re-exported here).
from moebench.workloads.datasets import (  # noqa: E402,F401
    DatasetError, DatasetNotFoundError, build_gsm8k_prompt, load_jsonl, select_shots)


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
