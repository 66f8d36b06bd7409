"""The `moebench` command line: parse, call one library function, render. No logic here.

Expected failures (a `UserError`) end with one sentence on stderr and exit code 2; set
MOEBENCH_DEBUG=1 for the traceback. Human output is rich tables; `--json` prints one document.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from moebench.cli import calibrate, compare, export, gpu, replay, sweep, trace
from moebench.cli.common import console, handle_errors, split_overrides

app = typer.Typer(no_args_is_help=False, add_completion=False, pretty_exceptions_enable=False,
                  help="Compare MoE expert-offloading and prefetching strategies on identical workloads.")


def _no_type_for_flags() -> None:
    """typer's help prints a value type for every option, `<bool>` for on/off flags too, which
    take no value; show no type for them."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_moebench", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)
    display_type_rich._moebench = True
    TyperOption.display_type_rich = display_type_rich


_no_type_for_flags()

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _version(value: bool) -> None:
    if value:
        from moebench import __version__
        typer.echo(f"moebench {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _main(ctx: typer.Context, version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")] = False) -> None:
    import logging

    level = os.environ.get("MOEBENCH_LOG", "WARNING").strip().upper()
    if level not in LOG_LEVELS:
        console(stderr=True).print(f"[bold red]error:[/] MOEBENCH_LOG={os.environ['MOEBENCH_LOG']!r} "
                                   f"is not one of {', '.join(LOG_LEVELS)}.", highlight=False)
        raise typer.Exit(2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command()
@handle_errors
def run(
    strategy: Annotated[str, typer.Option(help="strategy name (see `moebench strategies`)")] = "sync",
    model: Annotated[str, typer.Option(help="preset name or local checkpoint folder")] = "default",
    workload: Annotated[str, typer.Option(help="built-in workload name or YAML file")] = "smoke",
    cache_budget: Annotated[str, typer.Option(help="device expert cache: 8GB, 0.25 (of all experts), 16/layer, all")] = "0.25",
    clock: Annotated[str, typer.Option(help="auto | cuda | sim")] = "auto",
    profile: Annotated[str, typer.Option(help="hardware profile for the simulated clock (name or YAML)")] = "a6000-pcie4",
    out: Annotated[Path, typer.Option(help="parent folder of the new result folder")] = Path("results"),
    seed: Annotated[int, typer.Option(help="seed for random init, workloads and bootstrap")] = 0,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a workload or strategy field: KEY=VALUE")] = None,
    record_trace: Annotated[bool, typer.Option("--record-trace", help="write the routing trace (trace.jsonl)")] = False,
    accuracy: Annotated[bool, typer.Option("--accuracy", help="also measure accuracy and fidelity against the lossless reference")] = False,
    no_calibrate: Annotated[bool, typer.Option("--no-calibrate", help="a missing calibration artifact is an error")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print result.json alone on stdout")] = False,
) -> None:
    """Run one strategy on one model and workload; write a result folder."""
    from moebench.config import RunConfig
    from moebench.errors import UserError
    from moebench.bench.run import run as do_run

    if clock not in ("auto", "cuda", "sim"):
        raise UserError(f"--clock must be auto, cuda or sim, not '{clock}'.")
    wl_over, st_over = split_overrides(strategy, set_ or [])
    cfg = RunConfig(model=model, strategy=strategy, strategy_params=st_over, workload=workload,
                    workload_overrides=wl_over, cache_budget=cache_budget, clock=clock,
                    profile=profile, seed=seed, out=str(out), record_trace=record_trace,
                    accuracy=accuracy, calibrate=not no_calibrate)
    from moebench.report.terminal import progress_bar, render_result

    with progress_bar(disable=json_out) as bar:
        d, result = do_run(cfg, progress=bar.advance, on_prepared=bar.start)
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        render_result(console(), result, d)


@app.command()
@handle_errors
def strategies(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered strategies (built-ins and plugins)."""
    from moebench.strategy import REGISTRY

    from moebench.errors import UserError
    from moebench.strategy import params_dataclass_defaults

    rows = []
    for name in REGISTRY.names():
        try:
            cls = REGISTRY.get(name)
        except UserError as exc:  # a broken plugin is listed, not fatal
            rows.append({"name": name, "version": None, "lossless": None, "reads": [],
                         "replayable": None, "needs": [], "params": {}, "source": f"unavailable: {exc}"})
            continue
        traits = cls.traits_for(cls.Params())          # with its default parameters
        rows.append({"name": name, "version": cls.version, "lossless": traits.lossless,
                     "reads": sorted(traits.reads), "replayable": traits.replayable,
                     "needs": list(traits.needs), "params": params_dataclass_defaults(cls),
                     "source": cls.source, "batching": cls.batching})
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    from rich.table import Table

    t = Table(title="strategies")
    for c in ("name", "lossless", "reads", "needs", "params", "published source"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], {True: "yes", False: "no"}.get(r["lossless"], "?"), ", ".join(r["reads"]) or "-",
                  ", ".join(r["needs"]) or "-",
                  ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-", r["source"])
    console().print(t)


@app.command()
@handle_errors
def models(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List model presets: HF id, architecture, local folder, availability."""
    from moebench.models import presets as P

    default = P.default_model_name()
    rows = []
    for p in P.PRESETS.values():
        local = P.local_path(p)
        rows.append({"name": p.name, "hf_id": p.hf_id, "arch": p.arch,
                     "local_path": str(local) if local else None, "available": P.is_available(p),
                     "default": p.name == default, "tiny": p.tiny, "description": p.description,
                     **P.shape_summary(p.name)})
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.table import Table

    t = Table(title="model presets")
    for c in ("name", "hf id", "arch", "available", "local path", "description"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"] + (" (default)" if r["default"] else ""), r["hf_id"] or "-", r["arch"],
                  "yes" if r["available"] else "no", r["local_path"] or "-", r["description"])
    console().print(t)


@app.command()
@handle_errors
def env(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show versions, the GPU, driver, PCIe link (NVML) and which clock `auto` picks."""
    from moebench.hardware.environment import environment

    e = environment()
    e["clock_auto"] = "cuda-events" if e["cuda_available"] else "simulated"
    if json_out:
        sys.stdout.write(json.dumps(e, indent=2) + "\n")
        return
    from rich.table import Table

    t = Table(title="environment", show_header=False)
    for k, v in e.items():
        if k == "gpu":
            for gk, gv in v.items():
                t.add_row(f"gpu.{gk}", str(gv))
        else:
            t.add_row(k, str(v))
    console().print(t)


def main() -> None:
    app()


# The other command groups, registered in one fixed order (no discovery, no import-order effects).
calibrate.register(app)
compare.register(app)
sweep.register(app)
export.register(app)
gpu.register(app, calibrate.calibrate_app)
trace.register(app)
replay.register(app, trace.trace_app)


if __name__ == "__main__":
    main()
