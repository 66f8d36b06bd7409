"""The replay report: a summary table per profile, plots against the cache budget with the
Belady / oracle bound drawn, per-layer hit rates, and the trace's routing consistency.

    rows = summary_rows(runs, shape)                       # pure: one dict per (policy, point)
    write_replay_report(folder, rows, context, consistency)  # report.md, *.png, replay.json

Plots use matplotlib's Agg canvas (no pyplot, no display). Every latency is labelled with its
clock, `simulated:<profile>`: replayed numbers are simulated, never measured.

- `hit_rate_vs_budget.png` — hit rate against the budget (fraction of all experts), one curve
  per policy; Belady's MIN (the best any demand-fetch cache can do) dashed black.
- `tpot_vs_budget[_<profile>].png` — mean simulated TPOT against the budget; the oracle (the
  lossless lower bound) dashed black; the copy-bound floor of `sync` dotted grey.
- `hit_rate_per_layer.png` — per MoE layer, one panel per budget.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moebench.results.folders import atomic_write, write_json

BOUND_HIT = "belady"
BOUND_TPOT = "oracle"


def summary_rows(runs: Sequence[Any], total_experts: int) -> list[dict]:
    """One row per replayed (policy, budget, profile); skipped points keep their reason."""
    rows = []
    for r in runs:
        row = {"policy": r.policy, "budget": r.budget, "profile": r.profile, "skipped": r.skipped,
               "dir": getattr(r, "dir", None), "batch_size": getattr(r, "batch_size", 1)}
        res = r.result
        if res is not None:
            m = res["metrics"]
            tp = m.get("tpot_ms") or {}
            row.update({
                "budget_experts": res["budget"]["experts"],
                "budget_fraction": res["budget"]["experts"] / total_experts,
                "budget_bytes": res["budget"]["bytes"],
                "clock": res["clock"]["label"],
                "hit_rate": m.get("hit_rate"), "hit_rate_ci95": m.get("hit_rate_ci95"),
                "hits": m.get("hits"), "activations": m.get("activations"),
                "hit_rate_per_layer": m.get("hit_rate_per_layer"),
                "tpot_ms_mean": tp.get("mean"), "tpot_ms_median": tp.get("median"),
                "tpot_ms_ci95": tp.get("ci95"),
                "stall_ms_per_token": m.get("stall_ms_per_token"),
                "h2d_bytes_per_token": m.get("h2d_bytes_per_token"),
                "floor_ms_per_token": m.get("floor_ms_per_token"),
                "late_rate": m.get("late_rate"), "miss_rate": m.get("miss_rate"),
                "host_rate": m.get("host_rate"), "host_share": m.get("host_share"),
                "throughput_tokens_per_s": m.get("throughput_tokens_per_s"),
                "union_per_layer": m.get("union_per_layer"),
                "h2d_bytes_per_step": m.get("h2d_bytes_per_step", m.get("h2d_bytes_per_token")),
            })
        rows.append(row)
    # efficiency_vs_oracle = oracle TPOT / policy TPOT at the same budget and profile
    oracle = {(r["budget"], r["profile"], r["batch_size"]): r.get("tpot_ms_median") for r in rows
              if r["policy"] == BOUND_TPOT and r.get("tpot_ms_median")}
    for r in rows:
        o = oracle.get((r["budget"], r["profile"], r["batch_size"]))
        t = r.get("tpot_ms_median")
        r["efficiency_vs_oracle"] = (o / t) if (o and t) else None
    return rows


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------
def _figure(w: float = 7.0, h: float = 3.8, n: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


BOUND_LABELS = {BOUND_HIT: "belady (MIN: best demand-fetch cache)", BOUND_TPOT: "oracle (lossless bound)"}


def _styles(rows: Sequence[dict]) -> dict[str, dict]:
    """The look of every policy of this report (`moebench.report.plots.styles_for`: distinct
    colours, markers and line styles; the bounds black and dashed, drawn on top), with labels."""
    from moebench.report.plots import styles_for

    styles = styles_for([r["policy"] for r in rows])
    for policy, st in styles.items():
        st["label"] = BOUND_LABELS.get(policy, policy)
    return styles


def _curves(rows: Sequence[dict], key: str, profile: str | None) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    first_batch = min((r.get("batch_size", 1) for r in rows), default=1)   # budget curves: one batch size
    for r in rows:
        if r.get(key) is None or (profile is not None and r["profile"] != profile) \
                or r.get("batch_size", 1) != first_batch:
            continue
        out.setdefault(r["policy"], []).append((r["budget_fraction"], r[key]))
    return {p: sorted(v) for p, v in out.items()}


def _draw(ax: Any, curves: dict, styles: dict, extra: Any = None) -> None:
    if extra is not None:
        extra(ax)
    for policy, pts in sorted(curves.items(), key=lambda kv: kv[0] in (BOUND_HIT, BOUND_TPOT)):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, **styles[policy])
    ax.set_xlabel("expert cache budget (fraction of all experts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def hit_rate_plot(rows: Sequence[dict]) -> bytes | None:
    profiles = sorted({r["profile"] for r in rows if r.get("hit_rate") is not None})
    curves = _curves(rows, "hit_rate", profiles[0] if profiles else None)
    if not curves:
        return None
    fig, (ax,) = _figure()
    _draw(ax, curves, _styles(rows))
    ax.set_ylabel("hit rate (decode activations)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("hit rate vs budget" + (f" ({profiles[0]})" if len(profiles) > 1 else ""))
    return _png(fig)


def tpot_plot(rows: Sequence[dict], profile: str) -> bytes | None:
    curves = _curves(rows, "tpot_ms_median", profile)
    if not curves:
        return None
    fig, (ax,) = _figure()
    floor = [(r["budget_fraction"], r["floor_ms_per_token"]) for r in rows
             if r["policy"] == "sync" and r["profile"] == profile and r.get("floor_ms_per_token")]

    def draw_floor(ax: Any) -> None:
        if floor:
            xs, ys = zip(*sorted(floor))
            ax.plot(xs, ys, color="grey", linestyle=":", label="sync copy-bound floor")
    _draw(ax, curves, _styles(rows), draw_floor)
    ax.set_ylabel(f"median TPOT ms (simulated:{profile})")
    ax.set_title(f"TPOT vs budget, clock simulated:{profile}")
    return _png(fig)


def batch_plot(rows: Sequence[dict]) -> bytes | None:
    """Against the batch size, at the first budget and profile: TPOT (each request's time per
    output token) and throughput (output tokens/s), or the hit rate without a clock."""
    done = [r for r in rows if r.get("hit_rate") is not None]
    if len({r["batch_size"] for r in done}) < 2:
        return None
    budget, profile = done[0]["budget"], done[0]["profile"]
    pick = [r for r in done if r["budget"] == budget and r["profile"] == profile]
    timed = any(r.get("tpot_ms_median") is not None for r in pick)
    keys = ([("tpot_ms_median", "TPOT (ms, median)"), ("throughput_tokens_per_s", "output tokens / s")]
            if timed else [("hit_rate", "hit rate (decode accesses)"), ("union_per_layer",
                                                                        "experts per layer per step")])
    fig, axes = _figure(10.0, 3.8, len(keys))
    styles = _styles(pick)
    for ax, (key, label) in zip(axes, keys):
        curves: dict[str, list] = {}
        for r in pick:
            y = r.get(key) if key != "union_per_layer" else (r.get(key) or None)
            if y is not None:
                curves.setdefault(r["policy"], []).append((r["batch_size"], y))
        for policy, pts in sorted(curves.items(), key=lambda kv: kv[0] in (BOUND_HIT, BOUND_TPOT)):
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, **styles[policy])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (requests decoded together)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(f"against batch size (budget {budget}, {profile})")
    return _png(fig)


def per_layer_plot(rows: Sequence[dict]) -> bytes | None:
    profiles = sorted({r["profile"] for r in rows if r.get("hit_rate_per_layer")})
    if not profiles:
        return None
    first_batch = min(r.get("batch_size", 1) for r in rows)
    sel = [r for r in rows if r["profile"] == profiles[0] and r.get("hit_rate_per_layer")
           and r.get("batch_size", 1) == first_batch]
    budgets = sorted({(r["budget_fraction"], r["budget"]) for r in sel})
    fig, axes = _figure(w=max(7.0, 3.6 * len(budgets)), h=3.8, n=len(budgets))
    styles = _styles(sel)
    for ax, (frac, spec) in zip(axes, budgets):
        for r in sorted(sel, key=lambda r: r["policy"]):
            if r["budget"] != spec:
                continue
            ys = [math.nan if v is None else v for v in r["hit_rate_per_layer"]]
            st = dict(styles[r["policy"]])
            st["marker"] = "." if len(ys) > 12 else st["marker"]
            ax.plot(range(len(ys)), ys, **st)
        ax.set_title(f"budget {spec} ({frac:.3g} of experts)", fontsize=9)
        ax.set_xlabel("MoE layer")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("hit rate")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _png(fig)


# ----------------------------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------------------------
def _f(x: Any, d: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{d}g}"
    return str(x)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(rows: Sequence[dict], context: dict, consistency: dict | None,
                    plots: Sequence[tuple[str, str]]) -> str:
    lines = [f"# Trace replay: {context.get('model')}", ""]
    lines += [f"- trace: `{context.get('trace')}` ({context.get('steps')} steps, "
              f"{context.get('requests')} requests, routing sha256 `{context.get('sha256', '')[:16]}…`)",
              f"- model shape charged: {context.get('model')} ({context.get('shape')})",
              f"- warm-up steps replayed: {context.get('warmup_steps')}",
              "- reset per request: " + ("on (every request starts with a cold cache and fresh "
                                          "policy state)" if context.get("reset_per_request") else
                                          "off (the cache carries over from request to request)"),
              f"- warm-up tokens per request (replayed, not counted): {context.get('warmup_tokens', 0)}",
              "- prefetch issue for pred: sources: " + (
                  "timed and untimed (rows `pred:<source> (untimed)`: prefetch copies land "
                  "instantly, free)" if context.get("issue") == "untimed" else
                  "timed (prefetch copies take link time)"),
              "- **clock: simulated** (`simulated:<profile>`): every latency below comes from the "
              "hardware profile's cost model applied to the recorded routing; nothing was measured "
              "and no model was run.", ""]
    if context.get("hit_rate_only"):
        lines += ["Hit-rate-only mode: no clock was run, so there is no TPOT.", ""]
    for profile in sorted({r["profile"] for r in rows}):
        sel = sorted((r for r in rows if r["profile"] == profile),
                     key=lambda r: (r.get("budget_fraction") or 0, r["policy"]))
        lines += [f"## {'profile ' + profile if not context.get('hit_rate_only') else 'hit rates'}", ""]
        header = ["policy", "budget", "experts", "hit rate", "late / miss", "TPOT ms median",
                  "TPOT ms mean",
                  "vs oracle", "stall ms/tok", "H2D bytes/tok", "floor ms/tok"]
        body = []
        skipped: dict[tuple[str, str], list[str]] = {}
        for r in sel:
            if r.get("skipped"):
                skipped.setdefault((r["budget"], r["skipped"]), []).append(r["policy"])
                continue
            late_miss = (f"{_f(r.get('late_rate'), 3)} / {_f(r.get('miss_rate'), 3)}"
                         if r.get("late_rate") is not None else "–")
            body.append([r["policy"], r["budget"], _f(r.get("budget_experts")), _f(r.get("hit_rate")),
                         late_miss, _f(r.get("tpot_ms_median")), _f(r.get("tpot_ms_mean")),
                         _f(r.get("efficiency_vs_oracle"), 3), _f(r.get("stall_ms_per_token")),
                         _f(r.get("h2d_bytes_per_token")), _f(r.get("floor_ms_per_token"))])
        lines += _table(header, body) + [""]
        for (budget, why), pols in skipped.items():
            lines += [f"- budget {budget} skipped for {', '.join(pols)}: {why}"]
        lines += [""] if skipped else []
    lines += ["`vs oracle` = oracle TPOT / policy TPOT at the same budget and profile (1 = as fast "
              "as perfect knowledge allows). `floor` = bytes moved per token / link bandwidth.", ""]
    if consistency:
        lines += consistency_markdown(consistency)
    for path, caption in plots:
        lines += [f"![{caption}]({path})", ""]
    notes = context.get("notes") or []
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def consistency_markdown(c: dict) -> list[str]:
    lines = ["## Local routing consistency", "",
             f"Source: {c['source']}. SRP: how well one fixed group of experts serves every "
             "segment of m tokens (best F1, 1 = perfectly). SCH: hit rate of a per-layer cache "
             "of c experts that knows the segment's next m tokens (mean over layers).", ""]
    lens = c.get("segment_lengths") or []
    srp = c["srp"]["model"]
    if lens:
        lines += _table(["m (tokens)"] + [str(m) for m in lens],
                        [["SRP"] + [_f(srp.get(m, {}).get("srp"), 3) for m in lens],
                         ["best group / k"] + [_f(srp.get(m, {}).get("group_ratio"), 3) for m in lens]]
                        + [[f"SCH c={cs}"] + [_f(c["sch"]["mean"].get(m, {}).get(cs), 3) for m in lens]
                           for cs in c["sch"]["cache_sizes"]])
    lines += [""] + [f"- {n}" for n in c.get("notes", [])] + [""]
    return lines


def write_replay_report(folder: Path, rows: Sequence[dict], context: dict,
                        consistency: dict | None) -> dict[str, Path]:
    """report.md, replay.json and the PNGs into `folder`; returns what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, str, bytes | None]] = [
        ("hit_rate_vs_budget.png", "hit rate vs budget", hit_rate_plot(rows)),
        ("hit_rate_per_layer.png", "per-layer hit rate", per_layer_plot(rows)),
        ("vs_batch_size.png", "against batch size", batch_plot(rows))]
    if not context.get("hit_rate_only"):
        profiles = sorted({r["profile"] for r in rows})
        for p in profiles:
            name = "tpot_vs_budget.png" if len(profiles) == 1 else f"tpot_vs_budget_{_safe(p)}.png"
            made.append((name, f"TPOT vs budget ({p})", tpot_plot(rows, p)))
    files: dict[str, Path] = {}
    links = []
    for name, caption, png in made:
        if png is None:
            continue
        p = folder / name
        tmp = p.with_suffix(".png.tmp")
        tmp.write_bytes(png)
        tmp.replace(p)
        files[name] = p
        links.append((name, caption))
    write_json(folder / "replay.json", {"context": context, "rows": list(rows),
                                        "consistency": consistency})
    files["replay.json"] = folder / "replay.json"
    atomic_write(folder / "report.md", render_markdown(rows, context, consistency, links))
    files["report.md"] = folder / "report.md"
    return files


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)
