"""Workloads: a named, seeded prompt set plus generation settings, hashed into every result.

A workload is YAML (built-ins in `workloads/*.yaml`, or any path):

    name: gsm8k
    task: generate          # generate (answer extracted) | choice (log-likelihood) | perplexity
    prompts:                # inline items: {id, text, answer?, choices?, label?}
      - {id: p0, text: "..."}
      - {id: q1, text: "2 + 2 =", choices: [" 3", " 4"], label: 1}   # task: choice
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
    batch_size: 1           # prompts decoded together (left-padded), in workload order
    prefill_copies: per-expert   # per-expert | whole-layer | auto: how a prefill's copies cross
    seed: 0
    calibration: calibration   # what predictors are fitted on (default: the shipped set, disjoint
                               # from every shipped evaluation workload)

Everything is checked when the workload is loaded, before any model is: unknown keys (with a
did-you-mean), wrong types, impossible settings, and `dataset_path` / `few_shot_path` that are
not readable files each end in one sentence naming the field (a `UserError`, exit code 2).
Rows of a dataset are checked as they are read (the 1-based line number is named).
Task `choice` needs every item to carry `choices` (two or more) and `label` (the index of the
right one; or `answer` equal to one of the choices). Scoring `gsm8k` needs numeric answers.

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
    batch_size: int = 1      # B prompts decode together: one forward per step for all B
    # how a prefill's demand copies cross the link: one per expert the prompt uses, one
    # whole-layer transfer, or auto (whichever takes less link time; moebench.offload.protocol)
    prefill_copies: Literal["per-expert", "whole-layer", "auto"] = "per-expert"
    chat: bool = False
    seed: int = 0
    calibration: str = "calibration"   # workload the predictors are calibrated on (disjoint text)
    source_file: str | None = None

    def validate(self, where: str) -> None:
        if not isinstance(self.prompts, list):
            raise UserError(f"{where}.prompts must be a list of items, not a "
                            f"{type(self.prompts).__name__}.")
        if not isinstance(self.generator, dict):
            raise UserError(f"{where}.generator must be a mapping, not a "
                            f"{type(self.generator).__name__}.")
        if self.max_new_tokens < 2:
            raise UserError(f"{where}.max_new_tokens must be at least 2 (TPOT needs two tokens).")
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"{where}.limit must be positive.")
        if self.repetitions < 1:
            raise UserError(f"{where}.repetitions must be at least 1.")
        if self.batch_size < 1:
            raise UserError(f"{where}.batch_size must be at least 1.")
        if self.batch_size > 1 and self.task != "generate":
            raise UserError(f"{where}.batch_size {self.batch_size}: batched decoding applies to "
                            f"task generate only (task {self.task} scores one prompt at a time).")
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
                if self.task == "choice":
                    _choice_label(p.get("choices"), p.get("label"), p.get("answer"),
                                  f"{where}.prompts[{i}]")
            elif self.task == "choice":
                raise UserError(f"{where}.prompts[{i}] needs 'choices' and 'label' (task choice).")
        if self.scoring != "none" and self.task != "generate":
            raise UserError(f"{where}.scoring '{self.scoring}' applies to task generate only "
                            f"(task {self.task} is scored by its own rule); remove it.")
        if self.n_shot and not self.few_shot_path:
            raise UserError(f"{where}.n_shot is {self.n_shot} but no few_shot_path names the "
                            "examples; set few_shot_path or n_shot: 0.")
        if self.n_shot and self.dataset_format != "gsm8k":
            raise UserError(f"{where}.n_shot: few-shot prompts are built for dataset_format "
                            f"gsm8k only, not '{self.dataset_format}'; set n_shot: 0.")
        if self.max_prompt_tokens < 1:
            raise UserError(f"{where}.max_prompt_tokens must be at least 1.")
        if self.generator:
            _check_generator(self.generator, f"{where}.generator")


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
    cut_from: int | None = None     # the prompt's token count before max_prompt_tokens cut it


def builtin_dir() -> Path:
    return Path(str(resources.files("moebench.workloads.builtin")))


def available_workloads() -> dict[str, Path]:
    return {p.stem: p for p in sorted(builtin_dir().glob("*.yaml"))}


def load_workload(name_or_path: str, overrides: dict[str, Any] | None = None) -> Workload:
    """A built-in workload by name, or a YAML file; `overrides` are `--set` fields (strings).

    The data files it names are checked here too (readable files), so a typo in a path fails
    in a second, before any model loads.
    """
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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"workload {path} is not valid YAML{_yaml_where(exc)}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read workload file {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    if not isinstance(data, dict):
        raise UserError(f"workload {path} must be a mapping of fields, not "
                        f"{'an empty file' if data is None else type(data).__name__}.")
    data.setdefault("name", path.stem)
    data["source_file"] = str(path)
    wl = from_dict(Workload, data, f"workload {path.name}")
    if overrides:
        wl = apply_overrides(wl, overrides)
    check_paths(wl)
    return wl


def _yaml_where(exc: Exception) -> str:
    """' at line L, column C: problem' from a PyYAML error (its str() spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = f": {' '.join(str(problem).split())}" if problem else ""
    return where + what


def check_paths(wl: Workload) -> None:
    """`dataset_path` and (when `n_shot` > 0) `few_shot_path` must name readable files."""
    for key in ("dataset_path", "few_shot_path"):
        raw = getattr(wl, key)
        if not raw or (key == "few_shot_path" and not wl.n_shot):   # unused when n_shot is 0
            continue
        p = _resolve(raw, wl)
        where = f"workload {wl.name}: {key} '{raw}'"
        if not p.exists():
            beside = wl.source_file and not Path(raw).is_absolute()
            tried = f" (also looked next to {wl.source_file})" if beside else ""
            raise UserError(f"{where} does not exist{tried}.")
        if p.is_dir():
            raise UserError(f"{where} is a folder, not a file.")
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise UserError(f"{where} cannot be read: {exc.strerror or exc}.") from None


def _choice_label(choices: Any, label: Any, answer: Any, where: str) -> int:
    """The index of the right choice of a multiple-choice item, or a UserError."""
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise UserError(f"{where} needs 'choices': a list of two or more strings (task choice).")
    if not all(isinstance(c, str) and c for c in choices):
        raise UserError(f"{where}.choices must all be non-empty strings.")
    if label is None and answer is not None and str(answer) in choices:
        label = list(choices).index(str(answer))
    if isinstance(label, bool) or not isinstance(label, int):
        raise UserError(f"{where} needs 'label', the index of the right choice (an integer), "
                        "or an 'answer' equal to one of the choices.")
    if not 0 <= label < len(choices):
        raise UserError(f"{where}.label {label} is out of range for {len(choices)} choices.")
    return label


def _check_generator(gen: dict, where: str) -> None:
    unknown = set(gen) - {"kind", "n", "length"}
    if unknown:
        k = sorted(map(str, unknown))[0]
        raise UserError(f"{where}: unknown key '{k}'{did_you_mean(k, ['kind', 'n', 'length'])}.")
    if gen.get("kind", "random-tokens") != "random-tokens":
        raise UserError(f"{where}.kind must be random-tokens, not {gen.get('kind')!r}.")
    for key in ("n", "length"):
        v = gen.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{where}.{key} must be a positive integer, not {v!r}.")


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
    """Inline prompts, then dataset rows, capped at `limit`. The whole file is read and checked
    (a broken line past the limit is still reported); only items within it are built."""
    items: list[Item] = []
    for i, p in enumerate(wl.prompts):
        if isinstance(p, str):
            items.append(Item(id=f"p{i}", text=p))
            continue
        answer = None if p.get("answer") is None else str(p["answer"])
        label = (_choice_label(p.get("choices"), p.get("label"), answer, f"prompts[{i}]")
                 if wl.task == "choice" else p.get("label"))
        items.append(Item(id=str(p.get("id", f"p{i}")), text=str(p["text"]), answer=answer,
                          choices=tuple(p.get("choices") or ()), label=label))
    if wl.dataset_path:
        room = None if wl.limit is None else max(0, wl.limit - len(items))
        items += _dataset_items(wl, room)
    if wl.limit is not None:
        items = items[: wl.limit]
    if wl.scoring == "gsm8k":
        from moebench.workloads.answers import normalize_number

        for it in items:
            if it.answer is not None and normalize_number(it.answer) is None:
                raise UserError(f"workload {wl.name}: item '{it.id}' has answer {it.answer!r}, "
                                "which is not a number (scoring gsm8k).")
    return items


def _dataset_items(wl: Workload, room: int | None) -> list[Item]:
    from moebench.workloads.answers import extract_reference_answer
    from moebench.workloads.datasets import build_gsm8k_prompt, load_jsonl, select_shots

    path = _resolve(wl.dataset_path, wl)
    try:
        if wl.dataset_format == "text":
            rows = [{"text": path.read_text(encoding="utf-8")}]
        else:
            rows = load_jsonl(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read dataset {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    if room is not None:
        rows = rows[:room]
    shots: list[dict] = []
    if wl.n_shot and wl.few_shot_path:
        shot_path = _resolve(wl.few_shot_path, wl)
        train = load_jsonl(shot_path)
        try:
            shots = select_shots(train, wl.n_shot, wl.seed)
            build_gsm8k_prompt("", shots)
        except ValueError as exc:
            raise UserError(f"few-shot file {shot_path}: {exc}.") from None
    items: list[Item] = []
    for j, row in enumerate(rows):
        where = f"dataset {path} line {j + 1}"
        iid = f"{path.stem}-{j}"
        if wl.dataset_format == "gsm8k":
            if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
                raise UserError(f"{where} lacks a 'question' or 'answer' string.")
            try:
                gold = extract_reference_answer(row["answer"])
            except ValueError as exc:
                raise UserError(f"{where}: {exc}.") from None
            items.append(Item(id=iid, text=build_gsm8k_prompt(row["question"], shots), answer=gold))
        elif wl.dataset_format == "text":
            items.append(Item(id=iid, text=row["text"]))
        else:
            if wl.text_field not in row:
                raise UserError(f"{where} has no field '{wl.text_field}'.")
            ans = row.get(wl.answer_field)
            ans = None if ans is None else str(ans)
            label = (_choice_label(row.get("choices"), row.get("label"), ans, where)
                     if wl.task == "choice" else row.get("label"))
            items.append(Item(id=iid, text=str(row[wl.text_field]), answer=ans,
                              choices=tuple(row.get("choices") or ()), label=label))
    return items


def build_requests(wl: Workload, tokenizer: Any, vocab_size: int,
                   context: int | None = None) -> list[Request]:
    """Token ids for every prompt, cut from the left to `max_prompt_tokens`, and to what the
    model's `context` leaves after `max_new_tokens` (each cut is recorded: `Request.cut_from`)."""
    reqs: list[Request] = []
    keep = wl.max_prompt_tokens
    if context is not None:
        keep = max(1, min(keep, context - wl.max_new_tokens))
    gen = wl.generator or {}
    if gen:
        _check_generator(gen, f"workload {wl.name}.generator")
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
        cut_from = len(ids) if len(ids) > keep else None
        ids = ids[-keep:]
        if max(ids) >= vocab_size:
            raise UserError(f"workload {wl.name}: the tokenizer produces ids beyond the model's "
                            f"vocabulary ({vocab_size}).")
        reqs.append(Request(item.id, tuple(ids), item, cut_from))
    if wl.limit is not None:
        reqs = reqs[: wl.limit]
    if not reqs:
        raise UserError(f"workload {wl.name} has no prompts after limits.")
    seen: set[str] = set()
    for r in reqs:
        if r.id in seen:   # results and accuracy pair items by id
            raise UserError(f"workload {wl.name}: two items share the id '{r.id}'; ids must be unique.")
        seen.add(r.id)
    return reqs


def workload_sha256(wl: Workload, requests: list[Request]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"task": wl.task, "max_new_tokens": wl.max_new_tokens,
                         "repetitions": wl.repetitions, "warmup_steps": wl.warmup_steps,
                         # batch 1 hashes as before batching existed
                         **({"batch_size": wl.batch_size} if wl.batch_size != 1 else {}),
                         **({"prefill_copies": wl.prefill_copies}
                            if wl.prefill_copies != "per-expert" else {})},
                        sort_keys=True).encode())
    for r in requests:
        h.update(r.id.encode())
        h.update(json.dumps(list(r.input_ids)).encode())
        it = r.item
        if it.answer is not None or it.choices:
            # What an item is scored against is part of its identity; prompts without answers
            # (smoke, chat, perplexity) hash exactly as before.
            h.update(json.dumps({"answer": it.answer, "choices": list(it.choices),
                                 "label": it.label, "scoring": wl.scoring}).encode())
    return h.hexdigest()
