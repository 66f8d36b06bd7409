"""`moebench sweep PLAN.yaml`: a grid of paired comparisons, merged into one report (docs/sweep.md).

    moebench sweep examples/sweep.yaml --dry-run              # the cells, nothing run
    moebench sweep examples/sweep.yaml --name grid            # reports/grid/: cells + merged report
    moebench sweep examples/sweep.yaml --name grid --resume   # only the cells not finished yet
    moebench sweep examples/sweep.yaml --executor process --jobs 4
    moebench sweep examples/sweep.yaml --executor slurm --partition gpu --time-min 120

`sweep-cell SWEEP_DIR CELL_ID` (hidden) runs one cell of a sweep folder: what the process
executor starts, once per cell.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from moebench.cli.common import console, handle_errors
from moebench.report.terminal import progress as progress_display, progress_callback


def _show_cells(plan: Any, json_out: bool) -> None:
    cells = plan.cells()
    shown = [key for axis, key in _axes() if plan.values(axis) != (None,)]
    if json_out:
        sys.stdout.write(json.dumps({"plan": plan.to_dict(), "execution": plan.execution(),
                                     "cells": [{"id": c.id, "label": c.label, "dir": c.dir,
                                                "axes": c.axes} for c in cells]}, indent=2) + "\n")
        return
    from rich.table import Table

    t = Table(title=f"sweep: {len(cells)} cell{'s' if len(cells) != 1 else ''}")
    t.add_column("cell", no_wrap=True)
    for key in shown:
        t.add_column(key)
    t.add_column("folder")
    for c in cells:
        t.add_row(c.id, *(str(c.axes[k]) for k in shown), c.dir)
    con = console()
    con.print(t)
    runs = len(cells) * len(plan.strategies) * plan.repetitions
    con.print(f"each cell compares {', '.join(plan.strategies)} (baseline {plan.baseline}) in one "
              f"process: {runs} runs in all, {plan.repetitions} repetition(s), clock {plan.clock}; "
              f"executor {plan.executor}", highlight=False)
    for s, why in plan.skipped:
        con.print(f"not run: {s} ({why})", highlight=False)


def _axes() -> tuple:
    from moebench.bench.sweep import AXES

    return AXES


def sweep(
    plan_file: Annotated[Path, typer.Argument(help="the sweep plan (YAML; see examples/sweep.yaml)", metavar="PLAN.yaml")],
    out: Annotated[Path, typer.Option(help="parent folder of the sweep folder")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="name of the sweep folder under --out (must be new, unless --resume)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the sweep in --out/--name: run only its unfinished cells")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the cells and exit; nothing runs or is written")] = False,
    executor: Annotated[Optional[str], typer.Option(help="inline | process | slurm | submitit-local (default: the plan's, else inline)")] = None,
    jobs: Annotated[Optional[int], typer.Option(help="process executor: cells at once (default: one per CUDA GPU, else 1)")] = None,
    partition: Annotated[Optional[str], typer.Option(help="slurm: the partition (plan: slurm.partition)")] = None,
    time_min: Annotated[Optional[int], typer.Option("--time-min", help="slurm: minutes per cell (plan: slurm.time_min)")] = None,
    gpus_per_node: Annotated[Optional[int], typer.Option("--gpus-per-node", help="slurm: GPUs per cell (plan: slurm.gpus_per_node)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the merged report.json (with --dry-run: the cells) alone on stdout")] = False,
) -> None:
    """Run a grid of paired comparisons (models × workloads × budgets × profiles × ...) and merge them into one report."""
    from moebench.bench import sweep as S

    plan = S.with_execution(S.load_plan(plan_file), executor=executor, jobs=jobs, partition=partition,
                            time_min=time_min, gpus_per_node=gpus_per_node)
    if dry_run:
        S.check_executor(plan)
        _show_cells(plan, json_out)
        return
    with progress_display("cells", disable=json_out) as bar:
        d = S.run_sweep(plan, out, name=name, resume=resume, progress=progress_callback(bar))
    from moebench.cli.compare import _show_report

    _show_report(d, json_out)
    if not json_out:
        doc = S.read_manifest(d)
        last = doc["history"][-1]
        failed = [c for c in doc["cells"] if c["status"] != "done"]
        con = console()
        con.print(f"sweep: {d} — {len(doc['cells']) - len(failed)} of {len(doc['cells'])} cells done "
                  f"({len(last['ran'])} run now, {len(last['kept'])} kept from before)", highlight=False)
        for c in failed:
            con.print(f"cell {c['id']} {c['label']}: {c['status']} ({c.get('error') or 'not run'}); "
                      "rerun with --resume", highlight=False, soft_wrap=True)


def sweep_cell(
    sweep_dir: Annotated[Path, typer.Argument(help="the sweep folder")],
    cell_id: Annotated[str, typer.Argument(help="the cell's id (sweep.json)")],
    threads: Annotated[Optional[int], typer.Option(help="torch intra-op threads")] = None,
) -> None:
    """Run one cell of a sweep folder (what the process executor starts)."""
    from moebench.bench import sweep as S
    from moebench.errors import UserError

    plan = S.plan_from_manifest(sweep_dir)
    cell = next((c for c in plan.cells() if c.id == cell_id), None)
    if cell is None:
        raise UserError(f"{sweep_dir} has no cell '{cell_id}'.")
    S.run_cell(sweep_dir, plan, cell, threads=threads)


def register(app: typer.Typer) -> None:
    app.command("sweep")(handle_errors(sweep))
    app.command("sweep-cell", hidden=True)(handle_errors(sweep_cell))
