"""Errors a user can cause. The CLI maps every `UserError` to one sentence and exit code 2."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: an unknown name, a malformed file, an impossible budget. Exit code 2."""

    exit_code = 2


class MismatchError(UserError):
    """Results that cannot be compared (different workload, model, budget or clock)."""

    exit_code = 2


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else a list of the valid names."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if len(choices) <= 12:
        return f" (choose from: {', '.join(choices)})"
    return ""
