"""Checks of teacher outputs: each answers keep, or drop with a stable reason code.

Reason codes (counted per shard, summed into the manifest's ``drop_counts``):

==================== ==========================================================
``teacher_error``    the request failed for good (retries exhausted, refused)
``truncated``        the teacher stopped at its token limit (finish_reason length)
``refusal``          the answer is a refusal ("I'm sorry, but I can't …")
``too_short``        a textbook below ``min_words`` words
``no_code``          a textbook without a ```python block
``code_syntax_error`` a textbook code block that does not parse
``malformed_json``   an exercise answer that is not the JSON object asked for
``prompt_syntax_error`` the exercise prompt (signature + docstring) does not parse
``wrong_function_name`` the prompt does not define the function it was asked for
``syntax_error``     the reference solution does not parse
``signature_mismatch`` the solution's signature differs from the prompt's
``bad_tests``        no tests, or a test that is not an assert calling the function
``tests_failed``     the solution fails its own asserts in the sandbox
``tests_timeout``    the asserts ran past the sandbox's time limit
``near_dup``         a near duplicate of an earlier output (MinHash LSH)
==================== ==========================================================
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

_REFUSAL = re.compile(r"^\W*(I'?m sorry|I am sorry|I can(?:no|')t|I'?m unable|I am unable|"
                      r"As an AI|Sorry, (?:but )?I)", re.IGNORECASE)
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
_JSON_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


@dataclass(frozen=True)
class Exercise:
    """A parsed exercise whose static checks passed; ``program`` runs its asserts."""

    prompt: str
    solution: str
    tests: list[str]

    @property
    def program(self) -> str:
        return self.solution.rstrip() + "\n\n\n" + "\n".join(self.tests) + "\n"


def common_reason(text: str, finish_reason: str) -> str | None:
    if finish_reason == "length":
        return "truncated"
    if _REFUSAL.match(text[:200]):
        return "refusal"
    return None


def check_textbook(text: str, finish_reason: str, min_words: int) -> str | None:
    """None if the textbook is kept, else the reason code."""
    if reason := common_reason(text, finish_reason):
        return reason
    if len(text.split()) < min_words:
        return "too_short"
    blocks = _CODE_BLOCK.findall(text)
    if not blocks:
        return "no_code"
    for block in blocks:
        try:
            ast.parse(block)
        except (SyntaxError, ValueError):
            return "code_syntax_error"
    return None


def _function(source: str, name: str) -> ast.FunctionDef | None:
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def _signature(fn: ast.FunctionDef) -> tuple[Any, ...]:
    a = fn.args
    return ([p.arg for p in a.posonlyargs], [p.arg for p in a.args],
            a.vararg.arg if a.vararg else None, [p.arg for p in a.kwonlyargs],
            a.kwarg.arg if a.kwarg else None, len(a.defaults))


def _load_json(text: str) -> Any:
    text = text.strip()
    if m := _JSON_FENCE.match(text):
        text = m.group(1)
    return json.loads(text)


def parse_exercise(text: str, finish_reason: str, function_name: str
                   ) -> tuple[Exercise | None, str | None]:
    """Static checks of an exercise answer: ``(exercise, None)`` or ``(None, reason)``.

    The asserts still have to pass in the sandbox (``tests_failed`` / ``tests_timeout``).
    """
    if reason := common_reason(text, finish_reason):
        return None, reason
    try:
        raw = _load_json(text)
    except (json.JSONDecodeError, ValueError):
        return None, "malformed_json"
    if not (isinstance(raw, dict) and isinstance(raw.get("prompt"), str)
            and isinstance(raw.get("solution"), str) and isinstance(raw.get("tests"), list)):
        return None, "malformed_json"
    prompt, solution, tests = raw["prompt"], raw["solution"], raw["tests"]
    try:
        declared = _function(prompt, function_name)
    except (SyntaxError, ValueError):
        return None, "prompt_syntax_error"
    if declared is None:
        return None, "wrong_function_name"
    try:
        solved = _function(solution, function_name)
    except (SyntaxError, ValueError):
        return None, "syntax_error"
    if solved is None or _signature(solved) != _signature(declared):
        return None, "signature_mismatch"
    if not tests or not all(isinstance(t, str) and _is_assert_calling(t, function_name)
                            for t in tests):
        return None, "bad_tests"
    return Exercise(prompt.strip() + "\n", solution.strip() + "\n", list(tests)), None


def _is_assert_calling(test: str, name: str) -> bool:
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError):
        return False
    return (len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert)
            and any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                    and n.func.id == name for n in ast.walk(tree.body[0])))


def sandbox_reason(status: str) -> str | None:
    """Reason code for a sandbox status (passed, failed, timeout, error)."""
    return None if status == "passed" else "tests_timeout" if status == "timeout" \
        else "tests_failed"
