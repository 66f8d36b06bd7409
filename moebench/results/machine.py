"""The machine a result was produced on, without importing torch (trace replay records this;
a live run adds torch's view of the GPU: `moebench.hardware.environment`)."""
from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from moebench import __version__


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    return {
        "moebench": __version__, "git_commit": git_commit(), "python": platform.python_version(),
        "platform": platform.platform(), "processor": platform.machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def replay_machine() -> dict[str, Any]:
    """For a trace replay: no model ran, so no GPU was involved (torch's version, if installed)."""
    env = machine()
    created = env.pop("created")
    env.update({"torch": _version("torch"), "transformers": _version("transformers"),
                "gpu": {"available": False, "note": "trace replay: no device was used"},
                "created": created})
    return env
