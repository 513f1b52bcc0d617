"""The teacher client shared by generation, curation's LLM judge and evaluation.

See :mod:`primer.teacher.client` for the behaviour (concurrency, rate limits, retries,
cache, usage) and :class:`TeacherConfig` for the settings.
"""

from primer.teacher.cache import ResponseCache, request_key
from primer.teacher.client import (
    ChatRequest,
    Completion,
    Teacher,
    TeacherError,
    TextRequest,
    Usage,
)
from primer.teacher.config import TeacherConfig

__all__ = ["ChatRequest", "Completion", "ResponseCache", "Teacher", "TeacherConfig",
           "TeacherError", "TextRequest", "Usage", "request_key"]
