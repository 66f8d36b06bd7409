"""Sub-command modules. Each module here defines `register(app)` and adds its commands to the
typer app; `moebench.cli` calls every one. Modules import only typer at the top (heavy imports
inside the command functions), so `moebench --help` stays instant."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def register_all(app: Any) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(app)
