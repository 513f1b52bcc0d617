"""Educational-value annotators: the labels the classifier learns from.

An annotation is ``{"label": 0|1, "score": 0..1, "annotator": str}``; ``label`` is
``score >= annotate.positive_score``.

- :class:`TeacherAnnotator`, the paper's way: an LLM judge (through ``primer.teacher``)
  is asked for the educational value of the file *for a student whose goal is to learn basic
  coding concepts*, answering ``Score: N`` on 1..5. An answer without a parsable score is
  asked again with another seed, up to ``max_attempts``; then it is counted ``malformed``
  and the file stays unannotated. A request that fails for good is counted ``failed``.
- :class:`HeuristicAnnotator`, for when no teacher is configured: the mean of five features,
  each in [0, 1], that track what the paper's judge rewards:

  | feature | weight | 1.0 when |
  |---|---|---|
  | ``docs`` | .30 | the module and every function/class have a docstring |
  | ``comments`` | .15 | ≥ 1 comment line per 8 code lines |
  | ``function_size`` | .20 | functions are 3–30 lines (0.3 for a file without functions) |
  | ``naming`` | .15 | defined names are descriptive (≥ 3 chars, except i/j/k/n/x/y/_ ) |
  | ``self_contained`` | .20 | no relative imports, ≤ 3 third-party (non-stdlib) imports |
"""

from __future__ import annotations

import ast
import asyncio
import re
import sys
import warnings
from collections import Counter
from typing import Any

import xxhash

from primer.teacher import ChatRequest, Teacher, TeacherError
from services.curation.config import AnnotateConfig

HEURISTIC = "heuristic-v1"
WEIGHTS = {"docs": 0.30, "comments": 0.15, "function_size": 0.20, "naming": 0.15,
           "self_contained": 0.20}
_SHORT_OK = {"i", "j", "k", "n", "x", "y", "_", "f", "e", "fp", "db", "id", "ok", "df"}
_STDLIB = set(sys.stdlib_module_names) | {"__future__"}
SYSTEM = ("You are an expert programming teacher judging code files for a textbook-quality "
          "training corpus.")
PROMPT = ("Determine the educational value of the following Python file for a student whose "
          "goal is to learn basic coding concepts. Consider whether it is clear, "
          "self-contained, well documented and instructive, rather than configuration, "
          "boilerplate or code that only makes sense inside a large project.\n\n"
          "```python\n{code}\n```\n\n"
          "Answer with one line of the form `Score: N`, where N is an integer from 1 (no "
          "educational value) to 5 (excellent textbook material).")
_SCORE = re.compile(r"score\W{0,3}(\d+(?:\.\d+)?)", re.I)


def sample_rank(record_id: str, seed: int) -> int:
    """Deterministic pseudo-random rank: the sample is the ``sample_size`` lowest ranks."""
    return xxhash.xxh64_intdigest(f"{seed}:{record_id}".encode())


def features(text: str) -> dict[str, float]:
    """The heuristic features of one Python file (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(text)
    lines = [line.strip() for line in text.splitlines()]
    code = [line for line in lines if line and not line.startswith("#")]
    comments = sum(1 for line in lines if line.startswith("#")) + text.count("  # ")
    defs = [n for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    funcs = [n for n in defs if not isinstance(n, ast.ClassDef)]
    documented = sum(ast.get_docstring(n) is not None for n in defs) + \
        (ast.get_docstring(tree) is not None)
    sizes = [(n.end_lineno or n.lineno) - n.lineno + 1 for n in funcs]
    in_range = sum(3 <= s <= 30 for s in sizes)
    names = [n.name for n in defs] + [a.arg for f in funcs for a in f.args.args
                                      if a.arg not in ("self", "cls")]
    names += [t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name)]
    descriptive = sum(len(n) >= 3 or n in _SHORT_OK for n in names)
    relative = third_party = 0
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                relative += 1
            elif (n.module or "").split(".")[0] not in _STDLIB:
                third_party += 1
        elif isinstance(n, ast.Import):
            third_party += sum(a.name.split(".")[0] not in _STDLIB for a in n.names)
    return {
        "docs": documented / (len(defs) + 1),
        "comments": min(1.0, comments * 8 / max(1, len(code))),
        "function_size": in_range / len(sizes) if sizes else 0.3,
        "naming": descriptive / len(names) if names else 0.5,
        "self_contained": 0.0 if relative else max(0.0, 1.0 - max(0, third_party - 3) / 5),
    }


class HeuristicAnnotator:
    """Offline annotations from :func:`features`; deterministic and free."""

    name = HEURISTIC

    def __init__(self, cfg: AnnotateConfig):
        self.cfg = cfg
        self.stats: Counter[str] = Counter()

    def annotate(self, texts: list[str]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for text in texts:
            try:
                f = features(text)
            except (SyntaxError, ValueError, RecursionError):
                self.stats["malformed"] += 1
                out.append(None)
                continue
            score = round(sum(WEIGHTS[k] * v for k, v in f.items()), 4)
            out.append({"label": int(score >= self.cfg.positive_score), "score": score,
                        "annotator": self.name})
            self.stats["annotated"] += 1
        return out


def parse_score(answer: str) -> float | None:
    """1..5 from ``Score: N`` (or a lone number), normalized to 0..1; None if malformed."""
    m = _SCORE.search(answer)
    if m is None:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*\.?\s*", answer)
    if m is None:
        return None
    value = float(m.group(1))
    if not 1 <= value <= 5:
        return None
    return (value - 1) / 4


class TeacherAnnotator:
    """The LLM judge. ``annotate`` asks for every text at once (bounded by the teacher's
    concurrency); responses are cached by the teacher, so a rerun costs nothing."""

    def __init__(self, cfg: AnnotateConfig, max_chars: int = 6000):
        if not cfg.teacher.url and not cfg.teacher.model:
            raise ValueError("annotate.annotator=teacher needs annotate.teacher.url and .model")
        self.cfg, self.max_chars = cfg, max_chars
        self.teacher = Teacher(cfg.teacher)
        self.name = f"teacher:{self.teacher.name}"
        self.stats: Counter[str] = Counter()

    def _request(self, text: str, attempt: int) -> ChatRequest:
        return ChatRequest([{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": PROMPT.format(
                                code=text[:self.max_chars])}],
                           temperature=0.0 if attempt == 0 else 0.7, max_tokens=16,
                           seed=attempt)

    def annotate(self, texts: list[str]) -> list[dict[str, Any] | None]:
        return asyncio.run(self._annotate(texts))

    async def _annotate(self, texts: list[str]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        for attempt in range(self.cfg.max_attempts):
            if not todo:
                break
            if attempt:
                self.stats["retried"] += len(todo)
            answers = await self.teacher.complete_many(
                [self._request(texts[i], attempt) for i in todo])
            again = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, TeacherError):
                    self.stats["failed"] += 1
                    continue
                score = parse_score(answer.text)
                if score is None:
                    again.append(i)
                    continue
                out[i] = {"label": int(score >= self.cfg.positive_score), "score": score,
                          "annotator": self.name}
                self.stats["annotated"] += 1
            todo = again
        self.stats["malformed"] += len(todo)
        return out


def make_annotator(cfg: AnnotateConfig) -> HeuristicAnnotator | TeacherAnnotator:
    return TeacherAnnotator(cfg) if cfg.annotator == "teacher" else HeuristicAnnotator(cfg)
