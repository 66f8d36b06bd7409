"""Calibration is never in-sample by default: the shipped calibration set shares no prompt with any
shipped evaluation workload (texts and token ids) and holds no GSM8K test question; a run
calibrated on its own evaluation prompts is marked in-sample in result.json, in `run`'s and
`compare`'s output and in report.md/report.html, and the gate refuses it (exit 2)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moebench.calibration.provision import MIN_CONTAINED_CHARS, shared_prompts
from moebench.cli import app
from moebench.models.loading import load_tokenizer
from moebench.workloads.spec import Item, Request, available_workloads, build_requests, load_workload

ROOT = Path(__file__).resolve().parents[2]
GSM8K_DIR = ROOT / "workloads" / "data" / "gsm8k"               # the test split ships
GSM8K_TRAIN = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"   # the full train split does not
CAL_DATA = ROOT / "workloads" / "data" / "gsm8k" / "train-calibration.jsonl"
TINY = ["--model", "tiny-qwen3-moe", "--clock", "sim", "--set", "limit=2", "--set", "max_new_tokens=3",
        "--set", "warmup_steps=0"]
cli = CliRunner()


def _requests(name: str, overrides: dict | None = None) -> list[Request]:
    wl = load_workload(name, overrides)
    return build_requests(wl, load_tokenizer(None), 4096)    # the bundled tokenizer (the default model's)


def _json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def _words(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------
# the shipped calibration set
# ----------------------------------------------------------------------------------------------
def test_the_shipped_calibration_workload_shares_no_prompt_with_any_evaluation_workload() -> None:
    assert load_workload("smoke").calibration == "calibration"          # the default, everywhere
    cal = _requests("calibration")
    assert len(cal) == 24
    names = sorted(set(available_workloads()) - {"calibration"})
    assert {"smoke", "chat", "choice", "gsm8k", "perplexity"} <= set(names)
    for name in names:
        if name == "gsm8k" and not (GSM8K_DIR / "test.jsonl").exists():
            continue                                             # its data is not on this machine
        ev = _requests(name, {"limit": "100000"} if name == "gsm8k" else None)   # gsm8k: all of test
        assert shared_prompts(cal, ev) == [] and shared_prompts(ev, cal) == [], name
        assert not {r.input_ids for r in cal} & {r.input_ids for r in ev}, name
        assert not {_words(r.item.text) for r in cal} & {_words(r.item.text) for r in ev}, name
        for c in cal:         # no calibration prompt inside an evaluation prompt, or back (a short
            for e in ev:      # fragment such as "def __init__(self" is code, not a prompt)
                a, b = _words(c.item.text), _words(e.item.text)
                assert len(a) < MIN_CONTAINED_CHARS or a not in b, (name, c.id, e.id)
                assert len(b) < MIN_CONTAINED_CHARS or b not in a, (name, c.id, e.id)


def test_the_calibration_data_is_gsm8k_train_with_its_licence_and_no_test_question() -> None:
    rows = [json.loads(line) for line in CAL_DATA.read_text().splitlines() if line.strip()]
    assert len(rows) == 10 and all(set(r) == {"question", "answer"} for r in rows)
    assert "MIT License" in (CAL_DATA.parent / "LICENSE").read_text()
    load = lambda p: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    test = load(GSM8K_DIR / "test.jsonl")
    if GSM8K_TRAIN.exists():
        train = load(GSM8K_TRAIN)
        assert all(r in train for r in rows)                          # verbatim train rows
    fewshot = load(GSM8K_DIR / "train-fewshot.jsonl")
    assert not [r for r in rows if r in fewshot]                      # never a few-shot example
    test_q = [_words(t["question"]) for t in test]
    for r in rows:
        q = _words(r["question"])
        assert not any(q in t or t in q for t in test_q), q           # no test question, not even inside


def test_shared_prompts_are_same_ids_same_text_or_one_inside_the_other() -> None:
    def req(rid: str, text: str, ids: list[int]) -> Request:
        return Request(rid, tuple(ids), Item(id=rid, text=text))

    shot = "Question: A farmer has 3 fields of 12 rows each. How many rows are there?\nAnswer:"
    assert len(shot) >= MIN_CONTAINED_CHARS
    ev = [req("e0", "Question: x\nAnswer: 4\n\n" + shot, [1, 2, 3]), req("e1", "def f():\n", [4, 5]),
          req("e2", "short", [6])]
    assert shared_prompts([req("c0", shot, [9])], ev) == ["e0"]          # a few-shot example inside
    assert shared_prompts([req("c1", "other", [4, 5])], ev) == ["e1"]    # the same token ids
    assert shared_prompts([req("c2", "  short\n", [7])], ev) == ["e2"]   # the same text
    assert shared_prompts([req("c3", "sho", [8])], ev) == []             # a short fragment is not a prompt
    assert shared_prompts(ev, ev) == ["e0", "e1", "e2"]                  # the workload itself


# ----------------------------------------------------------------------------------------------
# runs, reports and the gate
# ----------------------------------------------------------------------------------------------
def test_a_default_run_is_calibrated_on_a_set_disjoint_from_its_workload(tmp_path: Path) -> None:
    r = cli.invoke(app, ["run", "--strategy", "speculative", *TINY, "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    result = _json(r.stdout)
    assert result["workload"]["name"] == "smoke" and result["in_sample"] is False
    (art,) = result["strategy"]["artifacts"]
    assert art["calibration_workload"] == "calibration" and art["calibration_n_prompts"] == 24
    assert art["calibration_workload_sha256"] != result["workload"]["sha256"]
    assert art["calibration_shared_prompts"] == 0 and art["calibration_shared_ids"] == []
    assert art["in_sample"] is False
    import torch                                  # where it was built (conftest: one thread)

    assert art["built_with"] == {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                                 "device": "cpu"}


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_calibrating_on_the_evaluation_workload_is_marked_in_sample_and_refused_by_the_gate(
        tmp_path: Path) -> None:
    r = cli.invoke(app, ["run", "--strategy", "speculative", *TINY, "--set", "calibration=smoke",
                         "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert "IN-SAMPLE: 'speculative' ran on default-vectors calibrated on workload 'smoke'" in r.output
    (d,) = (tmp_path / "runs").iterdir()
    result = json.loads((d / "result.json").read_text())
    assert result["in_sample"] is True
    (art,) = result["strategy"]["artifacts"]
    assert art["calibration_workload"] == "smoke" and art["calibration_n_prompts"] == 10
    assert art["calibration_shared_prompts"] == 2 and art["in_sample"] is True   # limit=2 evaluated

    g = cli.invoke(app, ["gate", str(d), str(d)])
    assert g.exit_code == 2, g.output
    line = _one_error_line(g.output)
    assert "refuses in-sample results: in the baseline" in line and "shares 2 of the 2 prompts" in line

    r = cli.invoke(app, ["compare", "--strategies", "sync,speculative", *TINY, "--set",
                         "calibration=smoke", "--out", str(tmp_path), "--name", "rep"])
    assert r.exit_code == 0, r.output
    assert "IN-SAMPLE: 'speculative'" in r.output
    rep = tmp_path / "rep"
    doc = json.loads((rep / "report.json").read_text())
    assert doc["in_sample"] == ["speculative"]
    assert doc["notes"][0].startswith("IN-SAMPLE: 'speculative' ran on default-vectors")
    md = (rep / "report.md").read_text()
    assert re.search(r"^- IN-SAMPLE: 'speculative' ran on default-vectors calibrated on workload "
                     r"'smoke', which shares 2 of the 2 prompts", md, re.M), md
    assert "<li>IN-SAMPLE: " in (rep / "report.html").read_text()
    assert "| speculative (lossy) (IN-SAMPLE) |" in md                # in the table's row, too
    assert "| sync |" in md
    assert "IN-SAMPLE" not in json.dumps(json.loads((rep / "sync" / "result.json").read_text()))

    g = cli.invoke(app, ["gate", str(rep), str(rep)])                  # a report: refused as a whole
    assert g.exit_code == 2, g.output
    assert "refuses in-sample results" in _one_error_line(g.output)
    assert cli.invoke(app, ["gate", str(rep / "sync"), str(rep / "sync")]).exit_code == 0
