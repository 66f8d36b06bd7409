"""`moebench calibrate ...`: build the artifacts the predicting strategies run on.

    moebench calibrate default-vectors --model tiny-qwen3-moe --workload calibration
    moebench calibrate default-vectors --model M --workload W --set dv_method=ema --set dv_beta=0.9
    moebench calibrate default-vectors --model M --workload W --set estimator=linear --set estimator_layers=2
    moebench calibrate pre-attention --model M --workload W [--set width=64 --set epochs=300]

`--set` takes the calibration parameters of the strategy that uses the artifact (`speculative`
for default vectors and the estimator, `pre-attention` for its predictors) and workload fields
(`limit`, `max_new_tokens`, ...) of the calibration workload. The artifact is keyed by model
snapshot, calibration workload hash, those parameters and the strategy version, so a later
`moebench run` with the same choices finds it (a run's calibration workload is the strategy
parameter `calibration`, else the run workload's `calibration` field, default `calibration`).
An existing artifact is reused (and verified) unless `--force`.

`calibrate_app` is the sub-app: other modules attach sub-commands to it (`calibrate profile`).
"""
from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

from moebench.cli.common import console, handle_errors, split_overrides

calibrate_app = typer.Typer(no_args_is_help=True, add_completion=False,
                            help="Build calibration artifacts (default vectors, predictors, profiles).")

ModelOpt = Annotated[str, typer.Option(help="preset name or local checkpoint folder")]
WorkloadOpt = Annotated[str, typer.Option(help="calibration workload (name or YAML)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="calibration parameter or workload field: KEY=VALUE")]
ForceOpt = Annotated[bool, typer.Option("--force", help="rebuild even when the artifact exists")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
SeedOpt = Annotated[int, typer.Option(help="seed of the tiny presets' random init")]


def _prepare(strategy_name: str, model: str, workload: str, sets: list[str], seed: int) -> tuple:
    from moebench.calibration.provision import calibration_set
    from moebench.models.loading import load_model
    from moebench.strategy import build_strategy

    wl_over, st_over = split_overrides(strategy_name, sets)
    strategy = build_strategy(strategy_name, st_over)
    loaded = load_model(model, seed=seed)
    return strategy, loaded, calibration_set(loaded, workload, wl_over)


def _existing(keys: list, force: bool) -> list | None:
    from moebench.calibration import artifacts as A

    if force:
        return None
    found = [A.load(k) for k in keys]
    return found if all(a is not None for a in found) else None


def _summary(arts: list, reused: bool) -> dict:
    return {"reused": reused, "artifacts": [
        {**a.key.describe(), "path": str(a.path),
         "meta": (a.meta.get("meta", a.meta) if isinstance(a.meta, dict) else {})} for a in arts]}


def _render(doc: dict, json_out: bool, title: str) -> None:
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        return
    from rich.table import Table

    con = console()
    for a in doc["artifacts"]:
        con.print(f"[bold]{a['kind']}[/] {'(cached) ' if doc['reused'] else ''}{a['path']}", highlight=False)
        con.print(f"  model {a['model']}, calibration workload {a['calibration_workload']} "
                  f"({a['calibration_workload_sha256'][:12]}), params {a['params']}", highlight=False)
        held = a["meta"].get("heldout") or {}
        if held:
            t = Table(title=f"{title}: held-out prediction quality ({a['kind']})")
            for c in ("layer", "train / held-out prompts (tokens)", "recall@k", "router recall@k",
                      "exact set", "router exact set"):
                t.add_column(c)
            for layer, r in sorted(held.items(), key=lambda kv: int(kv[0])):
                ex, rex = r.get("heldout_exact_set"), r.get("router_heldout_exact_set")
                prompts = (f"{r['n_train_prompts']} / {r['n_heldout_prompts']} "
                           if "n_train_prompts" in r else "")
                t.add_row(layer, f"{prompts}({r['n_train']} / {r['n_heldout']})",
                          f"{r['heldout_recall_at_k']:.3f}", f"{r['router_heldout_recall_at_k']:.3f}",
                          "-" if ex is None else f"{ex:.3f}", "-" if rex is None else f"{rex:.3f}")
            con.print(t)
            con.print("  held out: whole calibration prompts, never seen in training", highlight=False)


@calibrate_app.command("default-vectors")
@handle_errors
def default_vectors(model: ModelOpt = "default", workload: WorkloadOpt = "calibration",
                    set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
                    seed: SeedOpt = 0) -> None:
    """Per-layer (experts x hidden) tables of unweighted expert outputs for `speculative`
    (and, with --set estimator=linear, its early-layer estimator)."""
    from moebench.calibration.provision import calibrate_speculative, dv_key, estimator_key

    strategy, loaded, cal = _prepare("speculative", model, workload, set_ or [], seed)
    strategy.check_model(loaded.shape)
    keys = [dv_key(loaded, cal, strategy)]
    if "spec-estimator" in strategy.traits.needs:
        keys.append(estimator_key(loaded, cal, strategy))
    elif strategy.params.estimator != "none":
        console(stderr=True).print(f"[yellow]estimator={strategy.params.estimator} is unused "
                        f"(speculate_from_layer={strategy.params.speculate_from_layer} > "
                        f"estimator_layers={strategy.params.estimator_layers}): not trained[/]",
                        highlight=False)
    arts = _existing(keys, force)
    reused = arts is not None
    if arts is None:
        arts = [a for a in calibrate_speculative(loaded, cal, strategy) if a is not None]
    _render(_summary(arts, reused), json_out, "speculative estimator")


@calibrate_app.command("pre-attention")
@handle_errors
def pre_attention(model: ModelOpt = "default", workload: WorkloadOpt = "calibration",
                  set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
                  seed: SeedOpt = 0) -> None:
    """Per-layer pre-attention predictors (two linear functions with an activation between,
    ranking-aware loss), with held-out (whole prompts) recall@k and exact-set match against the
    zero-training router variant."""
    from moebench.calibration.provision import calibrate_pre_attention, pre_attention_key

    strategy, loaded, cal = _prepare("pre-attention", model, workload, set_ or [], seed)
    arts = _existing([pre_attention_key(loaded, cal, strategy)], force)
    reused = arts is not None
    if arts is None:
        arts = [calibrate_pre_attention(loaded, cal, strategy)]
    _render(_summary(arts, reused), json_out, "pre-attention")


def register(app: Any) -> None:
    app.add_typer(calibrate_app, name="calibrate")
