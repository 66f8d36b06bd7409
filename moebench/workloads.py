"""Workloads: a named, seeded prompt set plus generation settings, hashed into every result.

A workload is YAML (built-ins in `workloads/*.yaml`, or any path):

    name: gsm8k
    task: generate          # generate (answer extracted) | choice (log-likelihood) | perplexity
    prompts:                # inline items: {id, text, answer?, choices?}
      - {id: p0, text: "..."}
    dataset_path: FILE      # or items from a JSONL file ({question, answer} or text_field)
    dataset_format: gsm8k   # gsm8k | jsonl
    text_field: text
    few_shot_path: FILE     # few-shot examples (GSM8K: the train split), n_shot of them
    n_shot: 4
    generator: {kind: random-tokens, n: 4, length: 32}   # or synthetic token prompts
    limit: 20               # item cap
    max_new_tokens: 32      # every strategy decodes exactly this many tokens (EOS ignored)
    max_prompt_tokens: 512
    scoring: gsm8k          # none | gsm8k | exact
    repetitions: 1          # passes over the items in one run (the cache stays warm)
    warmup_steps: 2         # untimed decode steps before measuring
    seed: 0

`--set KEY=VALUE` overrides any of these fields by name. The token ids of every prompt, with the
generation settings, give `workload_sha256`; `compare` refuses results whose hashes differ.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from moebench.config import coerce, field_names, from_dict
from moebench.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Workload:
    name: str
    description: str = ""
    task: Literal["generate", "choice", "perplexity"] = "generate"
    prompts: list = field(default_factory=list)
    dataset_path: str | None = None
    dataset_format: Literal["gsm8k", "jsonl", "text"] = "jsonl"
    text_field: str = "text"
    answer_field: str = "answer"
    few_shot_path: str | None = None
    n_shot: int = 0
    generator: dict = field(default_factory=dict)
    limit: int | None = None
    max_new_tokens: int = 16
    max_prompt_tokens: int = 512
    scoring: Literal["none", "gsm8k", "exact"] = "none"
    repetitions: int = 1
    warmup_steps: int = 2
    chat: bool = False
    seed: int = 0
    calibration: str = "smoke"      # workload used to calibrate predictors for this one
    source_file: str | None = None

    def validate(self, where: str) -> None:
        if self.max_new_tokens < 2:
            raise UserError(f"{where}.max_new_tokens must be at least 2 (TPOT needs two tokens).")
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"{where}.limit must be positive.")
        if self.repetitions < 1:
            raise UserError(f"{where}.repetitions must be at least 1.")
        if self.n_shot < 0 or self.warmup_steps < 0:
            raise UserError(f"{where}: n_shot and warmup_steps must not be negative.")
        if not (self.prompts or self.dataset_path or self.generator):
            raise UserError(f"{where} has no prompts: give prompts, dataset_path or generator.")
        for i, p in enumerate(self.prompts):
            if not isinstance(p, (dict, str)):
                raise UserError(f"{where}.prompts[{i}] must be a mapping with 'text' or a string.")
            if isinstance(p, dict):
                unknown = set(p) - {"id", "text", "answer", "choices", "label"}
                if unknown:
                    k = sorted(unknown)[0]
                    raise UserError(f"{where}.prompts[{i}]: unknown key '{k}'"
                                    f"{did_you_mean(k, ['id', 'text', 'answer', 'choices', 'label'])}.")
                if "text" not in p:
                    raise UserError(f"{where}.prompts[{i}] has no 'text'.")


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    answer: str | None = None
    choices: tuple[str, ...] = ()
    label: int | None = None


@dataclass(frozen=True)
class Request:
    """A tokenised prompt; what the engine runs."""

    id: str
    input_ids: tuple[int, ...]
    item: Item


def builtin_dir() -> Path:
    return Path(str(resources.files("workloads")))


def available_workloads() -> dict[str, Path]:
    return {p.stem: p for p in sorted(builtin_dir().glob("*.yaml"))}


def load_workload(name_or_path: str, overrides: dict[str, Any] | None = None) -> Workload:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        known = available_workloads()
        if name_or_path not in known:
            raise UserError(f"unknown workload '{name_or_path}'{did_you_mean(name_or_path, known)}; "
                            "or pass a YAML file.")
        path = known[name_or_path]
    if not path.exists():
        raise UserError(f"workload file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise UserError(f"workload {path} is not valid YAML: {first}.") from None
    if not isinstance(data, dict):
        raise UserError(f"workload {path} must be a mapping of fields.")
    data.setdefault("name", path.stem)
    data["source_file"] = str(path)
    wl = from_dict(Workload, data, f"workload {path.name}")
    if overrides:
        wl = apply_overrides(wl, overrides)
    return wl


def apply_overrides(wl: Workload, overrides: dict[str, Any]) -> Workload:
    from typing import get_type_hints

    hints = get_type_hints(Workload)
    changes = {}
    for k, v in overrides.items():
        if k not in field_names(Workload):
            raise UserError(f"unknown workload field '{k}'{did_you_mean(k, field_names(Workload))}.")
        changes[k] = coerce(v, hints[k], f"--set {k}")
    new = replace(wl, **changes)
    new.validate(f"workload {wl.name}")
    return new


# ----------------------------------------------------------------------------------------------
# items and requests
# ----------------------------------------------------------------------------------------------
def _resolve(path: str, wl: Workload) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and wl.source_file:
        alt = Path(wl.source_file).parent / p
        if alt.exists():
            return alt
    return p


def build_items(wl: Workload) -> list[Item]:
    from moebench.accuracy import DatasetError, build_gsm8k_prompt, load_jsonl, select_shots

    items: list[Item] = []
    for i, p in enumerate(wl.prompts):
        if isinstance(p, str):
            items.append(Item(id=f"p{i}", text=p))
        else:
            items.append(Item(id=str(p.get("id", f"p{i}")), text=str(p["text"]),
                              answer=None if p.get("answer") is None else str(p["answer"]),
                              choices=tuple(p.get("choices") or ()), label=p.get("label")))
    if wl.dataset_path:
        path = _resolve(wl.dataset_path, wl)
        try:
            if wl.dataset_format == "text":
                rows = [{"text": path.read_text()}]
            else:
                rows = load_jsonl(path)
        except OSError as exc:
            raise UserError(f"cannot read dataset {path}: {exc.strerror or exc}.") from None
        except DatasetError:
            raise
        shots: list[dict] = []
        if wl.n_shot and wl.few_shot_path:
            shots = select_shots(load_jsonl(_resolve(wl.few_shot_path, wl)), wl.n_shot, wl.seed)
        for j, row in enumerate(rows):
            if wl.dataset_format == "gsm8k":
                if "question" not in row or "answer" not in row:
                    raise UserError(f"dataset {path} line {j + 1} lacks 'question' or 'answer'.")
                from moebench.accuracy import extract_reference_answer
                items.append(Item(id=f"{path.stem}-{j}", text=build_gsm8k_prompt(row["question"], shots),
                                  answer=extract_reference_answer(row["answer"])))
            elif wl.dataset_format == "text":
                items.append(Item(id=f"{path.stem}-{j}", text=row["text"]))
            else:
                if wl.text_field not in row:
                    raise UserError(f"dataset {path} line {j + 1} has no field '{wl.text_field}'.")
                ans = row.get(wl.answer_field)
                items.append(Item(id=f"{path.stem}-{j}", text=str(row[wl.text_field]),
                                  answer=None if ans is None else str(ans),
                                  choices=tuple(row.get("choices") or ()), label=row.get("label")))
    if wl.limit is not None:
        items = items[: wl.limit]
    return items


def build_requests(wl: Workload, tokenizer: Any, vocab_size: int) -> list[Request]:
    """Token ids for every prompt (truncated from the left to `max_prompt_tokens`)."""
    reqs: list[Request] = []
    gen = wl.generator or {}
    if gen:
        if gen.get("kind", "random-tokens") != "random-tokens":
            raise UserError(f"workload {wl.name}: unknown generator kind '{gen.get('kind')}'.")
        rng = random.Random(wl.seed)
        n, length = int(gen.get("n", 4)), int(gen.get("length", 32))
        for i in range(n):
            ids = tuple(rng.randrange(1, vocab_size) for _ in range(length))
            reqs.append(Request(f"g{i}", ids, Item(id=f"g{i}", text="")))
    for item in build_items(wl):
        text = item.text
        if wl.chat and hasattr(tokenizer, "apply_chat_template") and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError(f"workload {wl.name}: prompt '{item.id}' tokenises to nothing.")
        ids = ids[-wl.max_prompt_tokens:]
        if max(ids) >= vocab_size:
            raise UserError(f"workload {wl.name}: the tokenizer produces ids beyond the model's "
                            f"vocabulary ({vocab_size}).")
        reqs.append(Request(item.id, tuple(ids), item))
    if wl.limit is not None:
        reqs = reqs[: wl.limit]
    if not reqs:
        raise UserError(f"workload {wl.name} has no prompts after limits.")
    return reqs


def workload_sha256(wl: Workload, requests: list[Request]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"task": wl.task, "max_new_tokens": wl.max_new_tokens,
                         "repetitions": wl.repetitions, "warmup_steps": wl.warmup_steps},
                        sort_keys=True).encode())
    for r in requests:
        h.update(r.id.encode())
        h.update(json.dumps(list(r.input_ids)).encode())
    return h.hexdigest()
