"""Result and report folders on disk: one per run or comparison, never overwritten, every write
atomic (temp file + rename).

    d = new_run_dir("results", "lru", "tiny-qwen3-moe")     # results/<time>-lru-tiny-qwen3-moe
    write_json(d / "result.json", result)
    r = new_report_dir(Path("reports"), "smoke", model)      # reports/smoke (must be new)
    write_report(r, doc, entries)                           # report.json, .md, .html, plots/

See docs/RESULT_FORMAT.md for what goes in them; `moebench.results.model` reads them back.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moebench.errors import UserError
from moebench.report.html_page import render_html
from moebench.report.markdown import render_markdown
from moebench.report.plots import all_plots


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, sort_keys=True, default=_default) + "\n" for r in rows))


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def new_run_dir(out: str | Path, strategy: str, model: str) -> Path:
    """A fresh folder `<out>/<time>-<strategy>-<model>[-n]`; existing folders are never reused."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{strategy}-{model}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        d = root / (f"{stamp}-{safe}" + (f"-{n}" if n else ""))
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise UserError(f"cannot create a new result folder under {root}.")


def new_report_dir(out: Path, name: str | None, model: str) -> Path:
    """A fresh report folder: `<out>/<name>` (which must not exist) or a timestamped one."""
    if name is None:
        return new_run_dir(out, "compare", model)
    d = Path(out) / name
    if d.exists():
        raise UserError(f"{d} already exists; reports are never overwritten (choose another --name).")
    d.mkdir(parents=True)
    return d


def write_report(d: Path, doc: dict, entries: Sequence[dict], *, plots: bool = True) -> dict[str, Path]:
    """Write a report (`moebench.report.build_report`) into folder `d`: report.json, report.md,
    report.html and plots/*.png; returns what was written, by kind.

    With `plots=False` (the committed CI baseline) no PNG is drawn and the HTML has no figures;
    the numbers are the same.
    """
    d = Path(d)
    made = all_plots(doc, entries) if plots else []
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
