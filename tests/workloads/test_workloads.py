"""Workloads: the built-ins load, GSM8K items come from the file the user names, every malformed
workload or unreadable dataset ends in one sentence and exit code 2, and the tokenizer is the
model folder's own when it has one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moebench.cli import app
from moebench.errors import UserError
from moebench.workloads.spec import available_workloads, build_items, load_workload, workload_sha256

GSM8K_DIR = Path(__file__).resolve().parents[2] / "workloads" / "data" / "gsm8k"   # shipped
needs_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").exists(),
                                 reason=f"GSM8K not found in {GSM8K_DIR}")
cli = CliRunner()


def _one_sentence_exit_2(args: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one non-empty line, `error: ...`, no traceback."""
    result = cli.invoke(app, args)
    text = (result.stderr if result.stderr_bytes is not None else "") or result.output
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def _write(tmp_path: Path, text: str, name: str = "wl.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------
# built-ins
# ------------------------------------------------------------------------------------------
def test_every_builtin_workload_loads_and_has_items() -> None:
    names = set(available_workloads())
    assert {"smoke", "chat", "gsm8k", "perplexity", "choice"} <= names
    for name in names:
        if name == "gsm8k" and not (GSM8K_DIR / "test.jsonl").exists():
            continue                                             # its data is not on this machine
        wl = load_workload(name, {"limit": "3"})
        items = build_items(wl)
        assert wl.name == name and 0 < len(items) <= 3
        if wl.task == "choice":
            assert all(len(i.choices) >= 2 and 0 <= i.label < len(i.choices) for i in items)


@needs_gsm8k
def test_gsm8k_items_are_the_real_test_split_with_train_shots() -> None:
    wl = load_workload("gsm8k", {"limit": "2", "n_shot": "2",
                                 "dataset_path": str(GSM8K_DIR / "test.jsonl")})
    items = build_items(wl)
    assert [i.answer for i in items] == ["18", "3"]            # "#### 18", "#### 3"
    first = json.loads((GSM8K_DIR / "test.jsonl").read_text().splitlines()[0])["question"]
    for it in items:
        assert it.text.count("Question: ") == 3 and it.text.endswith("\nAnswer:")
        assert it.text.count("#### ") == 2                      # the two worked shots
    assert items[0].text.endswith(f"Question: {first.strip()}\nAnswer:")
    again = build_items(load_workload("gsm8k", {"limit": "1", "n_shot": "2"}))
    assert again[0].text == items[0].text                        # same seed, same shots
    other = build_items(load_workload("gsm8k", {"limit": "1", "n_shot": "2", "seed": "1"}))
    assert other[0].text != items[0].text


def test_a_users_own_jsonl_is_accepted_and_every_line_checked(tmp_path: Path) -> None:
    data = tmp_path / "mine.jsonl"
    rows = [{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
            {"question": "What is 1,000 + 234?", "answer": "#### 1,234"},
            {"question": "Unused?", "answer": "#### 0"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    wl = load_workload("gsm8k", {"dataset_path": str(data), "limit": "2", "n_shot": "0"})
    items = build_items(wl)
    assert [i.answer for i in items] == ["4", "1234"]
    assert items[0].text == "Question: What is 2 + 2?\nAnswer:"          # zero-shot
    data.write_text(data.read_text() + "this line is not json\n")
    with pytest.raises(UserError, match="dataset file .* line 5 "):      # past the limit, still read
        build_items(wl)


def test_answers_are_part_of_the_workload_hash() -> None:
    from moebench.workloads.spec import Item, Request

    wl = load_workload("gsm8k", {"limit": "1", "n_shot": "0"})
    a = [Request("x", (1, 2, 3), Item("x", "t", answer="4"))]
    b = [Request("x", (1, 2, 3), Item("x", "t", answer="5"))]
    assert workload_sha256(wl, a) != workload_sha256(wl, b)
    smoke = load_workload("smoke")
    plain = [Request("x", (1, 2, 3), Item("x", "t"))]
    assert workload_sha256(smoke, plain) == workload_sha256(smoke, list(plain))


# ------------------------------------------------------------------------------------------
# malformed workloads: one sentence, exit 2, through the CLI
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,needle", [
    ("name: x\nprompts: [unclosed\n", "not valid YAML at line 3"),
    ("name: x\nprompts:\n  - text: a\n   bad: indent\n", "not valid YAML at line"),
    ("name: x\nprompts: [{text: hi}]\nmax_new_tokenz: 4\n", "unknown key 'max_new_tokenz' (did you mean 'max_new_tokens'?)"),
    ("name: x\nprompts: [{text: hi}]\nmax_new_tokens: many\n", "max_new_tokens must be an integer, not 'many'"),
    ("name: x\nprompts: [{text: hi}]\ntask: generation\n", "task must be one of generate, choice, perplexity"),
    ("name: x\nprompts: {text: hi}\n", "prompts must be a list"),
    ("name: x\nprompts: [{text: hi, anwser: 4}]\n", "unknown key 'anwser' (did you mean 'answer'?)"),
    ("- just\n- a list\n", "must be a mapping of fields, not list"),
    ("", "must be a mapping of fields, not an empty file"),
    ("name: x\n", "has no prompts"),
    ("name: x\ntask: choice\nprompts: [{text: q, choices: [a, b]}]\n", "needs 'label'"),
    ("name: x\ntask: choice\nprompts: [{text: q, choices: [a, b], label: 2}]\n", "label 2 is out of range"),
    ("name: x\ntask: choice\nprompts: [{text: q, choices: [a]}]\n", "two or more"),
    ("name: x\ntask: perplexity\nscoring: gsm8k\nprompts: [q]\n", "applies to task generate only"),
    ("name: x\nprompts: [q]\nn_shot: 2\n", "no few_shot_path"),
    ("name: x\ngenerator: {kind: random-tokens, n: 2, lenght: 8}\n", "unknown key 'lenght'"),
    ("name: x\ngenerator: {n: zero}\n", "generator.n must be a positive integer"),
])
def test_malformed_workload_is_one_sentence_and_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    wl = _write(tmp_path, text, "bad.yaml")
    line = _one_sentence_exit_2(["run", "--model", "tiny-qwen3-moe", "--workload", str(wl),
                                 "--out", str(tmp_path)])
    assert needle in line and line.endswith(".")


@needs_gsm8k
@pytest.mark.parametrize("key", ["dataset_path", "few_shot_path"])
def test_unreadable_dataset_path_is_one_sentence_and_exit_2(tmp_path: Path, key: str) -> None:
    base = ["run", "--model", "tiny-qwen3-moe", "--workload", "gsm8k", "--out", str(tmp_path)]
    line = _one_sentence_exit_2(base + ["--set", f"{key}=/nonexistent"])
    assert f"{key} '/nonexistent' does not exist" in line
    line = _one_sentence_exit_2(base + ["--set", f"{key}={tmp_path}"])
    assert "is a folder, not a file" in line


def test_bad_dataset_rows_name_the_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    cases = [('{"question": "q", "answer": "no marker"}', "line 1: GSM8K answer field has no '####'"),
             ('{"question": "q"}', "line 1 lacks a 'question' or 'answer'"),
             ('{"question": "q", "answer": "#### 1"}\n[1, 2]', "line 2 is a JSON list, not an object"),
             ('\xff', "cannot be read (UnicodeDecodeError)")]
    for content, needle in cases:
        data.write_bytes(content.encode("latin-1") if content == "\xff" else content.encode())
        wl = load_workload("gsm8k", {"dataset_path": str(data), "n_shot": "0"})
        with pytest.raises(UserError) as exc:
            build_items(wl)
        assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_choice_items_from_jsonl_and_answer_as_label(tmp_path: Path) -> None:
    data = tmp_path / "mc.jsonl"
    data.write_text(json.dumps({"text": "2 + 2 =", "choices": [" 3", " 4"], "answer": " 4"}) + "\n"
                    + json.dumps({"text": "sky:", "choices": [" blue", " red"], "label": 0}) + "\n")
    wl = load_workload(str(_write(tmp_path, f"name: mc\ntask: choice\ndataset_path: {data}\n")))
    assert [i.label for i in build_items(wl)] == [1, 0]
    data.write_text(json.dumps({"text": "x", "choices": [" a", " b"]}) + "\n")
    with pytest.raises(UserError, match="line 1 needs 'label'"):
        build_items(wl)


def test_gsm8k_scoring_needs_numeric_answers(tmp_path: Path) -> None:
    wl = load_workload(str(_write(tmp_path, "name: x\nscoring: gsm8k\nprompts:\n"
                                            "  - {id: a, text: q, answer: 'forty'}\n")))
    with pytest.raises(UserError, match="'forty', which is not a number"):
        build_items(wl)


# ------------------------------------------------------------------------------------------
# tokenizers
# ------------------------------------------------------------------------------------------
def test_tiny_presets_use_the_bundled_tokenizer_and_folders_their_own(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from moebench.models import presets as P
    from moebench.models.loading import load_tokenizer

    bundled = load_tokenizer(None)
    assert (P.tokenizer_dir() / "tokenizer.json").exists()
    assert len(bundled) == 4096 <= P.get_preset("tiny-qwen3-moe").config["vocab_size"]
    text = "def f(x):\n    return x + 1\n"
    assert bundled.decode(bundled(text)["input_ids"]) == text
    own = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    own.pre_tokenizer = pre_tokenizers.Whitespace()
    own.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert tok("hello world", add_special_tokens=False)["input_ids"] == [1, 2]
    assert load_tokenizer(tmp_path / "no-tokenizer-here")("hello")["input_ids"] == \
        bundled("hello")["input_ids"]                            # falls back to the bundled one


def test_item_ids_must_be_unique(tmp_path: Path) -> None:
    from moebench.models.loading import load_tokenizer
    from moebench.workloads.spec import build_requests

    wl = load_workload(str(_write(tmp_path, "name: x\nprompts:\n  - {id: a, text: one}\n"
                                            "  - {id: a, text: two}\n")))
    with pytest.raises(UserError, match="share the id 'a'"):
        build_requests(wl, load_tokenizer(None), 4096)


def test_prompts_are_cut_to_the_models_context_and_the_cut_is_said() -> None:
    """gsm8k's 4-shot prompts are longer than the default model's 512 positions: they are cut to
    what the context leaves after max_new_tokens, and the result says which and by how much."""
    from moebench.bench.run import run_context
    from moebench.config import RunConfig
    from moebench.engine import session

    prep = session.prepare(RunConfig(model="default", workload="gsm8k", clock="sim",
                                     workload_overrides={"limit": 2, "max_new_tokens": 8}))
    assert all(len(r.input_ids) == 512 - 8 and r.cut_from > 504 for r in prep.requests)
    notes = run_context(prep).load_notes
    assert any("2 prompt(s) were cut" in n and f"({prep.requests[0].cut_from} -> 504)" in n for n in notes)
