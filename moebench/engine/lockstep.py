"""Several lossless strategies over one workload on one shared forward (the simulated clock).

    pieces = run_shared(prep, [(strategy, provisioned), ...])   # one Piece per strategy

Used by `moebench compare` (`moebench.bench.compare._execute`) for the lossless strategies of
one sweep point and repetition; `MOEBENCH_SHARED_FORWARD=0` runs every strategy on its own.

A lossless strategy executes the router's own experts, so with every cache slot holding its
expert's exact weights the model computes the same hidden states, bit for bit, whatever the
strategy (tests/engine: each against the unmodified model). On the simulated clock nothing a
strategy reports comes from wall time: its numbers are a pure function of the sequence of
protocol calls its engine makes. So the strategies need not each run the whole model: one
forward per step drives every strategy's engine, each attached to the model with its own cache,
slot pools, clock and hooks, exactly as `run_session` attaches one:

- the non-expert part of the model (embeddings, attention, norms, router, LM head) runs once;
- at every MoE layer every engine runs its own protocol: routing decisions, residency, the real
  copies into its own slot pools, waits, charges, accounting;
- the group's leader (the engine with the fewest slots) then runs the model's experts kernel
  over its slots, and its output continues the forward. The others do not run that kernel
  again on the same token states and routing: the one thing its output depends on that
  differs between engines is the weights in the slots it reads, and each of those slots is
  checked instead to have been filled last by a full-precision copy of its expert from the
  store the group shares (`SharedExperts`, `_checked_kernel`). Every engine's `choose` must
  return the router's own routing too (`_checked_choose`: what `lossless` declares). A failed
  check raises `Disagreement` and the caller runs the strategies one by one.

Every engine sees the calls a solo run makes, in the same order (its hooks fire in the same
places, with the same tensors), so each `Piece` is the one `run_session` returns
(tests/engine/test_lockstep.py checks every built-in lossless strategy, field by field, and a
comparison's files with and without sharing). Not on the CUDA clock: there each strategy's
kernels and copies are what is measured. This module only builds and attaches the group
(`_attach_all`: each engine by `session.make_engine`, as alone) and checks it; the decode loop
is `run_session`'s own (`session.run_engines`, which drives the group's engines through one
forward per step), so the two cannot drift apart.
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from typing import Any

from moebench.engine.session import make_engine, run_engines
from moebench.offload.budget import resolve_budget
from moebench.results.build import Piece


class Disagreement(RuntimeError):
    """A follower's slot does not hold the expert its kernel would read (a bug in its engine), so
    its forward would not be the leader's: the caller runs the strategies one by one instead, as
    if they had never shared a forward."""


def can_share(prep: Any, strategies: Sequence[Any]) -> bool:
    """Strategies that may share one forward: two or more, all lossless, on the simulated clock
    (on CUDA the kernels and copies of each strategy are what is measured)."""
    return (prep.clock == "sim" and len(strategies) > 1
            and all(bool(s.traits.lossless) for s in strategies))


class SharedExperts:
    """The experts call of every engine of the group (`module._moebench` points here).

    The first engine runs as it does alone: its protocol, then the model's experts kernel over
    its slots; its output continues the forward. Every other engine runs its whole protocol too
    (routing decisions, residency, the real copies into its own slot pools, waits, charges), but
    not the kernel again on the same token states and routing: what that kernel's output depends
    on besides them is the weights in the slots it reads, so instead each of those slots is
    checked to have been filled last by a full-precision copy of its expert from the store the
    group shares (`_checked_kernel`; a copy the cache did not ask for, or a slot reused while
    mapped, fails it), and every engine's `choose` must return the router's own routing
    (`_checked_choose`). A failed check raises `Disagreement`."""

    def __init__(self, engines: list):
        self.engines = engines

    def run_experts(self, module: Any, moe_index: int, u: Any, top_k_index: Any,
                    top_k_weights: Any) -> Any:
        y = self.engines[0].run_experts(module, moe_index, u, top_k_index, top_k_weights)
        for engine in self.engines[1:]:
            engine._shared_layer = moe_index
            engine.run_experts(module, moe_index, u, top_k_index, top_k_weights)
        return y


_ZEROS: dict[tuple, Any] = {}


def _zeros(u: Any) -> Any:
    """A follower's (unused) expert output: zeros like `u`, one tensor per shape (never written)."""
    key = (tuple(u.shape), u.dtype, u.device)
    z = _ZEROS.get(key)
    if z is None:
        import torch

        z = _ZEROS[key] = torch.zeros_like(u)
    return z


def _log_copies(engine: Any) -> dict[int, Any]:
    """Record, per slot, what the engine's mover copied into it last: `(layer, expert)` for a
    full-precision copy, None for a low-precision one."""
    pools = engine.pools
    written: dict[int, Any] = {}
    load, load_low = pools.load, pools.load_low

    def logged_load(key: Any, slot: int) -> None:
        load(key, slot)
        written[slot] = (int(key[0]), int(key[1]))

    def logged_load_low(key: Any, slot: int, bits: int) -> None:
        load_low(key, slot, bits)
        written[slot] = None

    pools.load, pools.load_low = logged_load, logged_load_low
    return written


def _checked_kernel(engine: Any, written: dict[int, Any]) -> Callable[..., Any]:
    """A follower's `_kernel`: every slot it would read must hold its expert's weights (filled
    last by a full-precision copy of that expert); its output is never used (the first engine's
    is), so none is computed."""
    def kernel(module: Any, u: Any, ids: Any, weights: Any, slots: dict[int, int]) -> Any:
        layer = engine._shared_layer
        for e, slot in slots.items():
            if written.get(slot) != (layer, e):
                raise Disagreement(f"{engine.strategy.name}: slot {slot} does not hold expert {e} "
                                   f"of MoE layer {layer} (last copied there: {written.get(slot)})")
        return _zeros(u)

    return kernel


def _checked_choose(strategy: Any) -> Callable[..., Any]:
    """The strategy's `choose`, which must execute the router's own choice (what `lossless`
    declares, and what lets its engine share the forward): the same `Routing`, or equal ids and
    weights. Anything else raises `Disagreement` (the strategy then runs alone, as declared)."""
    import torch

    real = strategy.choose

    def choose(ev: Any, true: Any, s: Any, u: Any) -> Any:
        chosen = real(ev, true, s, u)
        if chosen is not true and not (torch.equal(torch.as_tensor(chosen.ids), torch.as_tensor(true.ids))
                                       and torch.equal(torch.as_tensor(chosen.weights),
                                                       torch.as_tensor(true.weights))):
            raise Disagreement(f"{strategy.name} is declared lossless but executed other experts "
                               f"than the router's at MoE layer {ev.layer}")
        return chosen

    choose.own = strategy.__dict__.get("choose")     # an instance's own `choose`, if it has one
    return choose


def _unused_host_kernel(engine: Any) -> Callable[..., Any]:
    """A follower's `_host_kernel`: host compute reads the host store, which every engine of the
    group shares; the first engine's output is the one used."""
    real = engine._host_kernel

    def host_kernel(module: Any, layer: int, expert: int, u: Any, weight: Any) -> Any:
        if engine.pools.packed:
            return real(module, layer, expert, u, weight)      # refused there, as alone
        return _zeros(u)

    return host_kernel


def _attach_all(prep: Any, group: Sequence[tuple[Any, Any]],
                record: bool) -> tuple[list, Callable[[], None]]:
    """One engine per `(strategy, provisioned)` of `group` (each built by `make_engine`, as
    alone), all attached to the one model: the engines in group order and the call that detaches
    them. The first attached (the group's leader: the one with the fewest slots, whose kernel
    reads the narrowest slot range) builds the host expert store from the model and leaves
    placeholders there; the others share that store. Each one is attached with the model's own
    experts implementation in place, so each finds the model's kernel as its reference
    (`reference_impl`); detaching in reverse attach order restores the model."""
    budgets = [resolve_budget(prep.budget, prep.loaded.shape, s) for s, _ in group]
    lead = min(range(len(group)), key=lambda i: budgets[i].experts)
    order = [lead] + [i for i in range(len(group)) if i != lead]
    engines: dict[int, Any] = {}
    attached: list = []
    try:
        for i in order:
            loaded = None
            if attached:
                first = attached[0]
                if first._prev_impl:
                    prep.loaded.model.set_experts_implementation(first._prev_impl)
                loaded = copy.copy(prep.loaded)
                loaded.expert_store = first.store
            strategy, provisioned = group[i]
            engine = make_engine(prep, strategy, provisioned, record, loaded=loaded)
            engine.attach()
            attached.append(engine)
            engines[i] = engine
    except BaseException:
        _detach_all(attached)
        raise
    for engine in attached:
        engine.strategy.choose = _checked_choose(engine.strategy)
    for engine in attached[1:]:
        engine._kernel = _checked_kernel(engine, _log_copies(engine))
        engine._host_kernel = _unused_host_kernel(engine)
    shared = SharedExperts(attached)
    for v in attached[0].adapter.moe:
        v.experts._moebench = (shared, v.moe_index)
    return [engines[i] for i in range(len(group))], functools.partial(_detach_all, attached)


def _detach_all(attached: list) -> None:
    for engine in reversed(attached):
        d = engine.strategy.__dict__
        if "choose" in d and hasattr(d["choose"], "own"):      # ours: the instance's own back
            own = d.pop("choose").own
            if own is not None:
                d["choose"] = own
        engine.detach()


def run_shared(prep: Any, group: Sequence[tuple[Any, Any]], *, repetition: int = 0,
               progress: Callable[[int], None] | None = None, keep_logits: bool = False,
               record_trace: bool | None = None) -> list[Piece]:
    """`run_session` for every `(strategy, provisioned)` of `group` at once, on one forward per
    step (see the module's docstring); returns their pieces in order. Raises `Disagreement`
    when a follower's slot fails its check (nothing is returned then)."""
    if not can_share(prep, [s for s, _ in group]):
        raise ValueError("run_shared needs two or more lossless strategies on the simulated clock")
    return run_engines(prep, group, attach=lambda record: _attach_all(prep, group, record),
                       repetition=repetition, progress=progress, keep_logits=keep_logits,
                       record_trace=record_trace)
