"""`moebench export` and `moebench gate --format`: files and stdout read back with independent
parsers, a regression built by the test as a JUnit failure and exit 1, bad input as one sentence
and exit 2. Inputs: the committed baseline (read only) and edited copies of it."""
from __future__ import annotations

import csv
import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moebench.cli import app

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "reports" / "baselines" / "smoke"
CLOCK = "simulated:a6000-pcie4"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_sentence(r) -> str:
    text = " ".join(r.output.split())
    assert text.startswith("error: ") and "Traceback" not in r.output, r.output
    return text


def slower_copy(dst: Path, strategy: str = "lru", factor: float = 1.2) -> Path:
    """The committed baseline, copied, with one strategy's request TPOTs (and summary) scaled."""
    shutil.copytree(BASELINE, dst)
    d = dst / strategy
    rows = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines() if x]
    for row in rows:
        if row.get("kind") == "request":
            row["tpot_ms"] *= factor
    (d / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    res = json.loads((d / "result.json").read_text())
    res["metrics"]["tpot_ms"]["median"] *= factor
    (d / "result.json").write_text(json.dumps(res))
    return dst


def test_export_writes_each_format_to_stdout_or_a_file(tmp_path: Path):
    lru = json.loads((BASELINE / "lru" / "result.json").read_text())
    r = invoke("export", BASELINE / "lru", "--format", "github-smaller")
    assert r.exit_code == 0, r.output
    doc = {e["name"]: e for e in json.loads(r.stdout)}
    tpot = doc[f"{CLOCK}/lru/tpot_ms"]
    assert tpot["unit"] == "ms" and tpot["value"] == lru["metrics"]["tpot_ms"]["median"]

    out = tmp_path / "bmf.json"
    r = invoke("export", BASELINE, "--format", "bmf", "--out", out)
    assert r.exit_code == 0, r.output
    bmf = json.loads(out.read_text())
    lo, hi = lru["metrics"]["hit_rate_ci95"]
    assert bmf[f"{CLOCK}/lru"]["hit_rate"] == {"value": lru["metrics"]["hit_rate"],
                                               "lower_value": lo, "upper_value": hi}

    r = invoke("export", BASELINE / "report.json", "--format", "csv", "--metrics", "tpot_ms")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert r.exit_code == 0 and {row["measure"] for row in rows} == {"tpot_ms"}
    assert {row["strategy"] for row in rows} == {p.name for p in BASELINE.iterdir() if p.is_dir()}

    r = invoke("export", BASELINE, "--format", "bmf", "--out", out)          # exists: refused
    assert r.exit_code == 2 and "already exists" in _one_sentence(r)
    r = invoke("export", BASELINE / "sync", "--format", "bmf", "--out", out, "--force")
    assert r.exit_code == 0 and set(json.loads(out.read_text())) == {f"{CLOCK}/sync"}


@pytest.mark.parametrize("args, needle", [
    (["--format", "xml"], "Unknown export format 'xml'"),
    (["--format", "junit"], "moebench gate BASELINE CANDIDATE --format junit"),
    (["--format", "csv", "--metrics", "tpot"], "Unknown metric 'tpot'"),
])
def test_export_bad_format_is_one_sentence_and_exit_2(args, needle):
    r = invoke("export", BASELINE, *args)
    assert r.exit_code == 2 and needle in _one_sentence(r)


def test_export_of_a_folder_that_is_not_a_result_is_exit_2(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not a result")
    r = invoke("export", tmp_path, "--format", "csv")
    assert r.exit_code == 2 and "is not a moebench result folder" in _one_sentence(r)
    r = invoke("export", tmp_path / "missing", "--format", "csv")
    assert r.exit_code == 2 and "does not exist" in _one_sentence(r)


def test_gate_junit_shows_a_regression_as_a_failure_and_exits_1(tmp_path: Path):
    cand = slower_copy(tmp_path / "cand")
    xml_out = tmp_path / "gate.xml"
    r = invoke("gate", BASELINE, cand, "--format", "junit", "--out", xml_out)
    assert r.exit_code == 1, r.output
    assert "REGRESSION" in r.stdout                      # the table still prints for the log
    suite = ET.parse(xml_out).getroot().find("testsuite")
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [(f"{CLOCK}/lru", "tpot_ms")]
    assert "+20.00% vs threshold +3.00%" in failed[0].find("failure").get("message")
    n_strategies = len(json.loads((BASELINE / "report.json").read_text())["results"])
    assert suite.get("failures") == "1" and int(suite.get("tests")) == 3 * n_strategies   # 3 rules

    r = invoke("gate", BASELINE, cand, "--format", "junit")                # stdout: the XML alone
    assert r.exit_code == 1
    assert ET.fromstring(r.stdout).find("testsuite").get("failures") == "1"

    r = invoke("gate", BASELINE, cand, "--format", "json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["exit_code"] == 1 and doc["status"] == "regression"
    assert doc["baseline"] == str(BASELINE) and doc["candidate"] == str(cand)
    (bad,) = [v for v in doc["verdicts"] if v["status"] == "regression"]
    assert (bad["run"], bad["measure"], bad["rule"]) == ("lru", "tpot_ms", "tpot_ms:+3%")
    assert bad["change"] == pytest.approx(0.2) and bad["threshold"] == 0.03 and bad["test"]
    assert invoke("gate", BASELINE, cand, "--json").stdout == r.stdout

    r = invoke("gate", BASELINE, cand, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert r.exit_code == 1 and [x["name"] for x in rows if x["status"] == "regression"] == ["lru/tpot_ms"]


def test_gate_passes_on_the_baseline_itself_in_every_format(tmp_path: Path):
    for fmt in ("text", "json", "junit", "csv"):
        r = invoke("gate", BASELINE, BASELINE, "--format", fmt)
        assert r.exit_code == 0, (fmt, r.output)
    suite = ET.fromstring(invoke("gate", BASELINE, BASELINE, "--format", "junit").stdout).find("testsuite")
    assert suite.get("failures") == suite.get("errors") == "0"


@pytest.mark.parametrize("args, needle", [
    (["--format", "yaml"], "Unknown gate format 'yaml'"),
    (["--format", "junit", "--json"], "--json and --format junit disagree"),
    (["--out", "gate.txt"], "--out writes a --format json, junit or csv file"),
])
def test_gate_bad_format_is_one_sentence_and_exit_2(args, needle):
    r = invoke("gate", BASELINE, BASELINE, *args)
    assert r.exit_code == 2 and needle in _one_sentence(r)


def test_gate_on_a_folder_that_is_not_a_result_is_exit_2(tmp_path: Path):
    r = invoke("gate", BASELINE, tmp_path, "--format", "junit", "--out", tmp_path / "gate.xml")
    assert r.exit_code == 2 and "is not a moebench result folder" in _one_sentence(r)
    assert not (tmp_path / "gate.xml").exists()
