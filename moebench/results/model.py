"""What a run wrote, read back: `RunResult` (result.json + samples.jsonl) and `Report` (report.json).

    run = load_run("results/20250101-120000-lru-tiny")      # a result folder, or its result.json
    run.strategy.name, run.strategy.version, run.workload.sha256, run.metrics["hit_rate"]
    report = load_report("reports/baselines/smoke")          # a report folder, or its report.json
    report_or_none, runs = load_runs(path)                   # what the gate reads: either kind

One loader and one rule for the version: every result.json and report.json carries
`schema_version`, and a file without one, or with another version than `SCHEMA_VERSION`, is
refused with one sentence naming the file (`UserError`, exit code 2). Missing files, bad JSON and a
samples.jsonl row that is not an object are refused the same way.

The fields that `moebench compare` and `moebench gate` read (strategy name, version and
losslessness, model, workload name and hash, budget, clock, metrics) are typed attributes; the
rest of result.json (outputs, notes, accuracy, ...) stays in `raw`, exactly as written.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moebench import SCHEMA_VERSION
from moebench.config import read_jsonl
from moebench.errors import UserError

RESULT_FILE, SAMPLES_FILE, REPORT_FILE = "result.json", "samples.jsonl", "report.json"


# ----------------------------------------------------------------------------------------------
# reading JSON, and the one schema rule
# ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc.__class__.__name__}).") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}).") from None


def check_schema(doc: Any, where: str) -> dict:
    """`doc` if it is a JSON object of this moebench's schema version, else a one-sentence UserError."""
    if not isinstance(doc, dict):
        raise UserError(f"{where} does not hold a JSON object.")
    if "schema_version" not in doc:
        raise UserError(f"{where} has no schema_version; this moebench reads version "
                        f"{SCHEMA_VERSION} only (was it written by moebench?).")
    version = doc["schema_version"]
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise UserError(f"{where} has schema_version {version!r}; this moebench reads version "
                        f"{SCHEMA_VERSION}.")
    return doc


def _read_samples(path: Path) -> tuple[dict, ...]:
    if not path.exists():
        raise UserError(f"{path} does not exist.")
    return tuple(read_jsonl(path))


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
def _section(doc: Mapping, key: str) -> Mapping:
    part = doc.get(key)
    return part if isinstance(part, Mapping) else {}


def _opt(value: Any, tp: type) -> Any:
    """`value` when it has type `tp` (bool is not an int here), else None."""
    if isinstance(value, bool) and tp is not bool:
        return None
    return value if isinstance(value, tp) else None


@dataclass(frozen=True)
class StrategyId:
    """Which strategy ran: results of two versions of one strategy are not comparable."""

    name: str | None
    version: int | None
    lossless: bool | None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelId:
    name: str | None
    snapshot: str | None


@dataclass(frozen=True)
class WorkloadId:
    name: str | None
    sha256: str | None


@dataclass(frozen=True)
class BudgetInfo:
    """The cache budget as requested (`spec`) and as resolved on the model (`bytes`, `experts`)."""

    spec: str | None
    bytes: int | None
    experts: int | None


@dataclass(frozen=True)
class ClockInfo:
    kind: str | None           # "simulated" | "cuda-events"
    label: str | None          # "simulated:<profile>" | "cuda-events"
    profile: str | None

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"


@dataclass(frozen=True)
class RunResult:
    """One run of one strategy: result.json (typed where compare and the gate read it) and its samples.

    `point` is the sweep point a report filed the run under ("" outside a sweep); `key` names the
    run inside a report (`<point>/<strategy>`), which is how the gate pairs runs.
    """

    strategy: StrategyId
    model: ModelId
    workload: WorkloadId
    budget: BudgetInfo
    clock: ClockInfo
    metrics: Mapping[str, Any]
    status: str | None
    source: str | None
    raw: dict = field(repr=False)
    samples: tuple[dict, ...] = field(default=(), repr=False)
    dir: Path | None = None
    point: str = ""
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, doc: Any, *, samples: Sequence[dict] = (), dir: Path | None = None,
                  point: str = "", where: str = "the result") -> RunResult:
        """The model of one result.json mapping; refuses a missing or unknown schema version."""
        doc = check_schema(doc, where)
        s, m, w = _section(doc, "strategy"), _section(doc, "model"), _section(doc, "workload")
        b, c = _section(doc, "budget"), _section(doc, "clock")
        params = s.get("params")
        return cls(
            strategy=StrategyId(_opt(s.get("name"), str), _opt(s.get("version"), int),
                                _opt(s.get("lossless"), bool),
                                dict(params) if isinstance(params, Mapping) else {}),
            model=ModelId(_opt(m.get("name"), str), _opt(m.get("snapshot"), str)),
            workload=WorkloadId(_opt(w.get("name"), str), _opt(w.get("sha256"), str)),
            budget=BudgetInfo(None if b.get("spec") is None else str(b["spec"]),
                              _opt(b.get("bytes"), int), _opt(b.get("experts"), int)),
            clock=ClockInfo(_opt(c.get("kind"), str), _opt(c.get("label"), str),
                            _opt(c.get("profile"), str)),
            metrics=dict(_section(doc, "metrics")),
            status=_opt(doc.get("status"), str), source=_opt(doc.get("source"), str),
            raw=doc, samples=tuple(samples), dir=dir, point=point,
            schema_version=doc["schema_version"])

    @property
    def key(self) -> str:
        name = str(self.strategy.name)
        return f"{self.point}/{name}" if self.point else name

    @property
    def complete(self) -> bool:
        return self.status != "incomplete"

    @property
    def in_sample(self) -> bool:
        """True when an artifact the strategy ran on was calibrated on prompts of this run's own
        workload (result.json `in_sample`, or any `strategy.artifacts[].in_sample`). Results
        written before moebench recorded it read as False."""
        arts = _section(self.raw, "strategy").get("artifacts")
        return self.raw.get("in_sample") is True or (isinstance(arts, list) and any(
            isinstance(a, Mapping) and a.get("in_sample") is True for a in arts))

    @property
    def where(self) -> str:
        """How messages name this run: its folder, else its key."""
        return str(self.dir) if self.dir is not None else self.key

    def to_dict(self) -> dict:
        """result.json as it was read (what reports embed)."""
        return self.raw


@dataclass(frozen=True)
class ReportEntry:
    """One result inside report.json: its folder (relative to the report), sweep point, result."""

    dir: str
    point: str
    result: dict


@dataclass(frozen=True)
class Report:
    """A comparison report (report.json), typed where it is read back: the plan to rerun it, the
    baseline strategy and the results it holds."""

    kind: str | None
    baseline: str | None
    plan: Mapping[str, Any] | None
    entries: tuple[ReportEntry, ...]
    raw: dict = field(repr=False)
    dir: Path | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, doc: Any, *, dir: Path | None = None, where: str = "the report") -> Report:
        doc = check_schema(doc, where)
        entries = doc.get("results", [])
        if not isinstance(entries, list):
            raise UserError(f"{where} has no list of results.")
        out = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("result"), dict):
                raise UserError(f"{where}: results[{i}] is not a result entry (an object with 'result').")
            out.append(ReportEntry(str(e.get("dir") or ""), str(e.get("point") or ""), e["result"]))
        plan = doc.get("plan")
        return cls(kind=_opt(doc.get("kind"), str), baseline=_opt(doc.get("baseline"), str),
                   plan=plan if isinstance(plan, dict) else None, entries=tuple(out), raw=doc,
                   dir=dir, schema_version=doc["schema_version"])

    def runs(self) -> list[RunResult]:
        """Every result of the report, read from its result folder (raw samples included) when that
        is there, else from the summary report.json holds (a report whose folders have moved)."""
        runs = []
        for i, e in enumerate(self.entries):
            d = (self.dir / e.dir) if self.dir is not None and e.dir else None
            if d is not None and (d / RESULT_FILE).exists():
                runs.append(replace(load_run(d), point=e.point))
            else:
                runs.append(RunResult.from_dict(e.result, dir=d, point=e.point,
                                                where=f"{self.where} results[{i}]"))
        return runs

    @property
    def where(self) -> str:
        return str(self.dir / REPORT_FILE) if self.dir is not None else "the report"


# ----------------------------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------------------------
def _report_file(path: Path) -> Path | None:
    """report.json when `path` is one, or a folder holding one and no result.json."""
    if path.is_file() and path.name == REPORT_FILE:
        return path
    if path.is_dir() and not (path / RESULT_FILE).exists() and (path / REPORT_FILE).exists():
        return path / REPORT_FILE
    return None


def load_run(path: str | Path) -> RunResult:
    """The run in a result folder (or its result.json), raw samples included.

    A report folder is refused with a hint naming a result folder inside it.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist.")
    if p.is_file():
        if p.name != RESULT_FILE:
            raise UserError(f"{p} is not a result folder or a result.json.")
        p = p.parent
    if _report_file(p) is not None:
        inside = sorted(d for d in p.iterdir() if (d / RESULT_FILE).exists())
        example = f" (e.g. {inside[0]})" if inside else ""
        raise UserError(f"{p} is a comparison report, not a result folder; pass the result folders "
                        f"inside it{example}.")
    rp = p / RESULT_FILE
    if not rp.exists():
        raise UserError(f"{p} is not a moebench result folder (no {RESULT_FILE}).")
    return RunResult.from_dict(_read_json(rp), samples=_read_samples(p / SAMPLES_FILE), dir=p, where=str(rp))


def load_report(path: str | Path) -> Report:
    """The comparison report in a report folder (or its report.json)."""
    p = Path(path)
    rp = p if p.is_file() and p.name == REPORT_FILE else p / REPORT_FILE
    if not rp.exists():
        raise UserError(f"{p} is not a comparison report (no {REPORT_FILE}).")
    return Report.from_dict(_read_json(rp), dir=rp.parent, where=str(rp))


def load_runs(path: str | Path) -> tuple[Report | None, list[RunResult]]:
    """What the gate reads: `(None, [run])` for a result folder, `(report, report.runs())` for a
    report folder or report.json. A report without results is refused."""
    p = Path(path)
    rp = _report_file(p)
    if rp is None:
        return None, [load_run(p)]
    report = load_report(rp)
    if not report.entries:
        raise UserError(f"{rp} holds a report with no results.")
    return report, report.runs()
