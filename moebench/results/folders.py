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
import math
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


RUN_FILES = ("result.json", "config.json", "environment.json", "samples.jsonl", "trace.jsonl")
REPORT_FILES = ("report.json", "report.md", "report.html")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write `path` whole or not at all (temp file + rename), with the mode a plain `open` would
    give it under the user's umask (a temp file alone would be 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def strict(obj: Any) -> Any:
    """`obj` with every non-finite float as None: strict JSON (no bare NaN / Infinity, which
    most JSON parsers refuse); a value that is not a number is unknown, not a number."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def _dumps(obj: Any, **kw: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False, default=_default, **kw)
    except ValueError:
        return json.dumps(strict(obj), allow_nan=False, default=_default, **kw)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, _dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(_dumps(r, sort_keys=True) + "\n" for r in rows))


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(out: str | Path, what: str = "--out") -> None:
    """Before any work: `out` is (or can become) a folder moebench can write into; one sentence
    naming the place otherwise, so a bad --out never throws a finished run away."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} is a file, not a folder.")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise UserError(f"{what} {out}: {base} is a file, not a folder.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out}: cannot write into {base} (permission denied).")


def check_output_file(path: str | Path, *, force: bool, what: str = "--out") -> None:
    """Before any work: `path` can be written, and is not an existing file unless `force` (a
    file moebench did not write is never overwritten silently)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; name a file.")
    if path.exists() and not force:
        raise UserError(f"{what} {path} already exists; pass --force to overwrite it.")
    check_output_dir(path.parent, what=f"{what} {path}:")


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


def check_report_name(out: Path, name: str | None) -> None:
    """Before any work: --out can hold a new report, and --name is one new folder name in it."""
    check_output_dir(out)
    if name is None:
        return
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"--name '{name}' must be a plain folder name (no path separators); "
                        "the report goes under --out.")
    d = Path(out) / name
    if d.exists():
        raise UserError(f"{d} already exists; reports are never overwritten (choose another --name).")


def new_report_dir(out: Path, name: str | None, model: str) -> Path:
    """A fresh report folder: `<out>/<name>` (which must not exist) or a timestamped one."""
    check_report_name(out, name)
    if name is None:
        return new_run_dir(out, "compare", model)
    d = Path(out) / name
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
        atomic_write(p, png)
        files[f"plot:{stem}"] = p
        links.append((f"plots/{stem}.png", cap))
    # what the report consists of, so that replacing it (`baseline update`) removes only that
    doc = dict(doc, files=sorted(p.relative_to(d).as_posix() for p in files.values()))
    write_json(files["json"], doc)
    atomic_write(files["md"], render_markdown(doc, links))
    atomic_write(files["html"], render_html(doc, made))
    return files


# ----------------------------------------------------------------------------------------------
# replacing a report in place (the committed baseline)
# ----------------------------------------------------------------------------------------------
def report_parts(d: Path) -> list[Path]:
    """Every file and folder a moebench report folder consists of, from its report.json: its own
    files (and plots), and each result folder's files. Anything else in `d` is not moebench's."""
    d = Path(d)
    try:
        doc = json.loads((d / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{d} holds no readable moebench report.json ({exc.__class__.__name__}); "
                        "it is not a report moebench can replace.") from None
    own = [d / f for f in doc.get("files") or REPORT_FILES]
    for r in doc.get("results") or []:
        rel = r.get("dir") if isinstance(r, dict) else None
        if not isinstance(rel, str) or rel.startswith(("/", "..")) or "/../" in f"/{rel}/":
            continue                        # a result folder outside the report is not part of it
        own += [d / rel / f for f in RUN_FILES]
    return [p for p in own if p.exists() or p.is_symlink()]


def replace_report(dst: Path, new: Path) -> None:
    """Make `dst` hold the report in `new` (a sibling folder, which is consumed), touching only
    what a report consists of: the old report's files and result folders go, anything else in
    `dst` stays. Refused, before anything changes, when `dst` is a file, a non-empty folder that
    is not a moebench report, or holds something of its own where the new report puts a file."""
    dst, new = Path(dst), Path(new)
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst} is a file, not a baseline folder.")
    old = set(report_parts(dst)) if dst.is_dir() and any(dst.iterdir()) else set()
    for src in sorted(new.rglob("*")):
        if src.is_file():
            target = dst / src.relative_to(new)
            if (target.exists() or target.is_symlink()) and target not in old:
                raise UserError(f"{target} is not part of the old report, and the new one would "
                                "overwrite it; move it away or choose another --dir.")
    for p in old:
        p.unlink()
    for folder in sorted({p.parent for p in old}, key=lambda p: -len(p.parts)):
        while folder != dst and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()                  # result folders (and sweep points) left empty
            folder = folder.parent
    dst.mkdir(parents=True, exist_ok=True)
    for src in sorted(new.rglob("*")):
        if src.is_file():
            target = dst / src.relative_to(new)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, target)
    for folder in sorted((p for p in new.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        folder.rmdir()
    new.rmdir()
