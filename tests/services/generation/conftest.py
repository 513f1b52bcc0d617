"""A deterministic fake teacher behind the real OpenAI-compatible test server."""

from __future__ import annotations

import pytest

from services.generation.config import GenerateConfig
from tests.openai_server import OpenAIServer
from tests.services.generation.teacher_responder import responder


def config_for(server: OpenAIServer, batch_size: int = 16, concurrency: int = 16
               ) -> GenerateConfig:
    """Fast retries and a 1 s timeout, so injected 'slow' answers time out and are retried."""
    config = GenerateConfig()
    config.teacher.url, config.teacher.model = server.base_url, "test-teacher"
    config.teacher.timeout_s, config.teacher.max_concurrency = 1.0, concurrency
    config.teacher.backoff_base_s, config.teacher.backoff_max_s = 0.01, 0.2
    config.generation.batch_size = batch_size
    config.generation.sandbox_workers = 2
    return config


@pytest.fixture
def faulty_teacher():
    """30 % of requests fail: 429 + Retry-After, 500, slow past the timeout, cut, malformed."""
    with OpenAIServer(responder, fail_rate=0.3, slow_s=2.0, seed=7) as server:
        yield server


@pytest.fixture
def clean_teacher():
    with OpenAIServer(responder) as server:
        yield server
