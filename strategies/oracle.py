"""`oracle`: perfect knowledge of the routing; the lossless bound on TPOT at a given budget and
bandwidth, live (`moebench run`) and in replay alike. Lossless.

The routing comes from the run's trace (`ctx.trace`, a `RoutingTrace` in execution order, the
warm-up included): live, a `sync` pass over the same workload (lossless, so exactly the routing
this run sees; a mismatch is logged and planning stops); in replay, the trace replayed.

**Algorithm: Belady's schedule, each copy issued as early as it can be.**
1. Plan. From the cache's real contents at the first position, simulate Belady's MIN with demand
   fetches over the rest of the trace (the `belady` policy, exactly: same locking, same victims).
   That yields its fetches in need order: `(key, needed at t, victim v, v's last use before t)`.
   The experts it fetches into free slots are loaded before timing, as `pin` and
   `all-resident` load theirs.
2. Issue. Before each layer's attention (position h), issue the planned fetches in need order
   while the next one's victim is no longer needed before its eviction (its last use `< h`);
   the cache evicts exactly the planned victim.

Why it is a bound: the cache holds, at every position, what Belady's holds, except that each
incoming expert replaces its victim earlier — only once the victim has had its last use before
Belady would evict it, so no access that hits under Belady misses here. The copies are Belady's
copies, in the same (need) order on the one copy engine, each issued no later than Belady's
demand fetch, so by induction each completes no later, every wait is no longer, and the compute
is the same (same experts, the router charged, no predictor cost). Hence hit rate >= Belady's and
every step ends no later than under Belady; Belady's MIN has the fewest misses of any demand-fetch
policy on every prefix of the trace, and a demand-fetch run's time is its compute plus one copy
per miss, so every step also ends no later than under any lossless demand-fetch strategy. (Per
request, with several requests, a TPOT is a difference of two such times and is not bounded by
this argument; with one request it is.) tests/core/test_oracle.py checks the bound on
random traces at tight budgets with hypothesis, and the live tests check it against every
lossless strategy on the tiny presets.

`max_lookahead` (default 0: unlimited) caps how many trace positions ahead of its need a copy may
be issued.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from moebench.errors import UserError
from moebench.offload.cache import Candidates
from moebench.strategy import (BeladyPolicy, CachePolicy, ExpertKey, LayerEvent, Prefetch, Routing,
                               Strategy, StrategyContext)

log = logging.getLogger("moebench")


@dataclass(frozen=True)
class OracleParams:
    max_lookahead: int = 0

    def validate(self, where: str) -> None:
        if self.max_lookahead < 0:
            raise UserError(f"{where}.max_lookahead must not be negative (0 means unlimited).")


@dataclass(frozen=True)
class Fetch:
    key: ExpertKey
    need: int                      # the position that executes it
    victim: ExpertKey | None       # None: a free slot
    after: int                     # the victim's last use before `need` (-1: none)


def belady_fetches(trace: Any, t0: int, resident: list[ExpertKey], n_slots: int) -> list[Fetch]:
    """Belady's MIN with demand fetches from position `t0` on, starting from `resident`: its
    fetches in need order. The same decisions the engine makes for the `belady` policy (locked
    layer, victims from `BeladyPolicy`, on_* calls in the engine's order)."""
    pol = BeladyPolicy(trace.next_use)
    pol.now = t0
    res: dict[ExpertKey, None] = {}
    last: dict[ExpertKey, int] = {}
    for k in resident:
        res[k] = None
        pol.on_insert(k)
    out: list[Fetch] = []
    for t in range(t0, len(trace)):
        layer = trace.positions[t][2]
        keys = [(layer, e) for e in trace.demand[t]]
        if len(keys) > n_slots:
            raise UserError(f"the cache budget holds {n_slots} experts, but layer {layer} needs "
                            f"{len(keys)} at once (prefill touches many experts); raise --cache-budget.")
        locked = set(keys)
        pol.now = t
        for key in keys:
            if key not in res:
                victim = None
                if len(res) >= n_slots:
                    victim = pol.victim(layer, Candidates(res, locked))
                    del res[victim]
                    pol.on_evict(victim)
                res[key] = None
                pol.on_insert(key)
                out.append(Fetch(key, t, victim, last.get(victim, -1) if victim else -1))
            pol.on_access(key)
            last[key] = t
    return out


class OracleStrategy(Strategy):
    name: ClassVar[str] = "oracle"
    version: ClassVar[int] = 2         # 2: Belady's schedule issued early (1 was not a bound)
    lossless: ClassVar[bool] = True
    reads: ClassVar[frozenset[str]] = frozenset({"routing", "trace"})
    needs: ClassVar[tuple[str, ...]] = ("trace",)
    scores_predictions: ClassVar[bool] = False   # its prefetches are plans, not guesses
    batching: ClassVar[str] = ('plans from the recorded routing of the batch (the union per '
                               'layer): still the lossless bound at any batch size')
    source: ClassVar[str] = ("perfect routing knowledge: Belady's MIN schedule with every copy "
                             "issued at the earliest safe point (the lossless bound)")
    Params: ClassVar[type] = OracleParams

    def setup(self, ctx: StrategyContext) -> None:
        if ctx.trace is None:
            raise UserError("the oracle needs the recorded routing of this workload, and none was given.")
        self.trace = ctx.trace
        self.resident: dict[ExpertKey, None] = {}
        self.plan: list[Fetch] | None = None
        self.next = 0                          # the next planned fetch to issue
        self.victims: deque[ExpertKey] = deque()
        self.diverged = False
        super().setup(ctx)

    def make_policy(self, ctx: StrategyContext) -> CachePolicy:
        return BeladyPolicy(ctx.trace.next_use)   # the fallback once the routing has diverged

    # -- bookkeeping: the plan is checked against the cache's real contents ------------------
    def on_insert(self, key: ExpertKey) -> None:
        self.resident[key] = None
        self.policy.on_insert(key)

    def on_evict(self, key: ExpertKey) -> None:
        self.resident.pop(key, None)
        self.policy.on_evict(key)

    def initial_residents(self, n_slots: int) -> list[ExpertKey]:
        """Like `pin` and `all-resident`, the oracle may fill the cache before timing: with the
        first experts Belady's schedule fetches into free slots (it would fetch them anyway)."""
        if len(self.trace) == 0:
            return []
        self.plan = belady_fetches(self.trace, 0, list(self.resident), n_slots)
        while self.next < len(self.plan) and self.plan[self.next].victim is None:
            self.next += 1
        return [f.key for f in self.plan[:self.next]]

    # -- decisions ---------------------------------------------------------------------------
    def before_attention(self, ev: LayerEvent, h: Any) -> list[Prefetch]:
        t = self.trace.position(ev.request, ev.step, ev.layer)
        self.victims.clear()
        if t is None or self.diverged:
            return []
        self.policy.now = t
        if self.plan is None:
            self.plan = belady_fetches(self.trace, t, list(self.resident), self.ctx.n_slots)
        out: list[Prefetch] = []
        plan, cap = self.plan, self.params.max_lookahead
        while self.next < len(plan):
            f = plan[self.next]
            if f.after >= t or (cap and f.need - t > cap):
                break
            if f.key in self.resident or (f.victim is not None and f.victim not in self.resident):
                self._diverge(ev, "the cache no longer matches the plan")
                break
            if f.victim is not None:
                self.victims.append(f.victim)
            out.append(Prefetch(f.key[0], (f.key[1],), source="oracle"))
            self.next += 1
        return out

    def victim(self, layer: int, candidates: Any) -> ExpertKey:
        if self.victims:
            v = self.victims.popleft()
            if v in candidates:
                return v
            self._diverge(None, f"a planned victim {v} is not evictable")
        return self.policy.victim(layer, candidates)

    def choose(self, ev: LayerEvent, true: Routing, s: Any, u: Any) -> Routing:
        t = self.trace.position(ev.request, ev.step, ev.layer)
        self.policy.now = t if t is not None else self.policy.now
        if t is not None and set(true.experts()) != set(self.trace.demand[t]):
            self._diverge(ev, "the routing differs from the recorded trace")
        return true

    def _diverge(self, ev: LayerEvent | None, why: str) -> None:
        if not self.diverged:
            where = (ev.request, ev.step, ev.layer) if ev is not None else "a prefetch"
            log.warning("oracle: %s at %s; it stays lossless (Belady eviction, demand fetches) but "
                        "is no longer a bound", why, where)
        self.diverged = True
        self.victims.clear()
