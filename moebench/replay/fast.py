"""Fast hit-rate-only replays of LRU (per-layer and global) and Belady's MIN.

No clock, no prefetch: only "was each activation resident when its layer ran". Each function
gives exactly the hits of the general replay (`moebench.replay.engine`, the live engine's
`ExpertCache` + `SlotScheduler` + policy objects) on the same schedule: tests/replay/test_replay.py
checks it access for access. Each policy has two implementations giving the same hits
(tests/replay/test_fast_speed_paths.py checks them against each other and the general replay on
random traces): compiled kernels (`moebench.replay.kernels`, numba, used when numba is
installed; `compiled=False` or `MOEBENCH_NO_NUMBA=1` turns them off) and plain Python/numpy (no
compiler), used without numba (`benchmarks/replay_speed.py` times either). Both beat the general
replay by far because they drop everything a hit rate does not need:

- **Groups.** A group is one MoE layer of one step: its experts are locked while it runs, so
  its misses evict only *other* experts, and the hits of a group depend only on the cache state
  before it. Keys are ints `layer * E + expert`; a `GroupSeq` holds the experts (`ids`, a view
  of the trace's array where the schedule is a run of plain decode steps) and the group layers,
  and builds the keys only for the plain paths.
- **Per-layer LRU** (`LRUPolicy(scope="layer")`). The policy itself: a recency list per layer,
  a last-use stamp per key, per-layer quotas `q_l` and the "evict from the layer over quota
  whose LRU expert is oldest" rule. The kernel runs it to the end (O(1) per access, O(L) for an
  eviction that must look across layers: cold start, prefills, quotas below k). The plain path runs it as dicts until the cache is steady, then uses the
  invariant that every layer's residents are its `c_l` most recently used experts (every
  eviction takes some layer's least recent one): once the cache is full with every layer at its
  quota (it stays so while no group needs more than `q_l` experts), a key hits iff fewer than
  `q_l` distinct experts of its layer were used since its last use (`_stack_hits`: bitset
  unions in a sparse table, a vectorised binary search, for all steps of a layer at once).
- **Global LRU.** One recency list (the kernel: a linked list over the keys; the plain path: an
  ordered dict); per group, hits move to the end, misses evict the front.
- **Belady** (global MIN, ties to the larger key). The next use of every access (the kernel: one
  backward pass; the plain path: one stable sort of the keys); a lazy max-heap of
  `next_use * K + key` picks victims (an entry is valid while its key is resident with that next
  use; the heap is rebuilt when stale entries pile up). A resident key's priority is the next use
  after its last access, which is its next use at eviction time, because nothing accessed it in
  between. An access whose key is used again within H groups gets no entry (see `belady_hits`).

    seq = group_sequence(trace, schedule, num_experts)
    hits = lru_layer_hits(seq, n_slots)          # [G] hits per group
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moebench.errors import UserError


@dataclass(frozen=True)
class GroupSeq:
    """Groups in execution order, CSR: group g's experts are `ids[offsets[g]:offsets[g + 1]]`
    (of layer `layer[g]`; its keys `keys[offsets[g]:offsets[g + 1]]`)."""

    ids: np.ndarray         # [N] int32 expert id of each access (may be a view of the trace)
    offsets: np.ndarray     # [G + 1] int64
    layer: np.ndarray       # [G] MoE layer of each group
    counted: np.ndarray     # [G] bool: a measured decode group (its hits count)
    dense: np.ndarray | None  # [T, L, k] expert ids of regular steps (-1 padding), or None
    regular: np.ndarray     # [T] bool: step t is a plain decode-width step (in `dense`)
    num_experts: int
    moe_layers: int
    request: np.ndarray | None = None   # [T] request of each step (-1: the recorded warm-up)

    def segments(self) -> list[GroupSeq]:
        """One `GroupSeq` per run of steps of one request, in order (`--reset-per-request`: each
        starts with a cold cache, so each is replayed on its own)."""
        L = self.moe_layers
        T = self.n_groups // L if L else 0
        if self.request is None or T == 0:
            return [self]
        cuts = [0] + (np.flatnonzero(np.diff(self.request)) + 1).tolist() + [T]
        out = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            ga, gb = a * L, b * L
            k0 = int(self.offsets[ga])
            out.append(GroupSeq(self.ids[k0:int(self.offsets[gb])], self.offsets[ga:gb + 1] - k0,
                                self.layer[ga:gb], self.counted[ga:gb],
                                None if self.dense is None else self.dense[a:b], self.regular[a:b],
                                self.num_experts, L, self.request[a:b]))
        return out

    @property
    def n_groups(self) -> int:
        return int(self.layer.shape[0])

    @cached_property
    def keys(self) -> np.ndarray:
        """[N] int64 `layer * E + expert` of each access."""
        base = np.repeat(self.layer.astype(np.int64) * self.num_experts, np.diff(self.offsets))
        return self.ids.astype(np.int64) + base

    @cached_property
    def full(self) -> bool:
        """Every step a regular one of `dense`, with no padding (each group: one step's k)."""
        return (self.dense is not None and bool(self.regular.all())
                and (self.dense.size == 0 or int(self.dense.min()) >= 0))

    def max_group(self) -> int:
        if not self.n_groups:
            return 0
        if self.full:
            return int(self.dense.shape[2])
        return int(np.diff(self.offsets).max())


def group_sequence(trace, schedule, num_experts: int) -> GroupSeq:
    """The schedule's groups (warm-up included, uncounted) as a `GroupSeq`."""
    L, E = trace.moe_layers, num_experts
    steps = np.array([s for s, _, _ in schedule.steps], dtype=np.int64)
    counted_step = np.array([c for _, _, c in schedule.steps], dtype=bool)
    T = len(steps)
    if T and int(steps[-1]) - int(steps[0]) == T - 1 and bool((np.diff(steps) == 1).all()):
        X = trace.experts[int(steps[0]):int(steps[0]) + T]           # [T, L, k], a view
    else:
        X = trace.experts[steps]
    irregular = {s for (s, _) in trace.prefill_used}
    regular = np.array([int(s) not in irregular for s in steps], dtype=bool)
    k = X.shape[2]
    if regular.all() and (X.size == 0 or int(X.min()) >= 0):        # one step's k per group
        ids = X.reshape(-1).astype(np.int32, copy=False)
        offsets = np.arange(T * L + 1, dtype=np.int64)
        offsets *= k
    else:
        if regular.all():
            valid = X >= 0
            ids = X[valid].astype(np.int32, copy=False)
            lengths = valid.sum(-1).reshape(-1)
        else:
            parts, lengths = [], []
            for s in steps.tolist():
                for m in range(L):
                    used = trace.executed(s, m)
                    parts.append(np.asarray(used, dtype=np.int32))
                    lengths.append(len(used))
            ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
            lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    layer = np.tile(np.arange(L, dtype=np.int64), T)
    counted = np.repeat(counted_step, L)
    request = np.array([r for _, r, _ in schedule.steps], dtype=np.int64)
    return GroupSeq(ids, offsets, layer, counted, X, regular, E, L, request)


def _check(seq: GroupSeq, n_slots: int) -> None:
    if seq.max_group() > n_slots:
        raise UserError(f"the cache budget holds {n_slots} experts, but a layer needs "
                        f"{seq.max_group()} at once; raise the budget.")


def _kernels(compiled: bool | None):
    """`moebench.replay.kernels` when the compiled kernels are to run, else None. `compiled`:
    None = when numba is installed, True = required (an error without numba), False = never."""
    if compiled is False:
        return None
    from moebench.replay import kernels
    if kernels.available():
        return kernels
    if compiled:
        raise RuntimeError("the compiled replay kernels need numba (pip install numba)")
    return None


def compiled_available() -> bool:
    """Whether the compiled kernels (numba) are there: `compiled=None` then uses them."""
    return _kernels(None) is not None


# ----------------------------------------------------------------------------------------------
# global LRU
# ----------------------------------------------------------------------------------------------
def lru_global_hits(seq: GroupSeq, n_slots: int, compiled: bool | None = None) -> np.ndarray:
    _check(seq, n_slots)
    kern = _kernels(compiled)
    if kern is not None:
        return kern.lru_global(seq.ids, seq.offsets, seq.layer, seq.num_experts, seq.moe_layers,
                               n_slots)
    kl, off = seq.keys.tolist(), seq.offsets.tolist()
    hits = [0] * seq.n_groups
    od: OrderedDict[int, None] = OrderedDict()
    move, pop = od.move_to_end, od.popitem
    for g in range(seq.n_groups):
        S = kl[off[g]:off[g + 1]]
        miss = [x for x in S if x not in od]
        h = len(S) - len(miss)
        if h:
            for x in S:
                if x in od:
                    move(x)
        for x in miss:
            if len(od) >= n_slots:
                pop(last=False)        # the front is never locked: the group's hits moved away
            od[x] = None
        if h and miss:                 # recency among the group's keys is their loop order
            for x in S:
                move(x)
        hits[g] = h
    return np.asarray(hits, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# per-layer LRU (LRUPolicy scope="layer")
# ----------------------------------------------------------------------------------------------
def _quotas(n_slots: int, L: int) -> list[int]:
    base, extra = divmod(n_slots, max(1, L))
    return [base + (1 if m < extra else 0) for m in range(L)]


def lru_layer_hits(seq: GroupSeq, n_slots: int, compiled: bool | None = None) -> np.ndarray:
    _check(seq, n_slots)
    L = seq.moe_layers
    q = _quotas(n_slots, L)
    kern = _kernels(compiled)
    if kern is not None:
        return kern.lru_layer(seq.ids, seq.offsets, seq.layer, seq.num_experts,
                              np.asarray(q, dtype=np.int64), n_slots)
    vector = seq.full and seq.dense.shape[2] <= min(q)
    hits, t_steady = _lru_layer_exact(seq, n_slots, q, stop_when_steady=vector)
    if t_steady is not None:
        for m in range(L):
            X = np.ascontiguousarray(seq.dense[:, m, :])               # [T, k]
            h = _stack_hits(X, _prev_step(X, seq.num_experts), seq.num_experts, q[m])   # [T]
            hits[t_steady * L + m::L] = h[t_steady:]
    return hits


def _prev_step(X: np.ndarray, E: int) -> np.ndarray:
    """[T, k] the step where each access's expert was last used before (-1: first use)."""
    T, k = X.shape
    flat = X.reshape(-1).astype(np.int16 if E < 2**15 else np.int64)
    order = np.argsort(flat, kind="stable")           # radix sort for 16-bit ids
    same = flat[order[1:]] == flat[order[:-1]]
    prev_sorted = np.where(np.concatenate(([False], same)), np.concatenate(([0], order[:-1])) // k, -1)
    prev = np.empty(T * k, dtype=np.int64)
    prev[order] = prev_sorted
    return prev.reshape(T, k)


def _lru_layer_exact(seq: GroupSeq, n_slots: int, q: list[int], *, stop_when_steady: bool
                     ) -> tuple[np.ndarray, int | None]:
    """The policy itself, dict by dict. Returns (hits, the step where the cache became steady
    -- full, every layer at its quota -- when asked to stop there, else None)."""
    L = seq.moe_layers
    off = seq.offsets
    hits = np.zeros(seq.n_groups, dtype=np.int64)
    ods: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(L)]   # key -> last use
    cnt = [0] * L
    over: set[int] = set()
    free = n_slots
    for t in range(seq.n_groups // L):
        if stop_when_steady and free == 0 and not over and cnt == q:
            return hits, t
        base = int(off[t * L])                           # keys of this step only (lazy)
        kl = seq.keys[base:int(off[(t + 1) * L])].tolist()
        step_off = (off[t * L:(t + 1) * L + 1] - base).tolist()
        for g in range(t * L, (t + 1) * L):
            m = int(seq.layer[g])
            od = ods[m]
            i0 = step_off[g - t * L]
            a = base + i0
            S = kl[i0:step_off[g - t * L + 1]]
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
            for i, x in enumerate(S):                    # recency = loop order, stamped globally
                od.move_to_end(x)
                od[x] = a + i
            hits[g] = h
    return hits, None


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(-1)


def _bitsets(X: np.ndarray, E: int) -> np.ndarray:
    """Rows of expert ids [n, k] -> bitsets [n, W] uint64 (W = ceil(E / 64)); -1 is no expert."""
    n = X.shape[0]
    W = (E + 63) // 64
    onehot = np.zeros((n, W * 64 + 1), dtype=bool)
    onehot[np.arange(n)[:, None], np.where(X >= 0, X, W * 64)] = True
    packed = np.packbits(onehot[:, :W * 64], axis=1, bitorder="little")     # [n, 8W] uint8
    return np.ascontiguousarray(packed).view(np.uint64)


def _stack_hits(X: np.ndarray, prev_step: np.ndarray, E: int, q: int) -> np.ndarray:
    """Pure LRU of capacity `q` over one layer's steps `X [T, k]`, groups locked. An access hits
    iff fewer than `q` distinct experts were used after its previous use: in the steps between
    (`d(s, t)` = distinct experts of steps s..t-1, a popcount of bitsets OR-ed with a sparse
    table) and after it in its own step. With `s*(t)` the first s where d(s, t) < q (found by a
    vectorised binary search; d is monotone in s): previous use at step p >= s* hits, p < s* - 1
    misses, p = s* - 1 is decided exactly. `prev_step [T, k]` is -1 for a first use.
    Returns hits per step [T]."""
    T, k = X.shape
    M = _bitsets(X, E)                                                      # [T, W]
    W = M.shape[1]
    levels = [M]
    while (1 << len(levels)) <= T:
        s = 1 << (len(levels) - 1)
        prev = levels[-1]
        nxt = prev.copy()
        nxt[:T - s] |= prev[s:]
        levels.append(nxt)
    table = np.stack(levels)                                               # [LV, T, W]
    words = [np.ascontiguousarray(table[:, :, w]).reshape(-1) for w in range(W)]   # [LV * T]

    def union(lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:        # OR of steps lo..hi
        n = np.maximum(hi - lo + 1, 1)
        lv = np.frexp(n.astype(np.float64))[1] - 1                          # floor(log2 n)
        a, b = lv * T + lo, lv * T + np.maximum(hi - (1 << lv) + 1, lo)
        empty = hi < lo
        return [np.where(empty, np.uint64(0), np.take(wd, a) | np.take(wd, b)) for wd in words]

    def count(u: list[np.ndarray]) -> np.ndarray:
        c = _popcount(u[0])
        for x in u[1:]:
            c += _popcount(x)
        return c

    t = np.arange(T)
    lo, hi = np.zeros(T, dtype=np.int64), t.copy()                        # s* in [0, t]
    for _ in range(max(1, T.bit_length())):
        mid = (lo + hi) // 2
        ok = count(union(mid, t - 1)) < q
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid + 1)
    s_star = hi[:, None]                                                   # [T, 1]
    has = prev_step >= 0
    hit = has & (prev_step >= s_star)
    tb, jb = np.nonzero(has & (prev_step == s_star - 1))                    # the boundary
    if len(tb):
        p = prev_step[tb, jb]
        row = X[p]                                                         # [nb, k] step p
        pos = np.flatnonzero(row.reshape(-1) == X[tb, jb].repeat(k)) % k   # slot of x in step p
        tail = np.where(np.arange(k)[None, :] > pos[:, None], row, -1)
        U = union(p + 1, tb - 1)
        B = _bitsets(tail, E)                                              # [nb, W]
        D = count(U) + count([B[:, w] & ~U[w] for w in range(W)])
        hit[tb, jb] = D < q
    return hit.sum(1)


# ----------------------------------------------------------------------------------------------
# Belady's MIN (global)
# ----------------------------------------------------------------------------------------------
def _next_step(X: np.ndarray, E: int) -> np.ndarray:
    """[T, k] the step where each access's expert is used next (-1: never again)."""
    T, k = X.shape
    flat = X.reshape(-1).astype(np.int16 if E < 2**15 else np.int64)
    order = np.argsort(flat, kind="stable")
    same = flat[order[1:]] == flat[order[:-1]]
    nxt_sorted = np.where(np.concatenate((same, [False])), np.concatenate((order[1:], [0])) // k, -1)
    nxt = np.empty(T * k, dtype=np.int64)
    nxt[order] = nxt_sorted
    return nxt.reshape(T, k)


def next_use(seq: GroupSeq) -> np.ndarray:
    """[N] the group of each access's key's next access (`n_groups` when none)."""
    G, L = seq.n_groups, seq.moe_layers
    if seq.full:
        T, _, k = seq.dense.shape                     # layer by layer: small, cache-friendly sorts
        out = np.empty((T, L, k), dtype=np.int64)
        for m in range(L):
            ns = _next_step(np.ascontiguousarray(seq.dense[:, m, :]), seq.num_experts)
            out[:, m, :] = np.where(ns >= 0, ns * L + m, G)
        return out.reshape(-1)
    grp = np.repeat(np.arange(G, dtype=np.int64), np.diff(seq.offsets))
    keys = seq.keys.astype(np.int16 if seq.num_experts * L < 2**15 else np.int64)
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    nxt_sorted = np.where(np.concatenate((same, [False])), grp[np.concatenate((order[1:], [0]))], G)
    nxt = np.empty(len(order), dtype=np.int64)
    nxt[order] = nxt_sorted
    return nxt


def belady_hits(seq: GroupSeq, n_slots: int, compiled: bool | None = None) -> np.ndarray:
    _check(seq, n_slots)
    K = seq.num_experts * seq.moe_layers
    G = seq.n_groups
    # A key used again within H groups is never MIN's victim before that use when the cache
    # holds more than k * H other experts (some resident is needed later than it): such an
    # access gets no heap entry.
    kmax = seq.max_group()
    H = max(0, (n_slots - kmax - 1) // max(1, kmax))
    limit = 16 * n_slots + 1024
    kern = _kernels(compiled)
    if kern is not None:
        return kern.belady(seq.ids, seq.offsets, seq.layer, seq.num_experts, seq.moe_layers,
                           n_slots, H, limit)
    nxt = next_use(seq)                                             # [N] next group of each access
    sizes = np.diff(seq.offsets)
    grp = np.repeat(np.arange(G, dtype=np.int64), sizes)
    keep = (nxt - grp) > H
    entries = (-(nxt[keep] * K + seq.keys[keep])).tolist()           # max-heap of (next use, key)
    eoff = np.zeros(G + 1, dtype=np.int64)
    np.cumsum(np.bincount(grp[keep], minlength=G), out=eoff[1:])
    eoff = eoff.tolist()
    kl, off = seq.keys.tolist(), seq.offsets.tolist()
    hits = [0] * G
    res: set[int] = set()
    add, discard = res.add, res.discard
    heap: list[int] = []
    push, pop = heapq.heappush, heapq.heappop
    for g in range(G):
        a, b = off[g], off[g + 1]
        S = kl[a:b]
        h = len(res.intersection(S))
        hits[g] = h
        if h == b - a:
            for p in entries[eoff[g]:eoff[g + 1]]:
                push(heap, p)
            continue
        for x in [x for x in S if x not in res]:
            if len(res) >= n_slots:
                # An entry is live iff its next use is still ahead (an older entry of the key
                # points at a use that has happened) and the key is resident.
                while True:
                    p = -pop(heap)
                    v = p % K
                    if p // K > g and v in res:
                        break
                discard(v)
            add(x)
        for p in entries[eoff[g]:eoff[g + 1]]:
            push(heap, p)
        if len(heap) > limit:                     # drop entries that can no longer be live
            heap = [p for p in heap if (-p) // K > g and (-p) % K in res]
            heapq.heapify(heap)
    return np.asarray(hits, dtype=np.int64)


FAST = {"lru": lru_layer_hits, "lru-layer": lru_layer_hits, "lru-global": lru_global_hits,
        "belady": belady_hits}


def group_hits(seq: GroupSeq, policy: str, n_slots: int, reset_per_request: bool = False,
               compiled: bool | None = None) -> np.ndarray:
    """[G] hits per group; `reset_per_request`: each request's groups from a cold cache;
    `compiled`: the numba kernels (None: when installed, True: required, False: plain paths)."""
    if not reset_per_request:
        return FAST[policy](seq, n_slots, compiled)
    _check(seq, n_slots)
    parts = [FAST[policy](part, n_slots, compiled) for part in seq.segments()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def fast_hit_rates(seq: GroupSeq, policy: str, n_slots: int, reset_per_request: bool = False,
                   compiled: bool | None = None) -> dict:
    """`{"hits", "activations", "hit_rate", "layer_hits", "layer_acts"}` over counted groups."""
    hits = group_hits(seq, policy, n_slots, reset_per_request, compiled)
    c = seq.counted
    L = seq.moe_layers
    if seq.full:                       # groups step by step, layer m at g % L, counted per step
        cs = c.reshape(-1, L)[:, 0:1]
        layer_hits = np.sum(hits.reshape(-1, L), axis=0, where=cs).astype(np.int64)
        layer_acts = np.full(L, int(cs.sum()) * seq.dense.shape[2], dtype=np.int64)
    else:
        acts = np.diff(seq.offsets)
        layer_hits = np.bincount(seq.layer[c], weights=hits[c], minlength=L).astype(np.int64)
        layer_acts = np.bincount(seq.layer[c], weights=acts[c], minlength=L).astype(np.int64)
    H, A = int(layer_hits.sum()), int(layer_acts.sum())
    return {"hits": H, "activations": A, "hit_rate": H / A if A else None,
            "layer_hits": layer_hits.tolist(), "layer_acts": layer_acts.tolist()}
