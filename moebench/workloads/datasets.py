"""Few-shot prompt construction and data files (JSONL) for workloads with answers.

Every data-file problem is a `DatasetError` (a UserError: one sentence naming the file, exit 2).
"""
from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from moebench.config import read_jsonl
from moebench.errors import UserError



def build_gsm8k_prompt(question: str, shots: Sequence[dict]) -> str:
    """The few-shot GSM8K prompt: worked examples, then the question, ending in "Answer:".

    Each shot becomes "Question: <q>\\nAnswer: <worked answer ending in #### N>\\n\\n"; the
    worked answers are kept verbatim (calculator annotations `<<2*3=6>>` included, as
    lm-evaluation-harness does) so the model learns to finish with `#### N`, which
    `extract_model_answer` looks for first.
    """
    blocks = []
    for i, shot in enumerate(shots):
        missing = {"question", "answer"} - set(shot)
        if missing:
            raise ValueError(f"few-shot example {i} lacks the key(s) {sorted(missing)}")
        blocks.append(f"Question: {shot['question'].strip()}\nAnswer: {shot['answer'].strip()}\n\n")
    blocks.append(f"Question: {question.strip()}\nAnswer:")
    return "".join(blocks)


def select_shots(train_items: Sequence[dict], n_shot: int, seed: int) -> list[dict]:
    """`n_shot` distinct examples drawn from `train_items`, the same ones for the same seed."""
    if not 0 <= n_shot <= len(train_items):
        raise ValueError(
            f"cannot select {n_shot} few-shot examples from {len(train_items)} training items"
        )
    return random.Random(seed).sample(list(train_items), n_shot)


class DatasetError(UserError, ValueError):
    """A data file is missing or not what it should be; the message names the file.

    A UserError, so the CLI reports it as one sentence with exit code 2.
    """


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data file does not exist (also a FileNotFoundError, for callers that catch that)."""


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every JSON object in a JSON-lines file, in order; blank lines are skipped.

    Raises DatasetError (DatasetNotFoundError for a missing file) with a sentence that names
    the path, and the 1-based line number when one line is not a JSON object.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetNotFoundError(f"dataset file {os.fspath(path)!r} does not exist")
    return read_jsonl(p, "dataset file", error=DatasetError)
