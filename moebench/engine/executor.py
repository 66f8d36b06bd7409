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

Per MoE layer the hooks feed the one per-layer protocol (`moebench.offload.protocol`, which
trace replay executes too): prefetches before attention, the experts to execute and the
prefetches after routing, residency in the byte-budgeted cache, waits, charges and accounting.
What is the engine's own is the tensor work: it runs the model's experts kernel over the cache
slots (`SlotExperts`), so lossless strategies are bit-identical to the unmodified model.

The true router always runs (it is part of the model's graph); for strategies that do not use
it (`uses_router(ev)` False) the simulated clock does not charge it, and on CUDA it is one
`E x H` GEMV per layer (microseconds) that stays in the timed path: said in the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from moebench.errors import UserError
from moebench.weights.store import HostExpertStore, SlotExperts
from moebench.models.adapters import adapter_for
from moebench.offload.cache import ExpertCache
from moebench.offload.events import Routing
from moebench.offload.protocol import LayerProtocol
from moebench.offload.records import StepStats

IMPL_NAME = "moebench"


def _moebench_experts_forward(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                              top_k_weights: torch.Tensor) -> torch.Tensor:
    engine, moe_index = self._moebench
    return engine.run_experts(self, moe_index, hidden_states, top_k_index, top_k_weights)


def _register_impl() -> None:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    if IMPL_NAME not in ALL_EXPERTS_FUNCTIONS:
        ExpertsInterface.register(IMPL_NAME, _moebench_experts_forward)


def reference_impl_name(model: Any) -> str:
    name = getattr(model.config, "_experts_implementation", None) or "eager"
    return name if name != IMPL_NAME else "eager"


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
                 trace_source: Any = None, prefill_copies: str = "per-expert"):
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
        self.prefill_copies = prefill_copies
        self.sim = timeline.kind == "simulated"
        self.trace: list[LayerTrace] = []
        self._hooks: list[Any] = []
        self._s: dict[int, torch.Tensor] = {}
        self.protocol: LayerProtocol | None = None
        self._norm1_hook = True
        self._cpu_plain = False           # CPU pools of plain tensors (not packed): set at attach
        self._layout_views: dict = {}     # (experts module, base slot) -> its E-wide pool views

    # ------------------------------------------------------------------------------------------
    # attach / detach
    # ------------------------------------------------------------------------------------------
    def attach(self) -> OffloadEngine:
        model = self.model
        self.adapter = adapter_for(model)
        views = self.adapter.moe
        self._impl = reference_impl(model, views[0].experts)
        self._sequential_sum = reference_impl_name(model) == "eager"
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
        self.pools = self.store.make_pools(self.n_slots, self.device)
        self._layout_views = {}
        self._cpu_plain = self.device.type == "cpu" and not self.pools.packed
        self.cache = ExpertCache(self.n_slots, self.store.expert_bytes, mover=self.pools)
        self.protocol = LayerProtocol(self.strategy, shape=self.shape, profile=self.profile,
                                      timeline=self.timeline, cache=self.cache, charge=self.sim,
                                      adapter=self.adapter, artifacts=self.artifacts,
                                      trace=self.trace_source, device=self.device,
                                      prefill_copies=self.prefill_copies)
        self.protocol.setup()
        _register_impl()
        self._prev_impl = getattr(model.config, "_experts_implementation", None)
        model.set_experts_implementation(IMPL_NAME)
        # h = norm1(x_i) only for a strategy whose before_attention decides something (for the
        # others `route` charges the attention)
        self._norm1_hook = self.protocol.hidden_hook
        for v in views:
            v.experts._moebench = (self, v.moe_index)
            if self._norm1_hook:
                self._hooks.append(v.norm1.register_forward_hook(self._make_norm1_hook(v.moe_index)))
            if "residual" in self.strategy.traits.reads:   # s_i only for those that read it
                self._hooks.append(v.norm2.register_forward_pre_hook(self._make_norm2_hook(v.moe_index)))
        moe_ids = {v.index for v in views}
        for i, layer in enumerate(self.adapter.decoder_layers):
            if i not in moe_ids:
                self._hooks.append(layer.register_forward_pre_hook(self._dense_layer_hook))
        return self

    def prefill_warm(self) -> None:
        """Make the cache hold what the strategy wants resident before timing (all-resident)."""
        self.protocol.prefill_warm(self.pools.load)

    # ------------------------------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------------------------------
    def begin_request(self, request: int) -> None:
        self.protocol.begin_request(request)
        if self.protocol.hidden_hook and not self._norm1_hook:
            raise UserError(f"strategy '{self.strategy.name}' took on a before_attention of its own "
                            "after setup, but the engine hooks norm1 for it only when it has one at "
                            "setup: define before_attention on the class or set it in setup().")

    def begin_step(self, phase: str, position: int, n_tokens: int, sequences: int = 1) -> None:
        self.protocol.begin_step(phase, position, n_tokens, sequences)

    def end_step(self) -> StepStats:
        st = self.protocol.end_step()
        self._s.clear()
        return st

    # ------------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------------
    def _make_norm1_hook(self, moe_index: int) -> Any:
        def hook(module: Any, args: Any, output: torch.Tensor) -> None:
            if self.protocol.step is not None:
                self.protocol.before_attention(moe_index, output)   # h = norm1(x_i)  [B, T, H]
        return hook

    def _make_norm2_hook(self, moe_index: int) -> Any:
        def hook(module: Any, args: Any) -> None:
            self._s[moe_index] = args[0]                       # s_i, residual after attention
        return hook

    def _dense_layer_hook(self, module: Any, args: Any) -> None:
        if self.protocol.step is not None:
            self.protocol.dense_layer()

    # ------------------------------------------------------------------------------------------
    # the experts call
    # ------------------------------------------------------------------------------------------
    def run_experts(self, module: Any, moe_index: int, u: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
        """u [T, H], top_k_index [T, k], top_k_weights [T, k] -> [T, H]."""
        proto = self.protocol
        if proto.step is None:
            raise RuntimeError("the engine ran a forward outside begin_step/end_step")
        hit = proto.hit_layer(moe_index, top_k_index)
        if hit is not None:                      # every expert resident: the layer's one call
            experts, slots = hit
            if self.record_trace:
                true = Routing(top_k_index, top_k_weights)
                self._record_trace(moe_index, true, true, experts)
            return self._kernel(module, u, top_k_index, top_k_weights, slots)
        true = Routing(top_k_index, top_k_weights)
        chosen, experts, prefetches = proto.route(moe_index, true, self._s.get(moe_index) if self._s else None, u)
        # Instrumentation reads routing ids on the host: do it before `prepare` queues the waits
        # for this layer's copies, or on CUDA that D2H read would block the host until they land.
        if self.record_trace:
            self._record_trace(moe_index, true, chosen, experts)
        out = proto.prepare(moe_index, experts, prefetches, true.target)
        if not out.pending and not out.host:    # layer-granular: one kernel call over the layer
            y = self._kernel(module, u, chosen.ids, chosen.weights, out.slots)
            proto.compute_experts(moe_index, out, experts)   # its charges (nothing to wait for)
            proto.after_experts(moe_index)
            return y
        # Expert-granular waits (decode, one token): each expert is its own kernel call as its
        # copy lands; the partial outputs are then reduced the way the one-call kernel reduces
        # them: the eager kernel adds them from zero in ascending slot order, the grouped and
        # batched kernels sum the [T, k, H] weighted outputs over k. Each partial is exactly the
        # row the one-call kernel computes (one token per expert either way, in the model's
        # dtype), so the result is bit-identical (tested on CPU, both kernels); a GPU grouped
        # GEMM that picks another algorithm for one group than for k would differ by rounding.
        row = [int(e) for e in chosen.ids[0].tolist()]

        def per_expert(group: list[int]) -> dict[int, torch.Tensor]:
            ys = {}
            for e in group:
                j = row.index(e)
                ys[e] = self._kernel(module, u, chosen.ids[:, j:j + 1], chosen.weights[:, j:j + 1],
                                     {e: out.slots[e]})
            return ys
        def on_host(e: int) -> dict[int, torch.Tensor]:
            j = row.index(e)
            return {e: self._host_kernel(module, moe_index, e, u, chosen.weights[:, j:j + 1])}

        done = proto.compute_experts(moe_index, out, experts, per_expert, on_host)
        parts = {e: y for _, ys in done for e, y in ys.items()}
        if self._sequential_sum:
            # the eager kernel adds in ascending slot order; host experts have no slot, and then
            # the unmodified model's order (ascending expert id) is followed
            order = (sorted(parts, key=lambda e: out.slots[e]) if not out.host else sorted(parts))
            y = torch.zeros_like(u)
            for e in order:
                y = y + parts[e]
        else:
            y = torch.stack([parts[e] for e in row], dim=1).sum(dim=1).to(u.dtype)   # [1, k, H]
        proto.after_experts(moe_index)
        return y

    def _host_kernel(self, module: Any, layer: int, expert: int, u: torch.Tensor,
                     weight: torch.Tensor) -> torch.Tensor:
        """One expert computed on the host CPU from the host store's copy of its weights (a view,
        no copy): the token's state goes to the host, the model's own experts kernel runs there
        (real torch CPU kernels), the weighted output comes back. On a CPU engine the host is
        the device, and the result is bit-identical to running it from a cache slot."""
        import time

        if self.pools.packed:
            raise UserError("host compute of packed (MXFP4) experts is not supported; use a "
                            "strategy that copies them.")
        t0 = time.perf_counter()
        store = self.pools.store.layers[layer]
        pools = {n: t[expert:expert + 1] for n, t in store.items()}            # [1, ...] views
        x = u.to("cpu")
        idx = torch.zeros((x.shape[0], 1), dtype=torch.long)
        y = self._impl(SlotExperts(module, pools), x, idx, weight.to("cpu"))
        if u.device.type != "cpu":
            y = y.to(u.device, non_blocking=False)
            self.timeline.note_host(time.perf_counter() - t0)
        return y

    def _kernel(self, module: Any, u: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                slots: dict[int, int]) -> torch.Tensor:
        """The model's own experts kernel over the cache slots of `slots` (expert -> slot) for
        routing `ids`, `weights` [T, k]: expert ids become slot ids, the pools are narrowed (a
        view, no copy) to the slot range this call touches (grouped kernels' cost grows with the
        number of groups; an all-resident layer is then exactly E wide)."""
        if self._cpu_plain:
            same = self._model_layout(module, slots)
            if same is not None:          # slot = base + expert id: the model's own indices
                return self._impl(same, u, ids, weights)
        dev = ids.device
        lo, hi = min(slots.values()), max(slots.values())
        if dev.type == "cuda":   # a pageable H2D copy would block the host on the queued waits
            lut = torch.full((self.shape.num_experts,), -1, dtype=ids.dtype)
            for e, slot in slots.items():
                lut[e] = slot - lo
            slot_index = lut.pin_memory().to(dev, non_blocking=True)[ids]         # [T, k]
        else:                    # host tensors: build the slot ids directly (cheaper per layer)
            slot_index = torch.tensor([[slots[e] - lo for e in r] for r in ids.tolist()],
                                      dtype=ids.dtype)                            # [T, k]
        if self.pools.packed:                                          # packed experts: unpack
            pools, slot_index = self.pools.compute_view(
                slot_index, sorted(s_ - lo for s_ in set(slots.values())), lo, hi)
        elif u.shape[0] > 1 and dev.type == "cpu":
            pools, slot_index = self._expert_ordered(slots, ids)
        elif dev.type == "cpu" and hi - lo >= self.shape.num_experts:
            pools, slot_index = self._slot_gathered(slots, ids)
        else:
            pools = {n: p[lo:hi + 1] for n, p in self.pools.pools.items()}
        return self._impl(SlotExperts(module, pools), u, slot_index, weights)

    def _model_layout(self, module: Any, slots: dict[int, int]) -> SlotExperts | None:
        """On CPU, when every slot of the call is `base + expert id` (all-resident lays each
        layer out so): the pools from `base`, E wide, read with the routing's own expert ids,
        which is the unmodified model's call (same indices, same width, same row order at any
        thread count) with no slot index to build. The views are kept (the pools never move).
        Not for one expert (an expert-granular call): its one-slot view is cheaper."""
        if len(slots) < 2:
            return None
        it = iter(slots.items())
        e, slot = next(it)
        base = slot - e
        for e, slot in it:
            if slot - e != base:
                return None
        view = self._layout_views.get((module, base))
        if view is None:
            E = self.shape.num_experts
            if base < 0 or base + E > self.n_slots:
                return None
            view = self._layout_views[(module, base)] = SlotExperts(
                module, {n: p[base:base + E] for n, p in self.pools.pools.items()})
        return view

    def _slot_gathered(self, slots: dict[int, int], ids: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """One token on CPU whose slots span more than E (a cache shared by all layers): the
        slots it uses gathered in slot order, so the grouped kernel is never wider than the
        unmodified model's (its cost grows with the number of groups, empty ones included).
        The index is order-isomorphic to the narrowed view's and each expert has one row, so
        every kernel computes exactly what it computes over the view."""
        used = sorted(set(slots.values()))
        rank = {s: i for i, s in enumerate(used)}
        take = torch.tensor(used)
        pools = {n: p.index_select(0, take) for n, p in self.pools.pools.items()}
        return pools, torch.tensor([[rank[slots[e]] for e in r] for r in ids.tolist()], dtype=ids.dtype)

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
    def _record_trace(self, moe_index: int, true: Routing, chosen: Routing,
                      used: list[int] | None = None) -> None:
        p = self.protocol
        preds = {k: sorted(v) for k, v in p.predicted(moe_index).items()}
        self.trace.append(LayerTrace(
            request=p.request, step=p.position, layer=moe_index,
            experts=[int(e) for e in true.ids[-1].tolist()],
            weights=[float(x) for x in true.weights[-1].float().tolist()],
            executed=[int(e) for e in chosen.ids[-1].tolist()], predicted=preds,
            used=[int(e) for e in (used or [])]))

    # ------------------------------------------------------------------------------------------
    def detach(self) -> None:
        """Restore the unmodified model (expert weights back in place, hooks removed)."""
        self.timeline.synchronize()   # copies in flight write into the pools: let them land first
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
