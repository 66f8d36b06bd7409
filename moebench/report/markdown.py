"""report.md: the comparison as Markdown (pure: document in, text out)."""
from __future__ import annotations

from moebench.report.table import accuracy_table, summary_cells, summary_header


def clock_sentence(doc: dict) -> str:
    c = doc["clock"]
    if c["measured"]:
        return ("Clock: **cuda-events** — times were measured on the GPU with CUDA events "
                "around each decode step.")
    labels = ", ".join(c["labels"])
    return (f"Clock: **{labels}** — SIMULATED: times come from the discrete-event simulator and "
            "a hardware profile, not from a measurement.")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def context_lines(doc: dict) -> list[str]:
    m, w = doc["model"], doc["workload"]
    plan = doc.get("plan") or {}
    out = [f"model **{m['name']}** ({m.get('arch')}, {m.get('moe_layers')} MoE layers × "
           f"{m.get('num_experts')} experts, top-{m.get('top_k')})"
           + (f", asked for as '{plan['model']}'" if plan.get("model") not in (None, m["name"]) else ""),
           f"workload **{w['name']}**: {w.get('n_prompts')} prompts × {w.get('max_new_tokens')} new "
           f"tokens, sha256 `{str(w.get('sha256'))[:16]}…`",
           f"baseline **{doc['baseline']}**; p-values Holm-corrected across strategies, α = {doc['alpha']}"]
    if plan:
        out.append(f"repetitions {plan.get('repetitions')}, interleaved in a seeded shuffle "
                   f"(seed {plan.get('seed')}); every run starts with a cold cache")
    if doc.get("sweep"):
        out.append(f"sweep over **{doc['sweep']}**: "
                   + ", ".join(p["sweep_value"] or p["label"] for p in doc["points"]))
    for s in doc.get("skipped", []):
        out.append(f"not run: {s['strategy']} — {s['reason']}")
    return out


def budget_sentence(budget: dict, rows: list[dict]) -> str:
    """The point's budget, and what a strategy that forces its own budget actually held."""
    forced = [f"{r['strategy']} held {r['budget'].get('held')} ({r['budget'].get('experts')} experts, "
              f"{r['budget'].get('bytes'):,} bytes) whatever the budget"
              for r in rows if (r.get("budget") or {}).get("forced_by_strategy")]
    return (f"Cache budget {budget['spec']} ({budget['experts']} experts)"
            + ("; " + "; ".join(forced) if forced else "") + ".")


def render_markdown(doc: dict, plots: list[tuple[str, str]] = ()) -> str:
    """`plots` = (relative PNG path, caption) to link."""
    parts = [f"# moebench comparison: {doc['model']['name']} on {doc['workload']['name']}", "",
             clock_sentence(doc), ""]
    parts += [f"- {line}" for line in context_lines(doc)] + [""]
    for p in doc["points"]:
        title = "Summary" + (f" — {p['label']} (clock {p['clock_label']})" if p["label"] else "")
        parts += [f"## {title}", ""]
        rows = p["rows"]
        parts += [_md_table(summary_header(doc), [summary_cells(r) for r in rows]), ""]
        budget = p.get("budget")
        if budget:
            parts += [budget_sentence(budget, rows), ""]
    parts += ["## Accuracy", ""]
    measured = False
    for p in doc["points"]:
        table = accuracy_table(p["rows"])
        if table:
            measured = True
            if p["label"]:
                parts += [f"### {p['label']}", ""]
            parts += [_md_table(table[0], table[1]), ""]
    if not measured:
        parts += ["Accuracy was not measured (run `moebench compare --accuracy` to measure it "
                  "against the lossless reference).", ""]
    if plots:
        parts += ["## Plots", ""]
        parts += [f"![{cap}]({path})\n\n*{cap}*\n" for path, cap in plots]
    if doc.get("intervals"):
        parts += ["## What each interval is over", ""] + [f"- {n}" for n in doc["intervals"]] + [""]
    if doc.get("notes"):
        parts += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    parts += ["Per-strategy result folders: " + ", ".join(f"`{r['dir']}`" for r in doc["results"]), ""]
    return "\n".join(parts)
