"""Routing traces as replay input: JSONL rows -> ordered steps, plus what the recording run knew.

Legend: S steps (one forward each: a prefill or one decode token), L MoE layers, k experts a row.

`load_replay_trace(path)` accepts
- a result folder written by `moebench run --record-trace` (its `trace.jsonl`, and from
  `result.json` / `config.json` the model, budget, profile, warm-up length, prompt lengths and
  prompt ids, which become the replay's defaults, so a replay reproduces the live run);
- a `trace.jsonl` path (the folder around it is read the same way when it is a result folder);
- any JSONL of `{step, layer, experts}` rows from another tool (`request` optional, default 0);
- a directory (that is not a result folder) or a glob of such JSONL files: one trace whose
  requests are renumbered file by file (`moebench.replay.importers`, which also turns vLLM,
  SGLang and MoE-Beyond routing into these rows: `moebench trace import`).

Rows are grouped into steps by `(request, step)` in order of first appearance (the order the
engine ran them); every step must carry every MoE layer once. `step` 0 is a prefill: moebench
records the last prompt token's top-k in `experts` and the distinct experts every prompt token
ran in `used`; the prompt length comes from the result folder (`outputs[].prompt_token_ids`) or
from an optional `tokens` key. Steps >= 1 are decode tokens, replayed from `experts`.
Duplicate ids within a row collapse (an expert is fetched once per step).

The trace is held as arrays (`experts [S, L, k]`, -1 padding) so fast replay paths and the
consistency figures never build per-row objects; the general replay reads rows through
`executed(s, l)` and `predicted(s, l)`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moebench.errors import UserError


@dataclass(frozen=True)
class RecordedRun:
    """What the folder of a recorded live run says (every field optional)."""

    model: str | None = None
    budget: str | None = None
    profile: str | None = None
    clock: str | None = None
    warmup_steps: int | None = None
    strategy: dict | None = None
    workload: dict | None = None
    seed: int = 0
    snapshot: str | None = None
    dtype: str | None = None                           # the dtype the live run computed in
    prompts: dict = field(default_factory=dict)        # request -> (prompt_id, repetition)
    prompt_tokens: dict = field(default_factory=dict)  # request -> prompt length
    prefill_copies: str | None = None                  # how its prefills copied (workload field)


@dataclass(frozen=True)
class ReplayTrace:
    request: np.ndarray            # [S] request index of each step
    step: np.ndarray               # [S] step number within its request (0 = prefill)
    tokens: np.ndarray             # [S] tokens in the forward (prefill: prompt length)
    experts: np.ndarray            # [S, L, k] true top-k ids (last token), -1 padding
    weights: np.ndarray | None     # [S, L, k] router weights, or None when not recorded
    prefill_used: dict = field(default_factory=dict)   # (s, l) -> distinct ids of a prefill
    predictions: dict = field(default_factory=dict)    # (s, l) -> {source: ids}
    sha256: str = ""
    source: str = ""
    recorded: RecordedRun | None = None
    # batches composed from a batch-1 trace (`compose_batches`): per step the number of
    # sequences decoded together, each `row_k` wide in `experts`; per request its members
    sequences: np.ndarray | None = None        # [S], None = one sequence every step
    row_k: int = 0                             # ids per sequence in a row (0 = k)
    batches: dict = field(default_factory=dict)    # request -> (base requests...)
    batch_size: int = 1

    # -- shape ---------------------------------------------------------------------------
    @property
    def n_steps(self) -> int:
        return int(self.experts.shape[0])

    @property
    def moe_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.row_k or self.experts.shape[2])

    def n_sequences(self, s: int) -> int:
        return 1 if self.sequences is None else int(self.sequences[s])

    def rows(self, s: int, m: int) -> tuple[list[tuple[int, ...]], list[list[float]]]:
        """Step s, layer m: each sequence's true top-k ids and router weights (one row in a
        batch-1 trace; one per sequence decoded together in a composed batch)."""
        n = self.n_sequences(s)
        if n == 1:
            return [self.true_ids(s, m)], [self.row_weights(s, m)]
        k = self.top_k
        ids, ws = [], []
        for j in range(n):
            row = self.experts[s, m, j * k:(j + 1) * k]
            ids.append(tuple(int(e) for e in row if e >= 0))
            ws.append([float(w) for w in self.weights[s, m, j * k:j * k + len(ids[-1])]]
                      if self.weights is not None else [1.0 / max(1, len(ids[-1]))] * len(ids[-1]))
        return ids, ws

    @property
    def num_experts_seen(self) -> int:
        return int(self.experts.max()) + 1 if self.experts.size else 0

    def sources(self) -> list[str]:
        """Every predictor that left predictions in the trace."""
        return sorted({src for preds in self.predictions.values() for src in preds})

    # -- rows ----------------------------------------------------------------------------
    def true_ids(self, s: int, m: int) -> tuple[int, ...]:
        row = self.experts[s, m]
        return tuple(int(e) for e in row if e >= 0)

    def executed(self, s: int, m: int) -> tuple[int, ...]:
        """The distinct experts a lossless strategy runs at step s, layer m, in first-use order."""
        extra = self.prefill_used.get((s, m))
        return tuple(extra) if extra is not None else self.true_ids(s, m)

    def predicted(self, s: int, m: int) -> dict[str, tuple[int, ...]]:
        return self.predictions.get((s, m), {})

    def row_weights(self, s: int, m: int) -> list[float]:
        ids = self.true_ids(s, m)
        if self.weights is None:
            return [1.0 / max(1, len(ids))] * len(ids)
        return [float(w) for w in self.weights[s, m, :len(ids)]]


def _dedupe(ids: Any, where: str, key: str = "experts", distinct: bool = False) -> tuple[int, ...]:
    """The ids of a row's `key`, in order; `distinct`: a repeated id is an error (a token's
    top-k never names one expert twice), else repeats are dropped (a union)."""
    if not isinstance(ids, (list, tuple)) or not ids:
        raise UserError(f"{where}: '{key}' must be a non-empty list of expert ids.")
    seen: dict[int, None] = {}
    for e in ids:
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise UserError(f"{where}: expert id {e!r} is not a non-negative integer.")
        if distinct and int(e) in seen:
            raise UserError(f"{where}: '{key}' lists expert {e} twice (a top-k names each "
                            "expert once).")
        seen.setdefault(int(e), None)
    return tuple(seen)


def _as_int(d: dict, key: str, default: int | None, where: str) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"{where}: '{key}' must be an integer, not {v!r}.")
    return v


def trace_from_rows(rows: list[dict], *, source: str = "", recorded: RecordedRun | None = None) -> ReplayTrace:
    """Group `{request?, step, layer, experts, ...}` rows into a `ReplayTrace`."""
    if not rows:
        raise UserError(f"trace {source or '(rows)'} has no rows.")
    order: dict[tuple[int, int], int] = {}
    per_step: list[dict[int, dict]] = []
    keys: list[tuple[int, int]] = []
    n_layers = 0
    k = 0
    for i, r in enumerate(rows):
        where = f"trace {source} row {i + 1}"
        req = _as_int(r, "request", 0, where)
        step = _as_int(r, "step", None, where)
        layer = _as_int(r, "layer", None, where)
        if step < 0 or layer < 0:
            raise UserError(f"{where}: step and layer must not be negative.")
        s = order.get((req, step))
        if s is None:
            s = order[(req, step)] = len(per_step)
            per_step.append({})
            keys.append((req, step))
        if layer in per_step[s]:
            raise UserError(f"{where}: request {req} step {step} has layer {layer} twice.")
        if not isinstance(r.get("experts"), list):
            raise UserError(f"{where}: 'experts' must be a non-empty list of expert ids (the "
                            "router's choice).")
        per_step[s][layer] = r
        n_layers = max(n_layers, layer + 1)
        k = max(k, len(r["experts"]) if isinstance(r["experts"], list) else 0)
    S = len(per_step)
    experts = np.full((S, n_layers, k), -1, dtype=np.int32)            # [S, L, k]
    has_w = all("weights" in r for r in rows)
    weights = np.zeros((S, n_layers, k), dtype=np.float32) if has_w else None
    tokens = np.ones(S, dtype=np.int64)
    prefill_used: dict = {}
    predictions: dict = {}
    for s, layers in enumerate(per_step):
        req, step = keys[s]
        missing = [m for m in range(n_layers) if m not in layers]
        if missing:
            raise UserError(f"trace {source}: request {req} step {step} lacks layer {missing[0]} "
                            f"(every step must list all {n_layers} MoE layers).")
        for m, r in layers.items():
            where = f"trace {source} request {req} step {step} layer {m}"
            ids = _dedupe(r["experts"], where, distinct=True)
            experts[s, m, :len(ids)] = ids
            if weights is not None:
                w = r["weights"]
                if not isinstance(w, list) or len(w) != len(r["experts"]):
                    raise UserError(f"{where}: 'weights' must list one weight per expert.")
                firsts = {}
                for e, x in zip(r["experts"], w):
                    firsts.setdefault(int(e), float(x))
                weights[s, m, :len(ids)] = [firsts[e] for e in ids]
            if step == 0 and r.get("used"):
                prefill_used[(s, m)] = _dedupe(r["used"], where, "used")
            preds = r.get("predicted") or {}
            if not isinstance(preds, dict):
                raise UserError(f"{where}: 'predicted' must map a predictor name to expert ids.")
            if preds:
                predictions[(s, m)] = {str(src): tuple(int(e) for e in ids_) for src, ids_ in preds.items()}
            if "tokens" in r:
                tokens[s] = _as_int(r, "tokens", 1, where)
    req_arr = np.array([q for q, _ in keys], dtype=np.int64)
    step_arr = np.array([t for _, t in keys], dtype=np.int64)
    if recorded is not None:  # prompt lengths from result.json when the trace lacks `tokens`
        for s in np.flatnonzero(step_arr == 0):
            if tokens[s] == 1 and int(req_arr[s]) in recorded.prompt_tokens:
                tokens[s] = recorded.prompt_tokens[int(req_arr[s])]
    return ReplayTrace(req_arr, step_arr, tokens, experts, weights, prefill_used, predictions,
                       sha256=routing_sha256(req_arr, step_arr, experts), source=source,
                       recorded=recorded)


def compose_batches(trace: ReplayTrace, batch_size: int) -> ReplayTrace:
    """The trace's requests served `batch_size` at a time: requests in order of first appearance,
    `batch_size` consecutive ones a batch, and step t of a batch is step t of every member that
    has one (a member whose request has ended drops out: per-request stopping). Each layer of a
    composed step executes the union of its members' experts (first-use order, member by member);
    a prefill runs `members x longest prompt` tokens, as a left-padded batched forward does; the
    members' top-k rows stay side by side (`rows`), so predictions are scored per batch as live.
    `batch_size` 1 is the trace itself."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    if batch_size == 1:
        return trace
    if trace.batch_size != 1:
        raise UserError("this trace is already composed into batches; compose from the batch-1 trace.")
    k, L = trace.top_k, trace.moe_layers
    where: dict[tuple[int, int], int] = {}
    order: dict[int, None] = {}
    for s in range(trace.n_steps):
        r = int(trace.request[s])
        order.setdefault(r, None)
        where[(r, int(trace.step[s]))] = s
    order = list(order)
    steps_of: dict[int, list[int]] = {}
    for (r, t) in where:
        steps_of.setdefault(r, []).append(t)
    composed: list[tuple[int, int, list[int]]] = []          # (batch, step, member base steps)
    batches: dict[int, tuple[int, ...]] = {}
    for b, i in enumerate(range(0, len(order), batch_size)):
        members = order[i:i + batch_size]
        batches[b] = tuple(members)
        for t in sorted({t for r in members for t in steps_of[r]}):
            composed.append((b, t, [where[(r, t)] for r in members if (r, t) in where]))
    S = len(composed)
    experts = np.full((S, L, batch_size * k), -1, dtype=np.int32)
    weights = None if trace.weights is None else np.zeros((S, L, batch_size * k), dtype=np.float32)
    tokens = np.ones(S, dtype=np.int64)
    seqs = np.ones(S, dtype=np.int64)
    used: dict = {}
    preds: dict = {}
    for c, (b, t, base) in enumerate(composed):
        seqs[c] = len(base)
        tokens[c] = len(base) * (max(int(trace.tokens[s]) for s in base) if t == 0 else 1)
        for m in range(L):
            union: dict[int, None] = {}
            for j, s in enumerate(base):
                experts[c, m, j * k:(j + 1) * k] = trace.experts[s, m, :k]
                if weights is not None:
                    weights[c, m, j * k:(j + 1) * k] = trace.weights[s, m, :k]
                for e in trace.executed(s, m):
                    union.setdefault(int(e), None)
                for src, ids in trace.predicted(s, m).items():
                    preds.setdefault((c, m), {}).setdefault(src, {}).update(dict.fromkeys(ids))
            used[(c, m)] = tuple(union)
    preds = {key: {src: tuple(d) for src, d in v.items()} for key, v in preds.items()}
    req = np.array([b for b, _, _ in composed], dtype=np.int64)
    step = np.array([t for _, t, _ in composed], dtype=np.int64)
    return ReplayTrace(req, step, tokens, experts, weights, used, preds,
                       sha256=hashlib.sha256(f"{trace.sha256}:batch={batch_size}".encode()).hexdigest(),
                       source=trace.source, recorded=trace.recorded, sequences=seqs, row_k=k,
                       batches=batches, batch_size=batch_size)


def routing_sha256(request: np.ndarray, step: np.ndarray, experts: np.ndarray) -> str:
    """A hash of the routing alone (what a replay's numbers depend on), independent of format."""
    h = hashlib.sha256()
    for a in (request.astype(np.int64), step.astype(np.int64), experts.astype(np.int32)):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def recorded_run(folder: Path) -> RecordedRun | None:
    """Defaults from a result folder next to the trace (None when it is not one)."""
    res = _read_json(folder / "result.json")
    if not res:
        return None
    cfg = _read_json(folder / "config.json") or {}
    wl = cfg.get("workload_resolved") or {}
    prompts, lengths = {}, {}
    for i, o in enumerate(res.get("outputs") or []):
        prompts[i] = (str(o.get("prompt_id", f"request-{i}")), int(o.get("repetition", 0)))
        if o.get("prompt_token_ids") is not None:
            lengths[i] = len(o["prompt_token_ids"])
    clock = res.get("clock") or {}
    return RecordedRun(
        model=(res.get("model") or {}).get("name"), budget=(res.get("budget") or {}).get("spec"),
        profile=clock.get("profile"), clock=clock.get("label"),
        warmup_steps=wl.get("warmup_steps"), strategy=res.get("strategy"),
        workload=res.get("workload"), seed=int(res.get("seed") or 0),
        snapshot=(res.get("model") or {}).get("snapshot"), dtype=(res.get("model") or {}).get("dtype"),
        prompts=prompts, prompt_tokens=lengths, prefill_copies=wl.get("prefill_copies"))


def load_replay_trace(path: str | Path) -> ReplayTrace:
    from moebench.trace import read_trace, trace_path

    raw = Path(path)
    if (raw.is_dir() and not (raw / "trace.jsonl").exists()) or \
            (not raw.exists() and any(c in str(path) for c in "*?[")):
        # a directory or glob of JSONL traces: one trace, requests renumbered file by file
        from moebench.replay.importers import load_many

        rows, source = load_many(path)
        return trace_from_rows(rows, source=source)
    p = trace_path(path)
    return trace_from_rows(read_trace(p), source=str(p), recorded=recorded_run(p.parent))


def trace_rows(trace: ReplayTrace) -> list[dict]:
    """The trace as JSONL-ready rows (the format `load_replay_trace` reads)."""
    rows = []
    for s in range(trace.n_steps):
        for m in range(trace.moe_layers):
            ids = list(trace.true_ids(s, m))
            row = {"request": int(trace.request[s]), "step": int(trace.step[s]), "layer": m,
                   "experts": ids}
            if trace.weights is not None:
                row["weights"] = [round(float(w), 6) for w in trace.weights[s, m, :len(ids)]]
            if trace.tokens[s] != 1:
                row["tokens"] = int(trace.tokens[s])
            if (s, m) in trace.prefill_used:
                row["used"] = list(trace.prefill_used[(s, m)])
            if (s, m) in trace.predictions:
                row["predicted"] = {k: list(v) for k, v in trace.predictions[(s, m)].items()}
            rows.append(row)
    return rows
