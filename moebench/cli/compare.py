"""`moebench compare`, `moebench gate` and `moebench baseline update`.

    moebench compare --strategies sync,lru,oracle --model default --repetitions 3
    moebench compare --sweep cache_budget=0.1,0.25,0.5,1.0 --clock sim
    moebench compare results/a-sync results/b-lru            # folders written earlier
    moebench gate reports/baselines/smoke reports/my-run --fail-on tpot_ms:+5%
    moebench gate reports/baselines/smoke reports/my-run --format junit --out gate.xml
    moebench baseline check                                  # what CI runs: rerun the baseline, gate
    moebench baseline update                                 # rewrite the CI baseline, deliberately

`gate` and `baseline check` exit 0 pass, 1 regression, 2 usage or config error, 3 inconclusive or mismatched.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from moebench.cli.common import console, handle_errors
from moebench.report.terminal import progress as progress_display, progress_callback

BASELINE_DIR = Path("reports/baselines/smoke")


def _run_plan(plan: Any, out: Path, name: str | None, quiet: bool) -> Path:
    from moebench.bench.compare import run_compare

    with progress_display("runs", disable=quiet) as bar:
        return run_compare(plan, out, name=name, progress=progress_callback(bar))


def _show_report(d: Path, json_out: bool) -> None:
    from moebench.results.model import load_report

    doc = load_report(d).raw
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    from rich.table import Table

    from rich import box

    from moebench.report.markdown import clock_sentence
    from moebench.report.table import (COMPACT_LEGEND, accuracy_table, compact_cells, compact_header,
                                       summary_cells, summary_header)

    con = console()
    if not con.is_terminal:             # piped to a file: nothing wraps there, print it whole
        from rich.console import Console
        con = Console(width=200)
    compact = con.width < 150
    con.print(clock_sentence(doc).replace("**", ""), highlight=False)
    for p in doc["points"]:
        at = f" — {p['label']}" if p["label"] else ""
        t = Table(title=f"{doc['model']['name']} — {doc['workload']['name']}{at}",
                  box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD, pad_edge=not compact)
        for i, h in enumerate(compact_header(doc) if compact else summary_header(doc, short=True)):
            t.add_column(h, no_wrap=i == 0)
        for r in p["rows"]:
            t.add_row(*(compact_cells(r) if compact else summary_cells(r)))
        con.print(t)
        if compact:
            con.print(COMPACT_LEGEND, highlight=False, style="dim")
        acc = accuracy_table(p["rows"])
        if acc:                 # one line per strategy: the table is too wide for a terminal
            con.print(f"accuracy against the lossless reference{at}:", highlight=False)
            for row in acc[1]:
                con.print(f"  {row[0]}: " + " · ".join(
                    f"{h} {v}" for h, v in zip(acc[0][1:], row[1:]) if v not in ("–", "None")),
                    highlight=False)
    for line in doc.get("intervals", []):
        con.print(f"interval: {line}", highlight=False, style="dim")
    for n in doc.get("notes", []):
        if "were collapsed" in n:
            con.print(n, highlight=False)
        elif n.startswith("IN-SAMPLE:"):                 # moebench.report.terminal.in_sample_warning
            con.print(n, style="bold yellow", highlight=False, markup=False, soft_wrap=True)
    for s in doc.get("skipped", []):
        con.print(f"not run: {s['strategy']} ({s['reason']})", highlight=False)
    con.print(f"report: {d / 'report.html'}")


def compare(
    results: Annotated[Optional[list[Path]], typer.Argument(help="result folders written earlier (instead of running)")] = None,
    strategies: Annotated[Optional[str], typer.Option(help="comma-separated strategies (default: every registered one that loads)")] = None,
    model: Annotated[str, typer.Option(help="preset name or local checkpoint folder")] = "default",
    workload: Annotated[str, typer.Option(help="built-in workload name or YAML file")] = "smoke",
    cache_budget: Annotated[str, typer.Option(help="device expert cache: 8GB, 0.25 (of all experts), 16/layer, all")] = "0.25",
    clock: Annotated[str, typer.Option(help="auto | cuda | sim")] = "auto",
    profile: Annotated[str, typer.Option(help="hardware profile for the simulated clock")] = "a6000-pcie4",
    repetitions: Annotated[int, typer.Option(help="interleaved rounds; each runs every strategy once, cold")] = 1,
    baseline: Annotated[Optional[str], typer.Option(help="strategy the others are compared with (default sync)")] = None,
    sweep: Annotated[Optional[str], typer.Option(help="KEY=v1,v2,...: cache_budget, profile or bandwidth (GB/s)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="workload field or strategy parameter: KEY=VALUE (lru.scope=global for one strategy)")] = None,
    accuracy: Annotated[bool, typer.Option("--accuracy", help="measure accuracy against the lossless baseline")] = False,
    seed: Annotated[int, typer.Option(help="seed for random init, the run order and bootstrap")] = 0,
    alpha: Annotated[float, typer.Option(help="significance level for the verdicts")] = 0.05,
    out: Annotated[Path, typer.Option(help="parent folder of the new report folder")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="exact name of the report folder under --out (must be new)")] = None,
    plan_from: Annotated[Optional[Path], typer.Option("--plan-from", help="rerun the comparison recorded in this report folder")] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="skip the plots (faster; numbers unchanged)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json alone on stdout")] = False,
) -> None:
    """Run strategies side by side on one model and workload (or compare result folders); write a report."""
    from moebench.bench import compare as C
    from moebench.config import RunConfig
    from moebench.errors import UserError

    if results:
        if strategies or sweep or plan_from:
            raise UserError("give result folders or --strategies/--sweep/--plan-from, not both.")
        d = C.compare_existing(results, out, name=name, baseline=baseline, plots=not no_plots, alpha=alpha)
        _show_report(d, json_out)
        return
    if plan_from is not None:
        plan = C.plan_from_report(plan_from, plots=not no_plots)
    else:
        if clock not in ("auto", "cuda", "sim"):
            raise UserError(f"--clock must be auto, cuda or sim, not '{clock}'.")
        if not 0 < alpha < 1:
            raise UserError(f"--alpha must lie strictly between 0 and 1, not {alpha}.")
        names, skipped = C.resolve_strategies(strategies.split(",") if strategies is not None else None)
        if not names:
            raise UserError("no strategy could be loaded: " + "; ".join(w for _, w in skipped))
        wl_over, params = C.route_sets(names, set_ or [])
        base = RunConfig(model=model, workload=workload, workload_overrides=wl_over,
                         cache_budget=cache_budget, clock=clock, profile=profile, seed=seed)
        plan = C.ComparePlan(base, names, C.choose_baseline(names, baseline),
                             params={k: v for k, v in params.items() if v}, repetitions=repetitions,
                             sweep=C.SweepSpec.parse(sweep) if sweep else None, accuracy=accuracy,
                             plots=not no_plots, alpha=alpha, skipped=skipped)
    d = _run_plan(plan, out, name, quiet=json_out)
    _show_report(d, json_out)


def gate(
    baseline: Annotated[Path, typer.Argument(help="baseline result or report folder")],
    candidate: Annotated[Path, typer.Argument(help="candidate result or report folder")],
    fail_on: Annotated[Optional[list[str]], typer.Option("--fail-on", help="METRIC:+X% or METRIC:-X; the sign is the bad direction (default tpot_ms:+3%, hit_rate:-0.01, h2d_bytes_per_token:+1%)")] = None,
    alpha: Annotated[float, typer.Option(help="significance level (measured clock)")] = 0.05,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print the verdicts as JSON (same as --format json)")] = False,
    fmt: Annotated[str, typer.Option("--format", help="text | json | junit | csv (the verdicts; see docs/ci.md)")] = "text",
    out: Annotated[Optional[Path], typer.Option(help="write the --format output here (the table still prints)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out file")] = False,
) -> None:
    """Is the candidate worse than the baseline, beyond noise? Exit 0 pass, 1 regression, 2 usage, 3 inconclusive/mismatch."""
    from moebench.errors import UserError, did_you_mean
    from moebench.gate import gate as run_gate
    from moebench.gate import parse_rule

    formats = ("text", "json", "junit", "csv")
    if json_out and fmt not in ("text", "json"):
        raise UserError(f"--json and --format {fmt} disagree; give one of them.")
    fmt = "json" if json_out else fmt
    if fmt not in formats:
        raise UserError(f"Unknown gate format {fmt!r}{did_you_mean(fmt, formats)}.")
    if out is not None:
        if fmt == "text":
            raise UserError("--out writes a --format json, junit or csv file; name one of them.")
        from moebench.results.folders import check_output_file
        check_output_file(out, force=force)
    rules = [parse_rule(r) for r in fail_on or []]
    report = run_gate(baseline, candidate, rules or None, alpha=alpha, seed=seed)
    if fmt == "text" or out is not None:
        _show_gate(report)
    if fmt != "text":
        from moebench.results import export as E

        doc = report.to_dict()
        text = (json.dumps(doc, indent=2) + "\n" if fmt == "json"
                else E.gate_junit(doc) if fmt == "junit" else E.gate_csv(doc))
        if out is None:
            sys.stdout.write(text)
        else:
            from moebench.results.folders import atomic_write
            atomic_write(out, text)
            console().print(f"wrote the verdicts ({fmt}) to {out}", highlight=False)
    raise typer.Exit(int(report.exit_code))


def _show_gate(report: Any) -> None:
    from rich.table import Table

    con = console()
    if report.verdicts:
        t = Table(title="gate")
        for c in ("metric", "verdict", "baseline", "candidate", "change"):
            t.add_column(c)
        for v in report.verdicts:
            change = "–" if v.change is None else (f"{v.change * 100:+.2f}%" if v.relative else f"{v.change:+.4g}")
            t.add_row(v.metric, f"[yellow]{v.status}[/]" if v.status == "not gated" else v.status,
                      "–" if v.baseline is None else f"{v.baseline:.4g}",
                      "–" if v.candidate is None else f"{v.candidate:.4g}", change)
        con.print(t)
    for note in report.notes:
        con.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    style = {"pass": "bold green", "regression": "bold red"}.get(report.status, "bold yellow")
    con.print(f"[{style}]{report.status.upper()}[/] (exit {int(report.exit_code)}): {report.reason}",
              highlight=False, soft_wrap=True)


baseline_app = typer.Typer(no_args_is_help=True, help="The committed CI baseline (reports/baselines/).")


@contextmanager
def _reproducible() -> Iterator[None]:
    """How the baseline is made and checked: one intra-op thread (the same float reductions, hence
    the same routing, on every machine; faster on a shared 2-core box too) and a fresh artifact
    cache, so calibrations (default vectors, predictors, routing traces) are redone exactly as on
    a clean CI checkout instead of reusing whatever this machine cached."""
    import os
    import tempfile

    import torch

    threads, cache = torch.get_num_threads(), os.environ.get("MOEBENCH_CACHE")
    with tempfile.TemporaryDirectory(prefix="moebench-baseline-") as tmp:
        os.environ["MOEBENCH_CACHE"] = tmp
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            if cache is None:
                os.environ.pop("MOEBENCH_CACHE", None)
            else:
                os.environ["MOEBENCH_CACHE"] = cache


@baseline_app.command("update")
@handle_errors
def baseline_update(
    dir_: Annotated[Path, typer.Option("--dir", help="baseline report folder to rewrite")] = BASELINE_DIR,
    strategies: Annotated[Optional[str], typer.Option(help="comma-separated (default: every registered one that loads)")] = None,
    model: Annotated[str, typer.Option(help="model preset (default: the embedded default)")] = "default",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="workload field or strategy parameter: KEY=VALUE")] = None,
) -> None:
    """Run the smoke comparison on the simulated clock and replace the baseline with it."""
    import os
    import shutil
    from dataclasses import replace

    from moebench.bench import compare as C
    from moebench.errors import UserError

    names, skipped = C.resolve_strategies(strategies.split(",") if strategies is not None else None)
    if not names:
        raise UserError("no strategy could be loaded: " + "; ".join(w for _, w in skipped))
    wl_over, params = C.route_sets(names, set_ or [])
    plan = C.ComparePlan(replace(C.SMOKE, model=model, workload_overrides=wl_over), names,
                         C.choose_baseline(names, None), params={k: v for k, v in params.items() if v},
                         plots=False, skipped=skipped)
    from moebench.results.folders import replace_report

    dir_ = Path(dir_)
    if dir_.exists() and (not dir_.is_dir() or any(dir_.iterdir())):
        from moebench.results.folders import report_parts
        report_parts(dir_)                  # refuse a folder that is not a report, before running
    staging = dir_.parent / f".{dir_.name}.new-{os.getpid()}"
    try:
        with _reproducible():
            new = _run_plan(plan, dir_.parent, staging.name, quiet=False)
    except BaseException as exc:     # a baseline is complete or not written at all
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt() from None      # nothing kept: the old baseline stands
        raise
    try:
        replace_report(dir_, new)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)   # moebench's own staging copy, nothing else
        raise
    _show_report(dir_, json_out=False)
    console().print(f"baseline rewritten: {dir_} (commit it to make it the CI baseline)")


@baseline_app.command("check")
@handle_errors
def baseline_check(
    dir_: Annotated[Path, typer.Option("--dir", help="baseline report folder")] = BASELINE_DIR,
    out: Annotated[Path, typer.Option(help="parent folder of the candidate report")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="exact name of the candidate report folder")] = None,
    fail_on: Annotated[Optional[list[str]], typer.Option("--fail-on", help="METRIC:+X% or METRIC:-X (default rules when absent)")] = None,
    alpha: Annotated[float, typer.Option(help="significance level (measured clock)")] = 0.05,
    plots: Annotated[bool, typer.Option("--plots", help="draw the candidate's plots")] = False,
) -> None:
    """Rerun the comparison recorded in the baseline and gate it (what CI runs). Exit codes as `gate`."""
    from moebench.bench.compare import plan_from_report
    from moebench.gate import gate as run_gate
    from moebench.gate import parse_rule

    rules = [parse_rule(r) for r in fail_on or []]
    plan = plan_from_report(dir_, plots=plots)
    with _reproducible():
        cand = _run_plan(plan, out, name, quiet=False)
    _show_report(cand, json_out=False)
    report = run_gate(dir_, cand, rules or None, alpha=alpha)
    _show_gate(report)
    raise typer.Exit(int(report.exit_code))


def register(app: typer.Typer) -> None:
    app.command("compare")(handle_errors(compare))
    app.command("gate")(handle_errors(gate))
    app.add_typer(baseline_app, name="baseline")
