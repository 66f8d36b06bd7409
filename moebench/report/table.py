"""The summary and accuracy tables as strings: one source for Markdown, HTML and the terminal."""
from __future__ import annotations

from typing import Any

from moebench.report.terminal import fmt_bytes


def _g(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def _ci(ci: Any, spec: str = ".4g") -> str:
    return f" [{ci[0]:{spec}}, {ci[1]:{spec}}]" if ci else ""


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def summary_header(doc: dict, *, short: bool = False) -> list[str]:
    """The column names of `summary_cells` (`short` for a terminal's width)."""
    if short:
        return ["strategy", "TPOT ms [95% CI]", "TTFT ms", f"vs {doc['baseline']}", "p Holm",
                "verdict", "hit rate", "late / miss", "H2D / token", "stall", "eff. vs oracle"]
    unit = doc["clock"]["label"] or doc["clock"]["kind"]
    return ["strategy", f"TPOT ms, median [95% CI] ({unit})", "TTFT ms, median [95% CI]",
            f"vs {doc['baseline']} [95% CI]", "p (Holm)", "verdict", "hit rate [95% CI]",
            "late / miss rate", "H2D bytes / token", "stall share", "efficiency vs oracle"]


def tpot_cell(tpot: dict) -> str:
    if tpot.get("median") is None:
        return "–"
    if tpot.get("ci95"):
        return _g(tpot["median"]) + _ci(tpot["ci95"])
    return f"{_g(tpot['median'])} (n={tpot.get('n')}, no CI)"


def ratio_cell(ratio: dict | None) -> str:
    if not ratio or ratio.get("ratio") is None:
        return "–"
    if ratio.get("method") == "baseline":
        return "1 (baseline)"
    text = f"{ratio['ratio']:.3f}×" + _ci(ratio.get("ci95"), ".3f")
    return text if ratio.get("paired") else text + " (unpaired)"


def summary_cells(row: dict) -> list[str]:
    ratio = row.get("ratio") or {}
    name = row["strategy"] + ("" if row.get("lossless", True) else " (lossy)")
    if row.get("status") not in (None, "complete"):
        name += f" ({row['status']})"
    if row.get("in_sample"):
        name += " (IN-SAMPLE)"
    hit = "–" if row["hit_rate"] is None else f"{row['hit_rate']:.3f}" + _ci(row.get("hit_rate_ci95"), ".3f")
    late, miss = row.get("late_rate"), row.get("miss_rate")
    late_miss = "–" if late is None or miss is None else f"{late:.3f} / {miss:.3f}"
    return [name, tpot_cell(row["tpot_ms"]), tpot_cell(row.get("ttft_ms") or {}), ratio_cell(ratio),
            _g(ratio.get("p_holm"), 3) if ratio.get("method") != "baseline" else "–",
            ratio.get("verdict", "–"), hit, late_miss, fmt_bytes(row["h2d_bytes_per_token"]),
            _pct(row["stall_share"]), _g(row["efficiency_vs_oracle"], 3)]


COMPACT_VERDICTS = {"faster": "faster", "slower": "slower", "baseline": "base", "not compared": "–"}


def compact_header(doc: dict) -> list[str]:
    """The columns of `compact_cells`: what fits an 80-column terminal."""
    return ["strategy", "TPOT ms", f"vs {doc['baseline']}", "p Holm", "verdict", "hit", "H2D/tok",
            "stall"]


def compact_cells(row: dict) -> list[str]:
    """`summary_cells` without intervals or long words (the full table is in report.md)."""
    ratio = row.get("ratio") or {}
    name = row["strategy"] + ("" if row.get("lossless", True) else "*")
    if row.get("status") not in (None, "complete"):
        name += "!"
    if row.get("in_sample"):
        name += "†"
    verdict = ratio.get("verdict", "–")
    short = COMPACT_VERDICTS.get(verdict) or ("n.s." if verdict.startswith("not significant")
                                               else "few" if verdict.startswith("too few") else verdict)
    r = ratio.get("ratio")
    return [name, _g((row["tpot_ms"] or {}).get("median")),
            "1" if ratio.get("method") == "baseline" else ("–" if r is None else f"{r:.3f}×"),
            _g(ratio.get("p_holm"), 2) if ratio.get("method") != "baseline" else "–", short,
            "–" if row["hit_rate"] is None else f"{row['hit_rate']:.3f}",
            fmt_bytes(row["h2d_bytes_per_token"]), _pct(row["stall_share"])]


COMPACT_LEGEND = ("* lossy · ! incomplete · † in-sample calibration · n.s. not significant · "
                  "few: too few pairs for a test; intervals, TTFT and late/miss rates in report.md")


def _scalar(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, float)):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"[{v[0]:.4g}, {v[1]:.4g}]"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_scalar(x)}" for k, x in v.items() if not isinstance(x, (dict, list)))
    return str(v)


def accuracy_table(rows: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    """Columns from the `summary` of each measured `result["accuracy"]` (or its top-level
    scalars); None when no row was measured."""
    measured = [r for r in rows if r.get("accuracy")]
    if not measured:
        return None
    flat = []
    for r in measured:
        acc = r["accuracy"]
        summary = acc.get("summary") if isinstance(acc.get("summary"), dict) else acc
        flat.append({k: v for k, v in summary.items() if not isinstance(v, list) or len(v) == 2})
    keys = list(dict.fromkeys(k for f in flat for k in f))
    body = [[r["strategy"]] + [_scalar(f.get(k)) if k in f else "–" for k in keys]
            for r, f in zip(measured, flat)]
    return ["strategy", *keys], body
