"""`moebench trace export RESULT_DIR --format jsonl [--out FILE]`: the routing trace of a run
recorded with `moebench run --record-trace`, one JSON object per (request, step, layer):

    {"request": 0, "step": 3, "layer": 1, "experts": [..], "weights": [..], "executed": [..],
     "used": [..], "predicted": {"speculative": [..]}, "strategy": "speculative"}

Without `--out` the rows go to stdout. The format is documented in docs/strategies.md.

`moebench trace import SRC... --format vllm|sglang|moe-beyond|moebench [--model M] --out FILE`:
routing recorded by a serving engine or published as a dataset, as moebench's trace JSONL
(formats and sources: docs/replay.md, parsers: `moebench.replay.importers`).
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


@trace_app.command("import")
@handle_errors
def import_trace(
    sources: Annotated[list[str], typer.Argument(help="files, directories or globs of routing to import "
                                                      "(one trace; requests in file order)")],
    fmt: Annotated[str, typer.Option("--format", help="vllm | sglang | moe-beyond | moebench")],
    out: Annotated[Path, typer.Option(help="the trace JSONL to write")],
    model: Annotated[Optional[str], typer.Option(help="preset or checkpoint folder the routing was "
                                                      "recorded on: its layers, experts and top-k are "
                                                      "checked (SGLang's flat arrays need it)")] = None,
    predictor: Annotated[str, typer.Option(help="name of the predictor for moe-beyond's Predicted "
                                                "Expert IDs (replay it as pred:<name>)")] = "moe-beyond",
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out file")] = False,
) -> None:
    """Import routing from vLLM / SGLang responses, MoE-Beyond CSVs or moebench JSONL as one trace."""
    from moebench.replay.importers import import_trace as do_import
    from moebench.results.folders import atomic_write, check_output_file

    check_output_file(out, force=force)
    shape = None
    if model is not None:
        from moebench.models.presets import model_shape

        shape = model_shape(model)
    imp, tr, text = do_import(sources, fmt, shape=shape, predictor=predictor)
    atomic_write(out, text)
    err = console(stderr=True)
    for note in imp.notes:
        err.print(f"note: {note}", highlight=False)
    n_prefill = int((tr.step == 0).sum())
    err.print(f"wrote {imp.requests} request(s), {tr.n_steps} steps ({n_prefill} prefill) x "
              f"{tr.moe_layers} MoE layers, top-{tr.top_k}, from {len(imp.files)} file(s) to {out}",
              highlight=False)


def register(app: Any) -> None:
    app.add_typer(trace_app, name="trace")
