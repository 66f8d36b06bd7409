"""The vocabulary between the protocol and a strategy: events in, decisions out.

Public through `moebench.strategy` (the plugin API); defined here, in the core, because the
protocol that produces the events and executes the decisions lives here and imports nothing above
it. `ids` and `weights` are tensors on a live run and numpy arrays in replay; both answer
`reshape` and `tolist`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

ExpertKey = tuple[int, int]   # (moe layer index, expert id)


class LayerEvent(NamedTuple):
    """Where the protocol is: immutable (a tuple; built once per layer and step when a strategy
    method is called, so cheaply: a frozen dataclass costs three times as much per layer)."""

    step: int                           # decode step counter within the request (0 = prefill)
    layer: int                          # MoE layer index (0..moe_layers-1)
    phase: Literal["prefill", "decode"]
    n_tokens: int
    request: int = 0                    # -1 during the untimed warm-up


class Routing(NamedTuple):
    """Top-k routing of a layer. `ids [T, k]` (int64) and `weights [T, k]`. Immutable (a tuple,
    built once per layer of every step: as cheap to build as a tuple).

    Live, one row per token of the step (a prefill has T = prompt length). In replay a decode
    step is the same `[1, k]` with the recorded router weights (uniform when the trace has
    none); a prefill is one row of the distinct experts its tokens used, uniform weights (a trace
    keeps no per-token prefill rows). A strategy that learns from prefill rows sees less there."""

    ids: Any
    weights: Any

    def experts(self) -> list[int]:
        """Distinct expert ids, in first-use order (deterministic)."""
        return distinct(self.ids)

    def target(self) -> tuple[list[int], list[float]]:
        """What a prediction of this layer is scored against: the true top-k of the token (a
        decode step's one row), or for a batch decoded together (one row per sequence) the union
        of the rows' top-k, each expert's router weights summed, in descending weight (ties by
        id), so `ids[0]` is the expert the batch weighs most."""
        rows = self.ids.tolist()
        ws = self.weights.tolist()
        if len(rows) == 1:
            return [int(e) for e in rows[0]], [float(w) for w in ws[0]]
        tot: dict[int, float] = {}
        for r, w in zip(rows, ws):
            for e, x in zip(r, w):
                tot[int(e)] = tot.get(int(e), 0.0) + float(x)
        ids = sorted(tot, key=lambda e: (-tot[e], e))
        return ids, [tot[e] for e in ids]


def distinct(ids: Any) -> list[int]:
    """The distinct expert ids of routing `ids` [T, k] (a tensor or an array; any other shape is
    read flat), in first-use order (row by row): `Routing.experts`."""
    if getattr(ids, "ndim", 2) != 2:
        return list(dict.fromkeys(ids.reshape(-1).tolist()))
    rows = ids.tolist()               # Python ints, from a tensor or an array alike
    if len(rows) == 1:
        return list(dict.fromkeys(rows[0]))
    return list(dict.fromkeys(e for r in rows for e in r))


def marked(method: Any, mark: str) -> bool:
    """Whether `method` (bound or not) is the very function that carries `mark` (set to itself
    in `moebench.strategy`: `default_decision`, `delegates_to_policy`). By identity: a wrapper
    made with `functools.wraps` copies the mark but is another function, so it is not marked."""
    f = getattr(method, "__func__", method)
    return f is not None and getattr(f, mark, None) is f


@dataclass(frozen=True)
class Prefetch:
    """Ask the engine to start copying `experts` of MoE layer `layer` (a prediction by `source`).

    Issued at once, in list order, after the current layer's own demand fetches; experts already
    resident are skipped, and one is dropped when every slot is locked. Any layer may be named,
    including an earlier one (from the last layer's `after_routing`, layer 0 of the next step):
    what is still resident when that layer runs is a hit."""

    layer: int
    experts: tuple[int, ...]
    source: str = "prefetch"


class StrategyContext:
    """What the engine shares with a strategy: read-only views, no clocks, no streams.

    `trace` is a `moebench.offload.routing.RoutingTrace` of the run's routing for strategies that read
    `trace` (the oracle, Belady, pinning), the same type live and in replay; `adapter` and
    `device` are None in replay (no model is loaded there). `profile` is the run's hardware
    profile, for strategies that weigh costs (a copy against host compute); on the CUDA clock
    it is the nominal one the floor is drawn from."""

    def __init__(self, *, shape: Any, n_slots: int, is_resident: Any, adapter: Any = None,
                 artifacts: dict | None = None, trace: Any = None, device: Any = None,
                 profile: Any = None):
        self.shape = shape
        self.profile = profile
        self.adapter = adapter
        self.n_slots = n_slots
        self._is_resident = is_resident
        self.artifacts = artifacts or {}
        self.trace = trace
        self.device = device

    def is_resident(self, layer: int, expert: int) -> bool:
        return self._is_resident((layer, expert))

    @property
    def moe_layers(self) -> int:
        return self.shape.moe_layers

    @property
    def num_experts(self) -> int:
        return self.shape.num_experts

    @property
    def top_k(self) -> int:
        return self.shape.top_k
