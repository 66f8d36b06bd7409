"""The CLI: one clear sentence and exit code 2 for bad input, no traceback; --json is one document."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from moebench.cli import app

runner = CliRunner()
FAST = ["--model", "tiny-qwen3-moe", "--set", "limit=1", "--set", "max_new_tokens=3",
        "--set", "warmup_steps=0"]


def _one_clear_error(result) -> str:
    text = (result.stderr if result.stderr_bytes is not None else "") or result.output
    assert result.exit_code == 2, result.output
    assert "Traceback" not in text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:")
    return text


@pytest.mark.parametrize("args,needle", [
    (["run", "--model", "no-such-model"], "unknown model"),
    (["run", "--strategy", "lruu"], "did you mean 'lru'"),
    (["run", "--profile", "a6000"], "unknown hardware profile"),
    (["run", "--clock", "cuda"], "needs a CUDA GPU"),
    (["run", "--clock", "warp"], "--clock must be"),
    (["run", "--model", "tiny-qwen3-moe", "--cache-budget", "0.01"], "needs at least"),
    (["run", "--set", "max_new_tokns=4"], "did you mean 'max_new_tokens'"),
    (["run", "--set", "max_new_tokens=lots"], "must be an integer"),
    (["run", "--workload", "no-such-workload"], "unknown workload"),
])
def test_bad_input_is_one_sentence_and_exit_2(args: list[str], needle: str, tmp_path) -> None:
    if args[1:2] == ["--clock"] and args[2] == "cuda":
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    result = runner.invoke(app, args + ["--out", str(tmp_path)])
    assert needle in _one_clear_error(result)


def test_malformed_yaml_and_unknown_keys(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprompts: [unclosed\n")
    assert "not valid YAML" in _one_clear_error(runner.invoke(app, ["run", "--workload", str(bad)]))
    bad.write_text("name: x\nprompts: [{text: hi}]\nmax_new_tokenz: 4\n")
    assert "unknown key 'max_new_tokenz'" in _one_clear_error(runner.invoke(app, ["run", "--workload", str(bad)]))


def test_run_json_prints_the_result_alone(tmp_path) -> None:
    result = runner.invoke(app, ["run", "--strategy", "lru", "--clock", "sim", "--json",
                                 "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["strategy"]["name"] == "lru"
    assert doc["clock"]["label"].startswith("simulated:")
    dirs = list(tmp_path.iterdir())
    assert len(dirs) == 1 and (dirs[0] / "result.json").exists()


def test_result_folders_are_never_overwritten(tmp_path) -> None:
    for _ in range(2):
        assert runner.invoke(app, ["run", "--clock", "sim", "--out", str(tmp_path), *FAST]).exit_code == 0
    assert len(list(tmp_path.iterdir())) == 2


def test_models_json_marks_the_default() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    names = {r["name"] for r in rows}
    assert {"qwen3-30b-a3b", "gpt-oss-20b", "gpt-oss-120b", "tiny-qwen3-moe", "tiny-gpt-oss"} <= names
    assert sum(r["default"] for r in rows) == 1
    qwen = next(r for r in rows if r["name"] == "qwen3-30b-a3b")
    assert qwen["hf_id"] == "Qwen/Qwen3-30B-A3B" and qwen["arch"] == "qwen3_moe"


def test_strategies_and_env_commands() -> None:
    result = runner.invoke(app, ["strategies", "--json"])
    assert result.exit_code == 0
    names = {r["name"] for r in json.loads(result.stdout)}
    assert {"sync", "lru", "all-resident"} <= names
    env = runner.invoke(app, ["env", "--json"])
    assert env.exit_code == 0 and "torch" in json.loads(env.stdout)


def _commands(typer_app) -> dict[str, list[str]]:
    """Top-level command names, and each group's sub-commands, from typer's public registry."""
    out = {c.name or c.callback.__name__.replace("_", "-"): [] for c in typer_app.registered_commands}
    for g in typer_app.registered_groups:
        out[g.name] = sorted(c.name or c.callback.__name__.replace("_", "-")
                             for c in g.typer_instance.registered_commands)
    return out


def test_the_command_surface_is_pinned() -> None:
    """Adding, renaming or losing a command is a deliberate change to this list (and the README)."""
    assert _commands(app) == {
        "run": [], "strategies": [], "models": [], "env": [], "compare": [], "gate": [],
        "export": [], "validate-sim": [], "replay": [], "sweep": [], "sweep-cell": [],
        "baseline": ["check", "update"],
        "calibrate": ["default-vectors", "pre-attention", "profile"],
        "trace": ["export", "import", "synth"],
    }


def test_calibrate_profile_does_not_depend_on_import_order() -> None:
    """The CLI package registers its groups in a fixed order at import: importing the command
    modules first (as a plugin or a test might) changes nothing."""
    import subprocess
    import sys

    code = ("import moebench.cli.gpu, moebench.cli.replay, moebench.cli.trace\n"
            "from moebench.cli import app\n"
            "g = {x.name: x.typer_instance for x in app.registered_groups}\n"
            "print(sorted(c.name for c in g['calibrate'].registered_commands),"
            " sorted(c.name for c in g['trace'].registered_commands))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['default-vectors', 'pre-attention', 'profile'] ['export', 'import', 'synth']"


def test_every_package_is_in_the_wheel() -> None:
    """pyproject lists moebench's packages explicitly (the built-ins install as moebench.strategies
    and moebench.workloads.builtin): a new sub-package missing from that list would be missing
    from every non-editable install."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "moebench").rglob("__init__.py")}
    mapped = {name for name, folder in tool["package-dir"].items() if name != "moebench"}
    assert set(tool["packages"]) == found | mapped
    for name in mapped:
        assert (root / tool["package-dir"][name] / "__init__.py").exists()
