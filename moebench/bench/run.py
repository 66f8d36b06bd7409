"""One run: a workload through one strategy on the offloading engine, timed by one clock.

    prep = prepare(cfg)                      # workload, tokens, model, budget, clock (once)
    piece = run_strategy(prep, "lru", {})    # attach engine, warm up, decode every request
    result = build_result(prep, [piece])     # metrics -> result.json dict
    run(cfg)                                 # all of it, written to a new result folder

Every request decodes exactly `max_new_tokens` greedy tokens (EOS ignored) so every strategy runs
the same steps. Warm-up steps are run first and never counted. An interrupted run (Ctrl-C)
keeps the requests that finished and is written with `"status": "incomplete"`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from moebench.calibration.provision import artifacts_for
from moebench.config import RunConfig, to_dict
from moebench.engine.session import Prepared, prepare, request_notes, run_session
from moebench.errors import UserError
from moebench.results.build import Piece, RunContext, result_document
from moebench.strategy import build_strategy

log = logging.getLogger("moebench")


def run_strategy(prep: Prepared, name: str, params: dict | None = None, *, repetition: int = 0,
                 progress: Callable[[int], None] | None = None, keep_logits: bool = False,
                 record_trace: bool | None = None) -> Piece:
    """Strategy `name` with its artifacts provisioned (calibrated, recorded or from the cache),
    run once over the workload on the engine."""
    strategy = build_strategy(name, params)
    return run_session(prep, strategy, artifacts_for(prep, strategy), repetition=repetition,
                       progress=progress, keep_logits=keep_logits, record_trace=record_trace)


@contextmanager
def long_lived_heap() -> Iterator[Callable[[], None]]:
    """While it lasts, the objects alive on entry (the imported libraries) and those alive at
    each call of the function it yields (`keep()`: say, once the model is loaded; some 400,000
    objects in all) are left out of garbage collection (`gc.freeze`), so a full collection
    scans only what was allocated since, not every object of torch and transformers again (most
    of the collector's time in a comparison). They are collectable again on exit
    (`gc.unfreeze`). What is collected, and when, changes no result. Nothing is done when the
    caller froze objects of its own (unfreezing would release theirs too)."""
    import gc

    if gc.get_freeze_count():
        yield lambda: None
        return
    gc.freeze()
    try:
        yield gc.freeze
    finally:
        gc.unfreeze()


def shareable(prep: Prepared, names: list[str], params: dict | None = None) -> list[str]:
    """Those of `names` that may run on one shared forward (`moebench.engine.lockstep`): the
    lossless ones on the simulated clock, when there are two or more of them (else none), unless
    `$MOEBENCH_SHARED_FORWARD=0`."""
    import os

    from moebench.engine.lockstep import can_share

    if os.environ.get("MOEBENCH_SHARED_FORWARD", "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    built = [(n, build_strategy(n, (params or {}).get(n))) for n in names]
    ok = [(n, s) for n, s in built if s.traits.lossless]
    return [n for n, _ in ok] if can_share(prep, [s for _, s in ok]) else []


def run_strategies_shared(preps: list[Prepared], names: list[str], params: dict | None = None, *,
                          repetition: int = 0, progress: Callable[[int], None] | None = None,
                          keep_logits: bool = False) -> list[Piece]:
    """`run_strategy` for each of `names` (each with its own `preps[i]`: the same preparation,
    its own config) on one shared forward; the same pieces, in order. Raises `Disagreement`
    (`moebench.engine.lockstep`) or the first `UserError` of any of them: then run them one by
    one, as each would have run alone."""
    from moebench.engine.lockstep import run_shared

    group = []
    for prep, name in zip(preps, names):
        strategy = build_strategy(name, (params or {}).get(name))
        group.append((strategy, artifacts_for(prep, strategy)))
    return run_shared(preps[0], group, repetition=repetition, progress=progress,
                      keep_logits=keep_logits)


def check_budget(cfg: RunConfig, strategies: list[tuple[str, dict | None]],
                 budgets: list[str] | None = None) -> None:
    """Before the model loads: every budget holds what each strategy needs at once (the shape
    comes from the model's config alone)."""
    from moebench.config import BudgetSpec
    from moebench.models.presets import model_shape
    from moebench.offload.budget import resolve_budget

    shape = model_shape(cfg.model)
    for b in budgets or [cfg.cache_budget]:
        for name, params in strategies:
            resolve_budget(BudgetSpec.parse(b), shape, build_strategy(name, params))


def run_context(prep: Prepared) -> RunContext:
    """What a live run's result.json says about where its numbers come from."""
    device, device_memory = str(prep.device), None
    if prep.device.type == "cuda":
        import torch
        device = f"{prep.device} ({torch.cuda.get_device_name(prep.device)})"
        device_memory = int(torch.cuda.get_device_properties(prep.device).total_memory)
    wl, loaded = prep.workload, prep.loaded
    return RunContext(model=loaded.name, hf_id=loaded.hf_id, snapshot=loaded.snapshot,
                      shape=loaded.shape, workload=wl.name, workload_sha=prep.workload_sha,
                      n_prompts=len(prep.requests), max_new_tokens=wl.max_new_tokens, task=wl.task,
                      repetitions=wl.repetitions, clock=prep.clock, batch_size=wl.batch_size,
                      profile=prep.profile, device=device, device_memory=device_memory,
                      seed=prep.cfg.seed, repetition=prep.cfg.repetition,
                      load_notes=tuple(getattr(loaded, "notes", None) or ())
                      + tuple(request_notes(prep.requests)))


def build_result(prep: Prepared, pieces: list[Piece], *, source: str = "run") -> dict:
    """result.json for one strategy of a live run (pieces = its repetitions)."""
    return result_document(run_context(prep), pieces, source=source)


def write_run(prep: Prepared, result: dict, pieces: list[Piece], out_dir: Path | None = None) -> Path:
    from moebench.hardware.environment import environment
    from moebench.results.folders import new_run_dir, write_json, write_jsonl

    try:
        d = out_dir or new_run_dir(prep.cfg.out, result["strategy"]["name"], prep.loaded.name)
    except OSError as exc:
        raise UserError(f"cannot create a result folder under {prep.cfg.out}: "
                        f"{exc.strerror or exc}; nothing was written.") from None
    cfg = to_dict(prep.cfg)
    cfg["workload_resolved"] = to_dict(prep.workload)
    cfg["budget_resolved"] = result["budget"]
    trace = [t for p in pieces for t in p.trace]
    try:
        write_json(d / "config.json", cfg)
        write_json(d / "environment.json", environment())
        write_jsonl(d / "samples.jsonl", [s for p in pieces for s in p.samples])
        if trace:
            from moebench.trace import write_trace
            write_trace(d / "trace.jsonl", trace, strategy=result["strategy"]["name"])
        write_json(d / "result.json", result)
    except OSError as exc:
        # a full disk or a folder gone read-only mid-write: keep what was written, and say so in
        # a result.json marked incomplete when even that small file still fits
        kept = sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []
        try:
            write_json(d / "result.json", dict(result, status="incomplete", notes=list(
                result.get("notes", [])) + [f"writing the result failed: {exc.strerror or exc}"]))
            kept.append("result.json (status: incomplete)")
        except OSError:
            pass
        raise UserError(f"writing the result to {d} failed ({exc.strerror or exc}); kept: "
                        f"{', '.join(kept) or 'nothing'}.") from None
    return d


def run(cfg: RunConfig, progress: Callable[[int], None] | None = None,
        on_prepared: Callable[[Prepared], None] | None = None) -> tuple[Path, dict]:
    from moebench.results.folders import check_output_dir

    check_output_dir(cfg.out)                   # before the model loads: a bad --out fails now
    check_budget(cfg, [(cfg.strategy, cfg.strategy_params)])
    prep = prepare(cfg)
    if on_prepared:
        on_prepared(prep)
    piece = run_strategy(prep, cfg.strategy, cfg.strategy_params, repetition=cfg.repetition,
                         progress=progress)
    result = build_result(prep, [piece])
    if cfg.accuracy:
        from moebench.accuracy.run import attach_accuracy
        attach_accuracy(prep, result, piece)
    d = write_run(prep, result, [piece])
    if not piece.complete:
        raise KeyboardInterrupt(str(d))
    return d, result
