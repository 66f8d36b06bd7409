"""Put a report on disk: report.json, report.md, report.html and plots/*.png (atomic writes)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from moebench.report.html_page import render_html
from moebench.report.markdown import render_markdown
from moebench.results import atomic_write, write_json


def write_report(d: Path, doc: dict, entries: Sequence[dict], *, plots: bool = True) -> dict[str, Path]:
    """Write the report files into folder `d`; returns what was written, by kind.

    With `plots=False` (the committed CI baseline) no PNG is drawn and the HTML has no figures;
    the numbers are the same.
    """
    d = Path(d)
    made = []
    if plots:
        from moebench.report.plots import all_plots

        made = all_plots(doc, entries)
    files = {"json": d / "report.json", "md": d / "report.md", "html": d / "report.html"}
    links = []
    for stem, cap, png in made:
        p = d / "plots" / f"{stem}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".png.tmp")
        tmp.write_bytes(png)
        tmp.replace(p)
        files[f"plot:{stem}"] = p
        links.append((f"plots/{stem}.png", cap))
    write_json(files["json"], doc)
    atomic_write(files["md"], render_markdown(doc, links))
    atomic_write(files["html"], render_html(doc, made))
    return files
