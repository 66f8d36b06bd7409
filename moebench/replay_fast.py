"""Fast hit-rate-only replays of LRU (per-layer and global) and Belady's MIN.

No clock, no prefetch: only "was each activation resident when its layer ran". Each function
gives exactly the hits of the general replay (`moebench.replay`, the live engine's
`ExpertCache` + `SlotScheduler` + policy objects) on the same schedule: tests/test_replay.py
checks it access for access. They are plain Python/numpy (no compiler), fast because they drop
everything a hit rate does not need:

- **Groups.** A group is one MoE layer of one step: its experts are locked while it runs, so
  its misses evict only *other* experts, and the hits of a group depend only on the cache state
  before it. Keys are ints `layer * E + expert`.
- **Per-layer LRU** (`LRUPolicy(scope="layer")`). Invariant: every layer's residents are its
  `c_l` most recently used experts (every eviction takes some layer's least recent one). So once
  the cache is full with every layer at its quota `q_l` (it stays so while no group needs more
  than `q_l` experts), a key hits iff its last use is among the `q_l` most recent of its layer:
  one `np.partition` over the `[L, E]` last-use matrix per step, for all layers at once. Until
  then (cold start, prefills) an exact dict simulation of the policy runs, quotas and the
  "evict from the layer over quota whose LRU expert is oldest" rule included.
- **Global LRU.** One ordered dict; per group, hits move to the end, misses evict the front.
- **Belady** (global MIN, ties to the larger key). The next use of every access comes from one
  stable sort of the keys; a lazy max-heap of `next_use * K + key` picks victims (an entry is
  valid while its key is resident with that next use; the heap is rebuilt when stale entries
  pile up). A resident key's priority is the next use after its last access, which is its next
  use at eviction time, because nothing accessed it in between.

    seq = group_sequence(trace, schedule, num_experts)
    hits = lru_layer_hits(seq, n_slots)          # [G] hits per group
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from moebench.errors import UserError


@dataclass(frozen=True)
class GroupSeq:
    """Groups in execution order, CSR: group g's keys are `keys[offsets[g]:offsets[g + 1]]`."""

    keys: np.ndarray        # [N] int64, layer * E + expert
    offsets: np.ndarray     # [G + 1]
    layer: np.ndarray       # [G] MoE layer of each group
    counted: np.ndarray     # [G] bool: a measured decode group (its hits count)
    dense: np.ndarray | None  # [T, L, k] expert ids of regular steps (-1 padding), or None
    regular: np.ndarray     # [T] bool: step t is a plain decode-width step (in `dense`)
    num_experts: int
    moe_layers: int

    @property
    def n_groups(self) -> int:
        return int(self.layer.shape[0])

    def max_group(self) -> int:
        return int(np.diff(self.offsets).max()) if self.n_groups else 0


def group_sequence(trace, schedule, num_experts: int) -> GroupSeq:
    """The schedule's groups (warm-up included, uncounted) as a `GroupSeq`."""
    L, E = trace.moe_layers, num_experts
    steps = np.array([s for s, _, _ in schedule.steps], dtype=np.int64)
    counted_step = np.array([c for _, _, c in schedule.steps], dtype=bool)
    X = trace.experts[steps]                                        # [T, L, k]
    irregular = {s for (s, _) in trace.prefill_used}
    regular = np.array([int(s) not in irregular for s in steps], dtype=bool)
    base = (np.arange(L, dtype=np.int64) * E)[None, :, None]       # [1, L, 1]
    if regular.all():
        valid = X >= 0
        keys = (X.astype(np.int64) + base)[valid]
        lengths = valid.sum(-1).reshape(-1)
    else:
        parts, lengths = [], []
        for s in steps.tolist():
            for m in range(L):
                ids = trace.executed(s, m)
                parts.append(np.asarray(ids, dtype=np.int64) + m * E)
                lengths.append(len(ids))
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        lengths = np.asarray(lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    layer = np.tile(np.arange(L), len(steps))
    counted = np.repeat(counted_step, L)
    return GroupSeq(keys, offsets, layer, counted, X, regular, E, L)


def _check(seq: GroupSeq, n_slots: int) -> None:
    if seq.max_group() > n_slots:
        raise UserError(f"the cache budget holds {n_slots} experts, but a layer needs "
                        f"{seq.max_group()} at once; raise the budget.")


# ----------------------------------------------------------------------------------------------
# global LRU
# ----------------------------------------------------------------------------------------------
def lru_global_hits(seq: GroupSeq, n_slots: int) -> np.ndarray:
    _check(seq, n_slots)
    kl, off = seq.keys.tolist(), seq.offsets.tolist()
    hits = np.zeros(seq.n_groups, dtype=np.int64)
    od: OrderedDict[int, None] = OrderedDict()
    move, pop = od.move_to_end, od.popitem
    for g in range(seq.n_groups):
        S = kl[off[g]:off[g + 1]]
        h = 0
        miss = []
        for x in S:
            if x in od:
                move(x)
                h += 1
            else:
                miss.append(x)
        for x in miss:
            if len(od) >= n_slots:
                pop(last=False)        # the front is never locked: the group's hits moved away
            od[x] = None
        if h and miss:                 # recency among the group's keys is their loop order
            for x in S:
                move(x)
        hits[g] = h
    return hits


# ----------------------------------------------------------------------------------------------
# per-layer LRU (LRUPolicy scope="layer")
# ----------------------------------------------------------------------------------------------
def _quotas(n_slots: int, L: int) -> list[int]:
    base, extra = divmod(n_slots, max(1, L))
    return [base + (1 if m < extra else 0) for m in range(L)]


def lru_layer_hits(seq: GroupSeq, n_slots: int) -> np.ndarray:
    _check(seq, n_slots)
    L, E = seq.moe_layers, seq.num_experts
    q = _quotas(n_slots, L)
    kl, off = seq.keys.tolist(), seq.offsets.tolist()
    hits = np.zeros(seq.n_groups, dtype=np.int64)
    ods: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(L)]
    cnt = [0] * L
    over: set[int] = set()
    free = n_slots
    ts = 0
    T = seq.n_groups // L
    k_max = seq.dense.shape[2] if seq.dense is not None else 0
    fits = k_max <= min(q)
    t = 0
    while t < T:
        steady = free == 0 and not over and all(c == qq for c, qq in zip(cnt, q))
        if steady and fits and seq.regular[t]:
            end = t
            while end < T and seq.regular[end]:
                end += 1
            ts = _lru_layer_block(seq, t, end, q, ods, hits, ts)
            t = end
            continue
        for g in range(t * L, (t + 1) * L):
            m = int(seq.layer[g])
            od = ods[m]
            S = kl[off[g]:off[g + 1]]
            h = 0
            miss = []
            for x in S:
                if x in od:
                    od.move_to_end(x)
                    h += 1
                else:
                    miss.append(x)
            inserted = 0
            for x in miss:
                if free > 0:
                    free -= 1
                else:
                    own = len(od) - h - inserted > 0     # an unlocked expert of this layer
                    if cnt[m] >= q[m] and own:
                        v = m                            # its own least recent
                    else:                                # the oldest of a layer over quota,
                        pool = [l2 for l2 in over if l2 != m] or \
                            [l2 for l2 in range(L) if ods[l2] and (l2 != m or own)]  # else of all
                        v = min(pool, key=lambda l2: next(iter(ods[l2].values())))
                    ods[v].popitem(last=False)
                    cnt[v] -= 1
                    if cnt[v] <= q[v]:
                        over.discard(v)
                od[x] = 0
                inserted += 1
                cnt[m] += 1
                if cnt[m] > q[m]:
                    over.add(m)
            for x in S:
                od.move_to_end(x)
                od[x] = ts
                ts += 1
            hits[g] = h
        t += 1
    return hits


def _lru_layer_block(seq: GroupSeq, t0: int, t1: int, q: list[int], ods: list, hits: np.ndarray,
                     ts: int) -> int:
    """Steps [t0, t1) in the steady state: hit iff last use is among the layer's q_l latest."""
    L, E = seq.moe_layers, seq.num_experts
    last = np.full((L, E + 1), -1, dtype=np.int64)     # column E: padding, always -1
    for m, od in enumerate(ods):
        if od:
            ids = np.fromiter(od.keys(), dtype=np.int64, count=len(od)) - m * E
            last[m, ids] = np.fromiter(od.values(), dtype=np.int64, count=len(od))
    X = seq.dense                                     # [T, L, k]
    k = X.shape[2]
    rows = np.arange(L)[:, None]                      # [L, 1]
    qa = np.asarray(q)
    kth = sorted({E - qq for qq in q})
    pick = E - qa                                     # [L] index of the q_l-th largest
    stamp = np.arange(L * k, dtype=np.int64).reshape(L, k)
    for t in range(t0, t1):
        ids = X[t].astype(np.int64)                   # [L, k]
        pad = ids < 0
        ids[pad] = E
        prev = last[rows, ids]                        # [L, k]
        thr = np.partition(last[:, :E], kth, axis=1)[np.arange(L), pick]   # [L]
        h = (prev >= thr[:, None]) & (prev >= 0)
        hits[t * L:(t + 1) * L] = h.sum(1)
        last[rows, ids] = ts + stamp
        last[:, E] = -1
        ts += L * k
    for m in range(L):                                # hand the state back to the exact sim
        row = last[m, :E]
        live = np.flatnonzero(row >= 0)
        top = live[np.argsort(row[live])][-q[m]:]
        ods[m] = OrderedDict((int(e) + m * E, int(row[e])) for e in top)
    return ts


# ----------------------------------------------------------------------------------------------
# Belady's MIN (global)
# ----------------------------------------------------------------------------------------------
def next_use(seq: GroupSeq) -> np.ndarray:
    """[N] the group of each access's key's next access (`n_groups` when none)."""
    G = seq.n_groups
    grp = np.repeat(np.arange(G, dtype=np.int64), np.diff(seq.offsets))
    keys = seq.keys.astype(np.int16 if seq.num_experts * seq.moe_layers < 2**15 else np.int64)
    order = np.argsort(keys, kind="stable")           # radix sort for 16-bit keys
    ks, gs = keys[order], grp[order]
    nxt_sorted = np.full(len(order), G, dtype=np.int64)
    same = ks[1:] == ks[:-1]
    nxt_sorted[:-1][same] = gs[1:][same]
    nxt = np.empty_like(nxt_sorted)
    nxt[order] = nxt_sorted
    return nxt


def belady_hits(seq: GroupSeq, n_slots: int) -> np.ndarray:
    _check(seq, n_slots)
    K = seq.num_experts * seq.moe_layers
    kl, off = seq.keys.tolist(), seq.offsets.tolist()
    nl = next_use(seq).tolist()
    hits = np.zeros(seq.n_groups, dtype=np.int64)
    resident = bytearray(K)
    n_res = 0
    nu = [-1] * K
    heap: list[int] = []
    push, pop = heapq.heappush, heapq.heappop
    limit = 4 * n_slots + 64
    for g in range(seq.n_groups):
        a, b = off[g], off[g + 1]
        h = 0
        miss = []
        for x in kl[a:b]:
            if resident[x]:
                h += 1
            else:
                miss.append(x)
        for x in miss:
            if n_res >= n_slots:
                while True:                       # max (next use, key), lazily validated
                    p = -pop(heap)
                    v = p % K
                    if resident[v] and nu[v] == p // K:
                        break
                resident[v] = 0
                n_res -= 1
            resident[x] = 1
            n_res += 1
        for i in range(a, b):
            x, n = kl[i], nl[i]
            nu[x] = n
            push(heap, -(n * K + x))
        if len(heap) > limit:
            heap = [-(nu[x] * K + x) for x in range(K) if resident[x]]
            heapq.heapify(heap)
        hits[g] = h
    return hits


FAST = {"lru": lru_layer_hits, "lru-layer": lru_layer_hits, "lru-global": lru_global_hits,
        "belady": belady_hits}


def fast_hit_rates(seq: GroupSeq, policy: str, n_slots: int) -> dict:
    """`{"hits", "activations", "hit_rate", "layer_hits", "layer_acts"}` over counted groups."""
    hits = FAST[policy](seq, n_slots)
    acts = np.diff(seq.offsets)
    c = seq.counted
    L = seq.moe_layers
    layer_hits = np.bincount(seq.layer[c], weights=hits[c], minlength=L).astype(np.int64)
    layer_acts = np.bincount(seq.layer[c], weights=acts[c], minlength=L).astype(np.int64)
    H, A = int(layer_hits.sum()), int(layer_acts.sum())
    return {"hits": H, "activations": A, "hit_rate": H / A if A else None,
            "layer_hits": layer_hits.tolist(), "layer_acts": layer_acts.tolist()}
