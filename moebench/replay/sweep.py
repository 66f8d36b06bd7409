"""What-if sweeps over a trace: every policy at every budget and profile, then the report.

    spec = ReplaySpec(trace="results/<run>", policies=("lru", "belady"), budgets=("0.1", "0.5"))
    out = run_replay(spec)                 # pure: results, summary rows, consistency figures
    files = write_replay(out, Path("reports/replay"))   # result folders + report.md + PNGs

Defaults come from the recording when the trace sits in a result folder (model, budget,
profile, warm-up); otherwise `model` is required. The bounds (`belady` for the hit rate,
`oracle` for TPOT) are added unless `bounds=False`.

`hit_rate_only=True` skips the clock: `lru`, `lru-global` and `belady` go through the fast
paths of `moebench.replay.fast` (exact, much faster), the other policies through the general
replay; no result folders are written then (a result needs a TPOT), only the report.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moebench.errors import UserError
from moebench.offload.budget import resolve_budget

DEFAULT_POLICIES = ("sync", "lru", "lru-global", "lfu", "pin", "belady", "oracle")


@dataclass(frozen=True)
class ReplaySpec:
    trace: str
    policies: tuple[str, ...] = ()         # () = the defaults plus every recorded predictor
    budgets: tuple[str, ...] = ()          # () = the recording's budget, else 0.25
    profiles: tuple[str, ...] = ()         # () = the recording's profile, else a6000-pcie4
    bandwidths: tuple[float, ...] = ()     # GB/s: each profile on these links instead
    model: str | None = None
    warmup_steps: int | None = None
    seed: int = 0
    hit_rate_only: bool = False
    consistency: bool = True
    bounds: bool = True
    reset_per_request: bool = False   # every request starts with a cold cache and policy state
    warmup_tokens: int = 0            # the first N decode tokens of each request: replayed, not counted
    issue: str = "timed"              # "untimed": pred:<source> rows also replayed with instant prefetches
    batch_sizes: tuple[int, ...] = ()     # () = 1: batches composed from the trace (`compose_batches`)


@dataclass(frozen=True)
class SweepPoint:
    budget: str
    profile: Any


@dataclass
class ReplayOutcome:
    spec: ReplaySpec
    trace: Any
    shape: Any
    runs: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    consistency: dict | None = None
    context: dict = field(default_factory=dict)


def sweep_points(budgets: Sequence[str], profiles: Sequence[Any],
                 bandwidths: Sequence[float] = ()) -> list[SweepPoint]:
    """Every (budget, profile) pair; each bandwidth makes a profile variant on another link."""
    profs = [p.with_bandwidth(b) for p in profiles for b in bandwidths] if bandwidths else list(profiles)
    return [SweepPoint(b, p) for p in profs for b in budgets]


def replay_sweep(trace: Any, policies: Sequence[str], points: Sequence[SweepPoint], *, shape: Any,
                 warmup_steps: int | None = None, seed: int = 0,
                 progress: Callable[[int], None] | None = None, reset_per_request: bool = False,
                 warmup_tokens: int = 0) -> list:
    """Every policy at every point. A budget too small for a policy is skipped (and said); when
    nothing can run, that is an error."""
    from moebench.replay.engine import ReplayRun, replay_one

    runs = []
    for pt in points:
        for name in policies:
            try:
                runs.append(replay_one(trace, name, shape=shape, profile=pt.profile, budget=pt.budget,
                                       warmup_steps=warmup_steps, seed=seed, progress=progress,
                                       reset_per_request=reset_per_request,
                                       warmup_tokens=warmup_tokens))
            except UserError as exc:
                if "cache budget" not in str(exc):
                    raise
                runs.append(ReplayRun(name, pt.budget, pt.profile.name, None, skipped=str(exc)))
    if runs and all(r.result is None for r in runs):
        raise UserError(runs[0].skipped)
    return runs


def _resolve(spec: ReplaySpec, trace: Any) -> tuple[str, list[str], list[str], list[str]]:
    from moebench.replay.policies import policy_names

    rec = trace.recorded
    model = spec.model or (rec.model if rec else None)
    if not model:
        raise UserError("this trace does not say which model it came from; pass --model "
                        "(a preset such as qwen3-30b-a3b, or a checkpoint folder).")
    policies = list(spec.policies) or list(DEFAULT_POLICIES) + [p for p in policy_names(trace)
                                                                 if p.startswith("pred:")]
    if spec.bounds:
        for b in (("belady",) if spec.hit_rate_only else ("belady", "oracle")):
            if b not in policies:
                policies.append(b)
    budgets = list(spec.budgets) or [rec.budget if rec and rec.budget else "0.25"]
    profiles = list(spec.profiles) or [rec.profile if rec and rec.profile else "a6000-pcie4"]
    return model, policies, budgets, profiles


def run_replay(spec: ReplaySpec, progress: Callable[[int], None] | None = None) -> ReplayOutcome:
    from moebench.models.presets import model_shape
    from moebench.offload.profile import load_profile
    from moebench.replay.engine import build_schedule, check_trace_fits
    from moebench.replay.policies import build_policy
    from moebench.replay.traces import compose_batches, load_replay_trace
    from moebench.replay.report import summary_rows

    trace = load_replay_trace(spec.trace)
    rec_batch = int(((trace.recorded.workload or {}) if trace.recorded else {}).get("batch_size") or 1)
    if rec_batch != 1:
        raise UserError(f"this trace was recorded at batch_size={rec_batch}; replay composes batches "
                        "from batch-1 routing: record with batch_size=1 and pass --batch-size.")
    batch_sizes = list(dict.fromkeys(spec.batch_sizes)) or [1]
    if any(b < 1 for b in batch_sizes):
        raise UserError(f"--batch-size must be at least 1, got {min(batch_sizes)}.")
    model, policies, budgets, profiles = _resolve(spec, trace)
    rec = trace.recorded
    # Charge the bytes the live run moved: a checkpoint stored in bf16 may have run in float32.
    same_model = rec is not None and rec.model == model and rec.dtype
    shape = model_shape(model, dtype=rec.dtype if same_model else None)
    check_trace_fits(trace, shape)
    for p in policies:               # every name checked before any work
        build_policy(p, trace)
    if spec.issue not in ("timed", "untimed"):
        raise UserError(f"--issue takes timed or untimed, got '{spec.issue}'.")
    if spec.warmup_tokens < 0:
        raise UserError(f"--warmup-tokens must be 0 or more, got {spec.warmup_tokens}.")
    if spec.issue == "untimed":      # each pred: row gets its untimed twin beside it, labelled
        from moebench.replay.engine import UNTIMED
        if not any(p.startswith("pred:") for p in policies):
            raise UserError("--issue untimed applies to pred:<source> policies, and none is "
                            "replayed; add one to --strategies (the trace has: "
                            f"{', '.join(trace.sources()) or 'no predictions'}).")
        policies = [q for p in policies for q in ((p, p + UNTIMED) if p.startswith("pred:") else (p,))]
    points = sweep_points(budgets, [load_profile(p) for p in profiles], spec.bandwidths)
    rec = trace.recorded
    warm = spec.warmup_steps if spec.warmup_steps is not None else \
        (rec.warmup_steps if rec and rec.warmup_steps is not None else 0)
    out = ReplayOutcome(spec, trace, shape)
    t0 = time.perf_counter()
    for b in batch_sizes:              # each batch size: the trace's requests served b at a time
        tb = compose_batches(trace, b)
        if spec.hit_rate_only:
            runs = _hit_rate_only(tb, policies, points, shape, warm, spec.seed, progress,
                                  spec.reset_per_request, spec.warmup_tokens)
        else:
            runs = replay_sweep(tb, policies, points, shape=shape, warmup_steps=warm,
                                seed=spec.seed, progress=progress,
                                reset_per_request=spec.reset_per_request,
                                warmup_tokens=spec.warmup_tokens)
        for r in runs:
            r.batch_size = b
        out.runs.extend(runs)
    elapsed = time.perf_counter() - t0
    out.rows = summary_rows(out.runs, shape.total_experts)
    if spec.consistency:
        from moebench.replay.consistency import routing_consistency
        out.consistency = routing_consistency(trace, shape.num_experts)
    notes = sorted({n for r in out.runs if r.result for n in r.result.get("notes", [])})
    schedule = build_schedule(trace, warm, spec.warmup_tokens)
    out.context = {
        "trace": trace.source, "sha256": trace.sha256, "steps": trace.n_steps,
        "requests": len(set(trace.request.tolist())), "model": shape.name,
        "shape": f"{shape.moe_layers} MoE layers x {shape.num_experts} experts, top-{shape.top_k}, "
                 f"{shape.expert_bytes:,} bytes per expert",
        "warmup_steps": warm, "policies": policies, "budgets": budgets,
        "profiles": [p.profile.name for p in points[::len(budgets)]],
        "reset_per_request": spec.reset_per_request, "warmup_tokens": spec.warmup_tokens,
        "issue": spec.issue, "batch_sizes": batch_sizes,
        "hit_rate_only": spec.hit_rate_only, "notes": notes + list(schedule.notes),
        "recorded_strategy": (rec.strategy or {}).get("name") if rec else None,
        "replay_seconds": elapsed}
    return out


def _hit_rate_only(trace: Any, policies: Sequence[str], points: Sequence[SweepPoint], shape: Any,
                   warm: int, seed: int, progress: Callable[[int], None] | None,
                   reset_per_request: bool = False, warmup_tokens: int = 0) -> list:
    """Hit rates without the clock: fast paths where they exist, the general replay otherwise
    (prefetching policies then run at the first profile, whose timing decides lateness)."""
    from moebench.replay.engine import ReplayRun, build_schedule, replay_one
    from moebench.replay.fast import FAST, fast_hit_rates, group_sequence
    from moebench.replay.policies import build_policy

    schedule = build_schedule(trace, warm, warmup_tokens)
    seq = group_sequence(trace, schedule, shape.num_experts)
    first_profile = points[0].profile
    runs = []
    for budget in dict.fromkeys(p.budget for p in points):
        for name in policies:
            try:
                if name in FAST:
                    n_slots = resolve_budget(budget, shape, build_policy(name, trace)).experts
                    hr = fast_hit_rates(seq, name, n_slots, reset_per_request)
                    result = _hit_result(name, budget, n_slots, shape, hr, first_profile)
                    runs.append(ReplayRun(name, budget, "hit-rate-only", result))
                else:
                    r = replay_one(trace, name, shape=shape, profile=first_profile, budget=budget,
                                   warmup_steps=warm, seed=seed, progress=progress,
                                   reset_per_request=reset_per_request, warmup_tokens=warmup_tokens)
                    r.profile = "hit-rate-only"
                    r.result["metrics"]["tpot_ms"] = None
                    runs.append(r)
            except UserError as exc:
                if "cache budget" not in str(exc):
                    raise
                runs.append(ReplayRun(name, budget, "hit-rate-only", None, skipped=str(exc)))
    return runs


def _hit_result(name: str, budget: str, n_slots: int, shape: Any, hr: dict, profile: Any) -> dict:
    """The parts of a result the summary reads, for a fast (clock-less) hit-rate replay."""
    from moebench.stats import wilson_ci

    per_layer = [h / a if a else None for h, a in zip(hr["layer_hits"], hr["layer_acts"])]
    ci = wilson_ci(hr["hits"], hr["activations"]) if hr["activations"] else None
    return {"budget": {"spec": budget, "experts": n_slots, "bytes": n_slots * shape.expert_bytes},
            "clock": {"label": "none (hit rate only)"},
            "metrics": {"hit_rate": hr["hit_rate"], "hit_rate_ci95": list(ci) if ci else None,
                        "hit_rate_per_layer": per_layer, "hits": hr["hits"],
                        "activations": hr["activations"], "tpot_ms": None},
            "notes": []}


REPLAY_FILES = ("report.md", "report.html", "replay.json", "compare")


def check_replay_out(folder: Path) -> None:
    """Before any work: `folder` can be written, and holds nothing a replay report would write."""
    from moebench.results.folders import check_output_dir

    folder = Path(folder)
    check_output_dir(folder)
    taken = [n for n in REPLAY_FILES if (folder / n).exists()]
    if taken:
        raise UserError(f"{folder} already holds {taken[0]} (a replay report); pass a new --out folder.")


def write_replay(out: ReplayOutcome, folder: Path) -> dict[str, Path]:
    """Result folders (full mode) and the report into `folder` (refuses one that holds a report)."""
    from moebench.results.machine import replay_machine
    from moebench.replay.report import summary_rows, write_replay_report
    from moebench.results.folders import new_run_dir, write_json, write_jsonl

    folder = Path(folder)
    check_replay_out(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not out.spec.hit_rate_only:
        env = replay_machine()
        for r in out.runs:
            if r.result is None:
                continue
            at = f"-batch{r.batch_size}" if r.batch_size != 1 else ""
            d = new_run_dir(folder, f"{r.policy}-{r.budget}-{r.profile}{at}", out.shape.name)
            write_json(d / "config.json", {"replay": {
                "trace": out.trace.source, "routing_sha256": out.trace.sha256, "policy": r.policy,
                "model": out.shape.name, "cache_budget": r.budget, "profile": r.profile,
                "warmup_steps": out.context.get("warmup_steps"), "seed": out.spec.seed,
                "reset_per_request": out.spec.reset_per_request,
                "warmup_tokens": out.spec.warmup_tokens,
                "issue": r.result.get("replay", {}).get("issue", "timed"),
                "batch_size": r.batch_size},
                "budget_resolved": r.result["budget"]})
            write_json(d / "environment.json", env)
            write_jsonl(d / "samples.jsonl", r.samples)
            write_json(d / "result.json", r.result)
            r.dir = str(d)
        out.rows = summary_rows(out.runs, out.shape.total_experts)
    files = write_replay_report(folder, out.rows, out.context, out.consistency)
    if not out.spec.hit_rate_only:
        files.update(_compare_report(folder, out))
    return files


def _compare_report(folder: Path, out: ReplayOutcome) -> dict[str, Path]:
    """The same results as a `moebench compare` report (report.json / .md / .html, plots) in
    `folder/compare`, through `moebench.report`; policy names label the rows (`lru-global`)."""
    try:
        from moebench.report.document import build_report
        from moebench.results.folders import write_report
    except ImportError:
        return {}
    done = [r for r in out.runs if r.result is not None]
    axes = {"cache_budget": lambda r: r.budget, "profile": lambda r: r.profile,
            "batch_size": lambda r: str(r.batch_size)}
    varying = [k for k, f in axes.items() if len({f(r) for r in done}) > 1]
    sweep = varying[0] if len(varying) == 1 else (None if varying else "cache_budget")
    entries = []
    for r in done:
        label = ", ".join(f"{k}={axes[k](r)}" for k in (varying or ["cache_budget"]))
        result = dict(r.result, strategy=dict(r.result["strategy"], name=r.policy))
        entries.append({"dir": Path("..", Path(r.dir).name).as_posix(), "point": label,
                        "sweep_value": axes[sweep](r) if sweep else None,
                        "result": result, "samples": r.samples})
    if not entries:
        return {}
    baseline = "sync" if any(r.policy == "sync" for r in done) else None
    doc = build_report(entries, baseline=baseline, sweep=sweep, seed=out.spec.seed,
                       notes=["trace replay: no model was run (source: replay)"])
    return {f"compare:{k}": v for k, v in write_report(folder / "compare", doc, entries).items()}
