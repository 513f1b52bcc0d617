"""Prompt templates (files under ``prompts/``) rendered from specs into chat requests.

Templates use ``string.Template`` placeholders (``$concept``); a placeholder the spec does
not fill is an error, not a silent blank.
"""

from __future__ import annotations

import functools
import string
from importlib import resources

from primer.teacher import ChatRequest
from services.generation.config import GenerationSettings
from services.generation.taxonomy import Spec, load_taxonomy


@functools.cache
def template(name: str) -> string.Template:
    path = resources.files("services.generation").joinpath(f"prompts/{name}.txt")
    return string.Template(path.read_text(encoding="utf-8").strip())


def _fields(spec: Spec) -> dict[str, str]:
    fields = {"concept": spec.concept.name, "area": spec.concept.area.replace("_", " "),
              "level": spec.concept.level, "audience": spec.audience, "style": spec.style,
              "function_name": spec.function_name}
    if spec.length:
        fields["words"] = str(load_taxonomy().lengths[spec.length])
    return fields


def messages(spec: Spec) -> list[dict[str, str]]:
    kind = "textbook" if spec.kind == "textbooks" else "exercise"
    fields = _fields(spec)
    return [{"role": "system", "content": template(f"{kind}.system").substitute(fields)},
            {"role": "user", "content": template(f"{kind}.user").substitute(fields)}]


def request(spec: Spec, settings: GenerationSettings) -> ChatRequest:
    max_tokens = settings.max_tokens_textbook if spec.kind == "textbooks" \
        else settings.max_tokens_exercise
    return ChatRequest(messages(spec), temperature=settings.temperature,
                       max_tokens=max_tokens, seed=spec.seed, top_p=settings.top_p)
