"""Typed configuration, validated at the door.

Configuration flows one way: CLI flags and YAML -> frozen dataclasses -> the run. Every loader
here rejects unknown keys (with a did-you-mean) and wrong types with one sentence naming the
field, so a typo in a workload file never silently falls back to a default.

`--set KEY=VALUE` overrides go through the same coercion as YAML values (`coerce`), so
`--set max_new_tokens=16` is checked exactly like `max_new_tokens: 16` in a file.
"""
from __future__ import annotations

import dataclasses
import math
import json
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from moebench.errors import UserError, did_you_mean

T = TypeVar("T")

_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


# ----------------------------------------------------------------------------------------------
# Generic coercion: YAML / CLI values -> typed dataclass fields
# ----------------------------------------------------------------------------------------------
def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or a `--set` string) to type `tp`, or raise UserError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: cannot be empty.")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str):
            for c in choices:
                if str(c) == value:
                    return c
        raise UserError(f"{where} must be one of {', '.join(map(str, choices))}, not {value!r}"
                        f"{did_you_mean(str(value), map(str, choices))}.")
    if origin in (tuple, list):
        (item_tp, *rest) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, not {type(value).__name__}.")
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, not {type(value).__name__}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{where} must be true or false, not {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{where} must be an integer, not {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise UserError(f"{where} must be an integer, not {value!r}.")
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{where} must be a number, not {value!r}.")
        try:
            x = float(value) if isinstance(value, (int, float)) else float(str(value))
        except ValueError:
            raise UserError(f"{where} must be a number, not {value!r}.") from None
        if not math.isfinite(x):        # a NaN bandwidth would make every copy free
            raise UserError(f"{where} must be a finite number, not {value!r}.")
        return x
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where} must be a string, not a {type(value).__name__}.")
        return str(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return value


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build the frozen dataclass `cls` from a mapping, rejecting unknown keys and bad types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of fields, not {type(data).__name__}.")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls) if f.init}
    for key in data:
        if key not in names:
            raise UserError(f"{where}: unknown key '{key}'{did_you_mean(str(key), names)}.")
    kwargs = {}
    for f in fields(cls):
        if not f.init or f.name not in data:
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{where}: missing required key '{f.name}'.")
            continue
        kwargs[f.name] = coerce(data[f.name], hints[f.name], f"{where}.{f.name}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def to_dict(obj: Any) -> Any:
    """A JSON-ready view of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}`; a malformed item is a UserError."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got '{item}'.")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"--set expects KEY=VALUE, got '{item}'.")
        out[key] = value
    return out


def field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.init}


# ----------------------------------------------------------------------------------------------
# Cache budget
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetSpec:
    """A device expert-cache budget as the user wrote it: bytes, a fraction, or experts per layer.

    `8GB` / `512MiB` -> bytes; `0.25` -> a fraction of all experts; `16/layer` -> experts per MoE
    layer; `all` -> every expert. Resolution to slots happens against a model (`resolve`).
    """

    kind: Literal["bytes", "fraction", "per_layer", "all"]
    value: float
    text: str

    @staticmethod
    def parse(text: str) -> BudgetSpec:
        t = str(text).strip().lower().replace(" ", "")
        if t in ("all", "1.0", "1"):
            return BudgetSpec("all", 1.0, str(text))
        m = re.fullmatch(r"(\d+)/layer", t)
        if m:
            if int(m.group(1)) <= 0:
                raise UserError(f"cache budget '{text}' must hold at least one expert per layer.")
            return BudgetSpec("per_layer", float(m.group(1)), str(text))
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt]i?b|b)", t)
        if m:
            return BudgetSpec("bytes", float(m.group(1)) * _SIZE_UNITS[m.group(2)], str(text))
        try:
            frac = float(t)
        except ValueError:
            raise UserError(
                f"cache budget '{text}' is not understood: give bytes (8GB, 512MiB), a fraction of "
                "all experts (0.25) or experts per layer (16/layer).") from None
        if not 0.0 < frac <= 1.0:
            raise UserError(f"cache budget fraction {text} must be in (0, 1].")
        return BudgetSpec("fraction", frac, str(text))

    def slots(self, *, moe_layers: int, num_experts: int, expert_bytes: int,
              reserved_bytes: int = 0) -> int:
        """Number of expert slots this budget buys on a model (never more than all experts).
        `reserved_bytes` (a model's always-resident shared experts) come out of a byte budget
        first; the other kinds count routed experts only."""
        total = moe_layers * num_experts
        if self.kind == "all":
            n = total
        elif self.kind == "fraction":
            n = int(self.value * total + 1e-9)
        elif self.kind == "per_layer":
            n = int(self.value) * moe_layers
        else:
            n = int(max(0.0, self.value - reserved_bytes) // expert_bytes)
        return max(0, min(n, total))


# ----------------------------------------------------------------------------------------------
# The run configuration
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run; embedded, resolved, in every result folder."""

    model: str = "default"
    strategy: str = "sync"
    strategy_params: dict = field(default_factory=dict)
    workload: str = "smoke"
    workload_overrides: dict = field(default_factory=dict)
    cache_budget: str = "0.25"
    clock: Literal["auto", "cuda", "sim"] = "auto"
    profile: str = "a6000-pcie4"
    seed: int = 0
    out: str = "results"
    repetition: int = 0
    record_trace: bool = False
    accuracy: bool = False
    calibrate: bool = True
    device: str = "auto"


def jsonl_values(text: str, where: str, error: type[UserError] = UserError) -> list[tuple[int, Any]]:
    """`(line number, value)` of every non-blank line of JSONL `text`; a line that is not JSON
    is one sentence naming `where` and the line."""
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((i, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise error(f"{where} line {i} is not valid JSON ({exc.msg}).") from None
    return out


def read_jsonl(path: Path, what: str = "", error: type[UserError] = UserError) -> list[dict]:
    """Every object of a JSONL file (blank lines skipped); one sentence (`error`, a UserError)
    naming the file and line for an unreadable file, a line that is not JSON, or one that is not
    an object."""
    where = f"{what} {path}".strip()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{where} cannot be read ({exc.__class__.__name__}).") from None
    rows = []
    for i, row in jsonl_values(text, where, error):
        if not isinstance(row, dict):
            raise error(f"{where} line {i} is a JSON {type(row).__name__}, not an object.")
        rows.append(row)
    return rows
