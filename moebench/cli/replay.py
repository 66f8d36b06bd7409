"""`moebench replay` and `moebench trace synth`: what-if sweeps from routing alone.

    moebench replay results/<run folder>                        # defaults from the recording
    moebench replay trace.jsonl --model qwen3-30b-a3b --strategies lru,lfu,belady,oracle \\
        --sweep cache_budget=0.1,0.25,0.5 --sweep bandwidth=12,25,50 --profile a6000-pcie4
    moebench replay trace.jsonl --model qwen3-30b-a3b --hit-rate-only --sweep cache_budget=0.05,0.1
    moebench trace synth --model qwen3-30b-a3b --steps 512 --zipf 1.1 --reuse 0.6 --out t.jsonl

`synth` joins the `trace` sub-command group of `moebench.cli.trace` (next to `trace export`).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from moebench.cli.common import console, handle_errors


def _csv(values: list[str] | None) -> list[str]:
    return [v.strip() for item in (values or []) for v in item.split(",") if v.strip()]


def _parse_sweep(items: list[str]) -> dict[str, list[str]]:
    from moebench.errors import UserError, did_you_mean

    keys = ("cache_budget", "bandwidth", "profile", "batch_size")
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise UserError(f"--sweep expects KEY=V1,V2,..., got '{item}'.")
        if key not in keys:
            raise UserError(f"--sweep {key}: can sweep {', '.join(keys)}{did_you_mean(key, keys)}.")
        out.setdefault(key, []).extend(v.strip() for v in values.split(",") if v.strip())
    return out


def replay(
    trace: Annotated[Path, typer.Argument(help="a result folder recorded with --record-trace, its "
                                               "trace.jsonl, any JSONL of {step, layer, experts}, or "
                                               "a directory / quoted glob of such files (one trace)")],
    strategies: Annotated[Optional[str], typer.Option(help="comma list of replay policies "
                          "(default: sync,lru,lru-global,lfu,pin,belady,oracle and pred:<each "
                          "recorded predictor>)")] = None,
    sweep: Annotated[Optional[list[str]], typer.Option(help="cache_budget=0.1,0.25 | "
                     "bandwidth=12,25 (GB/s) | profile=a,b | batch_size=1,4,16; repeatable")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="serve the trace's requests B at a time: "
                          "each step runs the union of B requests' experts (default 1)")] = None,
    cache_budget: Annotated[Optional[str], typer.Option(help="one budget (default: the recording's, else 0.25)")] = None,
    profile: Annotated[Optional[str], typer.Option(help="hardware profile(s), comma list (default: the recording's)")] = None,
    model: Annotated[Optional[str], typer.Option(help="preset or checkpoint folder whose shapes are charged "
                                                      "(default: the recording's model)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="output folder (default reports/replay-<time>)")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="untimed steps of the first request replayed "
                                                             "first (default: the recording's)")] = None,
    hit_rate_only: Annotated[bool, typer.Option("--hit-rate-only", help="no clock: exact fast hit rates, "
                                                "report only")] = False,
    reset_per_request: Annotated[bool, typer.Option("--reset-per-request", help="every request "
                                 "starts with a cold cache and fresh policy state (default: off, "
                                 "the cache carries over)")] = False,
    warmup_tokens: Annotated[int, typer.Option(help="the first N decode tokens of each request are "
                                                    "replayed but not counted (hit rates, TPOT)")] = 0,
    issue: Annotated[str, typer.Option(help="timed | untimed: untimed adds, beside each "
                                            "pred:<source>, a row 'pred:<source> (untimed)' whose "
                                            "prefetches land instantly (default: timed)")] = "timed",
    no_consistency: Annotated[bool, typer.Option("--no-consistency", help="skip the SRP / SCH figures")] = False,
    no_bounds: Annotated[bool, typer.Option("--no-bounds", help="do not add belady and oracle")] = False,
    seed: Annotated[int, typer.Option(help="seed for the bootstrap intervals")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print replay.json alone on stdout")] = False,
) -> None:
    """Replay a routing trace through caching and prefetching policies on the simulated clock, across budgets, bandwidths and GPUs, without loading a model."""
    import time

    from moebench.errors import UserError
    from moebench.replay.sweep import ReplaySpec, check_replay_out, run_replay, write_replay

    sw = _parse_sweep(sweep or [])
    budgets = sw.get("cache_budget", []) + ([cache_budget] if cache_budget else [])
    profiles = sw.get("profile", []) + _csv([profile] if profile else [])
    try:
        bandwidths = tuple(float(b) for b in sw.get("bandwidth", []))
    except ValueError:
        raise UserError("--sweep bandwidth= takes numbers in GB/s, e.g. bandwidth=12,25,50.") from None
    if any(b <= 0 for b in bandwidths):
        raise UserError("--sweep bandwidth= values must be positive (GB/s).")
    try:
        batch_sizes = tuple(int(b) for b in sw.get("batch_size", [])) + \
            ((batch_size,) if batch_size is not None else ())
    except ValueError:
        raise UserError("--sweep batch_size= takes whole numbers, e.g. batch_size=1,4,16.") from None
    if any(b < 1 for b in batch_sizes):
        raise UserError("--batch-size and --sweep batch_size= values must be at least 1.")
    spec = ReplaySpec(trace=str(trace), policies=tuple(_csv([strategies] if strategies else [])),
                      budgets=tuple(budgets), profiles=tuple(profiles), bandwidths=bandwidths,
                      model=model, warmup_steps=warmup_steps, seed=seed,
                      hit_rate_only=hit_rate_only, consistency=not no_consistency,
                      bounds=not no_bounds, reset_per_request=reset_per_request,
                      warmup_tokens=warmup_tokens, issue=issue.strip().lower(),
                      batch_sizes=batch_sizes)
    folder = out or Path("reports") / f"replay-{time.strftime('%Y%m%d-%H%M%S')}"
    check_replay_out(folder)
    with console(stderr=True).status("replaying", spinner="dots") if not json_out else _null():
        outcome = run_replay(spec)
        files = write_replay(outcome, folder)
    if json_out:
        sys.stdout.write(files["replay.json"].read_text())
        return
    _render(outcome, folder)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def _render(outcome: Any, folder: Path) -> None:
    from rich.table import Table

    from moebench.report.terminal import fmt_bytes

    ctx = outcome.context
    clock = "none (hit rate only)" if ctx["hit_rate_only"] else \
        ", ".join(f"simulated:{p}" for p in ctx["profiles"])
    from rich import box

    con = console()
    if not con.is_terminal:             # piped to a file: nothing wraps there, print it whole
        from rich.console import Console
        con = Console(width=200)
    profiles = list(dict.fromkeys(r["profile"] for r in outcome.rows))
    wide = con.width >= 110
    cols = [("policy", lambda r: r["policy"]), ("budget", lambda r: r["budget"])]
    if len(profiles) > 1:
        cols.append(("profile", lambda r: r["profile"]))
    if len({r.get("batch_size", 1) for r in outcome.rows}) > 1:
        cols.append(("batch", lambda r: str(r.get("batch_size", 1))))

    def num(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)
    cols += [("hit", lambda r: num(r.get("hit_rate"), ".3f")),
             ("TPOT ms", lambda r: num(r.get("tpot_ms_median"), ".4g"))]
    if wide:
        cols.append(("mean", lambda r: num(r.get("tpot_ms_mean"), ".4g")))
    cols += [("÷oracle", lambda r: num(r.get("efficiency_vs_oracle"), ".3f")),
             ("H2D/tok", lambda r: fmt_bytes(r.get("h2d_bytes_per_token")))]
    t = Table(title=f"replay on {ctx['model']} — {ctx['steps']} steps — clock {clock} "
                    "(TPOT: median; ÷oracle: oracle TPOT / policy TPOT)",
              box=box.SIMPLE_HEAD if not wide else box.HEAVY_HEAD)
    for name, _ in cols:
        t.add_column(name, no_wrap=True)
    for r in outcome.rows:
        if r.get("skipped"):
            t.add_row(*[(f(r) if name in ("policy", "budget", "profile", "batch") else
                         ("skipped" if name == "hit" else "-")) for name, f in cols])
            continue
        t.add_row(*[f(r) for _, f in cols])
    con.print(t)
    c = outcome.consistency
    if c and c["segment_lengths"]:
        m = c["segment_lengths"]
        srp = c["srp"]["model"]
        con.print("routing consistency (arXiv 2505.16056): SRP " + ", ".join(
            f"m={x}: {srp[x]['srp']:.3f}" for x in m if x in srp), highlight=False)
    con.print(f"report: {folder / 'report.md'}", highlight=False)


def synth(
    model: Annotated[str, typer.Option(help="preset or checkpoint folder (layers, experts, top-k)")],
    steps: Annotated[int, typer.Option(help="decode steps per request")] = 256,
    requests: Annotated[int, typer.Option(help="requests (reuse never crosses them)")] = 1,
    zipf: Annotated[float, typer.Option(help="popularity skew: Zipf exponent (0 = uniform)")] = 1.0,
    reuse: Annotated[float, typer.Option(help="P(a slot keeps its expert from the previous step)")] = 0.5,
    cross_layer: Annotated[float, typer.Option(help="P(a slot follows the previous layer's expert "
                                                    "through a fixed permutation)")] = 0.3,
    predictor_recall: Annotated[Optional[float], typer.Option(help="add a synthetic next-layer "
                                "predictor 'synthetic+1' with this recall")] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same trace)")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="write the JSONL here (default: stdout)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing --out file")] = False,
) -> None:
    """Write a synthetic routing trace (JSONL) shaped like MODEL: popularity skew, temporal reuse, cross-layer correlation."""
    from moebench.models.presets import model_shape
    from moebench.replay.traces import trace_rows
    from moebench.results.folders import atomic_write, check_output_file
    from moebench.replay.synth import SynthSpec, synthesize

    if out is not None:
        check_output_file(out, force=force)

    shape = model_shape(model)
    spec = SynthSpec(steps=steps, requests=requests, zipf=zipf, reuse=reuse,
                     cross_layer=cross_layer, predictor_recall=predictor_recall, seed=seed)
    tr = synthesize(shape.moe_layers, shape.num_experts, shape.top_k, spec)
    import json

    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in trace_rows(tr))
    if out is None:
        sys.stdout.write(text)
        return
    atomic_write(out, text)
    console(stderr=True).print(f"wrote {tr.n_steps} steps x {shape.moe_layers} layers to {out}",
                                highlight=False)


def register(app: Any, trace_app: Any) -> None:
    """`replay`, and `synth` in the `trace` group."""
    app.command("replay")(handle_errors(replay))
    trace_app.command("synth")(handle_errors(synth))
