"""GSM8K-style answers: one number grammar for the strict parser (`normalize_number`), the
reference answer after `#### ` (`extract_reference_answer`), the answer a model wrote
(`extract_model_answer`) and whether two answers match (`answers_match`). Pure functions; used by
workload validation and by accuracy scoring."""
from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction


# --------------------------------------------------------------------------------------------
# Numbers: one grammar shared by the strict parser (normalize_number) and the scanner that
# finds numbers inside free text (extract_model_answer), so whatever the scanner finds the
# parser accepts.

# Thousands groups must be exact ("1,234,567"); "1,2345" is not one number.
_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_FRACTION = r"\d+/\d+(?!\d)"
_MINUS = "-\u2212"  # ASCII hyphen-minus and the Unicode minus sign
_MINUS_CLASS = r"\-\u2212"  # the same, escaped for a [...] class ("+-\u2212" would be a range)

_STRICT_NUMBER = re.compile(
    rf"(?P<sign>[+{_MINUS_CLASS}])?\$?\s*(?P<sign2>[+{_MINUS_CLASS}])?"
    rf"(?:(?P<frac>{_FRACTION})|(?P<dec>{_DECIMAL}))"
)
# In running text a minus only counts when it cannot be subtraction: "5-3" is 5 and 3.
_TEXT_NUMBER = re.compile(
    rf"(?P<sign>(?<![\w)\]}}.])[{_MINUS_CLASS}])?(?:\$(?P<sign2>[{_MINUS_CLASS}])?)?"
    rf"(?P<body>{_FRACTION}|{_DECIMAL})"
)


def normalize_number(text: str) -> str | None:
    """The canonical form of a number written as `text`, or None if it is not one number.

    Accepts an optional sign, a `$`, thousands commas, a trailing `.` or `%`, leading-dot
    decimals and simple fractions. Canonical means: no commas or currency, no trailing
    zeros after the point, no needless point, no negative zero, fractions kept as fractions::

        "1,234" -> "1234"   "$1,234.50" -> "1234.5"   "7.0" -> "7"   "-0" -> "0"
        ".5" -> "0.5"       "42%" -> "42"             "3/4" -> "3/4" "06/08" -> "6/8"
        "forty" -> None     "1/0" -> None             "1,2345" -> None
    """
    s = text.strip()
    while s and s[-1] in ".%":
        s = s[:-1].rstrip()
    m = _STRICT_NUMBER.fullmatch(s)
    if m is None or (m["sign"] and m["sign2"]):
        return None
    negative = (m["sign"] or m["sign2"] or "+") in _MINUS
    if m["frac"] is not None:
        num, den = (int(part) for part in m["frac"].split("/"))
        if den == 0:
            return None
        return f"{'-' if negative and num else ''}{num}/{den}"
    value = Decimal(m["dec"].replace(",", ""))
    if value == 0:
        return "0"
    # normalize() drops trailing zeros ("12.50" -> "12.5") but writes 100 as 1E+2; "f" undoes that.
    canonical = format(value.normalize(), "f")
    return f"-{canonical}" if negative else canonical


def _as_fraction(canonical: str) -> Fraction:
    """Exact value of a string that `normalize_number` produced."""
    if "/" in canonical:
        return Fraction(canonical)
    return Fraction(Decimal(canonical))


# --------------------------------------------------------------------------------------------
# GSM8K answers


def extract_reference_answer(answer_field: str) -> str:
    """GSM8K's gold answer: the canonical number after the last `####` of the answer field.

    The dataset writes it like "#### 2,125" or "#### 18"; this returns "2125" or "18".
    Raises ValueError when there is no `####` or what follows it is not a number.
    """
    head, marker, tail = answer_field.rpartition("####")
    if not marker:
        raise ValueError(
            f"GSM8K answer field has no '####' marker before its final answer: {_snippet(answer_field)}"
        )
    canonical = normalize_number(tail)
    if canonical is None:
        raise ValueError(
            f"GSM8K answer field has no number after its last '####': {_snippet(tail)}"
        )
    return canonical


# A model that keeps going after its answer usually starts the next few-shot example.
_NEW_EXAMPLE = re.compile(r"(?:^|(?<=\s))(?:Question|Q)\s*:")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is|was|=|:)\s*:?", re.IGNORECASE)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")


def extract_model_answer(generated: str) -> str | None:
    """The final number a model gave in `generated`, in canonical form; None if there is none.

    The text is first cut at the start of a new few-shot example ("Question:" / "Q:"), since
    a base model often invents the next one. Then, in order of how explicitly the model
    committed to an answer:

    1. the first number after the last `####` (the GSM8K format the shots teach),
    2. the first number inside the last `\\boxed{...}`,
    3. the first number after the last "answer is" / "answer:" on that line,
    4. the last number anywhere.

    Pass only the model's continuation, not the prompt: the prompt's own "Question:" lines
    would cut everything away. Units, currency, percent signs, bold markers and trailing
    prose are ignored:
    "The total is $1,234." -> "1234", "**42** apples" -> "42", "\\boxed{\\frac{3}{4}}" -> "3/4".
    """
    cut = _NEW_EXAMPLE.search(generated)
    text = generated[: cut.start()] if cut else generated
    text = _LATEX_FRAC.sub(r"\1/\2", text)

    _, marker, after_marker = text.rpartition("####")
    if marker and (found := _first_number(after_marker)) is not None:
        return found

    boxed = _boxed_contents(text)
    if boxed and (found := _first_number(boxed[-1])) is not None:
        return found

    for m in reversed(list(_ANSWER_IS.finditer(text))):
        rest = text[m.end():].lstrip()
        if (found := _first_number(rest.split("\n", 1)[0])) is not None:
            return found

    return _last_number(text)


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether a predicted answer equals the gold one as numbers.

    Both sides are normalised first, so "1,234.0" matches "1234" and "0.75" matches "3/4".
    Two integers must be equal exactly; otherwise a difference up to 1e-6 counts as equal
    (a model that writes 0.333333 for 1/3 is right). A missing or non-numeric prediction
    never matches; a non-numeric gold answer is a caller's bug and raises ValueError.
    """
    gold_canonical = normalize_number(gold)
    if gold_canonical is None:
        raise ValueError(f"gold answer is not a number: {_snippet(gold)}")
    if pred is None:
        return False
    pred_canonical = normalize_number(pred)
    if pred_canonical is None:
        return False
    p, g = _as_fraction(pred_canonical), _as_fraction(gold_canonical)
    if p.denominator == 1 and g.denominator == 1:
        return p == g
    return abs(p - g) <= Fraction(1, 10**6)


def _first_number(text: str) -> str | None:
    for m in _TEXT_NUMBER.finditer(text):
        if (canonical := _canonical_match(m)) is not None:
            return canonical
    return None


def _last_number(text: str) -> str | None:
    for m in reversed(list(_TEXT_NUMBER.finditer(text))):
        if (canonical := _canonical_match(m)) is not None:
            return canonical
    return None


def _canonical_match(m: re.Match[str]) -> str | None:
    minus = "-" if (m["sign"] or m["sign2"]) else ""
    return normalize_number(minus + m["body"])


def _boxed_contents(text: str) -> list[str]:
    """The contents of every `\\boxed{...}` in `text`, braces balanced (so nesting works)."""
    contents = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                contents.append(text[start:i])
                break
    return contents


def _snippet(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
