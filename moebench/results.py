"""Result folders: one per run, never overwritten, every write atomic (temp file + rename).

See docs/RESULT_FORMAT.md for the schema. Loading rejects unknown schema versions.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from moebench import SCHEMA_VERSION
from moebench.errors import UserError


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, sort_keys=True, default=_default) + "\n" for r in rows))


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def new_run_dir(out: str | Path, strategy: str, model: str) -> Path:
    """A fresh folder `<out>/<time>-<strategy>-<model>[-n]`; existing folders are never reused."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{strategy}-{model}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        d = root / (f"{stamp}-{safe}" + (f"-{n}" if n else ""))
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise UserError(f"cannot create a new result folder under {root}.")


def load_result(path: str | Path) -> dict:
    """`{"dir", "result", "samples"}` from a result folder (or its result.json)."""
    p = Path(path)
    d = p.parent if p.name == "result.json" else p
    rp = d / "result.json"
    if not rp.exists():
        raise UserError(f"{d} is not a moebench result folder (no result.json).")
    try:
        result = json.loads(rp.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{rp} is not valid JSON ({exc.msg}, line {exc.lineno}).") from None
    if result.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{rp} has schema_version {result.get('schema_version')!r}; this moebench "
                        f"reads version {SCHEMA_VERSION}.")
    samples = []
    sp = d / "samples.jsonl"
    if sp.exists():
        for i, line in enumerate(sp.read_text().splitlines()):
            if line.strip():
                try:
                    samples.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{sp} line {i + 1} is not valid JSON.") from None
    return {"dir": str(d), "result": result, "samples": samples}
