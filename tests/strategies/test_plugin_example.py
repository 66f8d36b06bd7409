"""The example plugin (examples/plugin, docs/writing-a-strategy.md), found the way an installed
distribution is found (a `*.dist-info` with the `moebench.strategies` entry point its pyproject
declares), runs under `moebench run`, `compare` and `replay`, and is lossless."""
from __future__ import annotations

import json
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moebench.cli import app
from moebench.strategy import ENTRY_POINT_GROUP, REGISTRY, Registry, Strategy

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugin"
MODULE = PLUGIN / "moebench_example" / "successor.py"
FAST = ["--clock", "sim", "--set", "max_new_tokens=6", "--set", "limit=2"]
runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _results(folder: Path) -> dict[str, dict]:
    docs = [json.loads(p.read_text()) for p in folder.rglob("result.json")]
    return {d["strategy"]["name"]: d for d in docs}


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The example distribution as pip would leave it: its package importable and a dist-info
    carrying the entry point declared in examples/plugin/pyproject.toml."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    (name, target), = project["entry-points"][ENTRY_POINT_GROUP].items()
    site = tmp_path / "site"
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                         f"Version: {project['version']}\n")
    info.joinpath("entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MOEBENCH_CACHE", str(tmp_path / "cache"))
    return name, target


def test_the_example_module_is_at_most_50_lines() -> None:
    assert len(MODULE.read_text().splitlines()) <= 50


def test_the_entry_point_is_found_like_an_installed_distribution(installed: tuple[str, str]) -> None:
    name, target = installed
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    assert [ep.value for ep in eps][:1] == [target]
    assert eps[0].dist is not None and eps[0].dist.name == "moebench-example-plugin"
    cls = Registry().get(name)             # a fresh registry scans the entry points itself
    assert issubclass(cls, Strategy) and cls.name == name and cls.lossless
    assert cls.traits_for(cls.Params()).replayable


def test_run_compare_and_replay_the_example(installed: tuple[str, str], tmp_path: Path) -> None:
    name, target = installed
    # The process-wide registry scanned the entry points before this test put the dist-info on
    # sys.path: scan again, as a process started after `pip install` would.
    REGISTRY.reload()
    assert name in REGISTRY.names()
    try:
        live = json.loads(_invoke("run", "--strategy", name, "--json", "--out", str(tmp_path / "run"), *FAST))
        assert live["strategy"]["name"] == name and live["strategy"]["version"] == 1
        assert live["metrics"]["prediction"]["prefetches_issued"] > 0   # it does prefetch
        assert 0 < live["metrics"]["peak_expert_bytes"] <= live["budget"]["bytes"]

        _invoke("compare", "--strategies", f"sync,{name}", "--no-plots", "--json",
                "--out", str(tmp_path / "cmp"), *FAST)
        docs = _results(tmp_path / "cmp")
        assert set(docs) == {"sync", name}
        outputs = {s: [(o["prompt_id"], o["token_ids"]) for o in d["outputs"]] for s, d in docs.items()}
        assert outputs[name] and outputs[name] == outputs["sync"]      # lossless: bit-identical tokens

        _invoke("run", "--strategy", "lru", "--record-trace", "--out", str(tmp_path / "rec"), *FAST)
        rec = next((tmp_path / "rec").iterdir())
        doc = json.loads(_invoke("replay", str(rec), "--strategies", f"lru,{name}", "--no-bounds",
                                 "--no-consistency", "--json", "--out", str(tmp_path / "replay")))
        row = next(r for r in doc["rows"] if r["policy"] == name)
        assert not row["skipped"]
        # replay runs the same object `run` builds: the same hits and bytes on the same routing
        assert row["hit_rate"] == pytest.approx(live["metrics"]["hit_rate"], abs=1e-12)
        assert row["h2d_bytes_per_token"] == pytest.approx(live["metrics"]["h2d_bytes_per_token"], rel=1e-9)
    finally:
        REGISTRY.unregister(name)
