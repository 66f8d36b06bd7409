"""`oracle`: perfect knowledge of the routing, the lower bound on TPOT for lossless strategies at
a given budget and bandwidth. Lossless.

The routing comes from a recorded trace of the *same* workload (`calibration.recorded_trace`: a
`sync` pass, lossless, so it is exactly the routing this run will see; a mismatch is logged).
The trace is read as a sequence of positions `t = (request, step, layer)` in execution order,
each with the set of experts it runs (all tokens of the step).

- **Eviction**: Belady's MIN (`BeladyPolicy`): the resident expert whose next use is furthest
  in the future (never used again first).
- **Prefetch**: at both hook points of every layer (before its attention, and after its routing
  once its own demand is resident) it walks the future in need order and issues every copy that
  is feasible: a free slot, or a victim whose next use is strictly later than the expert being
  fetched. It never evicts an expert needed sooner than the one it fetches, and it stops at the
  first infeasible expert (feasibility is monotone in need order), so the copy engine's FIFO
  queue is always sorted by need and a copy never waits behind one needed later.
- It charges the true router like every lossless strategy and no predictor compute.

Why it bounds the lossless strategies here: they all execute the same experts on the same
compute stream (so the same compute, plus whatever their predictor costs); the oracle starts
every copy at the earliest hook point where the budget allows it, in need order, and its Belady
evictions keep the experts needed soonest. The tests check `oracle <= every lossless strategy`
at several budgets on both tiny presets; results show every strategy's distance from it.

`max_lookahead` (default 0: unlimited) caps how many trace positions ahead it plans. During the
untimed warm-up (not in the trace) it only fetches on demand.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from moebench.engine.policies import BeladyPolicy
from moebench.errors import UserError
from moebench.strategy import ExpertKey, LayerEvent, Prefetch, Routing, Strategy, StrategyContext

log = logging.getLogger("moebench")


@dataclass(frozen=True)
class OracleParams:
    max_lookahead: int = 0

    def validate(self, where: str) -> None:
        if self.max_lookahead < 0:
            raise UserError(f"{where}.max_lookahead must not be negative (0 means unlimited).")


class OracleStrategy(Strategy):
    name: ClassVar[str] = "oracle"
    version: ClassVar[int] = 1
    lossless: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("trace",)
    scores_predictions: ClassVar[bool] = False   # its prefetches plan steps ahead: not scored
    source: ClassVar[str] = "perfect routing knowledge, Belady MIN eviction, earliest feasible prefetch"
    Params: ClassVar[type] = OracleParams

    def setup(self, ctx: StrategyContext) -> None:
        if ctx.trace is None:
            raise UserError("the oracle needs the recorded routing of this workload, and none was given.")
        self.trace = ctx.trace
        self.now: float = -1.0
        self.resident: set[ExpertKey] = set()
        self.mismatches = 0
        self.policy = BeladyPolicy(lambda key: self.trace.next_use(key, self.now))
        super().setup(ctx)

    # -- bookkeeping: the oracle plans against the cache's real contents ---------------------
    def on_insert(self, key: ExpertKey) -> None:
        self.resident.add(key)

    def on_evict(self, key: ExpertKey) -> None:
        self.resident.discard(key)

    def on_access(self, key: ExpertKey, hit: bool) -> None:
        pass

    # -- decisions ---------------------------------------------------------------------------
    def _position(self, ev: LayerEvent) -> int | None:
        t = self.trace.position(ev.request, ev.step, ev.layer)
        self.now = -1.0 if t is None else float(t)
        return t

    def before_attention(self, ev: LayerEvent, h: Any) -> list[Prefetch]:
        t = self._position(ev)
        return [] if t is None else self._plan(t, locked=set(), demand=[])

    def choose(self, ev: LayerEvent, true: Routing, s: Any, u: Any) -> Routing:
        t = self._position(ev)
        if t is not None and set(true.experts()) != set(self.trace.demand[t]):
            self.mismatches += 1
            if self.mismatches == 1:
                log.warning("oracle: the routing at %s differs from the recorded trace; the oracle "
                            "stays lossless but is no longer a bound", (ev.request, ev.step, ev.layer))
        return true

    def after_routing(self, ev: LayerEvent, executed: Routing, s: Any, u: Any) -> list[Prefetch]:
        t = self._position(ev)
        if t is None:
            return []
        keys = [(ev.layer, e) for e in executed.experts()]
        return self._plan(t, locked=set(keys), demand=keys)

    def _plan(self, t: int, *, locked: set[ExpertKey], demand: list[ExpertKey]) -> list[Prefetch]:
        """Every feasible prefetch from position t on, in need order (see the module docstring).

        Mirrors what the engine will do: demand misses are inserted first (each evicting the
        Belady victim), then the prefetches in list order."""
        trace = self.trace
        resident = set(self.resident)
        free = self.ctx.n_slots - len(resident)
        # Victims in eviction order: furthest next use first (what BeladyPolicy picks one by one).
        victims = sorted(((trace.next_use(k, t), k) for k in resident if k not in locked), reverse=True)
        vi = 0
        for key in demand:
            if key in resident:
                continue
            if free > 0:
                free -= 1
            elif vi < len(victims):
                resident.discard(victims[vi][1])
                vi += 1
            resident.add(key)
        out: list[Prefetch] = []
        seen: set[ExpertKey] = set()
        end = len(trace) if not self.params.max_lookahead else min(len(trace), t + self.params.max_lookahead)
        for t2 in range(t, end):
            layer = trace.positions[t2][2]
            new = []
            for e in trace.demand[t2]:
                key = (layer, e)
                if key in seen:
                    continue
                seen.add(key)
                if key in resident:
                    continue
                if free > 0:
                    free -= 1
                else:
                    if vi >= len(victims) or victims[vi][0] <= t2:
                        return self._emit(out, layer, new)
                    resident.discard(victims[vi][1])
                    vi += 1
                new.append(e)
                resident.add(key)
            self._emit(out, layer, new)
            if len(seen) >= self.ctx.n_slots:
                break   # the cache holds nothing needed later than what has been seen
        return out

    @staticmethod
    def _emit(out: list[Prefetch], layer: int, experts: list[int]) -> list[Prefetch]:
        if experts:
            out.append(Prefetch(layer, tuple(experts), source="oracle"))
        return out
