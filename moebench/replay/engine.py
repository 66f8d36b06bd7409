"""Trace replay: a recorded routing trace through a caching / prefetching policy, on the
simulated clock, with no model loaded.

    trace = load_replay_trace("results/<run folder>")        # or synth.synthesize(...)
    shape = model_shape("qwen3-30b-a3b")                     # config only, no weights
    run = replay_one(trace, "lru", shape=shape, profile=load_profile("a6000-pcie4"), budget="0.25")
    run.result                                               # result.json: source "replay"

**The live engine's protocol.** `ReplayEngine` feeds the trace's routing to the very
`LayerProtocol` (`moebench.offload.protocol`) the live engine's hooks feed, with the very
`Strategy` objects from the registry: any strategy that reads only `routing` and `trace` runs
here unchanged. A simulated timeline is a pure function of the protocol's call sequence, so
replaying the trace of a live `--clock sim` run with the same strategy, budget and profile
reproduces its hit rate and simulated TPOT exactly (tests/replay/test_replay.py checks `sync` and `lru`).
What a replay cannot know is charged the way the live run would: the prefill runs the distinct
experts every prompt token used (the trace's `used`), the prompt length comes from the
recording's result folder, and the recording's warm-up (`warmup_steps` untimed decode steps of
the first prompt, not in the trace) is replayed from the first request's own first steps, which
are the same tokens.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moebench.errors import UserError
from moebench.results.build import Piece, RunContext, result_document
from moebench.offload.budget import resolve_budget
from moebench.offload.cache import ExpertCache, SlotScheduler
from moebench.offload.clock import SimTimeline, Ticket
from moebench.offload.events import Routing
from moebench.offload.protocol import LayerProtocol
from moebench.offload.records import StepStats, request_samples
from moebench.replay.policies import build_policy
from moebench.offload.routing import RoutingTrace


@dataclass(frozen=True)
class Schedule:
    """The steps to replay, in execution order: `(trace step index, request id of the events,
    measured?)`. Warm-up steps come first (request -1) and are never counted."""

    steps: tuple[tuple[int, int, bool], ...]
    notes: tuple[str, ...] = ()

    def routing(self, trace: Any) -> RoutingTrace:
        """The `RoutingTrace` strategies see: every MoE layer of every step in execution order,
        the warm-up's (request -1) included, with the recorded predictions."""
        rows = []
        for s, request, _ in self.steps:
            for m in range(trace.moe_layers):
                rows.append({"request": request, "step": int(trace.step[s]), "layer": m,
                             "experts": trace.executed(s, m), "predicted": trace.predicted(s, m)})
        return RoutingTrace(rows)


def build_schedule(trace: Any, warmup_steps: int, warmup_tokens: int = 0) -> Schedule:
    """The recorded warm-up (`warmup_steps` decode steps of the first request, request -1, never
    counted), then every trace step; a step is counted when it is a decode step past the first
    `warmup_tokens` tokens of its request (`--warmup-tokens`: replayed, not counted)."""
    if warmup_tokens < 0:
        raise UserError(f"--warmup-tokens must be 0 or more, got {warmup_tokens}.")
    notes = []
    warm: list[tuple[int, int, bool]] = []
    if warmup_steps > 0 and trace.n_steps:
        first = trace.request[0]
        mine = [s for s in range(trace.n_steps) if trace.request[s] == first]
        # The live warm-up decodes the first prompt: its prefill and `warmup_steps` tokens.
        want = [s for s in mine if trace.step[s] <= warmup_steps]
        warm = [(s, -1, False) for s in want]
        if len(want) < warmup_steps + 1:
            notes.append(f"warm-up of {warmup_steps} steps replayed from the {len(want)} steps the "
                         "first request has")
    measured = [(s, int(trace.request[s]), bool(trace.step[s] >= 1 and trace.step[s] > warmup_tokens))
                for s in range(trace.n_steps)]
    return Schedule(tuple(warm + measured), tuple(notes))


class UntimedPrefetchTimeline(SimTimeline):
    """`--issue untimed`: while `free` is set (the scheduler's prefetch pass), a copy takes no
    link time and is complete at once; demand fetches stay timed."""

    free = False

    def copy(self, nbytes: int, do_copy: Callable[[], None] | None = None) -> Ticket:
        if not self.free:
            return super().copy(nbytes, do_copy)
        if do_copy is not None:
            do_copy()
        return Ticket(nbytes=nbytes, done_at=float("-inf"))


class UntimedPrefetchScheduler(SlotScheduler):
    """Prefetches (the strategy's `Prefetch` requests) through `UntimedPrefetchTimeline.free`."""

    def prefetch(self, requests: Any, locked: set) -> tuple[int, int]:
        self.timeline.free = True
        try:
            return super().prefetch(requests, locked)
        finally:
            self.timeline.free = False


class ReplayEngine:
    """The live engine's protocol, fed from a trace: no tensors, no model, the simulated clock.

    `reset_per_request`: each request starts with a cold cache and a fresh cache policy
    (`LayerProtocol.reset_residency`); `untimed_prefetch`: prefetch copies land instantly."""

    def __init__(self, trace: Any, strategy: Any, *, shape: Any, profile: Any, n_slots: int,
                 schedule: Schedule, reset_per_request: bool = False,
                 untimed_prefetch: bool = False, prefill_copies: str = "per-expert"):
        self.trace, self.strategy, self.shape = trace, strategy, shape
        self.schedule = schedule
        self.reset_per_request = reset_per_request
        self.timeline = UntimedPrefetchTimeline(profile) if untimed_prefetch else SimTimeline(profile)
        self.cache = ExpertCache(n_slots, shape.expert_bytes)
        routing = schedule.routing(trace) if "trace" in strategy.traits.reads else None
        if reset_per_request and hasattr(strategy, "per_request"):
            strategy.per_request = True      # Belady: a use after the request's end is no use
        self.protocol = LayerProtocol(strategy, shape=shape, profile=profile, timeline=self.timeline,
                                      cache=self.cache, charge=True, trace=routing,
                                      prefill_copies=prefill_copies)
        if untimed_prefetch:
            self.protocol.sched = UntimedPrefetchScheduler(self.cache, self.timeline, strategy)
        self.protocol.setup()
        self._moe_of = {i: m for m, i in enumerate(shape.moe_layer_ids)}

    def step(self, s: int) -> StepStats:
        """One recorded step through the protocol, decoder layer by decoder layer."""
        trace, p = self.trace, self.protocol
        phase = "prefill" if trace.step[s] == 0 else "decode"
        seqs = trace.n_sequences(s)
        p.begin_step(phase, int(trace.step[s]), int(trace.tokens[s]) if phase == "prefill" else seqs,
                     seqs)
        for i in range(self.shape.num_layers):
            m = self._moe_of.get(i)
            if m is None:
                p.dense_layer()
                continue
            p.before_attention(m, None)
            true = self._routing(s, m, phase)
            if phase == "decode" and p.hit_layer(m, true.ids) is not None:
                continue                            # all hits: the layer's sequence in one call
            _, experts, prefetches = p.route(m, true, None, None)
            out = p.prepare(m, experts, prefetches, true.target)
            p.compute_experts(m, out, experts)
            p.after_experts(m)
        return p.end_step()

    def _routing(self, s: int, m: int, phase: str) -> Routing:
        """What a strategy's `choose` sees: a decode step's last-token top-k with the recorded
        router weights (uniform when the trace has none), `[1, k]` as live; a prefill's distinct
        experts (the trace keeps no per-token rows) as one row `[1, n]`, uniform weights."""
        trace = self.trace
        if phase == "decode":
            ids, w = trace.rows(s, m)                  # [B, k]: one row per sequence of the batch
            return Routing(np.asarray(ids, dtype=np.int64), np.asarray(w, dtype=np.float32))
        ids = trace.executed(s, m)
        w = [1.0 / len(ids)] * len(ids)
        return Routing(np.asarray(ids, dtype=np.int64)[None, :], np.asarray(w, dtype=np.float32)[None, :])

    def run(self, progress: Callable[[int], None] | None = None) -> dict:
        """Replay the schedule; returns `{"requests": {request: [StepStats]}}`."""
        p = self.protocol
        p.prefill_warm()
        rows: dict[int, list[StepStats]] = {}
        current, warm = None, True
        for s, request, counted in self.schedule.steps:
            if warm and request != -1:      # warm-up over: counters start now (as in run_strategy)
                warm = False
                p.reset_counters()
            if request != current:
                current = request
                if self.reset_per_request:
                    p.reset_residency()
                p.begin_request(request)
            decode = int(self.trace.step[s]) >= 1
            if request != -1 and decode and not counted:   # --warmup-tokens: replayed, not counted
                kept = _counters(p)
                self.step(s)
                _restore(p, kept)
                continue
            st = self.step(s)
            if request == -1:
                continue
            rows.setdefault(request, []).append(st)
            if progress:
                progress(1)
        return {"requests": rows}


def _counters(p: LayerProtocol) -> tuple:
    s = p.sched
    return (s.prefetch_issued, s.prefetch_used, s.wasted_bytes,
            {m: dict(d) for m, d in s.layer_counts.items()},
            {m: {k: dict(v) for k, v in d.items()} for m, d in p.pred_stats.items()})


def _restore(p: LayerProtocol, kept: tuple) -> None:
    """After an uncounted step: its prefetch and prediction counts undone; a prefetch it issued
    and a later step uses is neither issued nor used (as after the recorded warm-up)."""
    s = p.sched
    s.prefetch_issued, s.prefetch_used, s.wasted_bytes, s.layer_counts, p.pred_stats = kept
    p.cache.prefetched.clear()


def check_trace_fits(trace: Any, shape: Any) -> None:
    if trace.moe_layers != shape.moe_layers:
        raise UserError(f"the trace has {trace.moe_layers} MoE layers but model '{shape.name}' has "
                        f"{shape.moe_layers}; pass the --model the trace was recorded on.")
    if trace.num_experts_seen > shape.num_experts:
        raise UserError(f"the trace uses expert id {trace.num_experts_seen - 1} but model "
                        f"'{shape.name}' has {shape.num_experts} experts per layer.")
    counts = (trace.experts >= 0).sum(axis=-1)                           # [S, L]
    want = shape.top_k if trace.sequences is None else trace.sequences[:, None] * shape.top_k
    bad = np.argwhere(counts != want)
    if bad.size:
        s, m = (int(x) for x in bad[0])
        raise UserError(f"trace request {int(trace.request[s])} step {int(trace.step[s])} layer {m} "
                        f"lists {int(counts[s, m])} experts, but model '{shape.name}' routes each "
                        f"token to its top-{shape.top_k}; pass the --model the trace was recorded on.")


# ----------------------------------------------------------------------------------------------
# one policy at one budget and profile -> result.json
# ----------------------------------------------------------------------------------------------
@dataclass
class ReplayRun:
    policy: str
    budget: str
    profile: str
    result: dict | None
    samples: list[dict] = field(default_factory=list)
    skipped: str | None = None     # why this point did not run (budget too small)
    batch_size: int = 1            # requests served together (`compose_batches`)
    dir: str | None = None         # its result folder, once written


def replay_context(trace: Any, shape: Any, profile: Any, seed: int) -> RunContext:
    """Where a replay's numbers come from: the recording's model and workload when the trace has
    them, else the trace itself (its routing hash names the workload)."""
    from moebench.models import presets as P

    rec = trace.recorded
    wl = (rec.workload if rec and rec.workload else None) or {}
    reqs = list(dict.fromkeys(int(r) for r in trace.request))
    if trace.batches:                                   # composed batches: count the requests
        reqs = [r for b in reqs for r in trace.batches.get(b, (b,))]
    preset = P.PRESETS.get(shape.name)
    snapshot = rec.snapshot if rec and rec.model == shape.name and rec.snapshot else \
        hashlib.sha256(json.dumps(shape.__dict__, sort_keys=True, default=str).encode()).hexdigest()
    steps = max(Counter(trace.request.tolist()).values(), default=0)   # longest request (batch)
    return RunContext(model=shape.name, hf_id=preset.hf_id if preset else None, snapshot=snapshot,
                      shape=shape, workload=wl.get("name", f"trace:{trace.sha256[:12]}"),
                      workload_sha=wl.get("sha256", trace.sha256) if trace.batch_size == 1 else
                      hashlib.sha256(f"{wl.get('sha256', trace.sha256)}:batch={trace.batch_size}"
                                     .encode()).hexdigest(),
                      batch_size=trace.batch_size,
                      n_prompts=wl.get("n_prompts", len(reqs)),
                      max_new_tokens=wl.get("max_new_tokens", steps), task=wl.get("task", "generate"),
                      repetitions=wl.get("repetitions", 1), clock="sim",
                      profile=profile, device="none (trace replay)", seed=seed)


UNTIMED = " (untimed)"


def split_issue(policy: str) -> tuple[str, bool]:
    """`pred:x (untimed)` -> (`pred:x`, True): the label of an `--issue untimed` row."""
    if policy.endswith(UNTIMED):
        base = policy[:-len(UNTIMED)].strip()
        if not base.startswith("pred:"):
            raise UserError(f"'{policy}': untimed issue applies to pred:<source> policies only.")
        return base, True
    return policy, False


def replay_one(trace: Any, policy: str, *, shape: Any, profile: Any, budget: str,
               warmup_steps: int | None = None, seed: int = 0,
               progress: Callable[[int], None] | None = None, reset_per_request: bool = False,
               warmup_tokens: int = 0, prefill_copies: str | None = None) -> ReplayRun:
    """Replay `trace` through `policy` at one budget on one profile (a `ReplayRun`).
    `policy` `pred:x (untimed)` is `pred:x` with prefetch copies that land instantly and free.
    `prefill_copies` None: as the recording's workload copied its prefills (else per-expert)."""

    check_trace_fits(trace, shape)
    rec = trace.recorded
    if warmup_steps is None:
        warmup_steps = rec.warmup_steps if rec and rec.warmup_steps is not None else 0
    base, untimed = split_issue(policy)
    strategy = build_policy(base, trace)
    ctx = replay_context(trace, shape, profile, seed)
    resolved = resolve_budget(budget, shape, strategy)
    n_slots = resolved.experts
    schedule = build_schedule(trace, warmup_steps, warmup_tokens)
    if prefill_copies is None:
        prefill_copies = (rec.prefill_copies if rec else None) or "per-expert"
    engine = ReplayEngine(trace, strategy, shape=shape, profile=profile, n_slots=n_slots,
                          schedule=schedule, reset_per_request=reset_per_request,
                          untimed_prefetch=untimed, prefill_copies=prefill_copies)
    out = engine.run(progress)
    samples: list[dict] = []
    all_warm = 0
    for request, rows in out["requests"].items():
        if warmup_tokens and not any(st.phase == "decode" for st in rows):
            all_warm += 1            # every decode token of it was warm-up: no TPOT sample
            continue
        members = trace.batches.get(request, (request,))
        named = [(rec.prompts.get(r) if rec else None) or (f"request-{r}", 0) for r in members]
        ids = [n[0] for n in named]
        samples.extend(request_samples(rows, ids if len(ids) > 1 else ids[0], named[0][1]))
    described = strategy.describe()
    if untimed:
        described = dict(described, name=policy, params=dict(described.get("params") or {},
                                                              issue="untimed"))
    piece = Piece(strategy=described, samples=samples,
                  prediction=engine.protocol.prediction(), budget=resolved,
                  peak_expert_bytes=engine.cache.peak_resident * shape.expert_bytes,
                  pool_bytes=n_slots * shape.expert_bytes)
    result = result_document(ctx, [piece], source="replay")
    result["outputs"] = []
    no_ttft = any(s["kind"] == "request" and s["ttft_ms"] is None for s in samples)
    notes = list(schedule.notes) + _notes(trace, no_ttft)
    if trace.batch_size > 1:
        notes.append(f"batch_size={trace.batch_size}: the trace's requests served "
                     f"{trace.batch_size} at a time, composed from batch-1 routing (a member "
                     f"whose request ended drops out); {strategy.name} {strategy.batching}")
    result["notes"] = notes
    result["trace"] = {"source": trace.source, "routing_sha256": trace.sha256,
                       "steps": trace.n_steps, "requests": len(set(trace.request.tolist())),
                       "recorded_strategy": (rec.strategy or {}).get("name") if rec else None,
                       "recorded_clock": rec.clock if rec else None}
    if all_warm:
        notes.append(f"{all_warm} request(s) have no decode token past --warmup-tokens "
                     f"{warmup_tokens}: they give no sample")
    if untimed:
        notes.append("issue untimed: this policy's prefetch copies landed instantly and took no "
                     "link time (demand fetches timed); its TPOT is not a timed result")
    notes.extend(n for n in engine.protocol.notes if n not in notes)
    result["replay"] = {"warmup_steps": warmup_steps, "policy": policy,
                        "prefill_copies": prefill_copies,
                        "reset_per_request": reset_per_request, "warmup_tokens": warmup_tokens,
                        "issue": "untimed" if untimed else "timed"}
    return ReplayRun(policy, budget, profile.name, result, samples)


def _notes(trace: Any, no_ttft: bool) -> list[str]:
    notes = ["trace replay: routing from the trace, costs from the model shape and hardware "
             "profile; no model was run"]
    prefill = trace.step == 0
    if prefill.any():
        if not any(trace.step[s] == 0 for s, _ in trace.prefill_used):
            notes.append("prefill rows lack `used`: prefills replay the last prompt token's experts only")
        if not (trace.recorded and trace.recorded.prompt_tokens):
            notes.append("prompt lengths unknown: prefills are charged as one token")
    if no_ttft:
        notes.append("the trace has no prefill rows: ttft_ms is not reported")
    return notes
