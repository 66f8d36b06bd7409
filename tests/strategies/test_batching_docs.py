"""docs/strategies.md states what every built-in does at batch size > 1, as its code says."""
from __future__ import annotations

from pathlib import Path

from moebench.strategy import BUILTINS, REGISTRY

DOC = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"


def test_every_builtin_states_its_batching_and_the_docs_table_matches() -> None:
    text = DOC.read_text()
    for name in BUILTINS:
        line = REGISTRY.get(name).batching
        assert line and len(line) > 20
        assert f"| `{name}` | {line} |" in text, f"docs/strategies.md lacks {name}'s batching line"
