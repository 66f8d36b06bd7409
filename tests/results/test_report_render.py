"""report.html is one self-contained page whose plots really load: checked on a synthetic budget
sweep (no model needed) with Python, and in headless Chromium when /usr/bin/chromium exists."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from moebench.results.metrics import compute_metrics
from moebench.report.document import build_report
from moebench.results.folders import write_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CLOCK = "simulated:a6000-pcie4"


def _entry(strategy: str, point: str, budget: float, base_ms: float, hit: float, seed: int) -> dict:
    """A loaded result with real metrics computed from synthetic samples."""
    rng = np.random.default_rng(seed)
    samples, layers = [], 4
    for p in range(6):
        steps = [base_ms * (1 + 0.05 * rng.standard_normal()) for _ in range(8)]
        for pos, ms in enumerate(steps, start=1):
            acts = 32
            lh = [int(8 * min(1.0, max(0.0, hit + 0.05 * (i - 1.5)))) for i in range(layers)]
            samples.append({"kind": "step", "prompt_id": f"p{p}", "repetition": 0, "position": pos,
                            "latency_ms": ms, "stall_ms": ms * (1 - hit) / 2, "h2d_bytes": int(1e5 * (1 - hit)),
                            "demand_bytes": int(1e5 * (1 - hit)), "prefetch_bytes": 0,
                            "hits": sum(lh), "activations": acts, "late": 0, "misses": acts - sum(lh),
                            "layer_hits": lh, "layer_late": [0] * layers,
                            "layer_misses": [8 - h for h in lh], "copy_busy_ms": ms / 3})
        samples.append({"kind": "request", "prompt_id": f"p{p}", "repetition": 0, "ttft_ms": 3.0,
                        "tpot_ms": float(np.mean(steps)), "e2e_ms": 3.0 + sum(steps), "n_out": 9})
    metrics = compute_metrics(samples, moe_layers=layers, link_gbps=25.9, seed=0)
    result = {
        "schema_version": 1, "status": "complete", "source": "run",
        "model": {"name": "tiny-qwen3-moe", "arch": "qwen3_moe", "moe_layers": layers,
                  "num_experts": 32, "top_k": 8, "snapshot": "s"},
        "strategy": {"name": strategy, "version": 1, "params": {}, "lossless": True},
        "workload": {"name": "smoke", "sha256": "a" * 64, "n_prompts": 6, "max_new_tokens": 9},
        "clock": {"kind": "simulated", "profile": "a6000-pcie4", "label": CLOCK},
        "budget": {"spec": str(budget), "bytes": int(budget * 128) * 18432, "experts": int(budget * 128)},
        "metrics": metrics, "accuracy": None, "notes": [],
    }
    return {"dir": f"{point}/{strategy}", "point": point, "sweep_value": str(budget),
            "result": result, "samples": samples}


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    entries = []
    for i, budget in enumerate((0.25, 0.5, 1.0)):
        point = f"cache_budget={budget}"
        entries += [_entry("sync", point, budget, 1.10, 0.0, 10 * i),
                    _entry("lru", point, budget, 1.0 - 0.2 * budget, 0.5 + 0.4 * budget, 10 * i + 1),
                    _entry("oracle", point, budget, 0.9 - 0.15 * budget, 0.7 + 0.3 * budget, 10 * i + 2)]
    doc = build_report(entries, baseline="sync", sweep="cache_budget")
    d = tmp_path_factory.mktemp("page")
    write_report(d, doc, entries)
    return d / "report.html"


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)]


def test_page_is_self_contained_with_every_plot_embedded(page: Path):
    from PIL import Image

    html = page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    imgs = _images(html)
    assert len(imgs) == 6         # the four per-strategy plots + TPOT and throughput vs budget
    for png in imgs:
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.size[0] >= 600
        px = np.asarray(im.convert("RGB"), dtype=float)
        assert px.std() > 10                       # drawn, not blank
    assert CLOCK in html and "efficiency vs oracle" in html


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={cwd / 'profile'}", "--force-device-scale-factor=1",
           "--window-size=1200,2000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


PROBE = """<script>
window.addEventListener('load', () => {
  const rows = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return [i.complete ? 1 : 0, i.naturalWidth, i.naturalHeight, r.left, r.top, r.width, r.height].join(',');
  });
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = rows.join(';');
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_its_plots_visible(page: Path, tmp_path: Path):
    from PIL import Image

    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe_page.as_uri(), cwd=tmp_path)
    m = re.search(r"<pre id=\"probe\">([^<]*)</pre>", dom.stdout)
    assert m, f"no probe in the DOM: {dom.stderr[-500:]}"
    rows = [[float(x) for x in r.split(",")] for r in m.group(1).split(";")]
    assert len(rows) == 6
    for complete, nat_w, nat_h, *_ in rows:
        assert complete == 1 and nat_w >= 600 and nat_h >= 300      # decoded, not broken

    shot = tmp_path / "shot.png"
    r = _chromium(f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    assert shot.exists(), r.stderr[-500:]
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    visible = 0
    for *_, left, top, w, h in rows:
        if top + h > px.shape[0]:
            continue                                # below the 2000-px window
        crop = px[int(top):int(top + h), int(left):int(left + w)]
        colourful = (crop.max(axis=2) - crop.min(axis=2)) > 40      # plot lines and bars, not grey
        assert crop.std() > 10 and colourful.mean() > 0.0005, (left, top, w, h)
        visible += 1
    assert visible >= 2


def test_a_measured_report_says_so_and_clocks_never_mix():
    from moebench.errors import MismatchError
    from moebench.report.html_page import render_html
    from moebench.report.markdown import render_markdown

    a, b = _entry("sync", "", 0.25, 1.1, 0.0, 1), _entry("lru", "", 0.25, 0.9, 0.6, 2)
    for e in (a, b):
        e["result"]["clock"] = {"kind": "cuda-events", "profile": None, "label": "cuda-events"}
    doc = build_report([a, b], baseline="sync")
    assert doc["clock"]["measured"] and doc["clock"]["label"] == "cuda-events"
    md, html = render_markdown(doc), render_html(doc)
    assert "cuda-events" in md and "SIMULATED" not in md and "SIMULATED" not in html
    assert not any("simulated clock" in n for n in doc["notes"])
    c = _entry("oracle", "", 0.25, 0.8, 0.8, 3)                  # still simulated
    with pytest.raises(MismatchError, match="never mixes clocks"):
        build_report([a, b, c], baseline="sync")
