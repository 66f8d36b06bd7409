"""`moebench trace export RESULT_DIR --format jsonl [--out FILE]`: the routing trace of a run
recorded with `moebench run --record-trace`, one JSON object per (request, step, layer):

    {"request": 0, "step": 3, "layer": 1, "experts": [..], "weights": [..], "executed": [..],
     "used": [..], "predicted": {"speculative": [..]}, "strategy": "speculative"}

Without `--out` the rows go to stdout. The format is documented in docs/strategies.md.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from moebench.cli.common import console, handle_errors

trace_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Routing traces recorded with `moebench run --record-trace`.")


@trace_app.command("export")
@handle_errors
def export(
    result_dir: Annotated[Path, typer.Argument(help="a result folder (or its trace.jsonl)")],
    fmt: Annotated[str, typer.Option("--format", help="output format: jsonl")] = "jsonl",
    out: Annotated[Optional[Path], typer.Option(help="write here instead of stdout")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out file")] = False,
) -> None:
    """Write the routing trace of a run as JSONL (one object per step and layer)."""
    from moebench.errors import UserError
    from moebench.results.folders import atomic_write, check_output_file
    from moebench.results.model import load_run
    from moebench.trace import export_jsonl, export_rows, read_trace

    if fmt != "jsonl":
        raise UserError(f"--format must be jsonl, not '{fmt}'.")
    if out is not None:
        check_output_file(out, force=force)
    if not result_dir.exists():
        raise UserError(f"{result_dir} does not exist.")
    folder = result_dir if result_dir.is_dir() else result_dir.parent
    strategy = load_run(folder).strategy.name if (folder / "result.json").exists() else None
    text = export_jsonl(export_rows(read_trace(result_dir), strategy=strategy))
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write(out, text)
        console(stderr=True).print(f"wrote {text.count(chr(10))} rows to {out}", highlight=False)


def register(app: Any) -> None:
    app.add_typer(trace_app, name="trace")
