"""SIGTERM (what `timeout`, Slurm and CI send) keeps finished work, like Ctrl-C."""
from __future__ import annotations

import json
import signal
from pathlib import Path

from typer.testing import CliRunner

from moebench.cli import app
from moebench.report import terminal


def test_sigterm_mid_run_keeps_the_finished_requests(tmp_path: Path, monkeypatch) -> None:
    tokens = {"n": 0}
    advance = terminal._Bar.advance

    def advance_then_terminate(self, n: int = 1) -> None:
        advance(self, n)
        tokens["n"] += n
        if tokens["n"] == 7:                 # two requests of 3 tokens done, the third begun
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(terminal._Bar, "advance", advance_then_terminate)
    r = CliRunner().invoke(app, ["run", "--model", "tiny-qwen3-moe", "--clock", "sim",
                                 "--set", "max_new_tokens=3", "--set", "limit=4",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 143, r.output
    assert "terminated; finished work kept in" in r.output
    (d,) = list(tmp_path.iterdir())
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "incomplete"
    assert res["metrics"]["requests"] == 2
    assert any("interrupted" in n for n in res["notes"])
    rows = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
    assert sorted({x["prompt_id"] for x in rows if x["kind"] == "request"}) == sorted(
        {o["prompt_id"] for o in res["outputs"]})
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # restored after the command
