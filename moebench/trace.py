"""Routing traces: per (request, step, layer) the true top-k ids and weights, the ids executed,
and each prediction made. Written by `--record-trace` as `trace.jsonl`, one JSON object a line:

    {"request": 0, "step": 3, "layer": 5, "experts": [..k ids..], "weights": [..k..],
     "executed": [..k ids..], "used": [..distinct ids over all tokens..],
     "predicted": {"<predictor>": [ids...]}, "strategy": "speculative"}

`step` 0 is the prefill (its `experts`/`weights`/`executed` describe the last prompt token,
`used` every expert any prompt token ran); decode steps count from 1. `layer` is the MoE layer
index. `predicted` holds, per predictor (named after the strategy, e.g. `speculative`,
`next-gate+1`, `pre-attention`), the experts it asked to prefetch *for this layer during this
step*. `moebench trace export --format jsonl` writes the same rows (documented in
docs/strategies.md); any tool's JSONL with at least `step`, `layer`, `experts` can be read back.

The pure, indexed view strategies plan with (`ctx.trace`) is `moebench.offload.routing.RoutingTrace`.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from moebench.config import read_jsonl
from moebench.errors import UserError
from moebench.offload.routing import row_dict
from moebench.results.folders import atomic_write

REQUIRED = ("step", "layer", "experts")
EXPORT_KEYS = ("request", "step", "layer", "experts", "weights", "executed", "used", "predicted")


def write_trace(path: Path, rows: list, *, strategy: str) -> None:
    lines = []
    for r in rows:
        d = row_dict(r)
        d["strategy"] = strategy
        lines.append(json.dumps(d, sort_keys=True))
    atomic_write(path, "\n".join(lines) + ("\n" if lines else ""))


def trace_path(path: str | Path) -> Path:
    """A trace file, or the `trace.jsonl` inside a result folder."""
    p = Path(path)
    return p / "trace.jsonl" if p.is_dir() else p


def read_trace(path: str | Path) -> list[dict]:
    """Every row of a JSONL routing trace; one clear sentence (UserError) for a bad line."""
    p = trace_path(path)
    if not p.exists():
        raise UserError(f"no routing trace at {p} (record one with `moebench run --record-trace`, "
                        "or make one with `moebench trace synth`).")
    rows = read_jsonl(p, "trace")
    for i, d in enumerate(rows):
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise UserError(f"trace {p} row {i + 1} lacks {', '.join(missing)}.")
    return rows


def export_rows(rows: Iterable[dict], *, strategy: str | None = None) -> list[dict]:
    """Rows in the export format: every key of EXPORT_KEYS present (`request` 0, `weights` [],
    `executed` = `experts`, `used` = `executed`, `predicted` {} when the source lacks them),
    plus `strategy` when known."""
    out = []
    for r in rows:
        d = row_dict(r)
        executed = d.get("executed", d["experts"])
        e = {"request": int(d.get("request", 0)), "step": int(d["step"]), "layer": int(d["layer"]),
             "experts": [int(x) for x in d["experts"]],
             "weights": [float(x) for x in d.get("weights", [])],
             "executed": [int(x) for x in executed],
             "used": [int(x) for x in (d.get("used") or executed)],
             "predicted": {str(k): [int(x) for x in v] for k, v in (d.get("predicted") or {}).items()}}
        s = d.get("strategy", strategy)
        if s is not None:
            e["strategy"] = s
        out.append(e)
    return out


def export_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
