"""What every command shares: the console, the error mapper (one sentence, exit code 2; Ctrl-C
130 and SIGTERM 143, with finished work kept) and the `--set` router."""
from __future__ import annotations

import functools
import os
import signal
import threading
from typing import Any

import typer


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, Slurm and CI send), raised where Ctrl-C would be: every path
    that keeps finished work on Ctrl-C keeps it on SIGTERM too."""


_SIGTERM_SEEN: list[bool] = []     # set by the handler: the interrupt was a SIGTERM


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGTERM_SEEN.append(True)
    raise Terminated()


def handle_errors(fn: Any) -> Any:
    """Map a UserError to one sentence and its exit code; Ctrl-C to 130 and SIGTERM to 143
    (finished results kept either way)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from moebench.errors import UserError

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if os.environ.get("MOEBENCH_DEBUG"):
                raise
            from rich.markup import escape

            msg = escape(str(exc).strip())     # the sentence as written: `moebench[slurm]` too
            console(stderr=True).print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt as exc:
            where = str(exc)
            what = "terminated" if isinstance(exc, Terminated) or _SIGTERM_SEEN else "interrupted"
            console(stderr=True).print(what + (f"; finished work kept in {where}" if where else ""))
            raise typer.Exit(143 if what == "terminated" else 130) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
                _SIGTERM_SEEN.clear()
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

