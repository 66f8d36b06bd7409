"""Terminal rendering (rich): the progress bar of a run and the table at its end."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


class _Bar:
    def __init__(self, progress: Any):
        self.progress = progress
        self.task = None

    def start(self, prep: Any) -> None:
        if self.progress is None:
            return
        wl = prep.workload
        total = len(prep.requests) * wl.max_new_tokens * wl.repetitions
        self.task = self.progress.add_task(
            f"{prep.cfg.strategy} on {prep.loaded.name} ({wl.name})", total=total)

    def advance(self, n: int = 1) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)


def progress(unit: str, *, disable: bool = False) -> Any:
    """The one progress display of long work, on stderr ("<what> ━━━ 3/13 runs 0:00:41"),
    transient: a rich `Progress` context, or a null context (None) when disabled."""
    from contextlib import nullcontext

    if disable:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn(unit), TimeElapsedColumn(), console=Console(stderr=True),
                    transient=True)


def progress_callback(bar: Any) -> Callable[[str, float, int], None]:
    """`(what is running, done, total)` -> one task of `bar` (a `progress(...)`; None: nothing)."""
    task = None

    def update(what: str, done: float, total: int) -> None:
        nonlocal task
        if bar is None:
            return
        if task is None:
            task = bar.add_task(what, total=total)
        bar.update(task, completed=done, description=what)
    return update


@contextmanager
def progress_bar(disable: bool = False) -> Iterator[_Bar]:
    """Decoded tokens of one run (`_Bar.start` / `advance`)."""
    with progress("tokens", disable=disable) as p:
        yield _Bar(p)


def fmt_ms(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    ci = s.get("ci95")
    txt = f"{s['median']:.4g}"
    if ci:
        txt += f" [{ci[0]:.4g}, {ci[1]:.4g}]"
    return txt


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(b) < 1000 or unit == "TB":
            return f"{b:.3g} {unit}"
        b /= 1000
    return str(b)


def in_sample_clause(result: dict) -> str | None:
    """How a result is in-sample (an artifact its strategy ran on was calibrated on prompts of
    its own evaluation workload), as a clause naming the strategy, the calibration workload and
    the shared prompts; None when it is not (result.json `in_sample`, `strategy.artifacts`)."""
    strategy = result.get("strategy") if isinstance(result.get("strategy"), dict) else {}
    arts = [a for a in strategy.get("artifacts") or () if isinstance(a, dict) and a.get("in_sample") is True]
    if not arts and result.get("in_sample") is not True:
        return None
    wl = result.get("workload") if isinstance(result.get("workload"), dict) else {}
    name, evaluated = strategy.get("name", "?"), wl.get("name", "?")
    if not arts:
        return f"'{name}' ran on artifacts calibrated on prompts of its evaluation workload '{evaluated}'"
    kinds = ", ".join(dict.fromkeys(str(a.get("kind")) for a in arts))
    shared, of = arts[0].get("calibration_shared_prompts"), wl.get("n_prompts")
    how = (f"which shares {shared} of the {of} prompts of the evaluation workload '{evaluated}'"
           if isinstance(shared, int) and isinstance(of, int) else
           f"which overlaps the evaluation workload '{evaluated}'")
    return f"'{name}' ran on {kinds} calibrated on workload '{arts[0].get('calibration_workload')}', {how}"


def in_sample_warning(result: dict) -> str | None:
    """The one line every report prints for an in-sample result (None when it is not)."""
    clause = in_sample_clause(result)
    if clause is None:
        return None
    return (f"IN-SAMPLE: {clause}; its prediction and speed figures are optimistic (calibrate on "
            "a disjoint workload, such as the default `calibration`)")


def render_result(console: Any, result: dict, d: Path | None) -> None:
    from rich.table import Table

    m = result["metrics"]
    clock = result["clock"]["label"]
    t = Table(title=f"{result['strategy']['name']} on {result['model']['name']} — "
                    f"{result['workload']['name']} — clock {clock}", show_header=False)
    t.add_column("metric")
    t.add_column("value")
    t.add_row("TPOT ms (median [95% CI])", fmt_ms(m["tpot_ms"]))
    mean = (m["tpot_ms"] or {}).get("mean")
    t.add_row("TPOT ms (mean)", "-" if mean is None else f"{mean:.4g}")
    t.add_row("TTFT ms (median [95% CI])", fmt_ms(m["ttft_ms"]))
    t.add_row("copy-bound floor ms/token", f"{m['floor_ms_per_token']:.4g}" if m.get("floor_ms_per_token") is not None else "-")
    hr = m.get("hit_rate")
    t.add_row("hit rate", "-" if hr is None else f"{hr:.3f}")
    if m.get("late_rate") is not None:
        t.add_row("late / miss rate", f"{m['late_rate']:.3f} / {m['miss_rate']:.3f}")
    t.add_row("H2D bytes / token", fmt_bytes(m["h2d_bytes_per_token"]))
    if m.get("batch_size"):            # batched decoding: per step, per output token, throughput
        t.add_row("batch size", f"{m['batch_size']} (batches of {', '.join(map(str, m['batch_sizes']))})")
        t.add_row("H2D bytes / step", fmt_bytes(m["h2d_bytes_per_step"]))
        if m.get("union_per_layer") is not None:
            t.add_row("experts / layer / step (union)", f"{m['union_per_layer']:.2f}")
    if m.get("throughput_tokens_per_s") is not None:
        t.add_row("throughput, output tokens/s", f"{m['throughput_tokens_per_s']:.4g}")
    t.add_row("stall ms / token" if not m.get("batch_size") else "stall ms / step",
              f"{m['stall_ms_per_token']:.4g}")
    t.add_row("transfer share", f"{m['transfer_share']:.3f}")
    b = result["budget"]
    held = b.get("held", b["spec"])
    forced = f" (asked for {b['spec']}; {result['strategy']['name']} always holds {held})" \
        if b.get("forced_by_strategy") else ""
    t.add_row("budget held", f"{held} = {b['experts']} experts ({fmt_bytes(b['bytes'])}){forced}")
    if m.get("batch_size"):
        t.add_row("decode steps / output tokens", f"{m['decode_tokens']} / {m['output_tokens']}")
    else:
        t.add_row("decode tokens", str(m["decode_tokens"]))
    pred = m.get("prediction")
    if pred:
        for src, d_ in pred.get("predictors", {}).items():
            t.add_row(f"prediction {src}: recall@k", f"{d_['recall_at_k']:.3f}")
    acc = result.get("accuracy")
    if acc:
        for k, v in acc.get("summary", {}).items():
            t.add_row(f"accuracy {k}", str(v))
    if result.get("status") != "complete":
        t.add_row("status", result.get("status", "?"))
    console.print(t)
    warning = in_sample_warning(result)
    if warning:
        from rich.text import Text
        console.print(Text(warning, style="bold yellow"), soft_wrap=True)
    if d is not None:
        console.print(f"result folder: {d}")
