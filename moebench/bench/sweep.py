"""`moebench sweep PLAN.yaml`: a grid of paired comparisons ("cells"), run by an executor of your
choice, merged into one report with the statistics of `compare`.

    plan = load_plan(Path("examples/sweep.yaml"))            # the whole plan checked, before any work
    plan.cells()                                             # one paired comparison per grid point
    d = run_sweep(plan, Path("reports"), name="grid")         # cells/<id>/, sweep.json, report.*
    d = run_sweep(plan, Path("reports"), name="grid", resume=True)    # only the unfinished cells

A plan names axes (`models`, `workloads`, `budgets`, `profiles`, `bandwidths`, `batch_sizes`) and
`strategies`. A cell is one value of every axis; all the strategies of a cell run in one process
through `moebench.bench.compare.run_compare`, so the paired statistics (one loaded model, one
tokenised workload, interleaved cold runs) hold inside each cell exactly as in `compare`. A single
strategy of a cell never runs on its own.

The sweep folder (docs/sweep.md):

    <out>/<name>/sweep.json            the plan, the cells and their status, one entry per invocation
    <out>/<name>/cells/<id>-<label>/   each cell's compare report (report.json + result folders)
    <out>/<name>/cells/.<id>.partial/  a cell while it runs; renamed to the line above once whole
    <out>/<name>/report.json|md|html   the merged report: one point per cell
    <out>/<name>/submitit/             submitit's job files and logs (slurm, submitit-local)

A cell counts as done only once its folder has its final name, and that rename is the last thing
a cell does, so a cell killed at any moment is redone by `--resume`; the cells that finished are
kept as they are. Executors: `inline` (this process), `process` (one `python -m moebench.cli
sweep-cell` per cell, `jobs` at once, GPUs round-robin), `slurm` (a submitit job array) and
`submitit-local` (the same submitit path on this machine; for tests and debugging). The merged
report is built from the cell folders alone, so it is the same whichever executor wrote them.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from moebench.bench.compare import (ComparePlan, SweepSpec, _folder, choose_baseline,
                                    resolve_strategies, route_sets, run_compare)
from moebench.config import BudgetSpec, RunConfig, field_names, from_dict
from moebench.errors import UserError, did_you_mean
from moebench.report.document import build_report
from moebench.results.folders import (check_report_name, new_report_dir, new_run_dir, write_json,
                                      write_report)
from moebench.results.model import load_report

# plan axis -> the setting it varies (as labels and RunConfig name it)
AXES = (("models", "model"), ("workloads", "workload"), ("budgets", "cache_budget"),
        ("profiles", "profile"), ("bandwidths", "bandwidth"), ("batch_sizes", "batch_size"))
EXECUTORS = ("inline", "process", "slurm", "submitit-local")
MANIFEST = "sweep.json"
CELLS = "cells"
SUBMITIT = "submitit"
MANIFEST_VERSION = 1
INSTALL_SLURM = "pip install 'moebench[slurm]'"

SweepProgress = Callable[[str, float, int], None]     # (what is running, cells done, cells in all)


# ----------------------------------------------------------------------------------------------
# the plan file
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlurmSettings:
    """The plan's `slurm:` section (or the CLI's --partition, --time-min, --gpus-per-node)."""

    partition: str | None = None
    time_min: int = 60                  # per cell; a cell that runs out is requeued and redone
    gpus_per_node: int | None = None    # default: 0 on the simulated clock, else 1
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    setup: list[str] = field(default_factory=list)       # shell lines before each job (module load ...)
    additional: dict = field(default_factory=dict)       # any other sbatch option: {account: x, qos: y}

    def validate(self, where: str) -> None:
        for name in ("time_min", "cpus_per_task", "array_parallelism"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"{where}.{name} must be at least 1, not {v}.")
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise UserError(f"{where}.gpus_per_node must not be negative.")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise UserError(f"{where}.mem_gb must be positive.")


@dataclass(frozen=True)
class _PlanFile:
    """The YAML as written (every key optional); `parse_plan` checks what the values mean."""

    strategies: list[str] | None = None
    models: list[str] | None = None
    workloads: list[str] | None = None
    budgets: list[str] | None = None
    profiles: list[str] | None = None
    bandwidths: list[str] | None = None
    batch_sizes: list[int] | None = None
    clock: Literal["auto", "cuda", "sim"] = "auto"
    seed: int = 0
    repetitions: int = 1
    baseline: str | None = None
    accuracy: bool = False
    alpha: float = 0.05
    plots: bool = True
    set: list[str] = field(default_factory=list)
    threads: int | None = None
    executor: Literal["inline", "process", "slurm", "submitit-local"] = "inline"
    jobs: int | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


PLAN_KEYS = tuple(sorted(field_names(_PlanFile)))
AXIS_KEYS = ("strategies",) + tuple(a for a, _ in AXES)
EXECUTION_KEYS = ("executor", "jobs", "slurm")      # how, not what: never part of a plan's identity


@dataclass(frozen=True)
class Cell:
    """One grid point: a whole paired comparison of every strategy of the plan."""

    index: int
    id: str                    # "0", "1", ... (zero-padded to the number of cells)
    label: str                 # the varying axes: "cache_budget=0.1,profile=t4-pcie3" ("" if none vary)
    axes: dict                 # every axis's value here, by setting name ({"model": ..., ...})
    varying: dict              # the axes that vary across the sweep, in AXES order

    @property
    def dir(self) -> str:
        """The cell's folder, relative to the sweep folder."""
        tail = _folder(self.label)[:120]
        return f"{CELLS}/{self.id}-{tail}" if tail else f"{CELLS}/{self.id}"

    @property
    def name(self) -> str:
        return self.label or f"cell {self.id}"


@dataclass(frozen=True)
class SweepPlan:
    """A checked plan: what runs (axes, strategies, settings) and how (executor, jobs, slurm)."""

    strategies: tuple[str, ...]
    baseline: str
    axes: tuple[tuple[str, tuple], ...]        # (plan axis, values) in AXES order
    clock: str = "auto"
    seed: int = 0
    repetitions: int = 1
    accuracy: bool = False
    alpha: float = 0.05
    plots: bool = True
    sets: tuple[str, ...] = ()
    threads: int | None = None
    workload_overrides: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()
    executor: str = "inline"
    jobs: int | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    given: frozenset = frozenset()             # the axes the plan named (the others are defaults)

    def values(self, axis: str) -> tuple:
        return dict(self.axes)[axis]

    def varying(self) -> list[str]:
        """The settings that vary across the cells (what labels name), in AXES order."""
        return [key for axis, key in AXES if len(self.values(axis)) > 1]

    def cells(self) -> list[Cell]:
        keys = [key for _, key in AXES]
        combos = list(itertools.product(*(self.values(axis) for axis, _ in AXES)))
        width = len(str(len(combos) - 1))
        vary = self.varying()
        out = []
        for i, combo in enumerate(combos):
            axes = dict(zip(keys, combo))
            varying = {k: axes[k] for k in vary}
            out.append(Cell(i, str(i).zfill(width), ",".join(f"{k}={v}" for k, v in varying.items()),
                            axes, varying))
        return out

    def compare_plan(self, cell: Cell) -> ComparePlan:
        """The cell as a `compare` plan: one point, every strategy."""
        a = cell.axes
        over = dict(self.workload_overrides)
        if a["batch_size"] is not None:
            over["batch_size"] = str(a["batch_size"])
        base = RunConfig(model=a["model"], workload=a["workload"], workload_overrides=over,
                         cache_budget=a["cache_budget"], clock=self.clock, profile=a["profile"],
                         seed=self.seed)
        sweep = SweepSpec("bandwidth", (a["bandwidth"],)) if a["bandwidth"] is not None else None
        return ComparePlan(base, self.strategies, self.baseline,
                           params={k: v for k, v in self.params.items() if v},
                           repetitions=self.repetitions, sweep=sweep, accuracy=self.accuracy,
                           plots=self.plots, alpha=self.alpha, skipped=self.skipped)

    def to_dict(self) -> dict:
        """The plan in its own file format, with every default filled in (what sweep.json and the
        merged report record, and what `--resume` compares); execution settings are left out."""
        d: dict[str, Any] = {"strategies": list(self.strategies), "baseline": self.baseline}
        for axis, _ in AXES:
            vals = self.values(axis)
            if vals != (None,):
                d[axis] = list(vals)
        d.update(clock=self.clock, seed=self.seed, repetitions=self.repetitions,
                 accuracy=self.accuracy, alpha=self.alpha, plots=self.plots, set=list(self.sets))
        if self.threads is not None:
            d["threads"] = self.threads
        return d

    def identity(self) -> dict:
        """What must agree for `--resume` to continue a sweep (plots change only the report)."""
        return {k: v for k, v in self.to_dict().items() if k != "plots"}

    def execution(self) -> dict:
        s = self.slurm
        return {"executor": self.executor, "jobs": self.jobs,
                "slurm": {k: getattr(s, k) for k in field_names(SlurmSettings)}}


def load_plan(path: str | Path) -> SweepPlan:
    """Read and check a plan file (YAML); every problem is one sentence naming it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"plan {path} does not exist.") from None
    except IsADirectoryError:
        raise UserError(f"plan {path} is a folder; name a YAML file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read plan {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"plan {path} is not valid YAML{at}.") from None
    return parse_plan(raw, where=f"plan {path.name}")


def parse_plan(raw: Any, *, where: str = "the plan") -> SweepPlan:
    """Check a plan mapping whole, before any work: keys, axes, strategies, models, workloads,
    budgets, profiles, settings and the executor."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping of axes and settings, not "
                        f"{'an empty file' if raw is None else type(raw).__name__}.")
    for key in raw:
        if key not in PLAN_KEYS:
            raise UserError(f"{where}: unknown key '{key}'{did_you_mean(str(key), PLAN_KEYS)}.")
    for key in AXIS_KEYS:
        if key in raw and (raw[key] is None or raw[key] == [] or raw[key] == ""):
            raise UserError(f"{where}: axis '{key}' is empty; give it at least one value or leave it out.")
    raw = dict(raw)
    if raw.get("slurm") is None:
        raw.pop("slurm", None)
    for key in AXIS_KEYS + ("set",):        # one value may stand alone: `budgets: 0.25`
        if key in raw and not isinstance(raw[key], (list, tuple, str, dict)):
            raw[key] = [raw[key]]
    pf = from_dict(_PlanFile, raw, where)

    axes: dict[str, tuple] = {}
    for axis, key in AXES:
        vals = getattr(pf, axis)
        if vals is None:
            axes[axis] = (_default(key),)
            continue
        vals = [v.strip() if isinstance(v, str) else v for v in vals]
        if any(v == "" for v in vals):
            raise UserError(f"{where}: {axis} lists an empty value.")
        dup = next((v for i, v in enumerate(vals) if v in vals[:i]), None)
        if dup is not None:
            raise UserError(f"{where}: {axis} lists '{dup}' twice.")
        axes[axis] = tuple(vals)

    strategies, skipped = resolve_strategies(pf.strategies)
    if not strategies:
        raise UserError("no strategy could be loaded: " + "; ".join(w for _, w in skipped))
    baseline = choose_baseline(strategies, pf.baseline)
    if pf.repetitions < 1:
        raise UserError(f"{where}: repetitions must be at least 1.")
    if not 0 < pf.alpha < 1:
        raise UserError(f"{where}: alpha must lie strictly between 0 and 1, not {pf.alpha}.")
    if pf.threads is not None and pf.threads < 1:
        raise UserError(f"{where}: threads must be at least 1.")
    wl_over, params = route_sets(strategies, [str(s) for s in pf.set])
    _check_hardware(axes, pf.clock, where)
    _check_workloads(axes, wl_over, where)
    _check_budgets(axes, strategies, params)
    plan = SweepPlan(strategies=strategies, baseline=baseline,
                     axes=tuple((axis, axes[axis]) for axis, _ in AXES), clock=pf.clock, seed=pf.seed,
                     repetitions=pf.repetitions, accuracy=pf.accuracy, alpha=pf.alpha,
                     plots=pf.plots, sets=tuple(str(s) for s in pf.set), threads=pf.threads,
                     workload_overrides=wl_over, params=params, skipped=skipped,
                     given=frozenset(a for a, _ in AXES if getattr(pf, a) is not None))
    return with_execution(plan, executor=pf.executor, jobs=pf.jobs, slurm=pf.slurm)


def _default(key: str) -> Any:
    """An axis the plan leaves out: the value `compare` would use (none for bandwidth and batch
    size: the profile's link and the workload's own setting)."""
    if key in ("bandwidth", "batch_size"):
        return None
    return getattr(RunConfig(), key)


def _check_hardware(axes: dict, clock: str, where: str) -> None:
    from moebench.offload.profile import load_profile

    for p in axes["profiles"]:
        load_profile(p)
    for b in axes["bandwidths"]:
        if b is None:
            continue
        try:
            gbps = float(b)
        except ValueError:
            gbps = -1.0
        if not gbps > 0 or gbps == float("inf"):
            raise UserError(f"{where}: bandwidths lists '{b}'; a bandwidth is a positive number of GB/s.")
    hw = len(axes["profiles"]) > 1 or axes["bandwidths"] != (None,)
    if hw and clock != "sim":
        raise UserError(f"{where}: profiles and bandwidths change the simulated hardware, but the "
                        f"plan runs on clock '{clock}' (a GPU measures itself); set clock: sim.")


def _check_workloads(axes: dict, wl_over: dict, where: str) -> None:
    from moebench.engine.session import check_context
    from moebench.models.presets import resolve_config
    from moebench.workloads.spec import Workload, load_workload

    batches = axes["batch_sizes"]
    if batches != (None,):
        if "batch_size" not in field_names(Workload):
            raise UserError(f"{where}: batch_sizes needs the workload field 'batch_size', which this "
                            "version of moebench does not have yet; leave batch_sizes out.")
        for b in batches:
            if b < 1:
                raise UserError(f"{where}: batch_sizes lists {b}; a batch size is at least 1.")
    configs = [(m, resolve_config(m)[0]) for m in axes["models"]]      # unknown models fail here
    for w in axes["workloads"]:
        for b in batches:
            over = dict(wl_over, **({} if b is None else {"batch_size": str(b)}))
            wl = load_workload(w, over)
            for m, cfg in configs:
                check_context(wl, cfg, m)


def _check_budgets(axes: dict, strategies: Sequence[str], params: dict) -> None:
    from moebench.bench import run as runner

    budgets = list(axes["budgets"])
    for b in budgets:
        BudgetSpec.parse(b)
    for m in axes["models"]:
        runner.check_budget(RunConfig(model=m), [(s, params.get(s)) for s in strategies], budgets)


def with_execution(plan: SweepPlan, *, executor: str | None = None, jobs: int | None = None,
                   slurm: SlurmSettings | None = None, **slurm_changes: Any) -> SweepPlan:
    """The plan with the executor settings the CLI gave (flags override the plan's own)."""
    executor = plan.executor if executor is None else executor
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor '{executor}'{did_you_mean(executor, EXECUTORS)}.")
    jobs = plan.jobs if jobs is None else jobs
    if jobs is not None and jobs < 1:
        raise UserError("--jobs must be at least 1.")
    if jobs is not None and jobs > 1 and executor != "process":
        raise UserError(f"jobs {jobs} applies to the process executor only (inline runs one cell "
                        "at a time; Slurm's limit is slurm.array_parallelism).")
    s = plan.slurm if slurm is None else slurm
    changes = {k: v for k, v in slurm_changes.items() if v is not None}
    if changes:
        s = replace(s, **changes)
        s.validate("slurm")
    return replace(plan, executor=executor, jobs=jobs, slurm=s)


# ----------------------------------------------------------------------------------------------
# the sweep folder and its manifest
# ----------------------------------------------------------------------------------------------
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_manifest(d: Path) -> dict:
    import json

    p = Path(d) / MANIFEST
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{d} is not a moebench sweep folder (it has no {MANIFEST}); "
                        "choose another --name.") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{p} cannot be read ({exc.__class__.__name__}).") from None
    if not isinstance(doc, dict) or doc.get("kind") != "sweep" or not isinstance(doc.get("plan"), dict):
        raise UserError(f"{p} is not a moebench sweep manifest.")
    if doc.get("schema_version") != MANIFEST_VERSION:
        raise UserError(f"{p} has schema_version {doc.get('schema_version')!r}; this moebench "
                        f"reads version {MANIFEST_VERSION}.")
    return doc


def plan_from_manifest(d: Path) -> SweepPlan:
    """The plan a sweep folder records (what a `sweep-cell` or a Slurm job runs)."""
    doc = read_manifest(d)
    plan = parse_plan(dict(doc["plan"]), where=f"{Path(d) / MANIFEST} plan")
    skipped = tuple((str(s), str(w)) for s, w in doc.get("skipped") or [])
    return replace(plan, skipped=skipped)


def _first_difference(a: dict, b: dict) -> str:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k}: {a.get(k)!r} there, {b.get(k)!r} in this plan"
    return ""


def open_sweep(plan: SweepPlan, out: Path, name: str | None, *, resume: bool) -> tuple[Path, dict]:
    """The sweep folder and its manifest: a new one, or (`resume`) the one recorded under `name`
    when its plan is this plan."""
    out = Path(out)
    if resume:
        if name is None:
            raise UserError("--resume needs --name, the sweep folder under --out to continue.")
        d = out / name
        if d.exists():
            doc = read_manifest(d)
            recorded = {k: v for k, v in doc["plan"].items() if k != "plots"}
            if recorded != plan.identity():
                raise UserError(f"{d} holds a sweep of another plan ({_first_difference(recorded, plan.identity())}); "
                                "resume it with its own plan, or start a new sweep with another --name.")
            doc["plan"] = plan.to_dict()
            return d, doc
    elif name is not None and (out / name).exists():
        raise UserError(f"{out / name} already exists; pass --resume to continue that sweep, or "
                        "choose another --name.")
    check_report_name(out, name)
    model = str(plan.values("models")[0])
    d = new_report_dir(out, name, model) if name is not None else new_run_dir(out, "sweep", model)
    doc = {"kind": "sweep", "schema_version": MANIFEST_VERSION, "created_at": _now(),
           "plan": plan.to_dict(), "skipped": [list(s) for s in plan.skipped],
           "cells": [{"id": c.id, "label": c.label, "axes": c.axes, "dir": c.dir, "status": "pending",
                      "error": None, "attempts": 0, "finished_at": None} for c in plan.cells()],
           "history": [], "report": None}
    write_json(d / MANIFEST, doc)
    return d, doc


def cell_done(d: Path, plan: SweepPlan, cell: Cell) -> bool:
    """The cell's folder has its final name (the last step of a cell), with this cell's plan."""
    final = Path(d) / cell.dir
    if not final.exists():
        return False
    try:
        recorded = load_report(final).plan
    except UserError:
        recorded = None
    if recorded != plan.compare_plan(cell).to_dict():
        raise UserError(f"{final} does not hold this cell's comparison (moebench did not write it "
                        "there); move it away and resume again.")
    return True


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cell(d: Path, plan: SweepPlan, cell: Cell, *, threads: int | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Run one cell into `cells/.<id>.partial` and rename it to its final folder once its report is
    whole; a cell that is already done is left alone. Returns the cell's folder."""
    d = Path(d)
    final = d / cell.dir
    if cell_done(d, plan, cell):
        return final
    staging = d / CELLS / f".{cell.id}.partial"
    if staging.exists():
        shutil.rmtree(staging)              # moebench's own leftover of an interrupted attempt
    (d / CELLS).mkdir(exist_ok=True)
    with _threads(threads if threads is not None else plan.threads):
        written = run_compare(plan.compare_plan(cell), d / CELLS, name=staging.name, progress=progress)
    try:
        os.rename(written, final)
    except OSError:
        if not cell_done(d, plan, cell):    # another attempt of the same cell finished first
            raise
        shutil.rmtree(written)
    return final


# ----------------------------------------------------------------------------------------------
# running a sweep
# ----------------------------------------------------------------------------------------------
class _Coordinator:
    """The one writer of sweep.json: cell status, attempts and this invocation's history entry."""

    def __init__(self, d: Path, doc: dict, plan: SweepPlan, cells: list[Cell],
                 progress: SweepProgress | None) -> None:
        self.d, self.doc, self.plan, self.cells = d, doc, plan, cells
        self.entry = {cell["id"]: cell for cell in doc["cells"]}
        self.progress = progress
        self.done = 0
        self.history = {"started_at": _now(), "executor": plan.executor, "kept": [], "ran": [],
                        "failed": [], "finished_at": None, "interrupted": False}
        doc["history"].append(self.history)

    def save(self) -> None:
        write_json(self.d / MANIFEST, self.doc)

    def keep(self, cell: Cell) -> None:
        e = self.entry[cell.id]
        e.update(status="done", error=None)
        self.history["kept"].append(cell.id)
        self.done += 1

    def started(self, cell: Cell) -> None:
        e = self.entry[cell.id]
        e.update(status="running", error=None, attempts=int(e.get("attempts") or 0) + 1)
        self.history["ran"].append(cell.id)
        self.save()

    def finished(self, cell: Cell, error: str | None) -> None:
        e = self.entry[cell.id]
        e.update(status="failed" if error else "done", error=error, finished_at=_now())
        if error:
            self.history["failed"].append(cell.id)
        self.done += 1
        self.save()
        self.tell(f"{'failed' if error else 'finished'}: {cell.name}")

    def tell(self, what: str, within: float = 0.0) -> None:
        if self.progress:
            self.progress(what, self.done + within, len(self.cells))

    def number(self, cell: Cell) -> str:
        return f"cell {cell.index + 1} of {len(self.cells)}"


def run_sweep(plan: SweepPlan, out: Path, *, name: str | None = None, resume: bool = False,
              progress: SweepProgress | None = None) -> Path:
    """Run every cell not done yet with the plan's executor, then merge; returns the sweep folder.

    A cell that fails (a `UserError` inside it) is recorded with its sentence and the others go
    on; Ctrl-C or SIGTERM keeps the finished cells, merges them, and raises
    `KeyboardInterrupt(<sweep folder>)`.
    """
    check_executor(plan)
    check_report_name(Path(out), None)
    d, doc = open_sweep(plan, Path(out), name, resume=resume)
    cells = plan.cells()
    co = _Coordinator(d, doc, plan, cells, progress)
    todo = []
    for cell in cells:
        if cell_done(d, plan, cell):
            co.keep(cell)
        else:
            co.entry[cell.id].update(status="pending")
            todo.append(cell)
    co.save()
    interrupted = False
    try:
        if todo:
            {"inline": _run_inline, "process": _run_process}.get(plan.executor, _run_submitit)(co, todo)
    except KeyboardInterrupt:
        interrupted = True
        for cell in todo:
            if co.entry[cell.id]["status"] == "running":
                co.entry[cell.id]["status"] = "interrupted"
    co.history.update(finished_at=_now(), interrupted=interrupted)
    co.save()
    co.tell("merging the cells into one report")
    done = [c for c in cells if co.entry[c.id]["status"] == "done"]
    if done:
        merge(d, plan, cells, doc)
    elif not interrupted:
        bad = next((c for c in cells if co.entry[c.id].get("error")), cells[0])
        raise UserError(f"no cell of the sweep finished; {bad.name}: "
                        f"{co.entry[bad.id].get('error') or 'not run'}")
    if interrupted:
        raise KeyboardInterrupt(str(d))
    return d


def check_executor(plan: SweepPlan) -> None:
    """Before any work: the executor can run here (submitit installed, sbatch on PATH, a GPU per
    measuring cell, the models on disk)."""
    if plan.executor in ("slurm", "submitit-local"):
        import importlib.util

        if importlib.util.find_spec("submitit") is None:
            raise UserError(f"the {plan.executor} executor needs submitit, which is not installed; "
                            f"run {INSTALL_SLURM}.")
        if plan.executor == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
            raise UserError("the slurm executor submits with sbatch and srun, and this machine has "
                            "no Slurm on PATH; run from a Slurm login node, or use --executor "
                            "process here.")
    if plan.executor == "slurm":
        return                              # the models and GPUs are the cluster's, not ours
    from moebench.models.presets import PRESETS, get_preset, is_available

    for m in plan.values("models"):
        if m in PRESETS or m in ("default", ""):
            p = get_preset(m)
            if not is_available(p):
                raise UserError(f"model '{p.name}' has no weights on this machine (`moebench models` "
                                "says where they are looked for).")
    if plan.executor == "process" and plan.clock != "sim":
        gpus = _gpu_ids()
        if gpus and (plan.jobs or len(gpus)) > len(gpus):
            raise UserError(f"--jobs {plan.jobs} would run two cells on one of this machine's "
                            f"{len(gpus)} GPUs at once, disturbing each other's timings; use "
                            f"--jobs {len(gpus)} or fewer (or clock: sim).")


def _run_inline(co: _Coordinator, todo: list[Cell]) -> None:
    for cell in todo:
        where = f"{co.number(cell)}: {cell.name}"
        co.started(cell)
        co.tell(where)

        def inner(what: str, done: int, total: int, where: str = where) -> None:
            co.tell(f"{where} — {what}", done / total if total else 0.0)
        try:
            run_cell(co.d, co.plan, cell, progress=inner)
        except UserError as exc:
            co.finished(cell, str(exc).strip())
        else:
            co.finished(cell, None)


def _child_threads(plan: SweepPlan) -> int | None:
    """The intra-op threads a cell's process runs with: the plan's, else this process's own
    (the same float reductions, hence the same routing, as an inline run here)."""
    if plan.threads is not None:
        return plan.threads
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _gpu_ids() -> list[str]:
    """This machine's CUDA devices as CUDA_VISIBLE_DEVICES names them (NVML, no torch)."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    if seen is not None:
        return [x.strip() for x in seen.split(",") if x.strip() and x.strip() != "-1"]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:                       # no driver, no library: no GPU
        return []


def cell_command(d: Path, cell: Cell, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "moebench.cli", "sweep-cell", str(Path(d).resolve()), cell.id]
    return cmd + (["--threads", str(threads)] if threads is not None else [])


def _error_of(text: str, rc: int) -> str:
    """The one sentence a failed `sweep-cell` printed (`error: ...`), else its exit status."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1]
    return f"its process exited with status {rc}" + (f" ({lines[-1]})" if lines else "")


def _run_process(co: _Coordinator, todo: list[Cell]) -> None:
    gpus = _gpu_ids()
    jobs = co.plan.jobs or max(1, len(gpus))
    threads = _child_threads(co.plan)
    pending = list(todo)
    running: dict[int, tuple[subprocess.Popen, Cell, Any]] = {}
    try:
        while pending or running:
            for slot in range(jobs):
                if slot in running or not pending:
                    continue
                cell = pending.pop(0)
                env = dict(os.environ)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                err = tempfile.TemporaryFile(mode="w+")
                co.started(cell)
                running[slot] = (subprocess.Popen(cell_command(co.d, cell, threads), env=env,
                                                  stdout=subprocess.DEVNULL, stderr=err), cell, err)
            co.tell("running " + "; ".join(f"{co.number(c)}: {c.name}" for _, c, _ in running.values()))
            time.sleep(0.1)
            for slot, (p, cell, err) in list(running.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del running[slot]
                err.seek(0)
                text = err.read()
                err.close()
                if rc in (130, 143):                 # the cell was interrupted, so is the sweep
                    co.entry[cell.id]["status"] = "interrupted"
                    raise KeyboardInterrupt()
                if rc < 0:
                    co.finished(cell, f"its process was killed by signal {-rc}")
                else:
                    co.finished(cell, None if rc == 0 else _error_of(text, rc))
    finally:
        for p, cell, err in running.values():      # interrupted: stop the cells still running
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, cell, err in running.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            err.close()


# -- submitit: Slurm job arrays, and the same path on this machine -----------------------------
def _checkpointable() -> type:
    try:
        from submitit.helpers import Checkpointable
    except ImportError:                     # submitit is optional; only its executors need it
        return object
    return Checkpointable


class CellJob(_checkpointable()):
    """What one array task runs: one cell of the sweep folder. A `submitit.helpers.Checkpointable`,
    so a preempted or timed-out task is requeued with the same arguments; the requeued task
    redoes its cell from the start (a cell that finished in the meantime is kept)."""

    def __init__(self, sweep_dir: str, threads: int | None = None) -> None:
        self.sweep_dir = sweep_dir
        self.threads = threads

    def __call__(self, cell_id: str) -> dict:
        d = Path(self.sweep_dir)
        try:
            plan = plan_from_manifest(d)
            cell = next((c for c in plan.cells() if c.id == cell_id), None)
            if cell is None:
                raise UserError(f"{d} has no cell '{cell_id}'.")
            run_cell(d, plan, cell, threads=self.threads)
        except UserError as exc:
            return {"cell": cell_id, "status": "failed", "error": str(exc).strip()}
        return {"cell": cell_id, "status": "done", "error": None}


def _submitit_executor(co: _Coordinator) -> Any:
    """Slurm: `AutoExecutor(cluster="slurm")` with the plan's `slurm:` settings. submitit-local:
    `submitit.LocalExecutor`, every task seeing the GPUs this process sees (as an inline run
    would), so the two give the same numbers."""
    import submitit

    s, folder = co.plan.slurm, str(co.d.resolve() / SUBMITIT)
    if co.plan.executor != "slurm":
        ex = submitit.LocalExecutor(folder=folder)
        ids = _gpu_ids()
        local: dict[str, Any] = {"timeout_min": s.time_min, "gpus_per_node": len(ids)}
        if ids and all(i.isdigit() for i in ids):
            local["visible_gpus"] = tuple(int(i) for i in ids)
        ex.update_parameters(**local)
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    gpus = s.gpus_per_node if s.gpus_per_node is not None else (0 if co.plan.clock == "sim" else 1)
    params: dict[str, Any] = {"name": f"moebench-sweep-{co.d.name}"[:64], "timeout_min": s.time_min,
                              "gpus_per_node": gpus}
    params.update({k: v for k, v in {"slurm_partition": s.partition, "cpus_per_task": s.cpus_per_task,
                                      "mem_gb": s.mem_gb, "slurm_array_parallelism": s.array_parallelism,
                                      "slurm_setup": list(s.setup) or None,
                                      "slurm_additional_parameters": dict(s.additional) or None,
                                      }.items() if v is not None})
    ex.update_parameters(**params)
    return ex


def _run_submitit(co: _Coordinator, todo: list[Cell]) -> None:
    """An array of `CellJob`s (`executor.map_array`), waited for here; the status of each task is
    recorded as it ends."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    ex = _submitit_executor(co)
    threads = co.plan.threads if co.plan.executor == "slurm" else _child_threads(co.plan)
    for cell in todo:
        co.started(cell)
    jobs = ex.map_array(CellJob(str(co.d.resolve()), threads), [c.id for c in todo])
    for cell, job in zip(todo, jobs):
        co.entry[cell.id]["job_id"] = str(job.job_id)
    co.save()
    waiting = dict(zip((c.id for c in todo), zip(todo, jobs)))
    pause = 0.2 if co.plan.executor != "slurm" else 5.0
    try:
        while waiting:
            co.tell(f"{len(waiting)} cell(s) queued or running ({co.plan.executor}, job "
                    f"{str(jobs[0].job_id).split('_')[0]})")
            time.sleep(pause)
            for cid, (cell, job) in list(waiting.items()):
                if not job.done():
                    continue
                del waiting[cid]
                try:
                    out = job.result()
                    error = out.get("error") if isinstance(out, dict) else "the job returned nothing"
                except (FailedJobError, UncompletedJobError) as exc:
                    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                    error = f"job {job.job_id} failed: {lines[-1].strip() if lines else exc}"
                co.finished(cell, error)
    finally:
        for cell, job in waiting.values():          # interrupted: cancel what has not ended
            with contextlib.suppress(Exception):
                job.cancel(check=False)


# ----------------------------------------------------------------------------------------------
# merging the cells into one report
# ----------------------------------------------------------------------------------------------
def _is_report_note(n: str, result_notes: set[str]) -> bool:
    """Notes `build_report` writes again from the results themselves (not compare's own)."""
    return (n.startswith("IN-SAMPLE:") or n.startswith("simulated clock:") or "were collapsed" in n
            or n in result_notes)


def merge(d: Path, plan: SweepPlan, cells: Sequence[Cell], doc: dict | None = None) -> dict:
    """The merged report of every finished cell (one point per cell, labelled by its varying
    axes), written into the sweep folder and recorded in its manifest; built from the cell
    folders alone, so it is the same whichever executor ran them."""
    d = Path(d)
    doc = read_manifest(d) if doc is None else doc
    status = {c["id"]: c for c in doc["cells"]}
    vary = plan.varying()
    sweep = None if not vary else vary[0] if len(vary) == 1 else " × ".join(vary)
    entries, schedule, notes = [], [], []
    skipped = list(plan.skipped)
    for cell in cells:
        st = status[cell.id]
        if st["status"] != "done":
            skipped.append((f"cell {cell.name}", st.get("error") or
                            ("interrupted" if st["status"] == "interrupted" else "not run yet")))
            continue
        rep = load_report(d / cell.dir)
        value = (None if not vary else str(cell.varying[vary[0]]) if len(vary) == 1
                 else " / ".join(str(v) for v in cell.varying.values()))
        result_notes: set[str] = set()
        for e, run in zip(rep.entries, rep.runs()):
            entries.append({"dir": f"{cell.dir}/{e.dir}", "point": cell.label, "sweep_value": value,
                            "axes": dict(cell.varying) if vary else None,
                            "result": run.raw, "samples": list(run.samples)})
            result_notes.update(run.raw.get("notes") or [])
        schedule += [[cell.label, s, r] for _, s, r in rep.raw.get("schedule") or []]
        at = f" @ {cell.label}" if cell.label else ""
        skipped += [(str(s["strategy"]).split(" @ ")[0] + at, str(s["reason"]))
                    for s in rep.raw.get("skipped") or []
                    if (s["strategy"], s["reason"]) not in set(plan.skipped)]
        notes += [n + (f" (at {cell.label})" if cell.label else "")
                  for n in rep.raw.get("notes") or [] if not _is_report_note(n, result_notes)]
    n_done = sum(1 for c in cells if status[c.id]["status"] == "done")
    if n_done < len(cells):
        notes.insert(0, f"incomplete sweep: {n_done} of {len(cells)} cells finished; "
                        "`moebench sweep PLAN --name NAME --resume` runs the others")
    report = build_report(entries, baseline=plan.baseline, plan=dict(plan.to_dict(), kind="sweep"),
                          sweep=sweep, schedule=schedule, skipped=skipped,
                          notes=list(dict.fromkeys(notes)), alpha=plan.alpha, seed=plan.seed)
    report["notes"] = list(dict.fromkeys(report["notes"]))
    before = set((doc.get("report") or {}).get("files") or [])
    files = write_report(d, report, entries, plots=plan.plots)
    written = sorted(p.relative_to(d).as_posix() for p in files.values())
    for stale in sorted(before - set(written)):      # plots of an earlier merge that are gone now
        p = d / stale
        if p.is_file() and stale.startswith("plots/"):
            p.unlink()
    doc["report"] = {"files": written, "cells": n_done, "written_at": _now()}
    write_json(d / MANIFEST, doc)
    return report


__all__ = ["AXES", "EXECUTORS", "Cell", "CellJob", "SlurmSettings", "SweepPlan", "cell_command",
           "cell_done", "check_executor", "load_plan", "merge", "open_sweep", "parse_plan",
           "plan_from_manifest", "read_manifest", "run_cell", "run_sweep", "with_execution"]
