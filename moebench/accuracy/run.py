"""What a strategy costs in accuracy, measured against a lossless reference on the same workload.

`attach_accuracy(prep, result, piece, reference=None)` fills `result["accuracy"]` (schema in
docs/accuracy.md). Three families of figures, all paired item by item with the reference:

- **greedy agreement** — the candidate's timed greedy tokens vs the reference's: exact-match
  rate and, per prompt, the first position where they part;
- **teacher-forced fidelity** — both strategies are fed the *reference's* tokens and their
  next-token logits compared row by row: KL(ref || cand) mean and p99, top-1 agreement,
  perplexity ratio (with a paired CI over items, from 5 items on). Sees damage before any
  greedy token flips, and keeps scoring after the greedy paths diverge;
- **task accuracy** — GSM8K final-number match or exact answer (task generate), the choice
  with the highest log-likelihood (task choice), or perplexity over the text (task
  perplexity); Δacc with a paired bootstrap CI, McNemar's exact p and the flip rate
  (`stats.paired_accuracy_delta`).

How the teacher-forced forward runs (`teacher_forced`): a *separate* engine attach with the
same strategy, parameters, budget, clock and artifacts, whose step timings are thrown away, so
nothing here reaches the timed metrics. It steps exactly like greedy decoding: the prefix is one
prefill step, then one decode step per forced token with the KV cache — so a strategy that acts
only on decode steps is scored as it decodes, and a lossless reference fed its own tokens
repeats its greedy computation operation for operation (`Reference.self_consistent` checks that
against the logits of its timed run when it kept them). The price is one forward per scored
token; perplexity over a 512-token text is 512 steps per strategy.

    prep = prepare(cfg)
    ref = prepare_reference(prep)                      # runs `sync` (or pass a lossless Piece)
    for name in ("lru", "speculative"):
        piece = run_strategy(prep, name)
        result = build_result(prep, [piece])
        attach_accuracy(prep, result, piece, reference=ref)   # ref computed once, reused
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moebench.errors import UserError

# Legend: n scored positions of one item, V vocabulary, T prompt tokens.


@dataclass(frozen=True)
class Forced:
    """What one strategy computes teacher-forced on a workload (one untimed engine attach)."""

    strategy: dict
    gen: dict          # item id -> [n, V] CPU logits; row j predicts reference token j
    text: dict         # task perplexity: item id -> [T-1, V]; row j predicts prompt token j+1
    choice_ll: dict    # task choice: item id -> log-likelihood of each choice (sum over tokens)


@dataclass(frozen=True)
class Reference:
    """The lossless run everything is compared with, computed once and reused per candidate."""

    strategy: dict
    tokens: dict                   # item id -> greedy token ids (first repetition)
    forced: Forced
    self_consistent: bool | None   # its forced logits equal its greedy logits (None: not kept)


# ------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------
def attach_accuracy(prep: Any, result: dict, piece: Any, reference: Any = None) -> None:
    """Fill `result["accuracy"]` for the strategy that produced `piece`.

    `reference` is a `Reference` (from `prepare_reference`, reused across strategies), a Piece of
    a lossless strategy on the same `prep`, or None to run `sync` here as the reference.
    """
    from moebench.engine.session import Piece

    if reference is None or isinstance(reference, Piece):
        reference = _memo_reference(prep, reference)
    elif not isinstance(reference, Reference):
        raise TypeError(f"reference must be a Reference, a Piece or None, not {type(reference).__name__}")
    cand = teacher_forced(prep, piece.strategy, reference.tokens)
    result["accuracy"] = accuracy_block(prep, piece, reference, cand)
    if getattr(prep.workload, "batch_size", 1) > 1:
        note = ("accuracy of a batched run: the fidelity and task scores are teacher-forced one "
                "prompt at a time; the greedy tokens compared are the batched run's own")
        result.setdefault("notes", [])
        if note not in result["notes"]:
            result["notes"].append(note)


def prepare_reference(prep: Any, piece: Any = None) -> Reference:
    """The reference: `piece` (a lossless strategy's run on `prep`) or a fresh `sync` run."""
    import torch

    from moebench.engine.session import run_session
    from moebench.strategy import build_strategy

    if piece is None:
        piece = run_session(prep, build_strategy("sync"), keep_logits=True)
    tokens = first_outputs(piece)
    if not tokens:
        raise UserError("the reference run produced no outputs to compare with.")
    forced = teacher_forced(prep, piece.strategy, tokens)
    consistent = None
    kept = {rid: rows for (rep, rid), rows in piece.logits.items() if rep == 0 and rows}
    if kept:
        consistent = all(torch.equal(torch.stack(rows), forced.gen[rid])
                         for rid, rows in kept.items() if rid in forced.gen)
    return Reference(piece.strategy, tokens, forced, consistent)


def _memo_reference(prep: Any, piece: Any) -> Reference:
    """`prepare_reference`, computed once per reference Piece (or once for the implicit `sync`)
    and kept in `prep.memo`, which copies of a Prepared share: `compare` hands every strategy
    the baseline's Piece, and the reference's forced pass runs once, not once per strategy."""
    memo = getattr(prep, "memo", None)
    if memo is None:
        return prepare_reference(prep, piece)
    key = ("accuracy-reference", None if piece is None else id(piece))
    hit = memo.get(key)
    if hit is not None and hit[0] is piece and hit[2] == prep.workload_sha:
        return hit[1]
    ref = prepare_reference(prep, piece)
    memo[key] = (piece, ref, prep.workload_sha)
    return ref


def first_outputs(piece: Any) -> dict:
    """item id -> greedy token ids of its first repetition (items are the unit of pairing)."""
    out: dict = {}
    for o in sorted(piece.outputs, key=lambda o: o["repetition"]):
        out.setdefault(o["prompt_id"], tuple(int(t) for t in o["token_ids"]))
    return out


# ------------------------------------------------------------------------------------------
# the teacher-forced forward (engine mechanics; untimed)
# ------------------------------------------------------------------------------------------
def teacher_forced(prep: Any, strategy: dict, ref_tokens: dict) -> Forced:
    """Run strategy `strategy` (its `describe()` dict) teacher-forced on every request of `prep`.

    Generation items are fed `ref_tokens[item id]`; task choice also scores every choice after
    the prompt, task perplexity every prompt token after the first. Requests keep their order
    and index (as in the timed run's first repetition); choice and perplexity passes follow with
    fresh request indices.
    """
    import torch

    from moebench.calibration.provision import artifacts_for
    from moebench.engine.session import make_engine
    from moebench.strategy import build_strategy

    strat = build_strategy(strategy["name"], strategy.get("params") or {})
    # the timed run's engine (budget, clock, prefill copies: residency decides what a lossy
    # strategy computes, so its accuracy is measured on the same one)
    engine = make_engine(prep, strat, artifacts_for(prep, strat), record=False)
    gen, text, choice_ll = {}, {}, {}
    task = prep.workload.task
    tok = prep.loaded.tokenizer
    n_req = len(prep.requests) * prep.workload.repetitions
    engine.attach()
    try:
        engine.prefill_warm()
        model = prep.loaded.model
        with torch.inference_mode():
            for ri, req in enumerate(prep.requests):
                if req.id in ref_tokens:
                    gen[req.id] = _forced_logits(engine, model, req.input_ids, ref_tokens[req.id],
                                                 prep.device, request=ri)
            extra = n_req
            for req in prep.requests:
                if task == "choice" and req.item.choices:
                    lls = []
                    for choice in req.item.choices:
                        ids = choice_ids(tok, choice)
                        rows = _forced_logits(engine, model, req.input_ids, ids, prep.device,
                                              request=extra)
                        extra += 1
                        lls.append(_log_likelihood(rows, ids))
                    choice_ll[req.id] = tuple(lls)
                elif task == "perplexity" and len(req.input_ids) > 1:
                    text[req.id] = _forced_logits(engine, model, req.input_ids[:1],
                                                  req.input_ids[1:], prep.device, request=extra)
                    extra += 1
    finally:
        engine.detach()
    return Forced(strategy, gen, text, choice_ll)


def _forced_logits(engine: Any, model: Any, prefix: tuple, forced: tuple, device: Any, *,
                   request: int) -> Any:
    """Logits `[len(forced), V]`: prefill `prefix` (one step), then feed `forced[:-1]` one
    decode step each with the KV cache. Row j is the distribution that predicts `forced[j]`."""
    import torch

    from moebench.engine.session import _cache_kwarg

    rows = []
    if not forced:
        return torch.empty(0, model.config.vocab_size)
    engine.begin_request(request)
    ids = torch.tensor([list(prefix)], device=device)                          # [1, T]
    engine.begin_step("prefill", 0, ids.shape[1])
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)   # as the session: one row
    engine.end_step()
    rows.append(out.logits[0, -1].detach().to("cpu", copy=True))               # [V]
    kw = _cache_kwarg(model)
    for pos in range(1, len(forced)):
        nxt = torch.tensor([[int(forced[pos - 1])]], device=device)           # [1, 1]
        engine.begin_step("decode", pos, 1)
        out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{kw: out.past_key_values})
        engine.end_step()
        rows.append(out.logits[0, -1].detach().to("cpu", copy=True))
    return torch.stack(rows)                                                   # [n, V]


def choice_ids(tokenizer: Any, choice: str) -> tuple[int, ...]:
    """Token ids of a choice, tokenised on its own and appended to the prompt verbatim (start
    choices with a space when the prompt does not end in one)."""
    ids = tuple(tokenizer(choice, add_special_tokens=False)["input_ids"])
    if not ids:
        raise UserError(f"choice {choice!r} tokenises to nothing.")
    return ids


def _log_likelihood(rows: Any, targets: tuple) -> float:
    """Σ_j log softmax(rows[j])[targets[j]] in float64: rows [n, V], targets n ids."""
    import torch

    logp = torch.log_softmax(rows.double(), dim=-1)                           # [n, V]
    idx = torch.tensor(targets, dtype=torch.long)[:, None]                     # [n, 1]
    return float(logp.gather(1, idx).sum())


# ------------------------------------------------------------------------------------------
# the accuracy block (pure given the tensors)
# ------------------------------------------------------------------------------------------
def accuracy_block(prep: Any, piece: Any, ref: Reference, cand: Forced) -> dict:
    """result["accuracy"] from the two runs' tokens and forced logits (docs/accuracy.md)."""
    from moebench.accuracy.scoring import (add_item_fidelity, fidelity_summary, greedy_summary,
                                           item_fidelity, summary_lines, task_summary)

    wl = prep.workload
    cand_tokens = first_outputs(piece)
    reqs = [r for r in prep.requests if r.id in ref.tokens and r.id in cand_tokens]
    notes = []
    if len(reqs) < len(prep.requests):
        notes.append(f"only {len(reqs)} of {len(prep.requests)} items finished in both runs; "
                     "the rest are not scored")
    if not ref.strategy.get("lossless", False):
        notes.append(f"the reference '{ref.strategy['name']}' is not lossless: figures compare "
                     "two approximations")
    if ref.self_consistent is False:
        notes.append("the reference's teacher-forced logits differ from its own greedy logits: "
                     "an engine bug")
    per_item, greedy = greedy_summary(reqs, ref.tokens, cand_tokens)
    gen_fid, gen_items, worst = item_fidelity([(r.id, ref.forced.gen[r.id], cand.gen[r.id],
                                                ref.tokens[r.id]) for r in reqs])
    add_item_fidelity(per_item, gen_items)
    fidelity = fidelity_summary(gen_fid, gen_items, worst, on="reference greedy tokens",
                                seed=prep.cfg.seed)
    task = task_summary(prep, reqs, ref, cand, cand_tokens, per_item)
    lossless = bool(piece.strategy.get("lossless", False))
    check = None
    if lossless:
        check = "passed" if _identical(greedy, fidelity, task, per_item) else "failed"
        if check == "failed":
            notes.append("a lossless strategy differs from the reference: this is a bug")
            threads = _cpu_threads(prep)
            if threads and threads > 1:
                notes.append(f"on CPU with {threads} intra-op threads the fused experts kernel's "
                             "rounding can depend on which cache slot holds an expert; rerun "
                             "with OMP_NUM_THREADS=1 to tell that apart from a strategy bug")
    block = {
        "reference": {"name": ref.strategy["name"], "version": ref.strategy.get("version"),
                      "lossless": ref.strategy.get("lossless"), "params": ref.strategy.get("params"),
                      "self_consistent": ref.self_consistent},
        "n_items": len(reqs),
        "task": wl.task,
        "scoring": wl.scoring,
        "method": {"teacher_forced": "separate untimed engine attach; prefix as one prefill step, "
                                     "then one decode step per forced token with the KV cache",
                   "pairing": "by item id, first repetition",
                   "cpu_threads": _cpu_threads(prep)},
        "greedy": greedy,
        "fidelity": fidelity,
        "task_accuracy": task,
        "lossless_check": check,
        "per_item": per_item,
        "notes": notes,
    }
    block["summary"] = summary_lines(block)
    return block


def _cpu_threads(prep: Any) -> int | None:
    import torch

    return torch.get_num_threads() if prep.device.type == "cpu" else None


def _identical(greedy: dict, fidelity: dict, task: dict | None, per_item: list[dict]) -> bool:
    """Bit-identical by every measure: tokens, every logit, every choice score, every answer."""
    ok = greedy["exact_match_rate"] == 1.0
    for f in (fidelity, (task or {}).get("text_fidelity")):
        if f and f.get("n_tokens"):
            ok = ok and f["max_abs_logit_diff"] == 0.0 and f["kl_mean"] == 0.0
    if task and task.get("delta") is not None:
        ok = ok and task["delta"] == 0.0 and task["flips"] == 0
    return ok and all(row.get("cand_loglik") == row.get("ref_loglik") for row in per_item)
