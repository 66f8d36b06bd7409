"""What every command shares: the console, the error mapper (one sentence, exit code 2; Ctrl-C
130 with finished work kept) and the `--set` router."""
from __future__ import annotations

import functools
import os
from typing import Any

import typer


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def handle_errors(fn: Any) -> Any:
    """Map a UserError to one sentence and its exit code; Ctrl-C to 130 (results kept)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from moebench.errors import UserError

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if os.environ.get("MOEBENCH_DEBUG"):
                raise
            msg = str(exc).strip()
            console(stderr=True).print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt as exc:
            where = str(exc)
            console(stderr=True).print("interrupted" + (f"; finished work kept in {where}" if where else ""))
            raise typer.Exit(130) from None
    return wrapper


def split_overrides(strategy: str, sets: list[str]) -> tuple[dict, dict]:
    """Route each `--set KEY=VALUE` to the workload or the strategy, by field name."""
    from moebench.config import field_names, parse_overrides
    from moebench.errors import UserError, did_you_mean
    from moebench.strategy import strategy_params_fields
    from moebench.workloads.spec import Workload

    wl_fields = field_names(Workload)
    st_fields = strategy_params_fields(strategy)
    wl, st = {}, {}
    for k, v in parse_overrides(sets).items():
        if k in st_fields:
            st[k] = v
        elif k in wl_fields:
            wl[k] = v
        else:
            raise UserError(f"--set {k}: no workload field or '{strategy}' parameter of that name"
                            f"{did_you_mean(k, wl_fields | st_fields)}.")
    return wl, st
