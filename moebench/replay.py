"""Trace replay: a recorded routing trace through a caching / prefetching policy, on the
simulated clock, with no model loaded.

    trace = load_replay_trace("results/<run folder>")        # or synth.synthesize(...)
    shape = model_shape("qwen3-30b-a3b")                     # config only, no weights
    run = replay_one(trace, "lru", shape=shape, profile=load_profile("a6000-pcie4"), budget="0.25")
    run.result                                               # result.json: source "replay"

**Same machinery as a live run.** `ReplayEngine` drives the very `ExpertCache`, `SlotScheduler`,
`SimTimeline` and `costs` functions the live engine uses, with the very `Strategy` objects
(`sync`, `lru` come from the registry), and makes the calls `engine/executor.py` makes, in the
same order, per decoder layer of every step:

    MoE layer m:  before_attention -> prediction cost -> prefetch -> attention cost (at norm1)
                  router cost (strategies that use the true router) -> choose -> after_routing
                  -> prediction cost -> prepare (demand fetches, then prefetches, then waits)
                  -> expert compute -> release (strategies that keep nothing)
    dense layer:  attention + dense MLP cost
    step end:     LM-head cost

A simulated timeline is a pure function of that call sequence, so replaying the trace of a live
`--clock sim` run with the same strategy, budget and profile reproduces its hit rate and
simulated TPOT exactly (tests/test_replay.py checks `sync` and `lru`). What a replay cannot know
is charged the way the live run would: the prefill runs the distinct experts every prompt token
used (the trace's `used`), the prompt length comes from the recording's result folder, and the
recording's warm-up (`warmup_steps` untimed decode steps of the first prompt, not in the trace)
is replayed from the first request's own first steps, which are the same tokens.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from moebench.engine import costs
from moebench.engine.cache import ExpertCache, SlotScheduler
from moebench.engine.timeline import SimTimeline
from moebench.errors import UserError
from moebench.replay_policies import FutureIndex, ReplayOnly, ReplayView, build_policy
from moebench.engine.records import StepStats, prediction_seconds
from moebench.strategy import LayerEvent, Routing, StrategyContext


@dataclass(frozen=True)
class Schedule:
    """The steps to replay, in execution order: `(trace step index, request id of the events,
    measured?)`. Warm-up steps come first (request -1) and are never counted."""

    steps: tuple[tuple[int, int, bool], ...]
    notes: tuple[str, ...] = ()

    def groups(self, trace: Any) -> tuple[list[tuple[int, tuple[int, ...]]], list[int]]:
        groups, step_of = [], []
        for s, _, _ in self.steps:
            for m in range(trace.moe_layers):
                groups.append((m, trace.executed(s, m)))
                step_of.append(s)
        return groups, step_of


def build_schedule(trace: Any, warmup_steps: int) -> Schedule:
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
    measured = [(s, int(trace.request[s]), bool(trace.step[s] >= 1)) for s in range(trace.n_steps)]
    return Schedule(tuple(warm + measured), tuple(notes))


class ReplayEngine:
    """`OffloadEngine` without tensors: the executor's charges and protocol, from a trace."""

    def __init__(self, trace: Any, strategy: Any, *, shape: Any, profile: Any, n_slots: int,
                 schedule: Schedule):
        self.trace, self.strategy, self.shape, self.profile = trace, strategy, shape, profile
        self.n_slots = n_slots
        self.schedule = schedule
        self.timeline = SimTimeline(profile)
        self.cache = ExpertCache(n_slots, shape.expert_bytes)
        self.sched = SlotScheduler(self.cache, self.timeline, strategy)
        self.pred_stats: dict[int, dict[str, dict]] = {}
        self.layer_late = [0] * shape.moe_layers
        self._predicted: dict[int, dict[str, set[int]]] = {}
        self.context = 0
        groups, step_of = schedule.groups(trace)
        self.view = ReplayView(groups=groups, steps=step_of, future=FutureIndex(groups),
                               trace=trace, cache=self.cache, counts=decode_counts(trace, shape))
        if isinstance(strategy, ReplayOnly):
            strategy.view = self.view
        ctx = StrategyContext(shape=shape, adapter=None, n_slots=n_slots,
                              is_resident=self.cache.is_resident, trace=trace, device=None)
        strategy.setup(ctx)
        self._dense = [i for i in range(shape.num_layers) if i not in set(shape.moe_layer_ids)]
        self._moe_of = {i: m for m, i in enumerate(shape.moe_layer_ids)}

    # -- the executor's protocol, call for call -------------------------------------------
    def prefill_warm(self) -> None:
        want = getattr(self.strategy, "initial_residents", None)
        if not want:
            return
        for key in want(self.n_slots):
            if not self.cache.is_resident(key):
                if self.sched._insert(key, set()) is None:
                    break

    def _charge_prediction(self, ev: LayerEvent, requests: Any) -> None:
        self.timeline.compute(prediction_seconds(self.strategy, self.profile, ev, requests))

    def _note_predictions(self, requests: Any) -> None:
        """What each predictor asked for, per target layer (strategies whose prefetches are plans,
        not predictions of this step, set `scores_predictions = False`)."""
        if not getattr(self.strategy, "scores_predictions", True):
            return
        for r in requests:
            self._predicted.setdefault(r.layer, {}).setdefault(r.source, set()).update(int(e) for e in r.experts)

    def _issue_prefetch(self, st: StepStats, requests: Any, locked: set) -> None:
        if not requests:
            return
        self._note_predictions(requests)
        nbytes, _ = self.sched.prefetch(requests, locked)
        st.h2d_bytes += nbytes
        st.prefetch_bytes += nbytes

    def _moe_layer(self, st: StepStats, s: int, m: int, ev: LayerEvent, g: int) -> None:
        shape, hw, tl, strat = self.shape, self.profile, self.timeline, self.strategy
        self.view.g, self.view.s = g, s
        req = strat.before_attention(ev, None)
        self._charge_prediction(ev, req)
        self._issue_prefetch(st, req, set())
        tl.compute(costs.attention_seconds(shape, hw, ev.n_tokens, self.context))
        executed = self.trace.executed(s, m)
        true = Routing(np.asarray(executed, dtype=np.int64)[None, :],
                       np.full((1, len(executed)), 1.0 / len(executed)))
        per_layer = getattr(strat, "uses_router", None)
        uses_router = per_layer(ev) if per_layer is not None else strat.uses_true_router
        if uses_router:
            tl.compute(costs.router_seconds(shape, hw, ev.n_tokens))
        chosen = strat.choose(ev, true, None, None)
        experts = chosen.experts()
        prefetches = strat.after_routing(ev, chosen, None, None)
        self._charge_prediction(ev, prefetches)
        self._note_predictions(prefetches or ())
        out = self.sched.prepare(m, experts, prefetches or ())
        st.account(m, out, len(experts))
        if st.phase == "decode":
            self.layer_late[m] += out.late
            self._record_prediction(s, m, experts)
        self._predicted.pop(m, None)
        tokens_per_expert = max(1, (ev.n_tokens * shape.top_k) // max(1, len(experts)))
        tl.compute(len(experts) * costs.expert_seconds(shape, hw, tokens_per_expert))
        if not strat.keeps_experts:
            self.sched.release(m, [e for (mm, e) in self.cache.resident() if mm == m])

    def _record_prediction(self, s: int, m: int, executed: list[int]) -> None:
        """`OffloadEngine._record_prediction`, on the trace's last-token routing."""
        preds = self._predicted.pop(m, None)
        if not preds:
            return
        ids = list(self.trace.true_ids(s, m))
        w = self.trace.row_weights(s, m)
        true_set, used = set(ids), set(executed)
        for source, pred in preds.items():
            acc = self.pred_stats.setdefault(m, {}).setdefault(source, {
                "n": 0, "recall": 0.0, "precision": 0.0, "exact": 0, "top1": 0, "gw_recall": 0.0,
                "predicted": 0})
            acc["n"] += 1
            acc["recall"] += len(pred & true_set) / max(1, len(true_set))
            acc["precision"] += (len(pred & used) / len(pred)) if pred else 0.0
            acc["exact"] += int(pred == true_set)
            acc["top1"] += int(ids[0] in pred)
            acc["gw_recall"] += sum(wi for e, wi in zip(ids, w) if e in pred) / (sum(w) or 1.0)
            acc["predicted"] += len(pred)

    def step(self, s: int, request: int, g0: int) -> StepStats:
        shape, hw, tl = self.shape, self.profile, self.timeline
        phase = "prefill" if self.trace.step[s] == 0 else "decode"
        n_tokens = int(self.trace.tokens[s]) if phase == "prefill" else 1
        m_layers = shape.moe_layers
        st = StepStats(phase=phase, position=int(self.trace.step[s]),
                             layer_hits=[0] * m_layers, layer_acts=[0] * m_layers)
        self._predicted = {}
        tl.step_begin()
        for i in range(shape.num_layers):
            m = self._moe_of.get(i)
            if m is None:
                tl.compute(costs.attention_seconds(shape, hw, n_tokens, self.context)
                           + costs.dense_mlp_seconds(shape, hw, n_tokens))
                continue
            ev = LayerEvent(step=st.position, layer=m, phase=phase, n_tokens=n_tokens, request=request)
            self._moe_layer(st, s, m, ev, g0 + m)
        tl.compute(costs.lm_head_seconds(shape, hw))
        clock = tl.step_end()
        st.latency_s, st.stall_s = clock.latency_s, clock.stall_s
        st.copy_busy_s, st.compute_s = clock.copy_busy_s, clock.compute_s
        self.context += n_tokens
        return st

    def run(self, progress: Callable[[int], None] | None = None) -> dict:
        """Replay the schedule; returns `{"requests": {request: [step rows]}, "layer_*"}`."""
        from moebench.runner import _reset_counters, _step_row

        self.prefill_warm()
        rows: dict[int, list[dict]] = {}
        layer_hits = [0] * self.shape.moe_layers
        layer_acts = [0] * self.shape.moe_layers
        current, warm = None, True
        for j, (s, request, counted) in enumerate(self.schedule.steps):
            if warm and request != -1:      # warm-up over: counters start now (as in run_strategy)
                warm = False
                self.pred_stats.clear()
                _reset_counters(self)
            if request != current:
                current = request
                self.context = 0
                self.strategy.begin_request(request)
            st = self.step(s, request, j * self.shape.moe_layers)
            if request == -1:
                continue
            row = _step_row(st, request)
            if st.phase == "decode":
                for m in range(self.shape.moe_layers):
                    layer_hits[m] += st.layer_hits[m]
                    layer_acts[m] += st.layer_acts[m]
            rows.setdefault(request, []).append(row)
            if progress:
                progress(1)
        return {"requests": rows, "layer_hits": layer_hits, "layer_acts": layer_acts}


def decode_counts(trace: Any, shape: Any) -> np.ndarray:
    """[L, E] how often each expert runs in the trace's decode steps."""
    counts = np.zeros((shape.moe_layers, shape.num_experts), dtype=np.int64)
    ex = trace.experts[trace.decode_mask()]                          # [S_dec, L, k]
    for m in range(min(shape.moe_layers, trace.moe_layers)):
        ids = ex[:, m, :].reshape(-1)
        np.add.at(counts[m], ids[ids >= 0], 1)
    return counts


def check_trace_fits(trace: Any, shape: Any) -> None:
    if trace.moe_layers != shape.moe_layers:
        raise UserError(f"the trace has {trace.moe_layers} MoE layers but model '{shape.name}' has "
                        f"{shape.moe_layers}; pass the --model the trace was recorded on.")
    if trace.num_experts_seen > shape.num_experts:
        raise UserError(f"the trace uses expert id {trace.num_experts_seen - 1} but model "
                        f"'{shape.name}' has {shape.num_experts} experts per layer.")


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
    dir: str | None = None         # its result folder, once written


def _shim_prep(trace: Any, shape: Any, profile: Any, budget: str, seed: int) -> Any:
    """The fields of `runner.Prepared` that `slots_for` and `build_result` read, for a replay."""
    from moebench.config import BudgetSpec
    from moebench.models import presets as P

    rec = trace.recorded
    wl = (rec.workload if rec and rec.workload else None) or {}
    reqs = list(dict.fromkeys(int(r) for r in trace.request))
    preset = P.PRESETS.get(shape.name)
    snapshot = rec.snapshot if rec and rec.model == shape.name and rec.snapshot else \
        hashlib.sha256(json.dumps(shape.__dict__, sort_keys=True, default=str).encode()).hexdigest()
    loaded = SimpleNamespace(name=shape.name, hf_id=preset.hf_id if preset else None,
                             snapshot=snapshot, shape=shape)
    steps = max(Counter(trace.request.tolist()).values(), default=0)   # longest request
    workload = SimpleNamespace(name=wl.get("name", f"trace:{trace.sha256[:12]}"),
                               max_new_tokens=wl.get("max_new_tokens", steps),
                               task=wl.get("task", "generate"), repetitions=wl.get("repetitions", 1))
    BudgetSpec.parse(budget)
    return SimpleNamespace(loaded=loaded, profile=profile, cfg=SimpleNamespace(seed=seed, repetition=0),
                           clock="sim", device=SimpleNamespace(type="replay"), workload=workload,
                           requests=[None] * wl.get("n_prompts", len(reqs)),
                           workload_sha=wl.get("sha256", trace.sha256),
                           budget=SimpleNamespace(text=budget))


def _finish(rows: list[dict], prompt: tuple[str, int], samples: list[dict]) -> None:
    """`runner._finish_request`'s arithmetic (the same sums in the same order)."""
    has_prefill = rows[0]["phase"] == "prefill"
    prefill, decode = (rows[0], rows[1:]) if has_prefill else (None, rows)
    ttft = prefill["latency_ms"] if prefill else 0.0
    e2e = ttft + sum(r["latency_ms"] for r in decode)
    n_out = len(decode) + 1
    for r in decode:
        r.pop("phase")
        samples.append({"prompt_id": prompt[0], "repetition": prompt[1], **r})
    samples.append({"kind": "request", "prompt_id": prompt[0], "repetition": prompt[1],
                    "ttft_ms": ttft if prefill else None, "tpot_ms": (e2e - ttft) / max(1, n_out - 1),
                    "e2e_ms": e2e, "n_out": n_out,
                    "prefill_h2d_bytes": prefill["h2d_bytes"] if prefill else None})


def replay_one(trace: Any, policy: str, *, shape: Any, profile: Any, budget: str,
               warmup_steps: int | None = None, seed: int = 0,
               progress: Callable[[int], None] | None = None) -> ReplayRun:
    """Replay `trace` through `policy` at one budget on one profile (a `ReplayRun`)."""
    from moebench.runner import Piece, _prediction, build_result, slots_for
    from moebench.stats import summarize

    check_trace_fits(trace, shape)
    rec = trace.recorded
    if warmup_steps is None:
        warmup_steps = rec.warmup_steps if rec and rec.warmup_steps is not None else 0
    strategy = build_policy(policy, trace)
    prep = _shim_prep(trace, shape, profile, budget, seed)
    n_slots = slots_for(prep, strategy)
    schedule = build_schedule(trace, warmup_steps)
    engine = ReplayEngine(trace, strategy, shape=shape, profile=profile, n_slots=n_slots,
                          schedule=schedule)
    out = engine.run(progress)
    samples: list[dict] = []
    for request, rows in out["requests"].items():
        prompt = rec.prompts.get(request) if rec else None
        _finish(rows, prompt or (f"request-{request}", 0), samples)
    piece = Piece(strategy=strategy.describe(), samples=samples, layer_hits=out["layer_hits"],
                  layer_acts=out["layer_acts"], prediction=_prediction(engine), n_slots=n_slots,
                  peak_expert_bytes=engine.cache.peak_resident * shape.expert_bytes,
                  pool_bytes=n_slots * shape.expert_bytes)
    no_ttft = any(s["kind"] == "request" and s["ttft_ms"] is None for s in samples)
    calc = [dict(s, ttft_ms=0.0) if s["kind"] == "request" and s["ttft_ms"] is None else s
            for s in samples]
    piece.samples = calc
    result = build_result(prep, [piece], source="replay")
    piece.samples = samples
    if no_ttft:
        result["metrics"]["ttft_ms"] = summarize([r["ttft_ms"] for r in samples
                                                  if r["kind"] == "request" and r["ttft_ms"] is not None])
    result["clock"]["device"] = "none (trace replay)"
    result["outputs"] = []
    notes = list(schedule.notes) + _notes(trace, no_ttft)
    result["notes"] = notes
    result["trace"] = {"source": trace.source, "routing_sha256": trace.sha256,
                       "steps": trace.n_steps, "requests": len(set(trace.request.tolist())),
                       "recorded_strategy": (rec.strategy or {}).get("name") if rec else None,
                       "recorded_clock": rec.clock if rec else None}
    result["replay"] = {"warmup_steps": warmup_steps, "policy": policy}
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
