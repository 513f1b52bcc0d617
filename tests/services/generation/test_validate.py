import json

import pytest

from services.generation.neardup import NearDupIndex, band_keys
from services.generation.validate import check_textbook, parse_exercise

PROSE = " ".join(f"word{i}" for i in range(150))
GOOD_BOOK = f"# Loops\n\n{PROSE}\n\n```python\nfor i in range(3):\n    print(i)\n```\n"


@pytest.mark.parametrize(("text", "finish", "reason"), [
    (GOOD_BOOK, "stop", None),
    (GOOD_BOOK, "length", "truncated"),
    ("I'm sorry, but I can't write that. " + PROSE, "stop", "refusal"),
    ("As an AI language model, I cannot " + PROSE, "stop", "refusal"),
    ("# Loops\n\nshort text\n```python\nx = 1\n```", "stop", "too_short"),
    (f"# Loops\n\n{PROSE}", "stop", "no_code"),
    (GOOD_BOOK + "\n```python\ndef f(:\n```\n", "stop", "code_syntax_error"),
])
def test_textbook_checks_give_reason_codes(text, finish, reason):
    assert check_textbook(text, finish, min_words=120) == reason


PROMPT = 'def add_pairs(a: int, b: int = 0) -> int:\n    """Add a and b."""\n'
SOLUTION = "def add_pairs(a: int, b: int = 0) -> int:\n    return a + b\n"
TESTS = ["assert add_pairs(1, 2) == 3", "assert add_pairs(1) == 1"]


def answer(**changes) -> str:
    return json.dumps({"prompt": PROMPT, "solution": SOLUTION, "tests": TESTS, **changes})


@pytest.mark.parametrize(("text", "reason"), [
    ("```json\n" + answer() + "\n```", None),
    (answer()[:-10], "malformed_json"),
    (json.dumps({"prompt": PROMPT, "solution": SOLUTION}), "malformed_json"),
    (answer(prompt="def add_pairs(a, b:\n"), "prompt_syntax_error"),
    (answer(prompt=PROMPT.replace("add_pairs", "other")), "wrong_function_name"),
    (answer(solution="def add_pairs(a, b=0)\n    return a + b\n"), "syntax_error"),
    (answer(solution="def add_pairs(a, c=0):\n    return a + c\n"), "signature_mismatch"),
    (answer(solution="def add_pairs(a, b):\n    return a + b\n"), "signature_mismatch"),
    (answer(tests=[]), "bad_tests"),
    (answer(tests=["print(add_pairs(1, 2))"]), "bad_tests"),
    (answer(tests=["assert other(1) == 1"]), "bad_tests"),
    ("I'm sorry, I can't do that.", "refusal"),
])
def test_exercise_static_checks_give_reason_codes(text, reason):
    exercise, got = parse_exercise(text, "stop", "add_pairs")
    assert got == reason
    assert (exercise is None) == (reason is not None)
    if exercise:
        assert exercise.program.startswith(SOLUTION) and exercise.program.endswith(TESTS[-1] + "\n")


def test_near_duplicates_collide_and_distinct_texts_do_not():
    text = " ".join(f"token{i % 97} w{i}" for i in range(400))
    edited = text.replace("w17 ", "w17 extra ", 1)  # one word inserted: Jaccard ≈ 0.98
    other = " ".join(f"token{i % 89} v{i}" for i in range(400))
    index = NearDupIndex()
    assert index.add(band_keys(text))
    assert not index.add(band_keys(edited))
    assert index.add(band_keys(other))
    assert band_keys(text) == band_keys(text)  # stable: keys travel between processes
