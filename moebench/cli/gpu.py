"""GPU commands: `moebench calibrate profile` and `moebench validate-sim` (CUDA only).

    moebench calibrate profile --model qwen3-30b-a3b --out h200-qwen3.yaml
    moebench calibrate profile --model qwen3-30b-a3b --synthetic-layers 24   # no weights needed
    moebench validate-sim --strategies sync,lru,speculative,oracle --model qwen3-30b-a3b \\
        --profile h200-qwen3.yaml

`calibrate profile` measures this GPU for one model (see `moebench.hardware.measure`) and writes
a profile YAML the simulator reads (`--profile FILE` anywhere). `validate-sim` runs each strategy
under the CUDA clock and under the simulated clock with that profile (calibrating first when no
`--profile` is given) and reports, per strategy, the relative error of TPOT, stall and hit rate
(`moebench.bench.validate_sim`). Without a CUDA GPU both end with one sentence and exit code 2.

`profile` joins the `moebench calibrate` sub-app when another module registered one; otherwise
it is the top-level command `moebench calibrate-profile`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from moebench.cli.common import console, handle_errors

NO_CUDA_VALIDATE = ("validate-sim compares the simulator with the CUDA clock, and no CUDA GPU is "
                    "available here (the simulated clock alone is `moebench run --clock sim`).")


def _require_cuda(message: str) -> None:
    import torch

    from moebench.errors import UserError

    if not torch.cuda.is_available():
        raise UserError(message)


@handle_errors
def calibrate_profile(
    model: Annotated[str, typer.Option(help="preset name or local checkpoint folder")] = "default",
    out: Annotated[Optional[Path], typer.Option(help="profile YAML to write (default results/<name>.yaml)")] = None,
    name: Annotated[Optional[str], typer.Option(help="profile name (default calibrated-<gpu>-<model>)")] = None,
    synthetic_layers: Annotated[int, typer.Option(help="use random weights at the model's real sizes with this many layers (no checkpoint needed)")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print the profile as JSON")] = False,
) -> None:
    """Measure this CUDA GPU for one model -> a profile YAML the simulator reads."""
    from moebench.models.synthetic import load_for_gpu
    from moebench.hardware.measure import NO_CUDA, calibrate, calibration_prep, write_profile

    _require_cuda(NO_CUDA)
    import torch

    dev = torch.device("cuda")
    loaded = load_for_gpu(model, synthetic_layers=synthetic_layers, device=dev)
    target = out or Path("results") / f"calibrated-{loaded.name}.yaml"
    prep = calibration_prep(loaded, target.parent)
    err = console(stderr=True)
    doc = calibrate(prep, name=name, progress=lambda m: err.print(f"calibrate: {m}"))
    write_profile(doc, target)
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        return
    console().print(f"profile [bold]{doc['name']}[/] written to {target}: pinned H2D "
                     f"{doc['h2d_bandwidth_gbps']:.1f} GB/s, {doc['h2d_latency_us']:.1f} us per "
                     f"expert copy, attention {doc['attention_us']:.1f} us/layer, expert "
                     f"{doc['expert_us']:.1f} us", highlight=False)


@handle_errors
def validate_sim(
    strategies: Annotated[str, typer.Option(help="comma-separated strategies")] = "sync,lru,speculative,oracle",
    model: Annotated[str, typer.Option(help="preset name or local checkpoint folder")] = "default",
    profile: Annotated[Optional[str], typer.Option(help="calibrated profile YAML (default: calibrate now)")] = None,
    workload: Annotated[str, typer.Option(help="built-in workload name or YAML file")] = "smoke",
    cache_budget: Annotated[str, typer.Option(help="device expert cache budget")] = "0.25",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a workload field: KEY=VALUE")] = None,
    synthetic_layers: Annotated[int, typer.Option(help="random weights at the model's real sizes with this many layers")] = 0,
    out: Annotated[Path, typer.Option(help="parent folder of the report folder")] = Path("results"),
    json_out: Annotated[bool, typer.Option("--json", help="print the report JSON on stdout")] = False,
) -> None:
    """Run strategies under the CUDA clock and the simulated clock; per-strategy relative errors."""
    _require_cuda(NO_CUDA_VALIDATE)
    import torch

    from moebench.config import RunConfig, parse_overrides
    from moebench.models.synthetic import load_for_gpu
    from moebench.offload.profile import load_profile
    from moebench.results.folders import write_json
    from moebench.engine.session import prepare
    from moebench.bench.validate_sim import markdown, validate

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    from moebench.strategy import REGISTRY
    for n in names:
        REGISTRY.get(n)                                  # unknown names fail before any loading
    dev = torch.device("cuda")
    d = out / f"{time.strftime('%Y%m%d-%H%M%S')}-validate-sim"
    d.mkdir(parents=True, exist_ok=False)
    loaded = load_for_gpu(model, synthetic_layers=synthetic_layers, device=dev)
    err = console(stderr=True)
    if profile is None:
        from moebench.hardware.measure import calibrate, calibration_prep, write_profile

        doc = calibrate(calibration_prep(loaded, d, cache_budget=cache_budget),
                        progress=lambda m: err.print(f"calibrate: {m}"))
        profile = str(write_profile(doc, d / "profile.yaml"))
    hw = load_profile(profile)
    cfg = RunConfig(model=loaded.name, workload=workload, workload_overrides=parse_overrides(set_ or []),
                    cache_budget=cache_budget, clock="cuda", profile=profile)
    prep = prepare(cfg, loaded=loaded)
    report = validate(prep, hw, names, progress=lambda m: err.print(f"validate-sim: {m}"))
    write_json(d / "validate-sim.json", report)
    (d / "validate-sim.md").write_text(markdown(report) + "\n")
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
        return
    console().print(markdown(report), highlight=False)
    console().print(f"written to {d}", highlight=False)


def register(app: Any, calibrate_app: Any) -> None:
    """`validate-sim`, and `profile` in the `calibrate` group (whatever the import order)."""
    app.command("validate-sim")(validate_sim)
    calibrate_app.command("profile")(calibrate_profile)
