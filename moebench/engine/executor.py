"""The offloading engine: hooks a transformers MoE model so every expert call goes through it.

Legend: T tokens in the step, H hidden, k experts per token, E experts per layer, S slots.

`OffloadEngine.attach()`:
1. moves each MoE layer's fused expert tensors into a `HostExpertStore` (pinned on CUDA) and
   leaves empty placeholders in the model, so the device never holds an expert outside the cache;
2. moves every non-expert weight to the device;
3. registers `moebench` in transformers' `ExpertsInterface` and switches the model to it; the
   experts module of MoE layer `m` is tagged with `(engine, m)` (modules don't know their index);
4. adds forward hooks on `norm1` (pre-attention state h, where the attention cost is charged)
   and a pre-hook on `norm2` (the post-attention residual s).

Per MoE layer the executor then asks the strategy for prefetches (`before_attention`), the
experts to execute (`choose`) and more prefetches (`after_routing`), lets the `SlotScheduler`
make them resident in the byte-budgeted cache (timed by the timeline), and runs the model's own
experts kernel over the cache slots (`SlotExperts`), so lossless strategies are bit-identical
to the unmodified model.

The true router always runs (it is part of the model's graph); for strategies that do not use
it (`uses_true_router = False`) the simulated clock does not charge it, and on CUDA it is one
`E x H` GEMV per layer (microseconds) that stays in the timed path: said in the result.
A predictor's own work (a speculated router, a pre-attention predictor) is charged on the
simulated clock from the strategy's `prediction_cost(ev)`, once per prefetch request it returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from moebench.engine import costs
from moebench.engine.cache import ExpertCache, SlotScheduler
from moebench.engine.records import StepStats, prediction_seconds
from moebench.engine.store import DevicePools, HostExpertStore, SlotExperts
from moebench.models.adapters import adapter_for
from moebench.strategy import LayerEvent, Routing, StrategyContext

IMPL_NAME = "moebench"


def _moebench_experts_forward(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                              top_k_weights: torch.Tensor) -> torch.Tensor:
    engine, moe_index = self._moebench
    return engine.run_experts(self, moe_index, hidden_states, top_k_index, top_k_weights)


def _register_impl() -> None:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    if IMPL_NAME not in ALL_EXPERTS_FUNCTIONS:
        ExpertsInterface.register(IMPL_NAME, _moebench_experts_forward)


def reference_impl(model: Any, experts_module: Any) -> Any:
    """The experts function the unmodified model would call (its configured implementation)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    name = getattr(model.config, "_experts_implementation", None) or "eager"
    if name != "eager" and name in ALL_EXPERTS_FUNCTIONS and name != IMPL_NAME:
        return ALL_EXPERTS_FUNCTIONS[name]
    fwd = type(experts_module).forward
    return getattr(fwd, "__wrapped__", fwd)


@dataclass
class LayerTrace:
    """One (step, layer) row of the routing trace."""

    request: int
    step: int
    layer: int
    experts: list[int]            # true top-k ids (last token of the step)
    weights: list[float]
    executed: list[int]
    predicted: dict[str, list[int]]
    used: list[int] = field(default_factory=list)   # distinct experts run by any token of the step


class OffloadEngine:
    def __init__(self, loaded: Any, strategy: Any, *, n_slots: int, timeline: Any, profile: Any,
                 device: torch.device, artifacts: dict | None = None, record_trace: bool = False,
                 trace_source: Any = None):
        self.loaded = loaded
        self.model = loaded.model
        self.shape = loaded.shape
        self.strategy = strategy
        self.n_slots = n_slots
        self.timeline = timeline
        self.profile = profile
        self.device = device
        self.artifacts = artifacts or {}
        self.record_trace = record_trace
        self.trace_source = trace_source
        self.sim = timeline.kind == "simulated"
        self.trace: list[LayerTrace] = []
        self._costs: dict = {}
        self._hooks: list[Any] = []
        self._attached = False
        self._step: StepStats | None = None
        self._s: dict[int, torch.Tensor] = {}
        self._predicted: dict[int, dict[str, set[int]]] = {}
        self.pred_stats: dict[int, dict[str, float]] = {}
        self.layer_late = [0] * self.shape.moe_layers   # decode: prefetched, copy still in flight
        self.request = 0
        self.step_index = 0
        self.context = 0

    # ------------------------------------------------------------------------------------------
    # attach / detach
    # ------------------------------------------------------------------------------------------
    def attach(self) -> OffloadEngine:
        model = self.model
        self.adapter = adapter_for(model)
        views = self.adapter.moe
        self._impl = reference_impl(model, views[0].experts)
        store_layers = []
        self._originals = []
        for v in views:
            params = self.adapter.expert_params(v)
            store_layers.append({n: p.data for n, p in params.items()})
            self._originals.append(params)
        pin = self.device.type == "cuda"
        prebuilt = getattr(self.loaded, "expert_store", None)
        # A checkpoint loaded lazily arrives with its store already filled, one expert at a time.
        self.store = prebuilt if prebuilt is not None else HostExpertStore(store_layers, pin=pin)
        for v in views:
            for n in self.adapter.expert_param_names:
                setattr(v.experts, n, torch.nn.Parameter(torch.empty(0), requires_grad=False))
        try:
            return self._attach_rest(model, views)
        except BaseException:
            self._restore()   # a failing strategy setup must not leave the model gutted
            raise

    def _attach_rest(self, model: Any, views: list) -> OffloadEngine:
        model.to(self.device)
        make_pools = getattr(self.store, "make_pools", None)   # packed stores unpack on the device
        self.pools = (make_pools(self.n_slots, self.device) if make_pools is not None
                      else DevicePools(self.store, self.n_slots, self.device))
        self.cache = ExpertCache(self.n_slots, self.store.expert_bytes, mover=self.pools)
        self.sched = SlotScheduler(self.cache, self.timeline, self.strategy)
        ctx = StrategyContext(shape=self.shape, adapter=self.adapter, n_slots=self.n_slots,
                              is_resident=self.cache.is_resident, artifacts=self.artifacts,
                              trace=self.trace_source, device=self.device)
        self.strategy.setup(ctx)
        _register_impl()
        self._prev_impl = getattr(model.config, "_experts_implementation", None)
        model.set_experts_implementation(IMPL_NAME)
        for v in views:
            v.experts._moebench = (self, v.moe_index)
            self._hooks.append(v.norm1.register_forward_hook(self._make_norm1_hook(v.moe_index)))
            if getattr(self.strategy, "needs_residual", True):   # s_i only for those that read it
                self._hooks.append(v.norm2.register_forward_pre_hook(self._make_norm2_hook(v.moe_index)))
        moe_ids = {v.index for v in views}
        for i, layer in enumerate(self.adapter.decoder_layers):
            if i not in moe_ids:
                self._hooks.append(layer.register_forward_pre_hook(self._dense_layer_hook))
        self._attached = True
        return self

    def prefill_warm(self) -> None:
        """Make the cache hold what the strategy wants resident before timing (all-resident)."""
        want = getattr(self.strategy, "initial_residents", None)
        if not want:
            return
        for key in want(self.n_slots):
            if not self.cache.is_resident(key):
                slot = self.sched._insert(key, set())
                if slot is None:
                    break
                self.pools.load(key, slot)

    # ------------------------------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------------------------------
    def begin_request(self, request: int) -> None:
        self.request = request
        self.context = 0
        self.strategy.begin_request(request)

    def begin_step(self, phase: str, position: int, n_tokens: int) -> None:
        self.step_index = position
        self._n_tokens = n_tokens
        m = self.shape.moe_layers
        self._step = StepStats(phase=phase, position=position, layer_hits=[0] * m, layer_acts=[0] * m)
        self._predicted = {}
        self.timeline.step_begin()

    def end_step(self) -> StepStats:
        if self.sim:
            self.timeline.compute(self._cost(costs.lm_head_seconds))
        clock = self.timeline.step_end()
        st = self._step
        st.latency_s, st.stall_s = clock.latency_s, clock.stall_s
        st.copy_busy_s, st.compute_s = clock.copy_busy_s, clock.compute_s
        self.context += self._n_tokens
        self._step = None
        self._s.clear()
        return st

    # ------------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------------
    def _cost(self, fn: Any, *args: Any) -> float:
        """A simulated cost, memoised: the cost functions are pure in (shape, profile, args)."""
        key = (fn, args)
        v = self._costs.get(key)
        if v is None:
            v = self._costs[key] = fn(self.shape, self.profile, *args)
        return v

    def _event(self, moe_index: int) -> LayerEvent:
        st = self._step
        return LayerEvent(step=self.step_index, layer=moe_index, phase=st.phase if st else "decode",
                          n_tokens=self._n_tokens, request=self.request)

    def _make_norm1_hook(self, moe_index: int) -> Any:
        def hook(module: Any, args: Any, output: torch.Tensor) -> None:
            if self._step is None:
                return
            ev = self._event(moe_index)
            req = self.strategy.before_attention(ev, output)   # h = norm1(x_i)  [B, T, H]
            self._charge_prediction(ev, req)
            self._issue_prefetch(req, set())
            if self.sim:
                self.timeline.compute(self._cost(costs.attention_seconds, self._n_tokens, self.context))
        return hook

    def _make_norm2_hook(self, moe_index: int) -> Any:
        def hook(module: Any, args: Any) -> None:
            self._s[moe_index] = args[0]                       # s_i, residual after attention
        return hook

    def _dense_layer_hook(self, module: Any, args: Any) -> None:
        if self._step is not None and self.sim:
            self.timeline.compute(self._cost(costs.attention_seconds, self._n_tokens,
                                                          self.context)
                                  + self._cost(costs.dense_mlp_seconds, self._n_tokens))

    def _issue_prefetch(self, requests: Any, locked: set) -> None:
        if not requests:
            return
        self._note_predictions(requests)
        nbytes, _ = self.sched.prefetch(requests, locked)
        if self._step is not None:
            self._step.h2d_bytes += nbytes
            self._step.prefetch_bytes += nbytes

    # ------------------------------------------------------------------------------------------
    # the experts call
    # ------------------------------------------------------------------------------------------
    def run_experts(self, module: Any, moe_index: int, u: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
        """u [T, H], top_k_index [T, k], top_k_weights [T, k] -> [T, H]."""
        if self._step is None:
            raise RuntimeError("the engine ran a forward outside begin_step/end_step")
        st = self._step
        ev = self._event(moe_index)
        s = self._s.get(moe_index)
        true = Routing(top_k_index, top_k_weights)
        # A strategy may say per layer whether the true router is part of it (`uses_router(ev)`,
        # e.g. speculative: only the on-demand layers); otherwise the class flag decides.
        per_layer = getattr(self.strategy, "uses_router", None)
        uses_router = per_layer(ev) if per_layer is not None else self.strategy.uses_true_router
        if self.sim and uses_router:
            self.timeline.compute(self._cost(costs.router_seconds, ev.n_tokens))
        chosen = self.strategy.choose(ev, true, s, u)
        experts = chosen.experts()
        prefetches = self.strategy.after_routing(ev, chosen, s, u)
        self._charge_prediction(ev, prefetches)
        self._note_predictions(prefetches or ())
        # Instrumentation reads routing ids on the host: do it before `prepare` queues the waits
        # for this layer's copies, or on CUDA that D2H read would block the host until they land.
        if self.record_trace:
            self._record_trace(moe_index, true, chosen, experts)
        if st.phase == "decode":
            self._record_prediction(moe_index, true, experts)
        out = self.sched.prepare(moe_index, experts, prefetches or ())
        st.account(moe_index, out, len(experts))
        if st.phase == "decode":
            self.layer_late[moe_index] += out.late
        self._predicted.pop(moe_index, None)
        # Map expert ids to slot ids and run the model's own kernel over the slot pools,
        # narrowed (a view, no copy) to the slot range this call touches: grouped kernels cost
        # grows with the number of groups, and an all-resident layer is then exactly E wide.
        lo, hi = min(out.slots.values()), max(out.slots.values())
        dev = chosen.ids.device
        if dev.type == "cuda":   # a pageable H2D copy would block the host on the queued waits
            lut = torch.full((self.shape.num_experts,), -1, dtype=top_k_index.dtype)
            for e, slot in out.slots.items():
                lut[e] = slot - lo
            slot_index = lut.pin_memory().to(dev, non_blocking=True)[chosen.ids]   # [T, k]
        else:                    # host tensors: build the slot ids directly (cheaper per layer)
            sl = out.slots
            slot_index = torch.tensor([[sl[e] - lo for e in row] for row in chosen.ids.tolist()],
                                      dtype=chosen.ids.dtype)                     # [T, k]
        view = getattr(self.pools, "compute_view", None)               # packed experts: unpack
        if view is not None:
            pools, slot_index = view(slot_index, sorted(s_ - lo for s_ in set(out.slots.values())),
                                     lo, hi)
        elif u.shape[0] > 1 and dev.type == "cpu":
            pools, slot_index = self._expert_ordered(out.slots, chosen.ids)
        else:
            pools = {n: p[lo:hi + 1] for n, p in self.pools.pools.items()}
        proxy = SlotExperts(module, pools)
        y = self._impl(proxy, u, slot_index, chosen.weights)
        if self.sim:
            tokens_per_expert = max(1, (ev.n_tokens * self.shape.top_k) // max(1, len(experts)))
            self.timeline.compute(len(experts) * self._cost(costs.expert_seconds, tokens_per_expert))
        if not self.strategy.keeps_experts:
            # Drop everything of this layer, prefetched-but-unused experts included: nothing may
            # survive to serve a later token (that would be a cross-token cache).
            self.sched.release(moe_index, [e for (m, e) in self.cache.resident() if m == moe_index])
        return y

    def _expert_ordered(self, slots: dict[int, int], ids: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Multi-token calls on CPU (prefill): the slots gathered in expert-id order.

        The experts kernel sorts token rows by expert index with an unstable sort, and a
        multi-threaded CPU GEMM rounds a row differently depending on where it sits in its
        block. An index that is order-isomorphic to the expert ids reproduces the unmodified
        model's row order, and so its bits, at any thread count. (Decode has one row per
        expert, so the zero-copy narrowed view is exact there.)"""
        order = sorted(slots)
        lut = torch.full((self.shape.num_experts,), -1, dtype=ids.dtype)
        lut[torch.tensor(order)] = torch.arange(len(order), dtype=ids.dtype)
        take = torch.tensor([slots[e] for e in order])
        pools = {n: p.index_select(0, take) for n, p in self.pools.pools.items()}
        return pools, lut[ids]                                           # [T, k]

    # ------------------------------------------------------------------------------------------
    # instrumentation (outside the timed path: pure host bookkeeping, no device work)
    # ------------------------------------------------------------------------------------------
    def _record_prediction(self, moe_index: int, true: Routing, executed: list[int]) -> None:
        preds = self._predicted.pop(moe_index, None)
        if not preds:
            return
        ids = true.ids[-1].tolist()                                   # last token's top-k
        w = true.weights[-1].float().tolist()
        true_set = set(int(e) for e in ids)
        used = set(executed)
        for source, pred in preds.items():
            acc = self.pred_stats.setdefault(moe_index, {}).setdefault(source, {
                "n": 0, "recall": 0.0, "precision": 0.0, "exact": 0, "top1": 0, "gw_recall": 0.0,
                "predicted": 0})
            inter = pred & true_set
            acc["n"] += 1
            acc["recall"] += len(inter) / max(1, len(true_set))
            acc["precision"] += (len(pred & used) / len(pred)) if pred else 0.0
            acc["exact"] += int(pred == true_set)
            acc["top1"] += int(int(ids[0]) in pred)
            tot = sum(w) or 1.0
            acc["gw_recall"] += sum(wi for e, wi in zip(ids, w) if int(e) in pred) / tot
            acc["predicted"] += len(pred)

    def _record_trace(self, moe_index: int, true: Routing, chosen: Routing,
                      used: list[int] | None = None) -> None:
        preds = {k: sorted(v) for k, v in self._predicted.get(moe_index, {}).items()}
        self.trace.append(LayerTrace(
            request=self.request, step=self.step_index, layer=moe_index,
            experts=[int(e) for e in true.ids[-1].tolist()],
            weights=[float(x) for x in true.weights[-1].float().tolist()],
            executed=[int(e) for e in chosen.ids[-1].tolist()], predicted=preds,
            used=[int(e) for e in (used or [])]))

    def _note_predictions(self, requests: Any) -> None:
        """Remember what each predictor asked for, per target layer, to score it against the
        true routing of that layer in this step. A strategy whose prefetches are not predictions
        of this step (the oracle plans steps ahead from a recorded trace) sets
        `scores_predictions = False`."""
        if not getattr(self.strategy, "scores_predictions", True):
            return
        for r in requests:
            self._predicted.setdefault(r.layer, {}).setdefault(r.source, set()).update(int(e) for e in r.experts)

    def _charge_prediction(self, ev: LayerEvent, requests: Any) -> None:
        """Charge a predictor's own compute on the simulated clock: each non-empty `Prefetch`
        costs what the strategy's `prediction_cost(ev)` says, `(flops, bytes, kernels)`. On CUDA
        the predictor's kernels really ran on the compute stream and are measured."""
        if self.sim:
            self.timeline.compute(prediction_seconds(self.strategy, self.profile, ev, requests))

    # ------------------------------------------------------------------------------------------
    def detach(self) -> None:
        """Restore the unmodified model (expert weights back in place, hooks removed)."""
        sync = getattr(self.timeline, "synchronize", None)
        if sync is not None:
            sync()   # copies still in flight write into the pools: let them land before release
        self._restore()

    def _restore(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for v, params in zip(self.adapter.moe, self._originals):
            for n, p in params.items():
                setattr(v.experts, n, p)
            if hasattr(v.experts, "_moebench"):
                del v.experts._moebench
        prev = getattr(self, "_prev_impl", None)
        if prev:
            self.model.set_experts_implementation(prev)
        self._attached = False
