"""The device expert cache: a fixed pool of slots, a byte budget it never exceeds.

`ExpertCache` is the bookkeeping (which `(layer, expert)` lives in which slot, which copy is in
flight, what is locked by the layer being computed). It is tensor-free, so the same object
drives a live run (with a `mover` that really copies weights into device slot tensors) and a
trace replay (no mover). The pool is allocated once, `n_slots * expert_bytes`, so peak expert
memory is the budget by construction; `resident_bytes` is checked against it on every insert.

`SlotScheduler.prepare(...)` is the per-layer protocol of the engine:
1. for each expert the layer executes: hit (resident, copy complete), late (prefetched, copy
   still in flight: a partial stall) or miss (not resident -> demand fetch);
2. demand fetches are issued before the strategy's prefetches, so a prefetch for a later layer
   never delays the copy this layer is waiting for;
3. compute waits for every ticket it needs (the stall), in the order the experts were listed;
   the clock charges each wait's stall to its class (late or miss); the two add up to the stall.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moebench.errors import UserError
from moebench.offload.events import marked

ExpertKey = tuple[int, int]


@dataclass(slots=True)
class LayerOutcome:
    """What happened to one layer's experts (counted per step, per layer). One per layer of
    every step: `pending` and `host` are replaced, never appended to (empty: a shared tuple)."""

    slots: dict[int, int] = field(default_factory=dict)   # expert id -> slot
    hits: int = 0
    late: int = 0          # prefetched, its copy still in flight when needed (a partial stall)
    misses: int = 0        # not resident when needed: demand fetches
    stall_s: float = 0.0   # simulated; the clock's step record splits it into late and miss
    # expert-granular waits: (expert, ticket, late) not yet waited for, late ones first
    pending: Sequence[tuple[int, Any, bool]] = ()
    host: Sequence[int] = ()   # experts computed on the host, not fetched
    demand_bytes: int = 0
    prefetch_bytes: int = 0
    dropped_prefetches: int = 0


class Candidates:
    """The evictable experts (resident and not locked), as a lazy read-only sequence: a policy
    that walks its own order (LRU) asks `key in candidates` without a list being built for
    every eviction; a policy that scans them all iterates."""

    __slots__ = ("_resident", "_locked")

    def __init__(self, resident: dict[ExpertKey, int], locked: set[ExpertKey]):
        self._resident = resident
        self._locked = locked

    def __contains__(self, key: object) -> bool:
        return key in self._resident and key not in self._locked

    def __iter__(self):
        return (k for k in self._resident if k not in self._locked)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, i: int) -> ExpertKey:
        if i != 0:
            return list(self)[i]
        return next(iter(self))


class ExpertCache:
    def __init__(self, n_slots: int, expert_bytes: int, mover: Any = None):
        if n_slots <= 0:
            raise UserError("the cache budget holds no expert at all.")
        self.n_slots = n_slots
        self.expert_bytes = expert_bytes
        self.budget_bytes = n_slots * expert_bytes
        self.mover = mover
        self.slot_of: dict[ExpertKey, int] = {}
        self.key_of: dict[int, ExpertKey] = {}
        self.ticket: dict[ExpertKey, Any] = {}
        self.prefetched: set[ExpertKey] = set()   # resident by prefetch, not yet used
        self.low: dict[ExpertKey, int] = {}       # resident as a low-precision copy: its bits
        self.free = list(range(n_slots - 1, -1, -1))
        self.peak_resident = 0

    # -- queries -----------------------------------------------------------------------------
    def is_resident(self, key: ExpertKey) -> bool:
        return key in self.slot_of

    @property
    def resident_bytes(self) -> int:
        return len(self.slot_of) * self.expert_bytes

    def resident(self) -> list[ExpertKey]:
        return list(self.slot_of)

    # -- mutation ----------------------------------------------------------------------------
    def insert(self, key: ExpertKey, locked: set[ExpertKey],
               victim: Callable[[int, list[ExpertKey]], ExpertKey],
               on_evict: Callable[[ExpertKey, bool], None]) -> int | None:
        """A slot for `key`, evicting the strategy's victim if none is free (`on_evict(victim,
        was_an_unused_prefetch)` after it is gone); None if every resident expert is locked."""
        if not self.free:
            if len(locked) >= len(self.slot_of) and all(k in locked for k in self.slot_of):
                return None
            v = victim(key[0], Candidates(self.slot_of, locked))
            if v not in self.slot_of or v in locked:
                raise RuntimeError(f"strategy chose an invalid victim {v}")
            on_evict(v, self.evict(v))
        slot = self.free.pop()
        self.slot_of[key] = slot
        self.key_of[slot] = key
        self.peak_resident = max(self.peak_resident, len(self.slot_of))
        assert self.resident_bytes <= self.budget_bytes
        return slot

    def evict(self, key: ExpertKey) -> bool:
        """Free `key`'s slot; True if it was a prefetch never used (its copy was wasted)."""
        slot = self.slot_of.pop(key)
        del self.key_of[slot]
        self.ticket.pop(key, None)
        self.low.pop(key, None)
        unused = key in self.prefetched
        self.prefetched.discard(key)
        self.free.append(slot)
        return unused

    def clear(self) -> None:
        for key in list(self.slot_of):
            self.evict(key)


def access_hook(strategy: Any) -> Callable[[ExpertKey, bool], None]:
    """What to call per executed expert: `strategy.on_access`, or its policy's when the strategy
    keeps the base method, which only hands it on (`delegates_to_policy`): one call less per
    expert of every layer."""
    f = strategy.on_access
    return strategy.policy.on_access if marked(f, "delegates_to_policy") else f


class SlotScheduler:
    """Runs the per-layer residency protocol against a timeline and a strategy."""

    def __init__(self, cache: ExpertCache, timeline: Any, strategy: Any):
        self.cache = cache
        self.timeline = timeline
        self.strategy = strategy
        self.prefetch_issued = 0
        self.prefetch_used = 0
        self.wasted_bytes = 0
        self.low_bytes: dict[int, int] = {}       # bits -> bytes of one low-precision copy
        # per MoE layer: prefetches issued, used, and bytes evicted or dropped before any use
        self.layer_counts: dict[int, dict[str, int]] = {}

    def _count(self, layer: int, name: str, n: int = 1) -> None:
        d = self.layer_counts.setdefault(layer, {"issued": 0, "used": 0, "wasted_bytes": 0})
        d[name] += n

    def _copy(self, key: ExpertKey, slot: int, bits: int | None = None) -> Any:
        """Copy `key` into `slot`: the full expert, or (`bits`) its low-precision version, which
        the mover dequantises into the slot (`low_bytes` bytes cross the link)."""
        mover = self.cache.mover
        if bits is None:
            do = (lambda: mover.load(key, slot)) if mover is not None else None
            nbytes = self.cache.expert_bytes
            self.cache.low.pop(key, None)
        else:
            do = (lambda: mover.load_low(key, slot, bits)) if mover is not None else None
            nbytes = self.low_bytes[bits]
            self.cache.low[key] = bits
        t = self.timeline.copy(nbytes, do)
        self.cache.ticket[key] = t
        return t

    def refresh(self, key: ExpertKey) -> int:
        """Copy the full-precision version over a resident low-precision one, off the critical
        path (the slot is busy until it lands: a later access waits for it). Returns bytes."""
        self._copy(key, self.cache.slot_of[key])
        return self.cache.expert_bytes

    def insert(self, key: ExpertKey, locked: set[ExpertKey]) -> int | None:
        def on_evict(k: ExpertKey, unused_prefetch: bool) -> None:
            if unused_prefetch:
                self.wasted_bytes += self.cache.expert_bytes
                self._count(k[0], "wasted_bytes", self.cache.expert_bytes)
            self.strategy.on_evict(k)

        slot = self.cache.insert(key, locked, self.strategy.victim, on_evict)
        if slot is not None:
            self.strategy.on_insert(key)
        return slot

    def prefetch(self, requests: Sequence[Any], locked: set[ExpertKey]) -> tuple[int, int]:
        """Issue copies for predicted experts not yet resident. (bytes, dropped)."""
        nbytes = dropped = 0
        for req in requests:
            for e in req.experts:
                key = (req.layer, int(e))
                if self.cache.is_resident(key):
                    continue
                slot = self.insert(key, locked | {key})
                if slot is None:
                    dropped += 1
                    continue
                self._copy(key, slot)
                self.cache.prefetched.add(key)
                self.prefetch_issued += 1
                self._count(req.layer, "issued")
                nbytes += self.cache.expert_bytes
                locked = locked | {key}
        return nbytes, dropped

    def prepare(self, layer: int, experts: Sequence[int], prefetches: Sequence[Any] = (),
                pre_locked: set[ExpertKey] | None = None, defer_waits: bool = False,
                low: dict[int, int] | None = None, coalesce: bool = False) -> LayerOutcome:
        """Residency for `experts`; waits for every copy unless `defer_waits` (expert-granular
        waits: the caller waits per expert, `LayerOutcome.pending`). A missed expert in `low`
        (expert -> bits) is copied as its low-precision version. `coalesce`: the misses cross
        the link as one transfer (one latency, their bytes together; a whole-layer prefill copy)."""
        low = low or {}
        keys = [(layer, int(e)) for e in experts]
        if len(keys) > self.cache.n_slots:
            raise UserError(
                f"the cache budget holds {self.cache.n_slots} experts, but layer {layer} needs "
                f"{len(keys)} at once (prefill touches many experts); raise --cache-budget.")
        slots: dict[int, int] = {}
        out = LayerOutcome(slots)
        locked: set[ExpertKey] | None = None      # the layer's experts (+ pre_locked), when needed
        waits: list[tuple[int, Any, bool]] = []   # (expert, ticket, late: a prefetch in flight)
        group: list[tuple[ExpertKey, int]] = []   # coalesced misses: (key, slot)
        cache, timeline = self.cache, self.timeline
        slot_of, tickets, prefetched = cache.slot_of, cache.ticket, cache.prefetched
        on_access = access_hook(self.strategy)
        for key in keys:
            slot = slot_of.get(key)
            if slot is not None:                  # resident
                t = tickets.get(key) if tickets else None
                if prefetched and key in prefetched:
                    self.prefetch_used += 1
                    self._count(layer, "used")
                    prefetched.discard(key)
                if t is None or timeline.ready(t):
                    out.hits += 1
                    on_access(key, True)
                else:
                    out.late += 1
                    waits.append((key[1], t, True))
                    on_access(key, False)
            else:
                if locked is None:
                    locked = set(keys) | pre_locked if pre_locked else set(keys)
                slot = self.insert(key, locked)
                if slot is None:  # cannot happen: len(keys) <= n_slots and only keys are locked
                    raise RuntimeError("no slot for a demanded expert")
                bits = low.get(key[1])
                if coalesce and bits is None:
                    group.append((key, slot))
                else:
                    waits.append((key[1], self._copy(key, slot, bits), False))
                out.misses += 1
                out.demand_bytes += cache.expert_bytes if bits is None else self.low_bytes[bits]
                on_access(key, False)
            slots[key[1]] = slot        # final: nothing evicts a locked expert of this layer
        if group:
            mover = cache.mover
            do = (lambda: [mover.load(k, s) for k, s in group]) if mover is not None else None
            t = timeline.copy(len(group) * cache.expert_bytes, do)
            for k, _ in group:
                cache.low.pop(k, None)
                tickets[k] = t
            waits.append((group[0][0][1], t, False))
        if prefetches:
            if locked is None:
                locked = set(keys) | pre_locked if pre_locked else set(keys)
            out.prefetch_bytes, out.dropped_prefetches = self.prefetch(prefetches, locked)
        if defer_waits:       # late prefetches were issued before this layer's misses: first
            out.pending = [w for w in waits if w[2]] + [w for w in waits if not w[2]]
        elif waits:
            for _, t, late in waits:
                out.stall_s += timeline.wait(t, late=late)
        if tickets:           # waited for (or handed to the caller, `pending`)
            for key in keys:
                tickets.pop(key, None)
        return out

    def release(self, layer: int, experts: Sequence[int]) -> None:
        """Drop a layer's experts after use (strategies that keep nothing across layers)."""
        for e in experts:
            key = (layer, int(e))
            if self.cache.is_resident(key):
                if key in self.cache.prefetched:   # prefetched, dropped unused: wasted
                    self.wasted_bytes += self.cache.expert_bytes
                    self._count(layer, "wasted_bytes", self.cache.expert_bytes)
                self.cache.evict(key)
                self.strategy.on_evict(key)
