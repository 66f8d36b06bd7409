"""Side by side: several strategies on one loaded model and one workload, interleaved.

    plan = ComparePlan(base=RunConfig(model="default", workload="smoke", clock="sim"),
                       strategies=("sync", "lru", "oracle"), baseline="sync", repetitions=3)
    report_dir = run_compare(plan, Path("reports"))          # result folders + report.*
    report_dir = compare_existing(["a/", "b/"], Path("reports"))   # folders written earlier

What makes the comparison fair (docs/measurement.md, "Identical workloads"):
- one `runner.prepare` for every strategy: one loaded model, one tokenised workload, one
  `workload_sha256`. A sweep point changes only the budget or the hardware profile of that
  preparation, never the model or the prompts;
- every measured run starts cold (a fresh engine and cache), and runs are interleaved: each
  repetition runs every (sweep point, strategy) once, in an order shuffled with a seed of its
  own, so drift on a real GPU (clocks, other tenants) hits every strategy alike;
- request samples pair by `(prompt_id, repetition)` across strategies; the report uses the pairs
  for a paired CI of each strategy's ratio to the baseline.

Results written earlier (`compare_existing`) are read with `moebench.results.model.load_run`
and compared only when `moebench.results.compat.check_comparable` (the rule the gate uses too)
finds their workload hash, model, clock, budget and strategy versions in agreement; anything
else raises `MismatchError` (exit 2) naming the difference.
"""
from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moebench.config import RunConfig, field_names, parse_overrides
from moebench.offload.budget import resolve_budget
from moebench.engine.session import prepare
from moebench.errors import UserError, did_you_mean
from moebench.report.document import build_report
from moebench.results.compat import check_comparable
from moebench.results.folders import check_report_name, new_report_dir, write_report
from moebench.results.model import load_report, load_run

SWEEP_KEYS = ("cache_budget", "profile", "bandwidth", "batch_size")

# The comparison the CI gate runs (and `moebench baseline update` records): the default model and
# workload on the simulated clock, so the numbers are deterministic on any CPU.
SMOKE = RunConfig(model="default", workload="smoke", cache_budget="0.25", clock="sim",
                  profile="a6000-pcie4", seed=0)


@dataclass(frozen=True)
class SweepSpec:
    """`--sweep KEY=v1,v2,...`: one comparison per value, one curve per strategy."""

    key: str
    values: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> SweepSpec:
        key, sep, rest = str(text).partition("=")
        key = key.strip()
        values = tuple(v.strip() for v in rest.split(",") if v.strip())
        if not sep or not values:
            raise UserError(f"--sweep expects KEY=v1,v2,... (e.g. cache_budget=0.1,0.25), got '{text}'.")
        if key not in SWEEP_KEYS:
            raise UserError(f"--sweep {key}: cannot sweep that{did_you_mean(key, SWEEP_KEYS)}.")
        if len(set(values)) != len(values):
            raise UserError(f"--sweep {key} lists a value twice.")
        return SweepSpec(key, values)


@dataclass(frozen=True)
class ComparePlan:
    """Everything that determines a comparison; recorded in report.json, so it can be rerun."""

    base: RunConfig
    strategies: tuple[str, ...]
    baseline: str
    params: dict = field(default_factory=dict)          # strategy -> its parameters
    repetitions: int = 1
    sweep: SweepSpec | None = None
    accuracy: bool = False
    plots: bool = True
    alpha: float = 0.05
    skipped: tuple[tuple[str, str], ...] = ()            # (strategy, why) left out of the default set

    def to_dict(self) -> dict:
        b = self.base
        return {"model": b.model, "workload": b.workload, "workload_overrides": dict(b.workload_overrides),
                "cache_budget": b.cache_budget, "clock": b.clock, "profile": b.profile, "seed": b.seed,
                "strategies": list(self.strategies), "params": self.params, "baseline": self.baseline,
                "repetitions": self.repetitions, "accuracy": self.accuracy, "alpha": self.alpha,
                "sweep": None if self.sweep is None else {"key": self.sweep.key,
                                                          "values": list(self.sweep.values)}}

    @staticmethod
    def from_dict(d: dict, *, plots: bool = True) -> ComparePlan:
        try:
            base = RunConfig(model=d["model"], workload=d["workload"],
                             workload_overrides=dict(d.get("workload_overrides") or {}),
                             cache_budget=str(d["cache_budget"]), clock=d["clock"],
                             profile=d["profile"], seed=int(d.get("seed", 0)))
            sweep = d.get("sweep")
            return ComparePlan(base, tuple(d["strategies"]), d["baseline"],
                               params={k: dict(v) for k, v in (d.get("params") or {}).items()},
                               repetitions=int(d.get("repetitions", 1)),
                               sweep=SweepSpec(sweep["key"], tuple(sweep["values"])) if sweep else None,
                               accuracy=bool(d.get("accuracy", False)), plots=plots,
                               alpha=float(d.get("alpha", 0.05)))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"the recorded comparison plan is incomplete or malformed ({exc!r}).") from None


# ----------------------------------------------------------------------------------------------
# building a plan from what the user typed
# ----------------------------------------------------------------------------------------------
def resolve_strategies(names: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The strategies to run and those skipped. Named ones must load; by default every registered
    strategy that loads is run and the others are reported as skipped, with the reason."""
    from moebench.strategy import REGISTRY

    if names is not None:
        seen = [n.strip() for n in names if n.strip()]
        if not seen:
            raise UserError("--strategies names no strategy (e.g. --strategies sync,lru); "
                            "leave it out to run every registered one.")
        dup = sorted({n for n in seen if seen.count(n) > 1})
        if dup:
            raise UserError(f"--strategies lists '{dup[0]}' twice.")
        for n in seen:
            REGISTRY.get(n)
        return tuple(seen), ()
    ok, skipped = [], []
    for n in REGISTRY.names():
        try:
            REGISTRY.get(n)
            ok.append(n)
        except UserError as exc:
            skipped.append((n, str(exc)))
    return tuple(ok), tuple(skipped)


def route_sets(strategies: Sequence[str], sets: Sequence[str]) -> tuple[dict, dict[str, dict]]:
    """`--set K=V` to the workload or to every strategy with a parameter K; `--set lru.scope=global`
    targets one strategy."""
    from moebench.strategy import strategy_params_fields
    from moebench.workloads.spec import Workload

    wl_fields = field_names(Workload)
    fields_of = {s: strategy_params_fields(s) for s in strategies}
    wl: dict = {}
    params: dict[str, dict] = {s: {} for s in strategies}
    for key, value in parse_overrides(list(sets)).items():
        prefix, dot, name = key.partition(".")
        if dot and prefix in fields_of:
            if name not in fields_of[prefix]:
                raise UserError(f"--set {key}: '{prefix}' has no parameter '{name}'"
                                f"{did_you_mean(name, fields_of[prefix])}.")
            params[prefix][name] = value
            continue
        targets = [s for s in strategies if key in fields_of[s]]
        if targets:
            for s in targets:
                params[s][key] = value
        elif key in wl_fields:
            wl[key] = value
        else:
            every = wl_fields.union(*fields_of.values())
            raise UserError(f"--set {key}: no workload field or strategy parameter of that name"
                            f"{did_you_mean(key, every)}.")
    return wl, params


def choose_baseline(strategies: Sequence[str], baseline: str | None) -> str:
    if baseline is None:
        return "sync" if "sync" in strategies else strategies[0]
    if baseline not in strategies:
        raise UserError(f"baseline '{baseline}' is not among the strategies being compared "
                        f"({', '.join(strategies)}); add it to --strategies or pick another --baseline.")
    return baseline


def interleaved_schedule(n_points: int, strategies: Sequence[str], repetitions: int,
                         seed: int) -> list[tuple[int, str, int]]:
    """`(point, strategy, repetition)` in run order: every repetition runs every pair once, in an
    order shuffled by `Random((seed, repetition))`, so no strategy always runs first or last."""
    out = []
    for rep in range(repetitions):
        block = [(p, s, rep) for p in range(n_points) for s in strategies]
        random.Random(f"moebench-compare:{seed}:{rep}").shuffle(block)
        out.extend(block)
    return out


# ----------------------------------------------------------------------------------------------
# running a comparison
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    label: str           # "" without a sweep, else "KEY=VALUE"
    value: str | None
    prep: Any


def _point_prep(prep: Any, key: str, value: str) -> Any:
    """The same preparation (model, tokens) at another budget, profile, link bandwidth or batch
    size (the same prompts, served `batch_size` at a time)."""
    from moebench.config import BudgetSpec
    from moebench.offload.profile import load_profile

    if key == "cache_budget":
        return replace(prep, budget=BudgetSpec.parse(value), cfg=replace(prep.cfg, cache_budget=value))
    if key == "batch_size":
        from moebench.workloads.spec import workload_sha256
        try:
            b = int(value)
        except ValueError:
            b = 0
        if b < 1:
            raise UserError(f"--sweep batch_size={value}: a batch size is a whole number, at least 1.")
        wl = replace(prep.workload, batch_size=b)
        wl.validate(f"--sweep batch_size={value}")
        return replace(prep, workload=wl, workload_sha=workload_sha256(wl, prep.requests),
                       cfg=replace(prep.cfg, workload_overrides={**prep.cfg.workload_overrides,
                                                                 "batch_size": b}))
    if prep.clock == "cuda":
        raise UserError(f"--sweep {key} changes the simulated hardware, but this comparison runs on "
                        "the CUDA clock; use --clock sim.")
    if key == "profile":
        return replace(prep, profile=load_profile(value), cfg=replace(prep.cfg, profile=value))
    try:
        gbps = float(value)
    except ValueError:
        gbps = -1.0
    if gbps <= 0:
        raise UserError(f"--sweep bandwidth={value}: a bandwidth is a positive number of GB/s.")
    return replace(prep, profile=prep.profile.with_bandwidth(gbps))


def _folder(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


ProgressFn = Callable[[str, int, int], None]   # (what is running, runs done, runs in all)


def run_compare(plan: ComparePlan, out: Path, *, name: str | None = None,
                progress: ProgressFn | None = None, token_progress: Callable[[int], None] | None = None,
                loaded: Any = None) -> Path:
    """Run the plan, write one result folder per (point, strategy) and the report; return its folder.

    A Ctrl-C keeps every finished run: the report is written from them, marked interrupted, and
    `KeyboardInterrupt(<report folder>)` is raised for the CLI to say where.
    """
    from moebench.bench import run as runner

    if plan.repetitions < 1:
        raise UserError("--repetitions must be at least 1.")
    check_report_name(out, name)            # before the model loads: a bad place fails now
    if loaded is None:
        budgets = list(plan.sweep.values) if plan.sweep and plan.sweep.key == "cache_budget" else None
        runner.check_budget(plan.base, [(s, plan.params.get(s)) for s in plan.strategies], budgets)
    with runner.long_lived_heap() as keep:
        prep0 = prepare(plan.base, loaded=loaded)
        keep()                              # the model and transformers are long-lived too
        return _compare_prepared(plan, out, name, prep0, progress, token_progress)


def _compare_prepared(plan: ComparePlan, out: Path, name: str | None, prep0: Any,
                      progress: ProgressFn | None, token_progress: Any) -> Path:
    from moebench.bench import run as runner
    from moebench.strategy import build_strategy

    if plan.sweep is None:
        points = [Point("", None, prep0)]
    else:
        points = [Point(f"{plan.sweep.key}={v}", v, _point_prep(prep0, plan.sweep.key, v))
                  for v in plan.sweep.values]
    for pt in points:                       # every budget must fit before the first run starts
        for s in plan.strategies:
            resolve_budget(pt.prep.budget, pt.prep.loaded.shape, build_strategy(s, plan.params.get(s)))

    schedule = interleaved_schedule(len(points), plan.strategies, plan.repetitions, plan.base.seed)
    pieces, failed, ran, interrupted = _execute(plan, points, schedule, progress, token_progress)
    notes: list[str] = []
    if failed and not pieces and not interrupted:
        raise UserError(next(iter(failed.values())))
    skipped = list(plan.skipped) + [(f"{s} @ {points[pi].label}" if points[pi].label else s, why)
                                    for (pi, s), why in failed.items()]
    if interrupted:
        notes.append("interrupted: only the runs that finished are reported")
    if progress:
        progress("writing the report", len(schedule), len(schedule))

    d = new_report_dir(out, name, prep0.loaded.name)
    entries = []
    attach = _accuracy_hook(plan, notes)
    for pi, pt in enumerate(points):
        ref = _reference(plan, pieces, pi)
        if attach is not None and ref is None and any(k[0] == pi for k in pieces):
            notes.append(f"no lossless strategy ran{' at ' + pt.label if pt.label else ''}: "
                         "accuracy has no reference and was not measured")
        for s in plan.strategies:
            if (pi, s) not in pieces:
                continue
            prep, ps = _prep_for(plan, pt, s), pieces[(pi, s)]
            result = runner.build_result(prep, ps)
            if attach is not None and ref is not None:
                attach(prep, result, ps[0], reference=ref)
            rel = Path(_folder(pt.label)) / s if pt.label else Path(s)
            runner.write_run(prep, result, ps, out_dir=d / rel)
            entries.append({"dir": rel.as_posix(), "point": pt.label, "sweep_value": pt.value,
                            "result": result, "samples": [x for p in ps for x in p.samples]})
    _write(d, entries, replace(plan, skipped=tuple(skipped)),
           schedule=[(points[p].label, s, r) for p, s, r in ran if (p, s) in pieces], notes=notes)
    if interrupted:
        raise KeyboardInterrupt(str(d))
    return d


def _prep_for(plan: ComparePlan, pt: Point, s: str) -> Any:
    """The point's preparation with strategy `s` in its config (what config.json records)."""
    return replace(pt.prep, cfg=replace(pt.prep.cfg, strategy=s, strategy_params=plan.params.get(s, {})))


def _execute(plan: ComparePlan, points: list[Point], schedule: list, progress: ProgressFn | None,
             token_progress: Any) -> tuple[dict, dict, list, bool]:
    """Run the schedule: `(pieces, failed, ran, interrupted)`; pieces and failures are keyed by
    (point index, strategy), `ran` lists the schedule entries that finished, in order.

    A UserError in one run (say, a budget too small for a strategy's prefill at one sweep point)
    drops that (point, strategy) and the others go on; Ctrl-C stops with what finished.

    On the simulated clock the lossless strategies of one (point, repetition) run together, on
    one shared forward (`moebench.engine.lockstep`), when the first of them comes up in the
    schedule; each piece is the one its own run would give, so the schedule, the pieces and
    everything written from them are unchanged. If the shared run fails in any way, each of them
    runs alone in its turn instead.
    """
    from moebench.bench import run as runner

    pieces: dict[tuple[int, str], list] = {}
    failed: dict[tuple[int, str], str] = {}
    ran: list[tuple[int, str, int]] = []
    groups = _shared_groups(plan, points, schedule)
    ready: dict[tuple[int, str, int], Any] = {}
    try:
        for i, (pi, s, rep) in enumerate(schedule):
            if progress:
                at = f" @ {points[pi].label}" if points[pi].label else ""
                progress(f"{s}{at} (repetition {rep})", i, len(schedule))
            if (pi, s) in failed:
                continue
            group = groups.pop((pi, rep), None) if s in groups.get((pi, rep), ()) else None
            if group:
                group = [g for g in group if (pi, g) not in failed]
                if progress and len(group) > 1:
                    progress(f"{', '.join(group)}{at} (repetition {rep}, one shared forward)", i,
                             len(schedule))
                ready.update(_run_shared(plan, points, pi, group, rep, token_progress))
            piece = ready.pop((pi, s, rep), None)
            if piece is None:
                try:
                    piece = runner.run_strategy(_prep_for(plan, points[pi], s), s, plan.params.get(s),
                                                repetition=rep, keep_logits=plan.accuracy,
                                                progress=token_progress)
                except UserError as exc:
                    failed[(pi, s)] = str(exc)
                    pieces.pop((pi, s), None)
                    continue
            pieces.setdefault((pi, s), []).append(piece)
            ran.append((pi, s, rep))
            if not piece.complete:
                return pieces, failed, ran, True
    except KeyboardInterrupt:
        return pieces, failed, ran, True
    return pieces, failed, ran, False


def _shared_groups(plan: ComparePlan, points: list[Point], schedule: list) -> dict[tuple[int, int], list[str]]:
    """Per (point, repetition), the strategies that run on one shared forward, in schedule order
    (only where two or more may: `runner.shareable`)."""
    from moebench.bench import run as runner

    by: dict[tuple[int, int], list[str]] = {}
    for pi, s, rep in schedule:
        by.setdefault((pi, rep), []).append(s)
    out = {}
    for (pi, rep), names in by.items():
        group = runner.shareable(points[pi].prep, names, plan.params)
        if group:
            out[(pi, rep)] = group
    return out


def _run_shared(plan: ComparePlan, points: list[Point], pi: int, group: list[str], rep: int,
                token_progress: Any) -> dict[tuple[int, str, int], Any]:
    """The group's pieces by schedule entry, or nothing when the shared run failed (each then
    runs alone, as it would have: a strategy's own UserError is raised there again)."""
    import logging

    from moebench.bench import run as runner
    from moebench.engine.lockstep import Disagreement

    if len(group) < 2:
        return {}
    preps = [_prep_for(plan, points[pi], s) for s in group]
    try:
        got = runner.run_strategies_shared(preps, group, plan.params, repetition=rep,
                                           keep_logits=plan.accuracy, progress=token_progress)
    except (UserError, Disagreement) as exc:
        if isinstance(exc, Disagreement):
            logging.getLogger("moebench").warning("%s; running %s one at a time", exc, ", ".join(group))
        return {}
    return {(pi, s, rep): piece for s, piece in zip(group, got)}


def _reference(plan: ComparePlan, pieces: dict, pi: int) -> Any:
    """The lossless reference run for accuracy: the baseline if lossless, else the first lossless one."""
    order = [plan.baseline] + [s for s in plan.strategies if s != plan.baseline]
    for s in order:
        ps = pieces.get((pi, s))
        if ps and ps[0].strategy.get("lossless"):
            return ps[0]
    return None


def _accuracy_hook(plan: ComparePlan, notes: list[str]) -> Any:
    if not plan.accuracy:
        return None
    try:
        from moebench.accuracy.run import attach_accuracy
    except ImportError:
        notes.append("accuracy was requested, but this build has no accuracy runner "
                     "(moebench.accuracy.run): accuracy was not measured")
        return None
    return attach_accuracy


def _write(d: Path, entries: list[dict], plan: ComparePlan, *, schedule: list, notes: list[str]) -> None:
    doc = build_report(entries, baseline=plan.baseline, plan=plan.to_dict(),
                       sweep=None if plan.sweep is None else plan.sweep.key, schedule=schedule,
                       skipped=list(plan.skipped), notes=notes, alpha=plan.alpha, seed=plan.base.seed)
    write_report(d, doc, entries, plots=plan.plots)


def plan_from_report(path: str | Path, *, plots: bool = True) -> ComparePlan:
    """The plan recorded in a report folder (`compare --plan-from`, `baseline check`)."""
    report = load_report(path)
    if report.plan is None:
        raise UserError(f"{path} records no comparison plan (it compared existing folders).")
    if dict(report.plan).get("kind") == "sweep":
        raise UserError(f"{path} is a sweep's merged report; rerun a sweep with `moebench sweep "
                        "PLAN.yaml --resume --name NAME` (its plan is in the sweep folder's sweep.json).")
    return ComparePlan.from_dict(dict(report.plan), plots=plots)


def compare_existing(paths: Sequence[str | Path], out: Path, *, name: str | None = None,
                     baseline: str | None = None, plots: bool = True, alpha: float = 0.05) -> Path:
    """A report over result folders written earlier (they stay where they are), after
    `check_comparable` refused any that cannot share one table."""
    check_report_name(out, name)
    runs = [load_run(p) for p in paths]
    check_comparable(runs)
    base = choose_baseline([str(r.strategy.name) for r in runs], baseline)
    d = new_report_dir(out, name, str(runs[0].model.name))
    entries = [{"dir": Path(os.path.relpath(Path(r.dir).resolve(), d.resolve())).as_posix(),
                "point": "", "sweep_value": None, "result": r.raw, "samples": list(r.samples)}
               for r in runs]
    doc = build_report(entries, baseline=base, plan=None, sweep=None, schedule=[], skipped=[],
                       notes=["compared from existing result folders"], alpha=alpha, seed=0)
    write_report(d, doc, entries, plots=plots)
    return d


__all__ = ["SMOKE", "SWEEP_KEYS", "ComparePlan", "SweepSpec", "choose_baseline", "compare_existing",
           "interleaved_schedule", "plan_from_report", "resolve_strategies", "route_sets",
           "run_compare"]
