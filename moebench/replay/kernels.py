"""Compiled kernels of the fast hit-rate replays (`moebench.replay.fast`), when numba is there.

Each kernel simulates the policy as its plain-Python twin in `fast` does (the same state, the
same victim at every eviction), over flat arrays, so that numba compiles it to a loop of O(1)
steps per activation (Belady: O(log n) heap steps, and only for the accesses that get an entry).
A key is `layer[g] * E + ids[i]`, formed on the fly (no key array is built):

- `lru_global`: one doubly linked recency list over the keys (`nxt`/`prv`, node K the head).
- `lru_layer`: one recency list per layer (node K + m heads layer m's), a last-use stamp per
  key, and the quota rules of `fast._lru_layer_exact` line for line, run to the end (the plain
  path switches to its vectorised steady state instead; this one needs no switch).
- `belady`: the next use of every access from one backward pass (no sort), then the lazy
  max-heap of `next_use * K + key` of `fast.belady_hits`, as an int64 array.

numba is optional: `available()` is False without it (or with `MOEBENCH_NO_NUMBA=1`), and `fast`
then runs its plain-Python paths, which give the same hits (tests/replay checks both). The
kernels are `njit` without `parallel`, so they run on the calling thread only; `cache=True`
keeps the machine code in `__pycache__` (or numba's user cache), so a later process loads it
instead of compiling. `warm_up()` compiles or loads them all and returns the seconds it took.
"""
from __future__ import annotations

import os
import time

import numpy as np

try:                                                   # optional: the plain paths stand in
    if os.environ.get("MOEBENCH_NO_NUMBA"):
        raise ImportError("MOEBENCH_NO_NUMBA is set")
    import numba as _numba
except Exception:                                      # absent, or broken (e.g. a numpy it rejects)
    _numba = None


def available() -> bool:
    return _numba is not None


def _jit(fn):
    if _numba is None:
        return fn
    try:
        return _numba.njit(cache=True, nogil=True)(fn)
    except Exception:                                  # no writable cache location: compile per process
        return _numba.njit(nogil=True)(fn)


# ----------------------------------------------------------------------------------------------
# recency lists: circular doubly linked lists over `nxt`/`prv`, one sentinel node `s` per list
# (`nxt[s]` the least recent, `prv[s]` the most); jitted below, so numba inlines them
# ----------------------------------------------------------------------------------------------
def _push_recent(nxt, prv, s, x):
    """Append node `x` at the most recent end of list `s`."""
    t = prv[s]
    nxt[t] = x
    prv[x] = t
    nxt[x] = s
    prv[s] = x


def _to_recent(nxt, prv, s, x):
    """Move node `x` (in list `s`) to its most recent end."""
    p, n = prv[x], nxt[x]
    nxt[p] = n
    prv[n] = p
    _push_recent(nxt, prv, s, x)


def _pop_least(nxt, prv, s):
    """Take the least recent node out of list `s` and return it."""
    y = nxt[s]
    n = nxt[y]
    nxt[s] = n
    prv[n] = s
    return y


def _resident(res, ids, a, b, base):
    """How many keys of the group `ids[a:b]` (of the layer at `base`) are resident."""
    h = 0
    for i in range(a, b):
        if res[base + ids[i]]:
            h += 1
    return h


# ----------------------------------------------------------------------------------------------
# global LRU
# ----------------------------------------------------------------------------------------------
def _lru_global(ids, offsets, layer, E, L, n_slots):
    G = offsets.shape[0] - 1
    K = E * L
    hits = np.zeros(G, dtype=np.int64)
    nxt = np.empty(K + 1, dtype=np.int32)              # circular list, node K the sentinel:
    prv = np.empty(K + 1, dtype=np.int32)              # nxt[K] the least recent, prv[K] the most
    nxt[K] = K
    prv[K] = K
    res = np.zeros(K, dtype=np.bool_)
    size = 0
    for g in range(G):
        a = offsets[g]
        b = offsets[g + 1]
        base = layer[g] * E
        h = _resident(res, ids, a, b, base)
        if h:
            for i in range(a, b):
                x = base + ids[i]
                if res[x]:                             # move to the most recent end
                    _to_recent(nxt, prv, K, x)
        miss = (b - a) - h
        if miss:
            for i in range(a, b):
                x = base + ids[i]
                if res[x]:
                    continue
                if size >= n_slots:                    # the front is never locked
                    res[_pop_least(nxt, prv, K)] = False
                    size -= 1
                _push_recent(nxt, prv, K, x)
                res[x] = True
                size += 1
            if h:                                      # recency among the group's keys: loop order
                for i in range(a, b):
                    _to_recent(nxt, prv, K, base + ids[i])
        hits[g] = h
    return hits


# ----------------------------------------------------------------------------------------------
# per-layer LRU (LRUPolicy scope="layer"), the rules of fast._lru_layer_exact
# ----------------------------------------------------------------------------------------------
def _lru_layer(ids, offsets, layer, E, q, n_slots):
    G = offsets.shape[0] - 1
    L = q.shape[0]
    K = E * L
    hits = np.zeros(G, dtype=np.int64)
    nxt = np.empty(K + L, dtype=np.int32)              # layer m's circular list: sentinel K + m
    prv = np.empty(K + L, dtype=np.int32)
    for m in range(L):
        nxt[K + m] = K + m
        prv[K + m] = K + m
    stamp = np.zeros(K, dtype=np.int64)                # last use (global access index)
    res = np.zeros(K, dtype=np.bool_)
    cnt = np.zeros(L, dtype=np.int64)
    over = np.zeros(L, dtype=np.bool_)
    n_over = 0
    free = n_slots
    for g in range(G):
        m = layer[g]
        s = K + m
        a = offsets[g]
        b = offsets[g + 1]
        base = layer[g] * E
        h = 0
        for i in range(a, b):
            x = base + ids[i]
            if res[x]:                                 # move to the most recent end
                _to_recent(nxt, prv, s, x)
                h += 1
        inserted = 0
        if h < b - a:
            for i in range(a, b):
                x = base + ids[i]
                if res[x]:
                    continue
                if free > 0:
                    free -= 1
                else:
                    own = cnt[m] - h - inserted > 0    # an unlocked expert of this layer
                    v = -1
                    if cnt[m] >= q[m] and own:
                        v = m                          # its own least recent
                    else:                              # the oldest of a layer over quota,
                        best = np.int64(0)
                        if n_over > 1 or (n_over == 1 and not over[m]):
                            for l2 in range(L):
                                if over[l2] and l2 != m:
                                    st = stamp[nxt[K + l2]]
                                    if v < 0 or st < best:
                                        v = l2
                                        best = st
                        if v < 0:                      # else of all
                            for l2 in range(L):
                                if cnt[l2] > 0 and (l2 != m or own):
                                    st = stamp[nxt[K + l2]]
                                    if v < 0 or st < best:
                                        v = l2
                                        best = st
                    res[_pop_least(nxt, prv, K + v)] = False
                    cnt[v] -= 1
                    if cnt[v] <= q[v] and over[v]:
                        over[v] = False
                        n_over -= 1
                _push_recent(nxt, prv, s, x)
                res[x] = True
                inserted += 1
                cnt[m] += 1
                if cnt[m] > q[m] and not over[m]:
                    over[m] = True
                    n_over += 1
        for i in range(a, b):                          # recency = loop order, stamped globally
            x = base + ids[i]
            if h and inserted:                         # else already in loop order
                _to_recent(nxt, prv, s, x)
            stamp[x] = i
        hits[g] = h
    return hits


# ----------------------------------------------------------------------------------------------
# Belady's MIN (global), the lazy heap of fast.belady_hits
# ----------------------------------------------------------------------------------------------
def _next_use(ids, offsets, layer, E, K):
    """[N] int32: the group of each access's key's next access (G when none)."""
    G = offsets.shape[0] - 1
    nu = np.empty(ids.shape[0], dtype=np.int32)
    last = np.full(K, G, dtype=np.int32)
    for g in range(G - 1, -1, -1):
        base = layer[g] * E
        for i in range(offsets[g], offsets[g + 1]):
            x = base + ids[i]
            nu[i] = last[x]
            last[x] = g
    return nu


def _heap_push(heap, n, p):
    i = n
    while i > 0:
        j = (i - 1) >> 1
        if heap[j] >= p:
            break
        heap[i] = heap[j]
        i = j
    heap[i] = p
    return n + 1


def _heap_pop(heap, n):
    top = heap[0]
    n -= 1
    last = heap[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and heap[c + 1] > heap[c]:
            c += 1
        if heap[c] <= last:
            break
        heap[i] = heap[c]
        i = c
    if n > 0:
        heap[i] = last
    return top, n


def _belady(ids, offsets, layer, E, L, n_slots, H, limit):
    G = offsets.shape[0] - 1
    K = E * L
    nu = _next_use(ids, offsets, layer, E, K)
    hits = np.zeros(G, dtype=np.int64)
    res = np.zeros(K, dtype=np.bool_)
    size = 0
    kmax = 0
    for g in range(G):
        kmax = max(kmax, offsets[g + 1] - offsets[g])
    heap = np.empty(limit + kmax + 1, dtype=np.int64)  # max-heap of next_use * K + key
    n = 0
    for g in range(G):
        a = offsets[g]
        b = offsets[g + 1]
        base = layer[g] * E
        h = _resident(res, ids, a, b, base)
        hits[g] = h
        if h < b - a:
            for i in range(a, b):
                x = base + ids[i]
                if res[x]:
                    continue
                if size >= n_slots:
                    # an entry is live iff its next use is still ahead and its key resident
                    while True:
                        p, n = _heap_pop(heap, n)
                        v = p % K
                        if p // K > g and res[v]:
                            break
                    res[v] = False
                    size -= 1
                res[x] = True
                size += 1
        for i in range(a, b):
            if nu[i] - g > H:
                n = _heap_push(heap, n, np.int64(nu[i]) * K + base + ids[i])
        if n > limit:                                  # drop entries that can no longer be live
            j = 0
            for i in range(n):
                p = heap[i]
                if p // K > g and res[p % K]:
                    heap[j] = p
                    j += 1
            n = 0
            for i in range(j):
                n = _heap_push(heap, n, heap[i])
    return hits


_resident = _jit(_resident)
_push_recent = _jit(_push_recent)
_to_recent = _jit(_to_recent)
_pop_least = _jit(_pop_least)
lru_global = _jit(_lru_global)
lru_layer = _jit(_lru_layer)
_next_use = _jit(_next_use)
_heap_push = _jit(_heap_push)
_heap_pop = _jit(_heap_pop)
belady = _jit(_belady)


def warm_up() -> float:
    """Compile (or load from the cache) every kernel for the dtypes `fast` passes; seconds."""
    t = time.perf_counter()
    if _numba is not None:
        ids = np.array([0, 1, 2, 1], dtype=np.int32)
        off = np.array([0, 2, 4], dtype=np.int64)
        layer = np.array([0, 0], dtype=np.int64)
        lru_global(ids, off, layer, 4, 1, 3)
        lru_layer(ids, off, layer, 4, np.array([3], dtype=np.int64), 3)
        belady(ids, off, layer, 4, 1, 3, 0, 16)
    return time.perf_counter() - t
