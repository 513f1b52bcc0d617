"""Educational-value annotators: the judgments the classifier learns from.

An annotation is ``{"label": 0|1, "score": 0..1, "annotator": str}``. The annotator gives the
``score``; the ``label`` is relative to the corpus: the top ``annotate.positive_fraction`` of
the annotated sample by score (:func:`relative_labels`), as the paper's GPT-4 judgments split
its sample; with ``positive_fraction`` unset it is ``score >= annotate.positive_score``.

- :class:`TeacherAnnotator`, the paper's way: an LLM judge (through ``primer.teacher``)
  is asked for the educational value of the file *for a student whose goal is to learn basic
  coding concepts*, answering ``Score: N`` on 1..5 (score ``(N - 1) / 4``). An answer without
  a parsable score is asked again with another seed, up to ``max_attempts``; then it is
  counted ``malformed`` and the file stays unannotated. A request that fails for good is
  counted ``failed``.
- :class:`HeuristicAnnotator`, for when no teacher is configured: a weighted mean of six
  features, each in [0, 1], that track what the paper's judge rewards:

  | feature | weight | 1.0 when |
  |---|---|---|
  | ``docs`` | .30 | the module and every function/class have a docstring |
  | ``comments`` | .15 | ≥ 1 comment line per 8 code lines |
  | ``function_size`` | .15 | functions are 3–30 lines (0.3 for a file without functions) |
  | ``naming`` | .10 | defined names are descriptive (≥ 3 chars, except i/j/k/n/x/y/_ ) |
  | ``self_contained`` | .15 | no relative imports, ≤ 3 third-party (non-stdlib) imports |
  | ``length`` | .15 | ≤ 300 code lines, textbook-sized (0 from 1500 lines on) |

  **Calibration.** Real code scores high on most of these (names, comments, imports): the
  uncalibrated heuristic-v1 called ~88% of standard-library files educational, so its labels
  told the classifier little, and the raw mean here still reaches 0.5 on 47.5% of the
  modules below. The score therefore maps the raw mean
  piecewise-linearly so that ``RAW_AT_HALF`` becomes 0.5 (and 0, 1 stay put): by design,
  **about 25% of real, maintained code scores >= 0.5** (the default
  ``annotate.positive_score``), the top quarter, like the default ``positive_fraction``.
  ``RAW_AT_HALF`` is the 75th percentile of the raw mean over the 638 modules of CPython
  3.11.7's standard library outside test folders that pass the default junk filters;
  measured with ``python -m services.curation.calibrate`` (before: 47.5% of them at >= 0.5;
  now 25.0%), and checked on a sample of the running interpreter's standard library by
  ``tests/services/curation/test_any_corpus.py``.
"""

from __future__ import annotations

import ast
import asyncio
import re
import sys
import warnings
from collections import Counter
from typing import Any

import numpy as np
import xxhash

from primer.teacher import ChatRequest, Teacher, TeacherError
from services.curation.config import AnnotateConfig

HEURISTIC = "heuristic-v2"
WEIGHTS = {"docs": 0.30, "comments": 0.15, "function_size": 0.15, "naming": 0.10,
           "self_contained": 0.15, "length": 0.15}
RAW_AT_HALF = 0.7865  # the raw mean that scores 0.5: see the module docstring
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
        "length": min(1.0, max(0.0, (1500 - len(code)) / 1200)),
    }


def raw_score(f: dict[str, float]) -> float:
    """The weighted mean of the features, before calibration."""
    return sum(WEIGHTS[k] * v for k, v in f.items())


def calibrated(raw: float) -> float:
    """Piecewise-linear through (0, 0), (RAW_AT_HALF, 0.5), (1, 1): ranks are unchanged."""
    if raw <= RAW_AT_HALF:
        return 0.5 * raw / RAW_AT_HALF
    return 0.5 + 0.5 * (raw - RAW_AT_HALF) / (1 - RAW_AT_HALF)


def heuristic_score(text: str) -> float:
    """The heuristic's calibrated score of one Python file; raises SyntaxError if it does
    not parse."""
    return round(calibrated(raw_score(features(text))), 4)


def relative_labels(scores: list[float], fraction: float) -> tuple[list[int], float | None]:
    """Label 1 for the top ``fraction`` of ``scores``: ``score >= cut``, the cut taken between
    two distinct scores so that tied scores share a label and both labels occur, as close to
    ``fraction`` as the ties allow. ``(labels, cut)``; with fewer than two distinct scores
    there is no such cut: ``([0, ...], None)``."""
    values = np.unique(np.asarray(scores, np.float64))
    if len(values) < 2:
        return [0] * len(scores), None
    ordered = np.sort(np.asarray(scores, np.float64))
    # share of scores >= each candidate cut (every distinct value but the lowest)
    rates = 1 - np.searchsorted(ordered, values[1:], side="left") / len(ordered)
    cut = float(values[1:][int(np.argmin(np.abs(rates - fraction)))])
    return [int(s >= cut) for s in scores], cut


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
                score = heuristic_score(text)
            except (SyntaxError, ValueError, RecursionError):
                self.stats["malformed"] += 1
                out.append(None)
                continue
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


def assign_labels(annotations: list[dict[str, Any]], cfg: AnnotateConfig) -> dict[str, Any]:
    """Set each annotation's ``label`` by the config's rule (relative to the sample unless
    ``positive_fraction`` is None, or every score is the same); returns the rule's facts."""
    scores = [a["score"] for a in annotations]
    own = [int(s >= cfg.positive_score) for s in scores]
    labels, cut = own, None
    if cfg.positive_fraction is not None:
        relative, cut = relative_labels(scores, cfg.positive_fraction)
        labels = relative if cut is not None else own
    if cut is not None:
        rule = f"top {cfg.positive_fraction:g} of the sample by score (score >= {cut:.4f})"
    else:
        rule = f"score >= {cfg.positive_score:g}" + (
            " (every annotation has the same score)" if cfg.positive_fraction else "")
    for annotation, label in zip(annotations, labels, strict=True):
        annotation["label"] = label
    return {"positive": sum(labels), "label_rule": rule, "annotator_positive": sum(own),
            "positive_score": cfg.positive_score}


def make_annotator(cfg: AnnotateConfig) -> HeuristicAnnotator | TeacherAnnotator:
    return TeacherAnnotator(cfg) if cfg.annotator == "teacher" else HeuristicAnnotator(cfg)
