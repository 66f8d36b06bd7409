"""Bad inputs and faults, through the real CLI in subprocesses: each ends with exit 2 (or the
documented code), one sentence, no traceback, and every file that was there before the command
is still there, unchanged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOEBENCH = [sys.executable, "-m", "moebench.cli"]
FAST = ["--set", "limit=1", "--set", "max_new_tokens=2"]


@dataclass
class Case:
    name: str
    args: list[str]
    expect: str                                   # a fragment of the one sentence
    setup: Callable[[Path], None] | None = None
    env: dict = field(default_factory=dict)
    code: int = 2


def _write(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return make


def _all(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        for f in fns:
            f(d)
    return make


def _rows(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _top(k: int, dup: bool = False) -> str:
    return _rows([{"step": s, "layer": m, "experts": ([1, 1] + list(range(2, k))) if dup else list(range(k))}
                  for s in range(1, 3) for m in range(4)])


PROFILE_OK = ("name: mine\nh2d_bandwidth_gbps: 25\nh2d_latency_us: 10\nmem_bandwidth_gbps: 700\n"
              "peak_tflops: 100\nlaunch_overhead_us: 5\nmem_efficiency: 0.8\n")


TINY_CONFIG = {"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
               "moe_intermediate_size": 8, "intermediate_size": 8, "max_position_embeddings": 64}


def _checkpoint(kind: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        folder = d / "ck"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
        payload = {"empty": b"", "random": os.urandom(3000), "truncated": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"}[kind]
        (folder / "model.safetensors").write_bytes(payload)
    return make


CASES = [
    # run: names and values
    Case("unknown strategy", ["run", "--strategy", "nope"], "unknown strategy 'nope'"),
    Case("unknown model", ["run", "--model", "nope-model"], "nope-model"),
    Case("unknown workload", ["run", "--workload", "nope"], "nope"),
    Case("budget not a budget", ["run", "--cache-budget", "banana"], "banana"),
    Case("budget zero", ["run", "--cache-budget", "0"], "budget"),
    Case("budget below a layer", ["run", "--strategy", "lru", "--cache-budget", "1KB"], "budget"),
    Case("config without shapes", ["run", "--model", "./ck"], "lacks 'hidden_size'",
         _write("ck/config.json", json.dumps({"model_type": "qwen3_moe"}))),
    Case("clock unknown", ["run", "--clock", "warp"], "warp"),
    Case("profile unknown", ["run", "--profile", "nope"], "unknown hardware profile"),
    Case("profile NaN bandwidth", ["run", "--profile", "p.yaml"], "finite number",
         _write("p.yaml", PROFILE_OK.replace("25\n", ".nan\n", 1))),
    Case("profile infinite latency", ["run", "--profile", "p.yaml"], "finite number",
         _write("p.yaml", PROFILE_OK.replace("h2d_latency_us: 10", "h2d_latency_us: .inf"))),
    Case("profile not YAML", ["run", "--profile", "p.yaml"], "not valid YAML", _write("p.yaml", "a: [b\n")),
    Case("profile unknown key", ["run", "--profile", "p.yaml"], "unknown key 'speed'",
         _write("p.yaml", PROFILE_OK + "speed: 3\n")),
    Case("max_new_tokens past context", ["run", "--set", "max_new_tokens=3000"], "context"),
    Case("max_new_tokens 1e9", ["run", "--set", "max_new_tokens=1000000000"], "context"),
    Case("max_new_tokens float", ["run", "--set", "max_new_tokens=1e9"], "integer"),
    Case("max_new_tokens one", ["run", "--set", "max_new_tokens=1"], "at least 2"),
    Case("unknown --set key", ["run", "--set", "nokey=1"], "nokey"),
    Case("--set without =", ["run", "--set", "limit"], "KEY=VALUE"),
    Case("limit not a number", ["run", "--set", "limit=abc"], "integer"),
    Case("strategy parameter bad", ["run", "--strategy", "lru", "--set", "scope=planet"], "planet"),
    Case("workload YAML broken", ["run", "--workload", "w.yaml"], "w.yaml", _write("w.yaml", "name: [x\n")),
    Case("workload unknown key", ["run", "--workload", "w.yaml"], "unknown key",
         _write("w.yaml", "name: w\nprompts: [{id: a, text: hi}]\ncolour: red\n")),
    Case("workload no prompts", ["run", "--workload", "w.yaml"], "w", _write("w.yaml", "name: w\nprompts: []\n")),
    Case("out is a file", ["run", "--out", "f"], "is a file", _write("f", "mine")),
    Case("out under a file", ["run", "--out", "f/sub"], "is a file", _write("f", "mine")),
    Case("seed not a number", ["run", "--seed", "abc"], "valid integer"),
    # checkpoints and caches
    Case("checkpoint without config", ["run", "--model", "./ck"], "no config.json", _write("ck/x.txt", "")),
    Case("weights empty", ["run", "--model", "./ck", *FAST], "not a readable safetensors", _checkpoint("empty")),
    Case("weights random bytes", ["run", "--model", "./ck", *FAST], "not a readable safetensors", _checkpoint("random")),
    Case("weights truncated (lazy)", ["run", "--model", "./ck", *FAST], "not a readable safetensors",
         _checkpoint("truncated"), env={"MOEBENCH_LAZY_LOAD": "1"}),
    Case("lazy-load value unknown", ["run", "--model", "./ck", *FAST], "MOEBENCH_LAZY_LOAD",
         _all(_write("ck/config.json", json.dumps(TINY_CONFIG)), _write("ck/model.safetensors", b"")),
         env={"MOEBENCH_LAZY_LOAD": "maybe"}),
    Case("log level unknown", ["env"], "MOEBENCH_LOG", env={"MOEBENCH_LOG": "loud"}),
    Case("cache is a file", ["run", "--strategy", "oracle", "--model", "tiny-qwen3-moe", *FAST],
         "MOEBENCH_CACHE", _write("cachefile", "mine"), env={"MOEBENCH_CACHE": "cachefile"}),
    # compare
    Case("compare no strategy", ["compare", "--strategies", ","], "names no strategy"),
    Case("compare twice", ["compare", "--strategies", "sync,sync"], "twice"),
    Case("compare unknown", ["compare", "--strategies", "sync,nope"], "nope"),
    Case("compare name escapes", ["compare", "--strategies", "sync", "--name", "../../escape"], "plain folder name"),
    Case("compare name exists", ["compare", "--strategies", "sync", "--out", "r", "--name", "x"],
         "already exists", _write("r/x/notes.txt", "mine")),
    Case("compare repetitions 0", ["compare", "--strategies", "sync", "--repetitions", "0"], "at least 1"),
    Case("compare sweep malformed", ["compare", "--strategies", "sync", "--sweep", "banana"], "KEY=v1"),
    Case("compare sweep repeats", ["compare", "--strategies", "sync", "--sweep", "cache_budget=0.1,0.1"], "twice"),
    Case("compare baseline absent", ["compare", "--strategies", "sync", "--baseline", "lru"], "baseline 'lru'"),
    Case("compare folders not results", ["compare", "a", "b"], "a", _all(_write("a/x", ""), _write("b/y", ""))),
    # gate
    Case("gate missing paths", ["gate", "nope1", "nope2"], "nope1"),
    Case("gate rule malformed", ["gate", "a", "a", "--fail-on", "garbage"], "garbage", _write("a/x", "")),
    Case("gate not results", ["gate", "a", "b"], "a", _all(_write("a/x", ""), _write("b/y", ""))),
    # replay and traces
    Case("replay random bytes", ["replay", "t.jsonl", "--model", "tiny-qwen3-moe"], "cannot be read",
         _write("t.jsonl", bytes(range(256)) * 8)),
    Case("replay empty", ["replay", "t.jsonl", "--model", "tiny-qwen3-moe"], "no rows", _write("t.jsonl", "")),
    Case("replay not JSON", ["replay", "t.jsonl", "--model", "tiny-qwen3-moe"], "line 1", _write("t.jsonl", "{x\n")),
    Case("replay other top-k", ["replay", "t.jsonl", "--model", "tiny-qwen3-moe"], "top-8", _write("t.jsonl", _top(7))),
    Case("replay duplicate ids", ["replay", "t.jsonl", "--model", "tiny-qwen3-moe"], "twice",
         _write("t.jsonl", _top(8, dup=True))),
    Case("replay unknown policy", ["replay", "t.jsonl", "--model", "tiny-qwen3-moe", "--strategies", "nope"],
         "nope", _write("t.jsonl", _top(8))),
    Case("replay unknown model", ["replay", "t.jsonl", "--model", "nope"], "nope", _write("t.jsonl", _top(8))),
    Case("replay out taken", ["replay", "t.jsonl", "--model", "tiny-qwen3-moe", "--out", "o"], "already holds",
         _all(_write("t.jsonl", _top(8)), _write("o/report.md", "mine"))),
    Case("synth out exists", ["trace", "synth", "--model", "tiny-qwen3-moe", "--out", "t.jsonl"],
         "pass --force", _write("t.jsonl", "mine")),
    Case("export missing", ["trace", "export", "nowhere"], "does not exist"),
    Case("export out exists", ["trace", "export", "r", "--out", "t.jsonl"], "pass --force",
         _all(_write("r/x", ""), _write("t.jsonl", "mine"))),
    # baselines
    Case("baseline update into runs", ["baseline", "update", "--dir", "runs", "--strategies", "sync"],
         "not a report", _all(_write("runs/r1/result.json", "{}"), _write("runs/notes.txt", "mine"))),
    Case("baseline check not a report", ["baseline", "check", "--dir", "runs"], "runs",
         _write("runs/notes.txt", "mine")),
]


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_there_are_at_least_forty_distinct_cases() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_sentence_and_touches_nothing(case: Case, tmp_path: Path) -> None:
    if case.setup:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    env = {**os.environ, "MOEBENCH_CACHE": str(tmp_path / ".cache"), "COLUMNS": "200",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **case.env}
    if "MOEBENCH_CACHE" in case.env:
        env["MOEBENCH_CACHE"] = str(tmp_path / case.env["MOEBENCH_CACHE"])
    p = subprocess.run(MOEBENCH + case.args, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == case.code, out
    assert "Traceback" not in out, out
    assert case.expect in " ".join(out.split()), out
    errors = [line for line in p.stderr.splitlines() if line.lower().lstrip("│ ").startswith("error")]
    assert len(errors) <= 1, out                                      # one message, not a cascade
    after = {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith(".cache/")}
    assert {k: v for k, v in after.items() if k in before} == before, "a file was changed or removed"
