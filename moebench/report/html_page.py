"""report.html: one self-contained page (inline CSS, plots as base64 PNG data URIs, no scripts,
no network), so it can be mailed, attached to a CI run or opened from disk anywhere."""
from __future__ import annotations

import base64
from html import escape

from moebench.report.markdown import budget_sentence, context_lines
from moebench.report.table import accuracy_table, summary_cells, summary_header

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1150px; color: #1b1b1b; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.clock { padding: .7em 1em; border-radius: 6px; font-size: 1.05em; margin: 1em 0; }
.clock.simulated { background: #fff4d6; border: 1px solid #e0b000; }
.clock.measured { background: #e3f4e1; border: 1px solid #3a9a2f; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1em; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
.notes li { font-size: .9em; color: #444; }
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_inline(text: str) -> str:
    """The few Markdown marks `context_lines` uses (**bold**, `code`) as HTML."""
    import re

    t = escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def render_html(doc: dict, plots: list[tuple[str, str, bytes]] = ()) -> str:
    """`plots` = (file stem, caption, PNG bytes), embedded in the page."""
    c = doc["clock"]
    kind = "measured" if c["measured"] else "simulated"
    if c["measured"]:
        clock = "Clock: <b>cuda-events</b> — measured on the GPU with CUDA events."
    else:
        clock = (f"Clock: <b>{escape(', '.join(c['labels']))}</b> — <b>SIMULATED</b>: times come "
                 "from the discrete-event simulator and a hardware profile, not from a measurement.")
    title = f"moebench comparison: {doc['model']['name']} on {doc['workload']['name']}"
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{escape(title)}</h1>",
           f"<div class='clock {kind}' id='clock'>{clock}</div>",
           "<ul>" + "".join(f"<li>{_md_inline(x)}</li>" for x in context_lines(doc)) + "</ul>"]
    for p in doc["points"]:
        out.append(f"<h2>Summary{escape(' — ' + p['label'] + ' (clock ' + p['clock_label'] + ')') if p['label'] else ''}</h2>")
        out.append(_table(summary_header(doc), [summary_cells(r) for r in p["rows"]]))
        if p.get("budget"):
            out.append(f"<p class='budget'>{escape(budget_sentence(p['budget'], p['rows']))}</p>")
    out.append("<h2>Accuracy</h2>")
    tables = [(p["label"], accuracy_table(p["rows"])) for p in doc["points"]]
    if any(t for _, t in tables):
        for label, t in tables:
            if t:
                out.append((f"<h3>{escape(label)}</h3>" if label else "") + _table(*t))
    else:
        out.append("<p>Accuracy was not measured (run <code>moebench compare --accuracy</code> to "
                   "measure it against the lossless reference).</p>")
    if plots:
        out.append("<h2>Plots</h2><div class='plots'>")
        for stem, cap, png in plots:
            data = base64.b64encode(png).decode("ascii")
            out.append(f"<figure id='plot-{escape(stem)}'><img alt='{escape(cap)}' "
                       f"src='data:image/png;base64,{data}'><figcaption>{escape(cap)}</figcaption></figure>")
        out.append("</div>")
    if doc.get("intervals"):
        out.append("<h2>What each interval is over</h2><ul class='notes'>"
                   + "".join(f"<li>{escape(n)}</li>" for n in doc["intervals"]) + "</ul>")
    if doc.get("notes"):
        out.append("<h2>Notes</h2><ul class='notes'>"
                   + "".join(f"<li>{escape(n)}</li>" for n in doc["notes"]) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
