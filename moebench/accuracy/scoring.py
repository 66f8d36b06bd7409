"""Scoring for `accuracy_run`: tokens and teacher-forced logits in, the accuracy block's dicts out.

Pure functions (no engine, no files): greedy agreement per item, fidelity per item and pooled,
task accuracy paired by item (GSM8K final number, exact answer, multiple choice by
log-likelihood, perplexity over text), and the short summary `moebench run` prints.

Pairing rule: one row per item (its first repetition), the same items on both sides; paired
statistics come from `moebench.stats` and need 5 items for an interval (fewer: the figure is
reported with `ci95: null` and `ci_method: "insufficient samples"`).
"""
from __future__ import annotations

from typing import Any

from moebench.accuracy.fidelity import FidelityAccumulator, token_agreement
from moebench.workloads.answers import answers_match, extract_model_answer

# Legend: n scored positions of one item, V vocabulary.


# ------------------------------------------------------------------------------------------
# greedy agreement
# ------------------------------------------------------------------------------------------
def greedy_summary(reqs: list, ref_tokens: dict, cand_tokens: dict) -> tuple[list[dict], dict]:
    """Per-item rows (exact match, first divergence, match fraction) and their summary."""
    rows = []
    for r in reqs:
        a = token_agreement(ref_tokens[r.id], cand_tokens[r.id])
        rows.append({"prompt_id": r.id, "exact_match": a["exact_match"],
                     "first_divergence": a["first_divergence"],
                     "match_fraction": a["match_fraction"]})
    n = len(rows)
    matches = sum(row["exact_match"] for row in rows)
    return rows, {
        "n": n,
        "exact_matches": matches,
        "exact_match_rate": matches / n if n else None,
        "match_fraction_mean": sum(r["match_fraction"] for r in rows) / n if n else None,
        "first_divergence": [r["first_divergence"] for r in rows],
        "n_tokens": sum(len(ref_tokens[r.id]) for r in reqs),
    }


# ------------------------------------------------------------------------------------------
# teacher-forced fidelity
# ------------------------------------------------------------------------------------------
def item_fidelity(rows: list[tuple]) -> tuple[Any, dict, float]:
    """Pooled `Fidelity` (None if no positions), per-item ones, and the largest |ref − cand|
    logit difference (0.0 exactly when every logit is identical).

    rows: (item id, ref logits [n, V], cand logits [n, V], target ids of length n).
    """
    import torch

    pooled = FidelityAccumulator()
    per: dict = {}
    worst = 0.0
    for iid, ref, cand, targets in rows:
        if ref.shape[0] == 0:
            continue
        acc = FidelityAccumulator()
        acc.add(ref, cand, torch.tensor(list(targets), dtype=torch.long))
        per[iid] = acc.result()
        pooled = pooled.merge(acc)
        worst = max(worst, float((ref.double() - cand.double()).abs().max()))
    return (pooled.result() if pooled.n_tokens else None), per, worst


def fidelity_summary(fid: Any, per: dict, worst: float, *, on: str, seed: int = 0) -> dict:
    """The fidelity dict: pooled figures plus a paired CI of the per-item perplexity ratio."""
    if fid is None:
        return {"on": on, "n_tokens": 0}
    from moebench.stats import paired_ratio

    ref_ppl = [f.ppl_ref for f in per.values()]
    cand_ppl = [f.ppl_cand for f in per.values()]
    est = paired_ratio(ref_ppl, cand_ppl, seed=seed)
    return {
        "on": on,
        "n_tokens": fid.n_tokens,
        "kl_mean": fid.kl_mean,
        "kl_p99": fid.kl_p99,
        "top1_agreement": fid.top1_agreement,
        "ppl_ref": fid.ppl_ref,
        "ppl_cand": fid.ppl_cand,
        "ppl_ratio": fid.ppl_ratio,
        "max_abs_logit_diff": worst,
        "ppl_ratio_items": {"median_ratio": est.ratio,
                            "ci95": None if est.ci95 is None else list(est.ci95),
                            "p_value": est.p_value, "method": est.method, "n": est.n_pairs},
    }


def add_item_fidelity(per_item: list[dict], per: dict, prefix: str = "") -> None:
    for row in per_item:
        f = per.get(row["prompt_id"])
        if f is not None:
            row[prefix + "kl_mean"] = f.kl_mean
            row[prefix + "top1_agreement"] = f.top1_agreement
            row[prefix + "ppl_ratio"] = f.ppl_ratio


# ------------------------------------------------------------------------------------------
# task accuracy
# ------------------------------------------------------------------------------------------
def score_generation(token_ids: Any, answer: str, tokenizer: Any, scoring: str,
                     eos_ids: set[int] = frozenset()) -> tuple[str | None, bool]:
    """(what the model answered, whether it is right) for one greedy continuation.

    The continuation is cut at its first EOS (decoding ignores EOS so every strategy runs the
    same steps; what follows it is not an answer) and decoded without special tokens.
    `gsm8k`: `extract_model_answer` vs the gold number (`answers_match`). `exact`: the first
    non-empty line, stripped, equals the answer stripped.
    """
    ids = list(token_ids)
    cut = next((i for i, t in enumerate(ids) if int(t) in eos_ids), len(ids))
    text = tokenizer.decode(ids[:cut], skip_special_tokens=True)
    if scoring == "gsm8k":
        pred = extract_model_answer(text)
        return pred, answers_match(pred, answer)
    if scoring == "exact":
        lines = [ln.strip() for ln in text.strip().splitlines()]
        pred = lines[0] if lines else ""
        return pred, pred == answer.strip()
    raise ValueError(f"unknown scoring {scoring!r}")


def eos_ids(loaded: Any) -> set[int]:
    ids: set[int] = set()
    tid = getattr(loaded.tokenizer, "eos_token_id", None)
    if tid is not None:
        ids.add(int(tid))
    gen = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    for t in (gen if isinstance(gen, (list, tuple)) else [gen]):
        if t is not None:
            ids.add(int(t))
    return ids


def paired_delta(kind: str, ref_ok: list[bool], cand_ok: list[bool], *, seed: int) -> dict:
    """Δacc (cand − ref) with its paired bootstrap CI, McNemar's exact p and the flip rate."""
    from moebench.stats import EXACT_CONSTANT, INSUFFICIENT, MIN_SAMPLES, paired_accuracy_delta

    d = paired_accuracy_delta(ref_ok, cand_ok, seed=seed)
    if d.ci95 is None:
        method = INSUFFICIENT
    elif d.ci95[0] == d.ci95[1]:
        method = EXACT_CONSTANT
    else:
        method = "paired bootstrap"
    return {"kind": kind, "n": d.n, "ref_acc": d.base_acc, "cand_acc": d.cand_acc,
            "delta": d.delta, "ci95": None if d.ci95 is None else list(d.ci95),
            "ci_method": method, "min_items_for_ci": MIN_SAMPLES, "mcnemar_p": d.mcnemar_p,
            "ref_only_correct": d.b, "cand_only_correct": d.c, "flips": d.b + d.c,
            "flip_rate": d.flip_rate}


def task_summary(prep: Any, reqs: list, ref: Any, cand: Any, cand_tokens: dict,
                 per_item: list[dict]) -> dict | None:
    """Task accuracy paired against the reference; adds per-item fields to `per_item`."""
    wl = prep.workload
    rows = {row["prompt_id"]: row for row in per_item}
    seed = prep.cfg.seed
    if wl.task == "generate" and wl.scoring in ("gsm8k", "exact"):
        eos = eos_ids(prep.loaded)
        ref_ok, cand_ok = [], []
        for r in reqs:
            if r.item.answer is None:
                continue
            tok = prep.loaded.tokenizer
            rp, rk = score_generation(ref.tokens[r.id], r.item.answer, tok, wl.scoring, eos)
            cp, ck = score_generation(cand_tokens[r.id], r.item.answer, tok, wl.scoring, eos)
            rows[r.id].update(answer=r.item.answer, ref_pred=rp, cand_pred=cp, ref_correct=rk,
                              cand_correct=ck)
            ref_ok.append(rk)
            cand_ok.append(ck)
        return paired_delta(wl.scoring, ref_ok, cand_ok, seed=seed)
    if wl.task == "choice":
        ref_ok, cand_ok = [], []
        for r in reqs:
            if r.id not in ref.forced.choice_ll or r.item.label is None:
                continue
            rll, cll = ref.forced.choice_ll[r.id], cand.choice_ll[r.id]
            rc, cc = _argmax(rll), _argmax(cll)
            rows[r.id].update(label=r.item.label, ref_choice=rc, cand_choice=cc,
                              ref_correct=rc == r.item.label, cand_correct=cc == r.item.label,
                              ref_loglik=list(rll), cand_loglik=list(cll))
            ref_ok.append(rc == r.item.label)
            cand_ok.append(cc == r.item.label)
        out = paired_delta("choice", ref_ok, cand_ok, seed=seed)
        out["rule"] = "highest summed log-likelihood of the choice tokens after the prompt"
        return out
    if wl.task == "perplexity":
        fid, per, worst = item_fidelity([(r.id, ref.forced.text[r.id], cand.text[r.id],
                                          r.input_ids[1:]) for r in reqs if r.id in ref.forced.text])
        add_item_fidelity(per_item, per, prefix="text_")
        text = fidelity_summary(fid, per, worst, on="workload text (every token after the first)",
                                seed=seed)
        return {"kind": "perplexity", "n": len(per), "ppl_ref": text.get("ppl_ref"),
                "ppl_cand": text.get("ppl_cand"), "ppl_ratio": text.get("ppl_ratio"),
                "delta": None, "text_fidelity": text}
    return None


def _argmax(values: tuple) -> int:
    """Index of the largest value; the first one on a tie (deterministic)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


# ------------------------------------------------------------------------------------------
# what `moebench run` prints
# ------------------------------------------------------------------------------------------
def summary_lines(block: dict) -> dict:
    """Short strings for the result table (numbers stay in the structured fields)."""
    g, f, t = block["greedy"], block["fidelity"], block["task_accuracy"]
    out = {"reference": block["reference"]["name"]}
    if g["n"]:
        out["greedy exact match"] = f"{g['exact_match_rate']:.3f} ({g['exact_matches']}/{g['n']} prompts)"
    if f.get("n_tokens"):
        out["KL mean / p99 (nats)"] = f"{f['kl_mean']:.3g} / {f['kl_p99']:.3g}"
        out["top-1 agreement"] = f"{f['top1_agreement']:.3f}"
        out["perplexity ratio"] = f"{f['ppl_ratio']:.4f}"
    if t and t.get("delta") is not None:
        ci = t["ci95"]
        ci_s = f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"({t['ci_method']})"
        out[f"Δacc {t['kind']}"] = (f"{t['delta']:+.3f} {ci_s}; ref {t['ref_acc']:.3f} -> "
                                    f"{t['cand_acc']:.3f}, n={t['n']}")
        out["McNemar p / flip rate"] = f"{t['mcnemar_p']:.3g} / {t['flip_rate']:.3f}"
    elif t and t.get("kind") == "perplexity" and t.get("ppl_ratio") is not None:
        out["text perplexity ratio"] = f"{t['ppl_ratio']:.4f} ({t['ppl_ref']:.4g} -> {t['ppl_cand']:.4g})"
    if block["lossless_check"]:
        out["lossless check"] = block["lossless_check"]
    return out
