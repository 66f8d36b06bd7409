"""`moebench export RESULT_OR_REPORT --format F [--out FILE] [--force] [--metrics M,...]`: a result
or report folder in a format CI benchmark trackers read.

    moebench export reports/baselines/smoke --format github-smaller --out bench-smaller.json
    moebench export reports/baselines/smoke --format github-bigger  --out bench-bigger.json
    moebench export results/20260101-lru-tiny --format bmf          # Bencher, on stdout
    moebench export reports/my-sweep --format csv --metrics tpot_ms,hit_rate

Formats: `github-smaller` / `github-bigger` (github-action-benchmark's customSmallerIsBetter /
customBiggerIsBetter input: one file per direction, since the action takes one tool per step),
`bmf` (Bencher Metric Format) and `csv`. Gate verdicts as JUnit XML come from `moebench gate
--format junit`. Names and units: `moebench.results.export`; the workflow: docs/ci.md.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from moebench.cli.common import console, handle_errors


def export(
    path: Annotated[Path, typer.Argument(help="a result folder, a report folder, or their result.json / report.json")],
    fmt: Annotated[str, typer.Option("--format", help="github-smaller | github-bigger | bmf | csv")],
    out: Annotated[Optional[Path], typer.Option(help="write here instead of stdout")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out file")] = False,
    metrics: Annotated[Optional[str], typer.Option(help="comma-separated metrics (default tpot_ms,ttft_ms,hit_rate,h2d_bytes_per_token,stall_ms_per_token)")] = None,
) -> None:
    """Export a result or report for CI benchmark trackers (github-action-benchmark, Bencher, CSV)."""
    from moebench.results.export import check_format, check_metrics, export_text
    from moebench.results.folders import atomic_write, check_output_file
    from moebench.results.model import load_runs

    check_format(fmt)
    chosen = check_metrics([m.strip() for m in metrics.split(",") if m.strip()] if metrics else None)
    if out is not None:
        check_output_file(out, force=force)
    _, runs = load_runs(path)
    text = export_text(runs, fmt, chosen if metrics else None)
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write(out, text)
        console(stderr=True).print(f"wrote {fmt} for {len(runs)} result(s) to {out}", highlight=False)


def register(app: Any) -> None:
    app.command("export")(handle_errors(export))
