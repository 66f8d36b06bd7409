"""The per-layer protocol of a run: the one sequence of strategy calls, copies, waits and charges
that both the live engine (`moebench.engine.executor`) and trace replay (`moebench.replay.engine`)
execute. The engines differ only in where the inputs come from (a transformers forward's hooks,
or a recorded trace) and in what computes the experts (the model's kernel over cache slots, or
nothing); the decisions, the cache, the clock and the accounting are this object's.

Per forward step (a prefill or one decode token):

    begin_step(phase, position, n_tokens)
    for each decoder layer:
      dense layer:  dense_layer()                    attention + dense MLP charge
      MoE layer m:  before_attention(m, h)           strategy.before_attention -> prediction charge
                                                     -> prefetch -> attention charge (nothing for
                                                     a strategy whose before_attention decides
                                                     nothing: then route charges the attention)
                    route(m, true, s, u)             router charge (if the strategy uses it)
                                                     -> strategy.choose -> strategy.after_routing
                                                     -> prediction charge
                    prepare(layer, ...)              prediction scoring (decode) -> demand fetches,
                                                     then prefetches, then waits -> accounting
                    compute_experts(layer, ...)      per group of experts: its waits, the kernel
                                                     (live engine; or the engine runs its one
                                                     kernel call itself when nothing is waited
                                                     for), its compute charge
                    after_experts(layer)             release (keep-nothing strategies)

Waits are layer-granular by default: every copy of the layer lands before any expert runs, one
kernel call. A strategy whose `expert_granular_waits()` is True (lru `waits=expert`, as
mixtral-offloading runs resident experts while misses load) waits per expert in decode: the
experts already resident run first, then each late or missed one as its copy lands.
    end_step() -> StepStats                          LM-head charge, the step's clock

**An all-hit decode layer in one call.** Both engines first offer each decode layer to
`hit_layer(m, ids)`: when the strategy decides nothing after routing but the router's own
experts and every expert is resident with no copy in flight, it does what `route` ... `after_experts`
would (charges, `on_access` per expert, the hits counted) in one call, and the engine runs the
kernel over the slots it returns; otherwise it does nothing and the sequence above runs. The
per-layer host work is what the engine adds to a forward (benchmarks/engine_overhead.py);
`fast_hits = False` turns it off, and tests check that no strategy's result changes.

A strategy pays per layer only for what it decides: a decision it leaves at the base class's
default (`default_decision`; `decides(strategy, name)`) is not called, and the live engine
hooks `norm1` only for a strategy whose `before_attention` decides something.

`charge=False` (the CUDA clock) skips every simulated charge: the kernels really ran and the
events measured them. A simulated timeline is a pure function of this call sequence, so a live
`--clock sim` run and the replay of its trace give the same numbers bit for bit.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from moebench.errors import UserError
from moebench.offload import costs
from moebench.offload.cache import ExpertCache, LayerOutcome, SlotScheduler, access_hook
from moebench.offload.records import StepStats, prediction_metrics, prediction_seconds
from moebench.offload.events import LayerEvent, Prefetch, Routing, StrategyContext, distinct, marked

LastToken = Callable[[], tuple[list[int], list[float]]]   # the true router's target: `Routing.target`
# How a prefill's demand copies cross the link (a run setting, `prefill_copies`; default per-expert)
PREFILL_COPIES = ("per-expert", "whole-layer", "auto")


def decides(strategy: Any, name: str) -> bool:
    """Whether `strategy.<name>` is a decision of its own, not the base class's default that
    decides nothing (marked `default_decision` in `moebench.strategy`): the protocol calls only
    those, so a strategy pays per layer for what it does. An override, or a callable set on the
    instance, decides (a wrapper of the default too); a strategy class that does not derive from
    `Strategy` decides everything."""
    return not marked(getattr(strategy, name, None), "default_decision")


class LayerProtocol:
    """One strategy, one cache, one clock: the protocol above, with its counters."""

    fast_hits = True      # False: every layer takes the general sequence (`hit_layer`; tests compare)

    def __init__(self, strategy: Any, *, shape: Any, profile: Any, timeline: Any,
                 cache: ExpertCache, charge: bool, adapter: Any = None, artifacts: dict | None = None,
                 trace: Any = None, device: Any = None, prefill_copies: str = "per-expert"):
        self.strategy, self.shape, self.profile, self.timeline = strategy, shape, profile, timeline
        self.cache = cache
        self.charge = charge
        self.sched = SlotScheduler(cache, timeline, strategy)
        self.expert_waits = bool(strategy.expert_granular_waits())
        self.ctx = StrategyContext(shape=shape, adapter=adapter, n_slots=cache.n_slots,
                                   is_resident=cache.is_resident, artifacts=artifacts or {},
                                   trace=trace, device=device, profile=profile)
        self.uses_host = bool(getattr(strategy, "uses_host", False))
        if self.uses_host and charge:        # the simulated clock charges host compute: figures
            profile.require_host(strategy.name)
        self.pred_stats: dict[int, dict[str, dict]] = {}
        self.step: StepStats | None = None
        self.request = 0
        self.position = 0
        self.n_tokens = 1
        self.sequences = 1       # sequences decoded together (batch size) in this step
        self.context = 0         # cached positions per sequence (left padding included)
        self._predicted: dict[int, dict[str, set[int]]] = {}
        self._costs: dict = {}
        self._events: dict[int, LayerEvent] = {}   # this step's events, by layer
        self.notes: list[str] = []
        self._attn_s = self._router_s = 0.0   # this step's per-layer charges (begin_step)
        self._hits_step = False
        self._read: tuple[Any, list[int]] | None = None   # ids hit_layer read, and their experts
        self._access: Callable[[Any, bool], None] | None = None
        self._read_decisions()
        if prefill_copies not in PREFILL_COPIES:
            raise UserError(f"prefill_copies '{prefill_copies}': choose one of {', '.join(PREFILL_COPIES)}.")
        if prefill_copies == "whole-layer" and cache.n_slots < shape.num_experts:
            raise UserError(f"prefill_copies=whole-layer copies all {shape.num_experts} experts of a "
                            f"layer at once, but the cache budget holds {cache.n_slots}; raise "
                            "--cache-budget or use prefill_copies=per-expert or auto.")
        self.prefill_copies = prefill_copies

    def setup(self) -> None:
        self.strategy.setup(self.ctx)
        self._read_decisions()        # again: a strategy's setup may set a method of its own

    def _read_decisions(self) -> None:
        """What this strategy decides (the per-layer path calls nothing else), read at setup and
        at every request; `choose` at every step too (a shared forward wraps an instance's after
        setup), and per layer in `route`."""
        s = self.strategy
        self.hidden_hook = decides(s, "before_attention")   # the engine's norm1 hook, h for it
        self._after = decides(s, "after_routing")
        self._low = decides(s, "miss_precision")
        self._router = None if decides(s, "uses_router") else "routing" in s.traits.reads
        self._keeps = bool(s.traits.keeps_experts)
        self._shared = bool(getattr(self.shape, "shared_expert_bytes", 0))
        # `hit_layer` may stand for the sequence: after routing, the strategy decides nothing
        # but `choose` (checked per layer), and it keeps its experts
        self._hits_ok = (not self._after and not self._low and not self.uses_host
                         and self._router is not None and self._keeps)

    # -- costs --------------------------------------------------------------------------------
    def cost(self, fn: Any, *args: Any) -> float:
        """A simulated cost, memoised: the cost functions are pure in (shape, profile, args)."""
        key = (fn, args)
        v = self._costs.get(key)
        if v is None:
            v = self._costs[key] = fn(self.shape, self.profile, *args)
        return v

    def _charge_prediction(self, ev: LayerEvent, requests: Sequence[Prefetch]) -> None:
        """A predictor's own compute (its `prediction_cost(ev)` per non-empty prefetch); on CUDA
        the predictor's kernels really ran on the compute stream and are measured."""
        if self.charge and requests:      # (nothing to charge for no prefetch)
            self.timeline.compute(prediction_seconds(self.strategy, self.profile, ev, requests))

    # -- run and request ----------------------------------------------------------------------
    def prefill_warm(self, load: Callable[[Any, int], None] | None = None) -> None:
        """Make the cache hold what the strategy wants resident before timing (all-resident,
        pinning); `load(key, slot)` copies the weights on a live engine."""
        for key in self.strategy.initial_residents(self.cache.n_slots):
            if not self.cache.is_resident(key):
                slot = self.sched.insert(key, set())
                if slot is None:
                    break
                if load is not None:
                    load(key, slot)

    def reset_counters(self) -> None:
        """Warm-up over: the counters of the measured run start now."""
        s = self.sched
        s.prefetch_issued = s.prefetch_used = s.wasted_bytes = 0
        s.layer_counts.clear()
        self.cache.prefetched.clear()   # a warm-up prefetch used later is neither issued nor used here
        self.pred_stats.clear()

    def reset_residency(self) -> None:
        """A cold cache (replay's `--reset-per-request`): every expert leaves, unused prefetches
        counted as wasted, the strategy's cache policy starts afresh (`make_policy`), and what the
        strategy keeps resident before timing (pinning, all-resident) is loaded again, untimed."""
        sched, cache = self.sched, self.cache
        for key in cache.resident():
            if cache.evict(key):
                sched.wasted_bytes += cache.expert_bytes
                sched._count(key[0], "wasted_bytes", cache.expert_bytes)
        self.strategy.policy = self.strategy.make_policy(self.ctx)
        self.prefill_warm()

    def begin_request(self, request: int) -> None:
        self.request = request
        self.context = 0
        self.strategy.begin_request(request)
        self._read_decisions()        # a strategy may take on a decision per prompt

    # -- step ---------------------------------------------------------------------------------
    def begin_step(self, phase: str, position: int, n_tokens: int, sequences: int = 1) -> None:
        """`n_tokens` in the forward, over `sequences` sequences (a batch: `n_tokens / sequences`
        positions each; in decode one token per sequence)."""
        m = self.shape.moe_layers
        self.position, self.n_tokens, self.sequences = position, n_tokens, max(1, sequences)
        self.step = StepStats.begin(phase, position, m)
        self._predicted = {}
        self._events = {}
        self._read = None
        if self.charge:          # the same for every layer of the step: looked up once
            self._attn_s = self._attention()
            self._router_s = self.cost(costs.router_seconds, n_tokens)
        # whether `hit_layer` may stand for this step's layers (`choose` is read here: a shared
        # forward wraps an instance's after setup, before any step)
        self._hits_step = (self._hits_ok and self.fast_hits and phase == "decode"
                           and not decides(self.strategy, "choose"))
        if self._hits_step:
            self._access = access_hook(self.strategy)   # (its policy is replaced between requests only)
        self.timeline.step_begin()

    def end_step(self) -> StepStats:
        if self.charge:
            self.timeline.compute(self.cost(costs.lm_head_seconds, self.sequences))
        clock = self.timeline.step_end()
        st = self.step
        st.latency_s, st.stall_s, st.late_stall_s = clock.latency_s, clock.stall_s, clock.late_stall_s
        st.host_s, st.host_stall_s = clock.host_s, clock.host_stall_s
        st.copy_busy_s, st.compute_s = clock.copy_busy_s, clock.compute_s
        self.context += self.n_tokens // self.sequences
        self.step = None
        return st

    def event(self, layer: int) -> LayerEvent:
        st = self.step
        if st is not None:                 # one (frozen) event per layer and step
            ev = self._events.get(layer)
            if ev is None:
                ev = self._events[layer] = LayerEvent(step=self.position, layer=layer, phase=st.phase,
                                                      n_tokens=self.n_tokens, request=self.request)
            return ev
        return LayerEvent(step=self.position, layer=layer, phase="decode",
                          n_tokens=self.n_tokens, request=self.request)

    # -- layers -------------------------------------------------------------------------------
    def hit_layer(self, layer: int, ids: Any) -> tuple[list[int], dict[int, int]] | None:
        """A decode layer whose experts are all hits, in one call: what `route`, `prepare`,
        `compute_experts` and `after_experts` do for it, or nothing (None: take them).

        It stands for them when the strategy decides nothing after routing but the router's
        own experts (`_hits_ok`, and `choose` the default), no prediction waits to be scored,
        no low-precision copy is resident, and every expert of `ids` [T, k] is resident with no
        copy in flight and not an unused prefetch. Then that sequence is: the attention and
        router charges, `on_access(key, True)` per expert in first-use order, the hits counted,
        the experts' compute charge; nothing else (no copy, wait, prefetch, release, refresh).
        Returns the distinct experts and their slots (expert -> slot). The same effects in one
        place: most layers of a warm cache take it, and the general sequence costs the live
        engine several times more host time per layer (tests/core/test_hit_layer.py: every
        registered strategy gives the same results with `fast_hits` off)."""
        cache = self.cache
        if not self._hits_step or self._predicted or cache.low:
            return None
        experts = distinct(ids)
        slot_of, tickets, prefetched = cache.slot_of, cache.ticket, cache.prefetched
        slots: dict[int, int] = {}
        for e in experts:
            key = (layer, e)
            slot = slot_of.get(key)
            if slot is None or (tickets and key in tickets) or (prefetched and key in prefetched):
                # `route` reads these ids again: hand it what was read (on CUDA each read of
                # routing ids is a device-to-host copy in the measured path)
                self._read = (ids, experts)
                return None
            slots[e] = slot
        n = len(experts)
        st = self.step
        if self.charge:
            tl = self.timeline
            if not self.hidden_hook:
                tl.compute(self._attn_s)
            if self._router:
                tl.compute(self._router_s)
        on_access = self._access
        for e in experts:
            on_access((layer, e), True)
        st.activations += n
        st.hits += n
        st.layer_hits[layer] += n
        if self.charge:
            each = self.cost(costs.expert_seconds, max(1, (self.n_tokens * self.shape.top_k) // max(1, n)))
            tl.compute(n * each)
            if self._shared:
                tl.compute(self.cost(costs.shared_expert_seconds, self.n_tokens))
        return experts, slots

    def dense_layer(self) -> None:
        if self.charge:
            self.timeline.compute(self._attn_s + self.cost(costs.dense_mlp_seconds, self.n_tokens))

    def _attention(self) -> float:
        per = self.n_tokens // self.sequences
        if self.sequences == 1:
            return self.cost(costs.attention_seconds, per, self.context)
        return self.cost(costs.attention_seconds, per, self.context, self.sequences)

    def before_attention(self, layer: int, h: Any) -> None:
        """At norm1 of MoE layer `layer`: `h = norm1(x_i)` [T, H] (None in replay): the strategy's
        prefetches before attention, then attention. Nothing, when the strategy's
        `before_attention` decides nothing (`hidden_hook` False: the live engine then has no
        norm1 hook, and `route` charges the attention first; no call comes in between, so the
        clock is the same)."""
        if not self.hidden_hook:
            return
        ev = self.event(layer)
        req = self.strategy.before_attention(ev, h)
        if req:
            self._charge_prediction(ev, req)
            self._issue_prefetch(req, set())
        if self.charge:
            self.timeline.compute(self._attn_s)

    def route(self, layer: int, true: Routing, s: Any, u: Any
              ) -> tuple[Routing, list[int], Sequence[Prefetch]]:
        """The experts to execute, their distinct ids, and the prefetches issued after routing."""
        strategy = self.strategy
        if self.charge:
            if not self.hidden_hook:               # (see before_attention)
                self.timeline.compute(self._attn_s)
            uses = self._router
            if uses is None:
                uses = strategy.uses_router(self.event(layer))
            if uses:
                self.timeline.compute(self._router_s)
        choose = strategy.choose
        chosen = true if marked(choose, "default_decision") else choose(self.event(layer), true, s, u)
        read, self._read = self._read, None
        experts = read[1] if read is not None and chosen is true and read[0] is true.ids else chosen.experts()
        if not self._after:
            return chosen, experts, ()
        ev = self.event(layer)
        prefetches = strategy.after_routing(ev, chosen, s, u) or ()
        if prefetches:
            self._charge_prediction(ev, prefetches)
            self._note_predictions(prefetches)
        return chosen, experts, prefetches

    def prepare(self, layer: int, experts: list[int], prefetches: Sequence[Prefetch],
                last_token: LastToken) -> LayerOutcome:
        """Make `experts` resident (demand fetches first, then `prefetches`), wait, account."""
        st = self.step
        decode = st.phase == "decode"
        if decode and self._predicted:
            self._score_predictions(layer, last_token)
        decode1 = decode and self.n_tokens == 1
        host: set[int] | tuple = ()
        if self.uses_host and decode1:       # host compute is a decode-time choice (one token)
            host = {int(e) for e in self.strategy.host_experts(self.event(layer), list(experts))}
        on_device = [e for e in experts if int(e) not in host] if host else experts
        low = (self.strategy.miss_precision(self.event(layer), list(on_device))
               if decode1 and self._low else {})
        for bits in (set(low.values()) - set(self.sched.low_bytes)) if low else ():
            self.sched.low_bytes[bits] = costs.lowbit_bytes(self.shape, bits)
        whole = not decode and self.prefill_copies != "per-expert" and self._whole_layer(layer, on_device)
        if whole:                 # the whole layer: the prompt's experts, then every other one
            used = set(on_device)
            fetch = list(on_device) + [e for e in range(self.shape.num_experts) if e not in used]
        else:
            fetch = on_device
        defer = decode1 and (self.expert_waits or bool(host))
        if defer or low or whole:
            out = self.sched.prepare(layer, fetch, prefetches, defer_waits=defer, low=low, coalesce=whole)
        else:                     # (keywords cost a layer more than its arithmetic)
            out = self.sched.prepare(layer, fetch, prefetches)
        if host:
            out.host = [e for e in experts if int(e) in host]
        st.account(layer, out, len(experts))
        if self._predicted:
            self._predicted.pop(layer, None)
        return out

    def _whole_layer(self, layer: int, experts: list[int]) -> bool:
        """Whether this prefill layer's demand copies are one whole-layer transfer (all `E`
        experts, one latency) rather than one copy per expert the prompt uses:
        `prefill_copies` whole-layer always, per-expert never, auto when that transfer takes
        less link time than the per-expert copies and the cache has room for a whole layer."""
        mode = self.prefill_copies
        if mode == "per-expert":
            return False
        if mode == "whole-layer":
            return True
        E = self.shape.num_experts
        if self.cache.n_slots < E:
            note = (f"prefill_copies=auto: the cache budget ({self.cache.n_slots} experts) holds no "
                    f"whole layer ({E}): prefills copied per expert")
            if note not in self.notes:
                self.notes.append(note)
            return False
        eb = self.cache.expert_bytes
        union = sum(1 for e in experts if not self.cache.is_resident((layer, int(e))))
        whole = sum(1 for e in range(E) if not self.cache.is_resident((layer, e)))
        return union > 0 and self.profile.copy_seconds(whole * eb) < union * self.profile.copy_seconds(eb)

    @staticmethod
    def expert_groups(out: LayerOutcome, experts: list[int]) -> list[list[int]]:
        """The order the layer's device experts run in: one group (layer-granular waits), or the
        resident ones, then each pending one alone, late prefetches before misses. Experts
        computed on the host (`out.host`) are not among them."""
        host = set(out.host)
        experts = [e for e in experts if e not in host]
        if not out.pending and not host:
            return [list(experts)]
        waiting = {e for e, _, _ in out.pending}
        ready = [e for e in experts if e not in waiting]
        return ([ready] if ready else []) + [[e] for e, _, _ in out.pending]

    def compute_experts(self, layer: int, out: LayerOutcome, experts: list[int],
                        kernel: Callable[[list[int]], Any] | None = None,
                        host_kernel: Callable[[int], Any] | None = None) -> list[tuple[list[int], Any]]:
        """Wait for and run the layer's experts, group by group: `kernel(group)` computes one
        group on a live engine (replay passes None); returns `(group, kernel output)` pairs.

        Experts computed on the host go first: each one's activation leaves for the host as
        soon as routing is known (`host_kernel(expert)` computes it there on a live engine), the
        device computes its own experts meanwhile, and waits for the host's results last."""
        n = len(experts)
        each = 0.0
        if self.charge:
            tokens_per_expert = max(1, (self.n_tokens * self.shape.top_k) // max(1, n))
            each = self.cost(costs.expert_seconds, tokens_per_expert)
        if not out.pending and not out.host:        # layer-granular: one group, nothing to wait for
            done = [(experts, kernel(experts) if kernel is not None else None)]
            if self.charge:
                self.timeline.compute(n * each)
                if self._shared:
                    self.timeline.compute(self.cost(costs.shared_expert_seconds, self.n_tokens))
            return done
        tickets = {e: (t, late) for e, t, late in out.pending} if out.pending else {}
        done = []
        host_tickets = []
        for e in out.host:
            if self.charge:
                act = costs.activation_bytes(self.shape, self.n_tokens)
                host_tickets.append(self.timeline.host_compute(
                    self.profile.copy_seconds(act), self.cost(costs.host_expert_seconds, self.n_tokens), act))
            done.append(([e], host_kernel(e) if host_kernel is not None else None))
        for group in self.expert_groups(out, experts):
            for e in group:
                if e in tickets:
                    t, late = tickets[e]
                    out.stall_s += self.timeline.wait(t, late=late)
            done.append((group, kernel(group) if kernel is not None else None))
            if self.charge:
                self.timeline.compute(len(group) * each)
        if self.charge and self._shared:
            # shared experts (DeepSeek, Qwen2-MoE): resident, run on every token of the layer
            self.timeline.compute(self.cost(costs.shared_expert_seconds, self.n_tokens))
        for t in host_tickets:
            out.stall_s += self.timeline.wait(t, host=True)
        out.pending = []
        return done

    def after_experts(self, layer: int) -> None:
        low = [k for k in self.cache.low if k[0] == layer] if self.cache.low else ()
        if low and self._keeps and self.strategy.refresh_low_precision():
            nbytes = sum(self.sched.refresh(k) for k in low)   # full precision, off the path
            if self.step is not None:
                self.step.h2d_bytes += nbytes
                self.step.prefetch_bytes += nbytes
        if not self._keeps:
            # Drop everything of this layer, prefetched-but-unused experts included: nothing may
            # survive to serve a later token (that would be a cross-token cache).
            self.sched.release(layer, [e for (m, e) in self.cache.resident() if m == layer])

    # -- prefetches and their scoring ---------------------------------------------------------
    def predicted(self, layer: int) -> dict[str, set[int]]:
        """What each predictor has asked for layer `layer` in this step so far (for the trace)."""
        return self._predicted.get(layer, {})

    def _issue_prefetch(self, requests: Sequence[Prefetch], locked: set) -> None:
        if not requests:
            return
        self._note_predictions(requests)
        nbytes, _ = self.sched.prefetch(requests, locked)
        if self.step is not None:
            self.step.h2d_bytes += nbytes
            self.step.prefetch_bytes += nbytes

    def _note_predictions(self, requests: Sequence[Prefetch]) -> None:
        """Remember what each predictor asked for, per target layer, to score it against the
        true routing of that layer in this step (not for strategies whose prefetches are plans
        rather than predictions of this step: `scores_predictions` False)."""
        if not requests or not self.strategy.scores_predictions:
            return
        for r in requests:
            self._predicted.setdefault(r.layer, {}).setdefault(r.source, set()).update(
                int(e) for e in r.experts)

    def _score_predictions(self, layer: int, last_token: LastToken) -> None:
        """Score what each predictor asked for against the TRUE router's choice for the step's
        token, or the union of a batch's (`Routing.target`; never against the experts executed:
        a strategy that executes its own guesses would score its precision against itself)."""
        preds = self._predicted.pop(layer, None)
        if not preds:
            return
        ids, w = last_token()                                     # the true router's top-k
        true_set = set(ids)
        tot = sum(w) or 1.0
        for source, pred in preds.items():
            acc = self.pred_stats.setdefault(layer, {}).setdefault(source, {
                "n": 0, "recall": 0.0, "precision": 0.0, "exact": 0, "top1": 0, "gw_recall": 0.0,
                "predicted": 0})
            acc["n"] += 1
            acc["recall"] += len(pred & true_set) / max(1, len(true_set))
            acc["precision"] += (len(pred & true_set) / len(pred)) if pred else 0.0
            acc["exact"] += int(pred == true_set)
            acc["top1"] += int(ids[0] in pred)
            acc["gw_recall"] += sum(wi for e, wi in zip(ids, w) if e in pred) / tot
            acc["predicted"] += len(pred)

    def prediction(self) -> dict | None:
        """`metrics.prediction` of result.json: per predictor and layer, plus per target layer the
        issued, used, wasted and never-used prefetches (late ones are accesses: `metrics.late`)."""
        sched, cache = self.sched, self.cache
        if not self.pred_stats and not sched.prefetch_issued:
            return None
        pred = prediction_metrics(self.pred_stats, wasted_bytes=sched.wasted_bytes,
                                  issued=sched.prefetch_issued, used=sched.prefetch_used)
        # wasted = evicted or dropped before any use; unused_at_end = still resident, never used,
        # when the run ended.
        counts = sched.layer_counts
        pending: dict[int, int] = {}
        for layer, _ in cache.prefetched:
            pending[layer] = pending.get(layer, 0) + 1
        pred["per_layer"] = [
            {"layer": m, "prefetches_issued": counts.get(m, {}).get("issued", 0),
             "prefetches_used": counts.get(m, {}).get("used", 0),
             "wasted_bytes": counts.get(m, {}).get("wasted_bytes", 0),
             "unused_at_end_bytes": pending.get(m, 0) * cache.expert_bytes}
            for m in range(self.shape.moe_layers)]
        return pred
