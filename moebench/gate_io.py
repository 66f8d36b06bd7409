"""Loading what the gate compares: a run folder (`result.json` + `samples.jsonl`) or a
comparison report folder (`report.json`). Every failure is a `GateUsageError` (exit 2) with one
sentence naming the file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moebench.gate import SCHEMA_VERSION, GateUsageError


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateUsageError(f"{path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GateUsageError(f"{path} cannot be read ({exc.__class__.__name__}).") from None
    except json.JSONDecodeError as exc:
        raise GateUsageError(f"{path} is not valid JSON (line {exc.lineno}).") from None


def _check_schema(doc: Any, path: Path) -> None:
    if not isinstance(doc, dict):
        raise GateUsageError(f"{path} does not hold a JSON object.")
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise GateUsageError(f"{path} has schema_version {version!r}; this moebench reads "
                             f"version {SCHEMA_VERSION}.")


def load_result_dir(path: str | Path) -> dict:
    """Load a run folder as ``{"result": ..., "samples": [...]}``.

    A folder holding ``report.json`` instead (a comparison report), or a path to a report.json,
    loads as ``{"report": ...}``. Missing files, bad JSON and unknown schema versions raise
    ``GateUsageError``.
    """
    path = Path(path)
    if path.is_file() and path.name == "report.json":
        report_path = path
    elif path.is_dir() and not (path / "result.json").exists() and (path / "report.json").exists():
        report_path = path / "report.json"
    else:
        report_path = None
    if report_path is not None:
        report = _read_json(report_path)
        _check_schema(report, report_path)
        return {"report": report}

    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise GateUsageError(f"{path} is not a result folder (no such directory).")
    result_path = folder / "result.json"
    result = _read_json(result_path)
    _check_schema(result, result_path)
    samples_path = folder / "samples.jsonl"
    if not samples_path.exists():
        raise GateUsageError(f"{samples_path} does not exist.")
    samples = []
    try:
        lines = samples_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GateUsageError(f"{samples_path} cannot be read ({exc.__class__.__name__}).") from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise GateUsageError(f"{samples_path} line {i} is not valid JSON.") from None
        if not isinstance(row, dict):
            raise GateUsageError(f"{samples_path} line {i} is not a JSON object.")
        samples.append(row)
    return {"result": result, "samples": samples}
