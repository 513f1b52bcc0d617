"""A deterministic fake teacher for ``tests/openai_server.py``: plausible textbook sections
and exercise JSON, and, for a fixed share of requests, the junk real teachers produce.

The answer is a function of the request (its user message and seed), so a retried or
redelivered request gets the same answer. ``JUNK_EVERY`` requests in a row of ten answer
with one kind of junk each (refusal, unparsable code, failing asserts, …).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

_WORDS = ("value", "list", "loop", "index", "string", "number", "function", "return",
          "result", "example", "program", "variable", "test", "case", "input", "output",
          "count", "total", "step", "element", "key", "order", "first", "last", "check",
          "simple", "clear", "small", "data", "item", "print", "call")

# Outcome per hash bucket (0-9): 0-6 valid, 7-9 junk (kind depends on the request kind).
TEXTBOOK_JUNK = {7: "refusal", 8: "bad_code", 9: "duplicate"}
EXERCISE_JUNK = {7: "malformed", 8: "failing", 9: "syntax"}


def _rng_and_bucket(body: dict[str, Any]) -> tuple[random.Random, int, str]:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    digest = hashlib.sha256(f"{user}|{body.get('seed')}".encode()).digest()
    return random.Random(digest), digest[0] % 10, user


def outcome(body: dict[str, Any]) -> str:
    _, bucket, user = _rng_and_bucket(body)
    junk = EXERCISE_JUNK if _is_exercise(user) else TEXTBOOK_JUNK
    return junk.get(bucket, "valid")


def responder(body: dict[str, Any]) -> str:
    rng, _, user = _rng_and_bucket(body)
    what = outcome(body)
    if _is_exercise(user):
        return _exercise(rng, re.search(r"named `(\w+)`", user).group(1), what)
    return _textbook(rng, re.search(r'about "([^"]+)"', user).group(1), what)


def _is_exercise(user: str) -> bool:
    return "as a Python function named" in user


def _prose(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)) + "."


def _textbook(rng: random.Random, concept: str, what: str) -> str:
    if what == "refusal":
        return "I'm sorry, but I can't help with writing that section."
    if what == "duplicate":  # the same text for every such request: near duplicates
        return ("# A lesson\n\n" + _prose(random.Random(0), 200)
                + "\n\n```python\nprint('same')\n```\n")
    k = rng.randrange(1000)
    code = f"def step_{k}(x):\n    return x * {k}\n\nprint(step_{k}(2))\n"
    if what == "bad_code":
        code = f"def step_{k}(x)\n    return x *\n"
    return (f"# {concept.title()}\n\n{_prose(rng, 90)}\n\n```python\n{code}```\n\n"
            f"{_prose(rng, 90)}\n")


def _exercise(rng: random.Random, name: str, what: str) -> str:
    if what == "malformed":
        return '{"prompt": "def ' + name + '(x):'  # cut JSON
    k = rng.randrange(2, 50)
    prompt = (f'def {name}(values: list[int]) -> int:\n    """Return the sum of the values '
              f'times {k} (variant {rng.randrange(10**6)})."""\n')
    solution = f"def {name}(values: list[int]) -> int:\n    return sum(values) * {k}\n"
    if what == "syntax":
        solution = f"def {name}(values: list[int]) -> int\n    return sum(values) * {k}\n"
    wrong = 1 if what == "failing" else 0
    tests = [f"assert {name}([1, 2]) == {3 * k + wrong}", f"assert {name}([]) == 0",
             f"assert {name}([5]) == {5 * k}"]
    answer = json.dumps({"prompt": prompt, "solution": solution, "tests": tests})
    return f"```json\n{answer}\n```" if rng.random() < 0.3 else answer
