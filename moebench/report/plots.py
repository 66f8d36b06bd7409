"""The report's plots, drawn with matplotlib's Agg canvas and returned as PNG bytes.

No pyplot and no global backend switch: each plot builds a `Figure`, attaches a
`FigureCanvasAgg` and saves to memory, so drawing a report never touches the caller's matplotlib
state and works without a display. Every latency axis names its clock.

- `step_latency`        — distribution of decode-step latency per strategy (box plot)
- `latency_by_position` — median step latency against decode position, one line per strategy
- `hit_rate_per_layer`  — hit rate of each MoE layer, one line per strategy
- `bytes_per_token`     — host-to-device bytes per decoded token (on demand + prefetched)
- `tpot_vs_sweep`       — median TPOT (with its CI) against the swept cache budget, bandwidth or
                          profile, one curve per strategy
"""
from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

DPI = 100
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _figure(w: float = 7.0, h: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(ax: Any) -> None:
    """Outside the axes, on the right: curves that coincide (oracle and all-resident often do)
    stay visible, and no curve hides under the box."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _name(e: dict) -> str:
    return e["result"]["strategy"]["name"]


def _steps(e: dict) -> list[dict]:
    return [s for s in e["samples"] if s.get("kind") == "step"]


# 20 distinguishable colours (tab10, then the light half of tab20), never two alike in one plot
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")
LINESTYLES = ("-", "--", "-.", ":")
# the bounds are black and dashed, with hollow markers drawn on top: a strategy that reaches the
# bound (all-resident on the oracle's line) still shows beneath it
BOUNDS = {"oracle": {"color": "black", "linestyle": ":", "marker": "P", "mfc": "none", "zorder": 3},
          "belady": {"color": "black", "linestyle": "--", "marker": "x", "zorder": 3}}


def styles_for(names: Sequence[str]) -> dict[str, dict]:
    """One look per strategy (colour, marker, line style), distinct from every other name in the
    same plot and the same in every plot of a report; replay reports use it too."""
    out: dict[str, dict] = {}
    others = [n for n in sorted(set(names)) if n not in BOUNDS]
    for i, n in enumerate(others):
        out[n] = {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)],
                  "linestyle": LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]}
    for n in set(names) & set(BOUNDS):
        out[n] = dict(BOUNDS[n])
    return out


def step_latency(entries: Sequence[dict], clock: str) -> bytes | None:
    data = [[s["latency_ms"] for s in _steps(e)] for e in entries]
    if not any(data):
        return None
    fig, ax = _figure()
    ax.boxplot(data, tick_labels=[_name(e) for e in entries], showmeans=True)
    ax.set_ylabel(f"decode step latency, ms\n({clock})")
    ax.set_title("Step latency per strategy")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def latency_by_position(entries: Sequence[dict], clock: str, styles: dict) -> bytes | None:
    import numpy as np

    fig, ax = _figure()
    drawn = False
    for e in entries:
        by_pos: dict[int, list[float]] = defaultdict(list)
        for s in _steps(e):
            by_pos[int(s["position"])].append(s["latency_ms"])
        if by_pos:
            xs = sorted(by_pos)
            ax.plot(xs, [float(np.median(by_pos[x])) for x in xs], ms=4, label=_name(e),
                    **styles[_name(e)])
            drawn = True
    if not drawn:
        return None
    _integer_x(ax)
    ax.set_xlabel("decode position (tokens after the first)")
    ax.set_ylabel(f"median step latency, ms\n({clock})")
    ax.set_title("Latency against decode position")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _png(fig)


def hit_rate_per_layer(entries: Sequence[dict], styles: dict) -> bytes | None:
    fig, ax = _figure()
    drawn = False
    for e in entries:
        per = e["result"]["metrics"].get("hit_rate_per_layer") or []
        pts = [(i, h) for i, h in enumerate(per) if h is not None]
        if pts:
            ax.plot([i for i, _ in pts], [h for _, h in pts], ms=5, label=_name(e), **styles[_name(e)])
            drawn = True
    if not drawn:
        return None
    _integer_x(ax)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("hit rate")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("Expert cache hit rate per layer")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _png(fig)


def bytes_per_token(entries: Sequence[dict]) -> bytes | None:
    if not entries:
        return None
    fig, ax = _figure()
    names = [_name(e) for e in entries]
    m = [e["result"]["metrics"] for e in entries]
    demand = [x.get("demand_bytes_per_token", x.get("h2d_bytes_per_token", 0.0)) / 1e3 for x in m]
    pre = [x.get("prefetch_bytes_per_token", 0.0) / 1e3 for x in m]
    ax.bar(names, demand, label="on demand")
    ax.bar(names, pre, bottom=demand, label="prefetched")
    ax.set_ylabel("host→device KB per decoded token")
    ax.set_title("Copy traffic per token")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=20)
    return _png(fig)


def _sweep_x(point: dict, key: str) -> float | str:
    if key == "cache_budget":
        b = point.get("budget") or {}
        return b["fraction"] if b.get("fraction") is not None else str(point["sweep_value"])
    if key in ("bandwidth", "batch_size"):
        return float(point["sweep_value"])
    return str(point["sweep_value"])


SWEEP_LABELS = {"cache_budget": "cache budget (fraction of all experts resident)",
                "bandwidth": "host→device bandwidth, GB/s", "profile": "hardware profile",
                "batch_size": "batch size (requests decoded together)"}


def _against_sweep(doc: dict, styles: dict, value: Callable[[dict], Any], ylabel: str, title: str,
                   with_ci: bool) -> bytes | None:
    """One curve per strategy of `value(row)` against the swept setting (None: no point)."""
    key = doc.get("sweep")
    if not key or len(doc["points"]) < 2:
        return None
    xs = [_sweep_x(p, key) for p in doc["points"]]
    categorical = any(isinstance(x, str) for x in xs)
    pos = list(range(len(xs))) if categorical else xs
    curves: dict[str, list[tuple[float, Any]]] = defaultdict(list)
    for x, p in zip(pos, doc["points"]):
        for r in p["rows"]:
            v = value(r)
            if v is not None:
                curves[r["strategy"]].append((x, v))
    if not curves:
        return None
    fig, ax = _figure(8.0, 4.0)
    for name, pts in curves.items():
        if with_ci:          # value: a summary {median, ci95}
            ys = [t["median"] for _, t in pts]
            lo = [t["median"] - t["ci95"][0] if t.get("ci95") else 0.0 for _, t in pts]
            hi = [t["ci95"][1] - t["median"] if t.get("ci95") else 0.0 for _, t in pts]
            ax.errorbar([x for x, _ in pts], ys, yerr=[lo, hi], ms=5, capsize=3, label=name,
                        **styles[name])
        else:
            ax.plot([x for x, _ in pts], [y for _, y in pts], ms=5, label=name, **styles[name])
    ax.set_xlabel(SWEEP_LABELS.get(key, key.replace("_", " ")))
    if key == "batch_size":
        ax.set_xscale("log", base=2)
    if categorical:
        ax.set_xticks(pos, [str(x) for x in xs])
    clock = doc["clock"]["label"] or "simulated, profile per point"
    ax.set_ylabel(f"{ylabel}\n({clock})")
    ax.set_title(f"{title} against {key.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _png(fig)


def tpot_vs_sweep(doc: dict, styles: dict) -> bytes | None:
    return _against_sweep(doc, styles, lambda r: r["tpot_ms"] if r["tpot_ms"].get("median") is not None
                          else None, "TPOT, ms (median, 95% CI)", "TPOT", with_ci=True)


def throughput_vs_sweep(doc: dict, styles: dict) -> bytes | None:
    """Output tokens per second (every request's tokens over the end-to-end time) against the
    swept setting: what batching buys, where TPOT shows what it costs each request."""
    return _against_sweep(doc, styles, lambda r: r.get("throughput_tokens_per_s"), "output tokens / s",
                          "Throughput", with_ci=False)


def all_plots(doc: dict, entries: Sequence[dict]) -> list[tuple[str, str, bytes]]:
    """`(file stem, caption, png)` for every plot that has data. Per-strategy plots show one
    comparison point: the one where the most strategies ran (the first of those; the only one
    without a sweep)."""
    first = max(doc["points"], key=lambda p: len(p["rows"]))
    group = [e for e in entries if e.get("point", "") == first["label"]]
    at = f" ({first['label']})" if first["label"] else ""
    clock = first["clock_label"]
    styles = styles_for([r["strategy"] for p in doc["points"] for r in p["rows"]])
    made = [
        ("tpot_vs_sweep", "TPOT against the swept setting, one curve per strategy", tpot_vs_sweep(doc, styles)),
        ("throughput_vs_sweep", "Throughput (output tokens/s) against the swept setting",
         throughput_vs_sweep(doc, styles)),
        ("step_latency", f"Decode-step latency per strategy{at}", step_latency(group, clock)),
        ("latency_by_position", f"Median step latency against decode position{at}",
         latency_by_position(group, clock, styles)),
        ("hit_rate_per_layer", f"Hit rate per MoE layer{at}", hit_rate_per_layer(group, styles)),
        ("bytes_per_token", f"Host-to-device bytes per decoded token{at}", bytes_per_token(group)),
    ]
    return [(stem, cap, png) for stem, cap, png in made if png is not None]
