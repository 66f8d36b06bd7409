"""Routing traces: per (request, step, layer) the true top-k ids and weights, the ids executed,
and each prediction made. Written by `--record-trace` as `trace.jsonl`, one JSON object a line:

    {"request": 0, "step": 3, "layer": 5, "experts": [..k ids..], "weights": [..k..],
     "executed": [..k ids..], "predicted": {"<predictor>": [ids...]}}

`step` 0 is the prefill (its row describes the last prompt token); decode steps count from 1.
`moebench trace export --format jsonl` writes the same rows; any tool's JSONL with at least
`step`, `layer`, `experts` can be replayed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from moebench.errors import UserError
from moebench.results import atomic_write

REQUIRED = ("step", "layer", "experts")


def row_dict(row: Any) -> dict:
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)


def write_trace(path: Path, rows: list, *, strategy: str) -> None:
    lines = []
    for r in rows:
        d = row_dict(r)
        d["strategy"] = strategy
        lines.append(json.dumps(d, sort_keys=True))
    atomic_write(path, "\n".join(lines) + ("\n" if lines else ""))


def read_trace(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "trace.jsonl"
    if not p.exists():
        raise UserError(f"no routing trace at {p} (record one with `moebench run --record-trace`).")
    rows = []
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"trace {p} line {i + 1} is not valid JSON.") from None
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise UserError(f"trace {p} line {i + 1} lacks {', '.join(missing)}.")
        rows.append(d)
    return rows
