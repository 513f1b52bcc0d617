"""The API backend sends only an API key, and only to an http(s) endpoint (issue 14)."""

from __future__ import annotations

import pytest

from services.evaluation.backends import BackendError, OpenAIBackend, make_backend
from services.evaluation.config import GenerationConfig
from tests.services.evaluation.openai_server import OpenAIServer


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "PRIMER_REDIS_PASSWORD",
                                      "PRIMER_GATEWAY_TOKEN", "HOME"])
def test_the_key_never_comes_from_another_secrets_variable(monkeypatch, variable):
    monkeypatch.setenv(variable, "a-secret-that-stays-home")
    with OpenAIServer() as server:
        config = GenerationConfig(api_base=server.url, api_key_env=variable, retries=0)
        with pytest.raises(BackendError, match=f"api_key_env='{variable}'.*_API_KEY"):
            OpenAIBackend("m", config).complete(["def f():"], ["\n"], 1)
        assert server.requests == []


def test_an_api_key_variable_is_accepted(monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", "k-123")
    with OpenAIServer() as server:
        backend = make_backend("m", GenerationConfig(api_base=server.url,
                                                     api_key_env="TEACHER_API_KEY"))
        assert backend.complete(["def f():"], ["\n#"], 1) == [["    return 1"]]
        assert len(server.requests) == 1


@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://user:pw@host/v1", "host:80"])
def test_the_endpoint_is_an_http_url_without_credentials(url):
    with pytest.raises(BackendError, match="generation.api_base"):
        make_backend("m", GenerationConfig(api_base=url))
