"""Artifacts a strategy needs before it can run (trained predictors, default vectors, a trace).

`artifacts_for(prep, strategy)` returns `(artifacts, trace)` for the engine: nothing for
strategies that need nothing.
"""
from __future__ import annotations

from typing import Any


def artifacts_for(prep: Any, strategy: Any) -> tuple[dict, Any]:
    if not strategy.needs:
        return {}, None
    raise NotImplementedError(f"strategy {strategy.name} needs {strategy.needs}")
