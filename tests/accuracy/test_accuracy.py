"""Hand-checked cases for moebench.accuracy.fidelity: answer parsing, prompts, data files, fidelity."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from moebench.accuracy.fidelity import Fidelity, FidelityAccumulator, exact_match_rate, fidelity_from_logits, kl_per_token, merge_fidelity, token_agreement
from moebench.workloads.answers import answers_match, extract_model_answer, extract_reference_answer, normalize_number
from moebench.workloads.datasets import DatasetError, build_gsm8k_prompt, load_jsonl, select_shots

GSM8K = Path(__file__).resolve().parents[2] / "workloads" / "data" / "gsm8k"       # shipped
needs_gsm8k = pytest.mark.skipif(
    not (GSM8K / "test.jsonl").exists(), reason="GSM8K data not present"
)


# --- GSM8K gold answers -----------------------------------------------------------------------


@needs_gsm8k
def test_reference_answers_of_first_test_lines_are_canonical_integers():
    with open(GSM8K / "test.jsonl", encoding="utf-8") as f:
        items = [json.loads(next(f)) for _ in range(5)]
    golds = [extract_reference_answer(item["answer"]) for item in items]
    for gold in golds:
        assert re.fullmatch(r"0|-?[1-9]\d*", gold), gold
    # Read by hand from the file: line 1 ends "#### 18", line 2 "#### 3", line 3 "#### 70000".
    assert golds[:3] == ["18", "3", "70000"]


@needs_gsm8k
def test_reference_answer_with_thousands_comma_from_the_file():
    # Line 147 of test.jsonl ends "... <<500+1500+125=2125>>2125 blocks\n#### 2,125".
    with open(GSM8K / "test.jsonl", encoding="utf-8") as f:
        line = f.readlines()[146]
    assert extract_reference_answer(json.loads(line)["answer"]) == "2125"


@pytest.mark.parametrize(
    "field, expected",
    [
        ("so 3*4 = 12\n#### 12", "12"),
        ("#### 1,200", "1200"),
        ("#### $5.", "5"),
        ("#### -0", "0"),
        ("#### 12.50", "12.5"),
        ("#### 7.0", "7"),
        ("x #### 3\n#### 4", "4"),  # the last marker wins
    ],
)
def test_extract_reference_answer_normalises(field, expected):
    assert extract_reference_answer(field) == expected


def test_extract_reference_answer_without_marker_says_so():
    with pytest.raises(ValueError, match="no '####' marker"):
        extract_reference_answer("The answer is 18")
    with pytest.raises(ValueError, match="no number after"):
        extract_reference_answer("#### eighteen")


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,234", "1234"),
        ("$1,234.50", "1234.5"),
        ("-3", "-3"),
        ("\u22123", "-3"),
        ("+4", "4"),
        (".5", "0.5"),
        ("3/4", "3/4"),
        ("-3/4", "-3/4"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("100", "100"),
        ("12.", "12"),
        ("42%", "42"),
        ("-$5", "-5"),
        ("forty", None),
        ("1,2345", None),
        ("1/0", None),
        ("", None),
        ("12 apples", None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


# --- model answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "generated, expected",
    [
        ("The total is $1,234.", "1234"),
        ("She has 42 apples", "42"),
        ("He sold 42 apples and went home", "42"),
        ("It rose by 42%.", "42"),
        ("That costs 42 dollars", "42"),
        ("The answer is 42.", "42"),
        ("The answer is **42**", "42"),
        ("The answer is 18. Question: next one has 99 cats", "18"),
        ("So 9 * 2 = 18.\n#### 18\n\nQuestion: Tom has 5 pens.\nAnswer: #### 5", "18"),
        ("First 3 + 4 = 7, then 10.\n#### 42", "42"),
        ("#### 42 is what we get, not 7", "42"),
        ("We get 7 and then 8, so \\boxed{42} overall, 9", "42"),
        ("\\boxed{\\frac{3}{4}}", "3/4"),
        ("The final answer is $\\boxed{1,000}$.", "1000"),
        ("The answer is 5 but 6 and 7 came up", "5"),
        ("The temperature ends at -7 degrees", "-7"),
        ("He is left with -$3.50", "-3.5"),
        ("Each costs 2.75 so 2.5", "2.5"),
        ("16 - 3 - 4 = 9", "9"),
        ("5-3", "3"),  # subtraction, not a negative number
        ("I do not know.", None),
        ("", None),
        ("Question: a new example with 12 eggs", None),
    ],
)
def test_extract_model_answer(generated, expected):
    assert extract_model_answer(generated) == expected


def test_marker_outranks_boxed_outranks_answer_is_outranks_last_number():
    assert extract_model_answer("answer is 1, \\boxed{2}, #### 3, 4") == "3"
    assert extract_model_answer("answer is 1, \\boxed{2}, 4") == "2"
    assert extract_model_answer("the answer is 1, then 4") == "1"
    assert extract_model_answer("just 1, then 4") == "4"


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("1234", "1,234", True),
        ("$1,234.00", "1234", True),
        ("0.75", "3/4", True),
        ("0.333333", "1/3", True),  # within 1e-6
        ("0.3333", "1/3", False),
        ("18.0000001", "18", True),
        ("1000001", "1000000", False),  # integers compare exactly
        ("-5", "5", False),
        ("42", "43", False),
        (None, "42", False),
        ("forty-two", "42", False),
    ],
)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_answers_match_rejects_non_numeric_gold():
    with pytest.raises(ValueError, match="gold answer is not a number"):
        answers_match("3", "three")


# --- prompts ----------------------------------------------------------------------------------

TRAIN = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(20)]


def test_prompt_layout_is_exact():
    shots = [{"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}]
    assert build_gsm8k_prompt(" How many? ", shots) == (
        "Question: What is 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2\n\n"
        "Question: How many?\nAnswer:"
    )
    assert build_gsm8k_prompt("How many?", []) == "Question: How many?\nAnswer:"


def test_prompts_are_deterministic_for_a_seed():
    a = build_gsm8k_prompt("Q?", select_shots(TRAIN, 4, seed=7))
    b = build_gsm8k_prompt("Q?", select_shots(TRAIN, 4, seed=7))
    c = build_gsm8k_prompt("Q?", select_shots(TRAIN, 4, seed=8))
    assert a == b != c
    assert a.endswith("Answer:")
    assert a.count("Question: ") == 5 and a.count("#### ") == 4


def test_select_shots():
    shots = select_shots(TRAIN, 5, seed=0)
    assert len(shots) == 5 and len({s["question"] for s in shots}) == 5
    assert all(s in TRAIN for s in shots)
    assert select_shots(TRAIN, 0, seed=0) == []
    with pytest.raises(ValueError, match="cannot select 21"):
        select_shots(TRAIN, 21, seed=0)


def test_prompt_rejects_a_shot_without_answer():
    with pytest.raises(ValueError, match="lacks the key"):
        build_gsm8k_prompt("Q?", [{"question": "x"}])


# --- data files -------------------------------------------------------------------------------


def test_load_jsonl_reads_objects_and_skips_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "a", "answer": "#### 1"}\n\n{"question": "b", "answer": "#### 2"}\n')
    assert [item["question"] for item in load_jsonl(path)] == ["a", "b"]


def test_load_jsonl_missing_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_jsonl(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_load_jsonl_malformed_line_names_path_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a"}\n{"question": \n')
    with pytest.raises(DatasetError, match="line 2") as info:
        load_jsonl(path)
    assert str(path) in str(info.value)


def test_load_jsonl_rejects_a_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DatasetError, match="line 2 .* not an object"):
        load_jsonl(path)


@needs_gsm8k
def test_load_jsonl_reads_gsm8k_test():
    items = load_jsonl(GSM8K / "test.jsonl")
    assert len(items) == 1319 and set(items[0]) == {"question", "answer"}


# --- teacher-forced fidelity ------------------------------------------------------------------


def _logits(n: int = 16, v: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed))  # [N, V]


def test_identical_logits_are_exactly_lossless():
    ref = _logits()
    targets = torch.arange(16) % 50
    fid = fidelity_from_logits(ref, ref.clone(), targets)
    assert fid.kl_mean == 0.0 and fid.kl_p99 == 0.0
    assert fid.top1_agreement == 1.0
    assert fid.ppl_ratio == 1.0 and fid.ppl_ref == fid.ppl_cand
    assert fid.n_tokens == 16


def test_kl_of_a_hand_computed_case():
    # p = softmax([0, 0]) = [1/2, 1/2], q = softmax([ln 3, 0]) = [3/4, 1/4]:
    # KL(p || q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    ref = torch.tensor([[0.0, 0.0]], dtype=torch.float64)  # float64 so ln 3 is not rounded
    cand = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    assert kl_per_token(ref, cand).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    fid = fidelity_from_logits(ref, cand, torch.tensor([0]))
    assert fid.ppl_ref == pytest.approx(2.0)  # -ln(1/2)
    assert fid.ppl_cand == pytest.approx(4 / 3)  # -ln(3/4)
    assert fid.ppl_ratio == pytest.approx(2 / 3)


def test_kl_of_a_perturbation_matches_torch_distributions_and_numpy():
    ref = _logits(32, 40, seed=1)  # [N, V]
    cand = ref + 0.3 * _logits(32, 40, seed=2)  # [N, V]
    kl = kl_per_token(ref, cand)  # [N]
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=ref.double()),
        torch.distributions.Categorical(logits=cand.double()),
    )
    torch.testing.assert_close(kl, expected, rtol=1e-10, atol=1e-12)

    r, c = ref.double().numpy(), cand.double().numpy()
    log_p = r - np.log(np.exp(r).sum(axis=1, keepdims=True))
    log_q = c - np.log(np.exp(c).sum(axis=1, keepdims=True))
    by_numpy = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    np.testing.assert_allclose(kl.numpy(), by_numpy, rtol=1e-10)

    fid = fidelity_from_logits(ref, cand, torch.zeros(32, dtype=torch.long))
    assert fid.kl_mean == pytest.approx(by_numpy.mean(), rel=1e-10)
    assert fid.kl_p99 == pytest.approx(np.percentile(by_numpy, 99), rel=1e-10)
    assert fid.kl_mean > 0


def test_kl_with_masked_vocabulary_is_finite():
    ref = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert kl_per_token(ref, ref.clone()).item() == 0.0
    assert kl_per_token(ref, torch.tensor([[0.0, 1.0, float("-inf")]])).item() > 0


def test_top1_agreement_three_of_four():
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    cand = ref.clone()
    cand[3] = torch.tensor([0.0, 2.0, 0.0])  # last row's argmax moves from 0 to 1
    fid = fidelity_from_logits(ref, cand, torch.tensor([0, 1, 2, 0]))
    assert fid.top1_agreement == 0.75


def test_accumulator_over_batches_equals_one_batch():
    ref, cand = _logits(30, 20, seed=3), _logits(30, 20, seed=4)  # [N, V]
    targets = torch.arange(30) % 20  # [N]
    whole = fidelity_from_logits(ref, cand, targets)

    acc = FidelityAccumulator()
    for lo, hi in [(0, 7), (7, 7), (7, 30)]:
        acc.add(ref[lo:hi], cand[lo:hi], targets[lo:hi])
    assert _close(acc.result(), whole)

    left, right = FidelityAccumulator(), FidelityAccumulator()
    left.add(ref[:10], cand[:10], targets[:10])
    right.add(ref[10:], cand[10:], targets[10:])
    assert _close(left.merge(right).result(), whole)
    assert left.n_tokens == 10  # merge changes neither input


def test_merge_fidelity_is_token_weighted_and_bounds_p99():
    ref, cand = _logits(30, 20, seed=5), _logits(30, 20, seed=6)  # [N, V]
    targets = torch.arange(30) % 20  # [N]
    whole = fidelity_from_logits(ref, cand, targets)
    parts = [fidelity_from_logits(ref[a:b], cand[a:b], targets[a:b]) for a, b in [(0, 10), (10, 30)]]
    merged = merge_fidelity(parts)
    assert merged.n_tokens == 30
    for name in ["kl_mean", "top1_agreement", "ppl_ref", "ppl_cand", "ppl_ratio"]:
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-12)
    assert merged.kl_p99 >= whole.kl_p99


def test_fidelity_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        fidelity_from_logits(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        fidelity_from_logits(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="vocabulary"):
        fidelity_from_logits(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="at least one"):
        FidelityAccumulator().result()


def _close(a: Fidelity, b: Fidelity) -> bool:
    assert a.n_tokens == b.n_tokens
    for name in ["kl_mean", "kl_p99", "top1_agreement", "ppl_ref", "ppl_cand", "ppl_ratio"]:
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12), name
    return True


# --- greedy agreement -------------------------------------------------------------------------


def test_token_agreement():
    assert token_agreement([1, 2, 3], [1, 2, 3]) == {
        "exact_match": True, "first_divergence": None, "match_fraction": 1.0,
    }
    assert token_agreement([1, 2, 3, 4], [1, 9, 3, 8]) == {
        "exact_match": False, "first_divergence": 1, "match_fraction": 0.5,
    }
    assert token_agreement([1, 2, 3], [1, 2]) == {
        "exact_match": False, "first_divergence": 2, "match_fraction": 1.0,
    }
    assert token_agreement([], [])["match_fraction"] == 1.0
    assert token_agreement([1], [])["match_fraction"] == 0.0


def test_exact_match_rate():
    pairs = [([1, 2], [1, 2]), ([1, 2], [1, 3]), ([5], [5]), ([], [])]
    assert exact_match_rate(pairs) == 0.75
    with pytest.raises(ValueError, match="at least one"):
        exact_match_rate([])
