"""Nothing moebench did not write is deleted or overwritten, and a bad output place is refused
before any work starts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moebench.cli import app

runner = CliRunner()
SMALL = ["--strategies", "sync", "--set", "max_new_tokens=2", "--set", "limit=2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def test_baseline_update_refuses_a_folder_that_is_not_a_report(tmp_path: Path) -> None:
    d = tmp_path / "runs"
    (d / "20260101-run").mkdir(parents=True)
    (d / "20260101-run" / "result.json").write_text("{}")
    (d / "notes.txt").write_text("mine")
    before = _snapshot(d)
    r = invoke("baseline", "update", "--dir", d, *SMALL)
    assert r.exit_code == 2, r.output
    assert "not a report moebench can replace" in r.output
    assert _snapshot(d) == before


def test_baseline_update_replaces_only_what_a_baseline_consists_of(tmp_path: Path) -> None:
    d = tmp_path / "base"
    assert invoke("baseline", "update", "--dir", d, *SMALL).exit_code == 0
    doc = json.loads((d / "report.json").read_text())
    assert "report.md" in doc["files"] and "sync" in {r["dir"] for r in doc["results"]}
    (d / "notes.txt").write_text("why this baseline")
    (d / "sync" / "my-analysis.csv").write_text("a,b\n")
    r = invoke("baseline", "update", "--dir", d, *SMALL)
    assert r.exit_code == 0, r.output
    assert (d / "notes.txt").read_text() == "why this baseline"
    assert (d / "sync" / "my-analysis.csv").read_text() == "a,b\n"
    assert (d / "sync" / "result.json").exists() and (d / "report.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no staging left


def test_trace_outputs_need_force_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    out.write_text("precious\n")
    r = invoke("trace", "synth", "--model", "tiny-qwen3-moe", "--steps", "4", "--out", out)
    assert r.exit_code == 2 and "already exists; pass --force" in r.output
    assert out.read_text() == "precious\n"
    r = invoke("trace", "synth", "--model", "tiny-qwen3-moe", "--steps", "4", "--out", out, "--force")
    assert r.exit_code == 0 and out.read_text() != "precious\n"
    r = invoke("trace", "export", tmp_path, "--out", out)      # checked before reading anything
    assert r.exit_code == 2 and "already exists" in r.output


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ""])
def test_compare_name_is_one_folder_under_out(tmp_path: Path, name: str) -> None:
    r = invoke("compare", "--out", tmp_path / "reports", "--name", name, *SMALL)
    assert r.exit_code == 2, r.output
    assert "plain folder name" in r.output
    assert not (tmp_path / "escape").exists() and not (tmp_path / "reports").exists()


def test_a_bad_out_is_refused_before_the_model_loads(tmp_path: Path, monkeypatch) -> None:
    from moebench.bench import compare, run

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(run, "prepare", no_load)
    monkeypatch.setattr(compare, "prepare", no_load)
    f = tmp_path / "file"
    f.write_text("x")
    for args in (["run", "--out", f], ["run", "--out", f / "sub"],
                 ["compare", "--out", f, *SMALL]):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "is a file" in r.output
    if os.geteuid() != 0:                 # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        r = invoke("run", "--out", ro / "results")
        assert r.exit_code == 2 and "permission denied" in r.output
    assert f.read_text() == "x"


def test_result_files_follow_the_umask(tmp_path: Path) -> None:
    from moebench.results.folders import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_a_write_that_fails_keeps_what_it_can_marked_incomplete(tmp_path: Path, monkeypatch) -> None:
    """A full disk while writing the samples: one sentence, exit 2, and the folder keeps the
    files already written plus a result.json that says it is incomplete."""
    import errno

    from moebench.results import folders

    real = folders.write_jsonl

    def full_disk(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(folders, "write_jsonl", full_disk)
    r = invoke("run", "--model", "tiny-qwen3-moe", "--clock", "sim", "--set", "limit=1",
               "--set", "max_new_tokens=2", "--out", tmp_path)
    monkeypatch.setattr(folders, "write_jsonl", real)
    assert r.exit_code == 2, r.output
    assert "No space left on device" in r.output and "kept: config.json, environment.json" in r.output
    (d,) = list(tmp_path.iterdir())
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "incomplete" and "writing the result failed" in res["notes"][-1]
