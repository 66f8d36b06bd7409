"""One strategy over one workload on the live engine: prepare (workload, tokens, model, budget,
clock), then attach the engine, warm up, decode every request, detach.

    prep = prepare(cfg)                                       # once, shared by every strategy
    piece = run_session(prep, strategy, provisioned)          # its artifacts provisioned above

Every request decodes exactly `max_new_tokens` greedy tokens (EOS ignored) so every strategy runs
the same steps. Warm-up steps are run first and never counted. An interrupted run (Ctrl-C) keeps
the requests that finished (`piece.complete` False).

`run_session` is the one-engine case of `run_engines`, the one decode loop: it drives every
engine a caller attaches (`moebench.engine.lockstep.run_shared`: several lossless strategies on
one shared forward) through the same calls, and every engine of a run is built by `make_engine`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moebench.config import BudgetSpec, RunConfig
from moebench.errors import UserError
from moebench.offload.budget import resolve_budget
from moebench.offload.records import StepStats, request_samples
from moebench.results.build import Piece


@dataclass(frozen=True)
class Provisioned:
    """What a strategy runs on besides the model: its artifacts (`ctx.artifacts`), the run's
    recorded routing (`ctx.trace`), what provisioning did (notes) and which artifacts they are."""

    artifacts: dict = field(default_factory=dict)
    trace: Any = None
    notes: tuple[str, ...] = ()
    provenance: tuple[dict, ...] = ()


NOTHING = Provisioned()


@dataclass
class Prepared:
    cfg: RunConfig
    workload: Any
    requests: list
    workload_sha: str
    loaded: Any
    budget: BudgetSpec
    profile: Any
    clock: str          # "cuda" | "sim"
    device: Any
    memo: dict = field(default_factory=dict)   # per-prep caches (calibration artifacts, recorded traces)


def resolve_device_and_clock(clock: str, device: str = "auto") -> tuple[Any, str]:
    import torch

    has_cuda = torch.cuda.is_available()
    if clock == "cuda" and not has_cuda:
        raise UserError("--clock cuda needs a CUDA GPU, and none is available here; use --clock sim.")
    if device == "auto":
        dev = torch.device("cuda" if has_cuda else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and not has_cuda:
            raise UserError(f"device '{device}' is not available here.")
    kind = "cuda" if (clock == "cuda" or (clock == "auto" and dev.type == "cuda")) else "sim"
    if kind == "cuda" and dev.type != "cuda":
        raise UserError("--clock cuda needs the model on a CUDA device.")
    return dev, kind


def prepare(cfg: RunConfig, loaded: Any = None) -> Prepared:
    from moebench.models.loading import load_model
    from moebench.offload.profile import load_profile
    from moebench.workloads.spec import build_requests, load_workload, workload_sha256

    wl = load_workload(cfg.workload, cfg.workload_overrides)
    budget = BudgetSpec.parse(cfg.cache_budget)
    profile = load_profile(cfg.profile)
    device, clock = resolve_device_and_clock(cfg.clock, cfg.device)
    if loaded is None:
        from moebench.models.presets import resolve_config
        check_context(wl, resolve_config(cfg.model)[0], cfg.model)     # before loading weights
        loaded = load_model(cfg.model, seed=cfg.seed, device=device)
    config = loaded.model.config.to_dict()
    reqs = build_requests(wl, loaded.tokenizer, loaded.model.config.vocab_size,
                          context=context_length(config))
    check_context(wl, config, loaded.name, reqs)
    return Prepared(cfg, wl, reqs, workload_sha256(wl, reqs), loaded, budget, profile, clock, device)


def context_length(config: dict) -> int | None:
    """The model's context (`max_position_embeddings`, also inside a `text_config`)."""
    for c in (config, config.get("text_config") or {}):
        n = c.get("max_position_embeddings") if isinstance(c, dict) else None
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_context(wl: Any, config: dict, model: str, requests: list | None = None) -> None:
    """Refuse a workload that would decode past the model's context: `max_new_tokens` alone
    before the model loads, each prompt + `max_new_tokens` once the prompts are tokenised."""
    n = context_length(config)
    if n is None:
        return
    if wl.max_new_tokens >= n:
        raise UserError(f"max_new_tokens={wl.max_new_tokens} does not fit the context of model "
                        f"'{model}' ({n} positions); ask for fewer new tokens.")
    for r in requests or ():
        if len(r.input_ids) + wl.max_new_tokens > n:
            raise UserError(f"prompt '{r.id}' ({len(r.input_ids)} tokens) + max_new_tokens="
                            f"{wl.max_new_tokens} exceeds the context of model '{model}' ({n} "
                            f"positions); lower max_new_tokens or max_prompt_tokens.")


def request_notes(requests: list) -> list[str]:
    """What the workload did to the prompts that a reader must know (cut to max_prompt_tokens)."""
    cut = [r for r in requests if getattr(r, "cut_from", None)]
    if not cut:
        return []
    keep = len(cut[0].input_ids)
    names = ", ".join(f"{r.id} ({r.cut_from} -> {len(r.input_ids)})" for r in cut[:5])
    more = f" and {len(cut) - 5} more" if len(cut) > 5 else ""
    return [f"{len(cut)} prompt(s) were cut from the left to fit max_prompt_tokens and the "
            f"model's context less max_new_tokens (to {keep} tokens for the first): {names}{more}"]


# `attach(record_trace)`: the engines of a run, built and attached to the model, in group order,
# and the call that detaches them all
Attach = Callable[[bool], tuple[list, Callable[[], None]]]


def make_engine(prep: Prepared, strategy: Any, provisioned: Provisioned, record: bool,
                loaded: Any = None) -> Any:
    """The engine of one run of `strategy` on `prep` (its budget, clock, profile, device and
    `prefill_copies`), not attached yet; `loaded` stands in for `prep.loaded` (the same model,
    with a host expert store to share)."""
    from moebench.engine.executor import OffloadEngine
    from moebench.engine.timeline import make_timeline

    budget = resolve_budget(prep.budget, prep.loaded.shape, strategy)
    return OffloadEngine(prep.loaded if loaded is None else loaded, strategy,
                         n_slots=budget.experts,
                         timeline=make_timeline(prep.clock, prep.profile, prep.device),
                         profile=prep.profile, device=prep.device,
                         artifacts=provisioned.artifacts, record_trace=record,
                         trace_source=provisioned.trace,
                         prefill_copies=prep.workload.prefill_copies)


def run_session(prep: Prepared, strategy: Any, provisioned: Provisioned = NOTHING, *,
                repetition: int = 0, progress: Callable[[int], None] | None = None,
                keep_logits: bool = False, record_trace: bool | None = None) -> Piece:
    """Attach the engine with `strategy`, run the workload once, detach."""
    def attach(record: bool) -> tuple[list, Callable[[], None]]:
        engine = make_engine(prep, strategy, provisioned, record)
        engine.attach()
        return [engine], engine.detach

    return run_engines(prep, [(strategy, provisioned)], attach=attach, repetition=repetition,
                       progress=progress, keep_logits=keep_logits, record_trace=record_trace)[0]


def run_engines(prep: Prepared, group: Sequence[tuple[Any, Provisioned]], *, attach: Attach,
                repetition: int = 0, progress: Callable[[int], None] | None = None,
                keep_logits: bool = False, record_trace: bool | None = None) -> list[Piece]:
    """The run of every `(strategy, provisioned)` of `group` on the engines `attach` gives (one
    per strategy, in group order), all driven by the same forwards; one Piece per strategy.

    One engine is `run_session`; several sharing one forward are `lockstep.run_shared`. Every
    engine sees the same calls in the same order: notes, prefill warm-up, the untimed warm-up
    decode, counters reset, every batch of every repetition, then prediction, trace and bytes.
    `progress` gets each step's tokens once per engine (`k` tokens on `n` engines: `k * n`)."""
    import torch

    strategies = [s for s, _ in group]
    record = prep.cfg.record_trace if record_trace is None else record_trace
    pieces = []
    for strategy, prov in group:
        piece = Piece(strategy=strategy.describe(),
                      budget=resolve_budget(prep.budget, prep.loaded.shape, strategy))
        piece.notes.extend(prov.notes)           # what calibration did
        if prov.provenance:                      # and which artifacts the strategy runs on
            piece.strategy["artifacts"] = list(prov.provenance)
        pieces.append(piece)
    engines, detach = attach(record)
    fan = _Fanout(engines)
    n = len(engines)
    tick = None if progress is None else (lambda k: progress(k * n))
    try:
        wl = prep.workload
        for strategy, piece in zip(strategies, pieces):
            if wl.batch_size > 1:                # what the strategy does with a batch
                piece.notes.append(f"batch_size={wl.batch_size}: {strategy.name} {strategy.batching}")
            for note in strategy.run_notes():    # legal but degenerate parameters, said aloud
                if note not in piece.notes:
                    logging.getLogger("moebench").warning(note)
                    piece.notes.append(note)
        for engine in engines:
            engine.prefill_warm()
        model = prep.loaded.model
        pad = _pad_id(prep.loaded)
        with torch.inference_mode():
            if wl.warmup_steps and prep.requests:
                _decode(fan, model, [r.input_ids for r in make_batches(prep.requests, wl.batch_size)[0]],
                        wl.warmup_steps + 1, prep.device, request=-1, record=None, pad_id=pad)
            for engine, piece in zip(engines, pieces):
                piece.warmup_trace = list(engine.trace)
                engine.trace.clear()
                engine.protocol.reset_counters()
            try:
                batches = make_batches(prep.requests, wl.batch_size)
                for rep in range(wl.repetitions):
                    for bi, batch in enumerate(batches):
                        rid = rep * len(batches) + bi        # the engines' request: one batch
                        steps: list[list[StepStats]] = []    # per step, one per engine
                        logits: list | None = [] if keep_logits else None
                        tokens = _decode(fan, model, [r.input_ids for r in batch], wl.max_new_tokens,
                                         prep.device, request=rid, record=steps, logits=logits,
                                         progress=tick, pad_id=pad)
                        for i, piece in enumerate(pieces):
                            _finish_batch(piece, [st[i] for st in steps], batch, tokens,
                                          repetition * wl.repetitions + rep)
                            if keep_logits:
                                for j, req in enumerate(batch):
                                    piece.logits[(rep, req.id)] = [row[j] for row in logits]
            except KeyboardInterrupt:
                for piece in pieces:
                    piece.complete = False
                    piece.notes.append("interrupted: only finished requests are kept")
        for engine, piece in zip(engines, pieces):
            piece.prediction = engine.protocol.prediction()
            piece.notes.extend(note for note in engine.protocol.notes if note not in piece.notes)
            piece.trace = list(engine.trace)
            piece.peak_expert_bytes = engine.cache.peak_resident * engine.cache.expert_bytes
            piece.pool_bytes = engine.pools.allocated_bytes
    finally:
        detach()
    return pieces


class _Fanout:
    """What `_decode` calls on an engine, on every engine of a run; `end_step` returns one
    StepStats per engine."""

    def __init__(self, engines: list):
        self.engines = engines

    def begin_request(self, request: int) -> None:
        for e in self.engines:
            e.begin_request(request)

    def begin_step(self, *args: Any, **kwargs: Any) -> None:
        for e in self.engines:
            e.begin_step(*args, **kwargs)

    def end_step(self) -> list[StepStats]:
        return [e.end_step() for e in self.engines]


def make_batches(requests: list, batch_size: int) -> list[list]:
    """The workload's requests in order, `batch_size` at a time (the last batch may be smaller)."""
    return [requests[i:i + batch_size] for i in range(0, len(requests), max(1, batch_size))]


def _pad_id(loaded: Any) -> int:
    tok = getattr(loaded, "tokenizer", None)
    for v in (getattr(tok, "pad_token_id", None), getattr(loaded.model.config, "pad_token_id", None),
              getattr(tok, "eos_token_id", None)):
        if isinstance(v, int):
            return v
    return 0


def _decode(engine: Any, model: Any, prompts: list[tuple[int, ...]], n_new: int, device: Any, *,
            request: int, record: list | None, logits: list | None = None,
            progress: Callable[[int], None] | None = None, pad_id: int = 0) -> list[list[int]]:
    """Greedy decode exactly `n_new` tokens of every prompt (EOS ignored, so every request of the
    batch stops after the same steps) with a KV cache; one engine step per forward, over the
    whole batch. Returns each prompt's tokens; `logits` gets one `[B, V]` row block per step.
    `engine` is what begins and ends every step (`run_engines`' `_Fanout` over a run's engines),
    and `record` gets what its `end_step` returns.

    Every forward computes the logits of the last position only (`logits_to_keep=1`, as
    `generate` does: generation reads one row). One prompt needs no mask (positions come from the
    cache). A batch is left-padded with `pad_id` and decodes exactly as transformers' batched
    greedy `generate` does: an attention mask, position ids `cumsum(mask) - 1` (0 on padding),
    the mask grown by one per step; so a lossless strategy gives `generate`'s tokens and logits
    bit for bit (tests/engine/test_batching.py)."""
    import torch

    engine.begin_request(request)
    b = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)  # [B, T]
    extra: dict = {}
    if b > 1:
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        extra = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)}
    past, tokens = None, [[] for _ in prompts]
    for pos in range(n_new):
        engine.begin_step("prefill" if pos == 0 else "decode", pos, ids.numel(), sequences=b)
        cache = {} if past is None else {_cache_kwarg(model): past}
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **extra, **cache)
        st = engine.end_step()
        past = out.past_key_values
        last = out.logits[:, -1, :]                                          # [B, V]
        nxt = last.argmax(-1)                                                # [B]
        for j, t in enumerate(nxt.tolist()):
            tokens[j].append(int(t))
        if logits is not None:
            logits.append(last.detach().to("cpu", copy=True))
        if record is not None:
            record.append(st)
        if progress:
            progress(b)
        ids = nxt[:, None]                                                   # [B, 1]: the next step
        if b > 1:
            mask = torch.cat([extra["attention_mask"], torch.ones_like(mask[:, :1])], dim=-1)
            extra = {"attention_mask": mask, "position_ids": extra["position_ids"][:, -1:] + 1}
    return tokens


def _cache_kwarg(model: Any) -> str:
    """KV-cache keyword: `cache` from transformers 5.24, `past_key_values` before (both accepted
    for a while; the new name avoids a deprecation warning per step)."""
    import inspect

    cls = type(model)
    name = getattr(cls, "_moebench_cache_kwarg", None)
    if name is None:
        params = inspect.signature(cls.forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        cls._moebench_cache_kwarg = name
    return name


def _finish_batch(piece: Piece, steps: list[StepStats], batch: list, tokens: list[list[int]],
                  repetition: int) -> None:
    ids = [r.id for r in batch]
    piece.samples.extend(request_samples(steps, ids if len(ids) > 1 else ids[0], repetition))
    for req, toks in zip(batch, tokens):
        piece.outputs.append({"prompt_id": req.id, "repetition": repetition,
                              "prompt_token_ids": list(req.input_ids), "token_ids": toks,
                              **({"batch": ids} if len(ids) > 1 else {})})
