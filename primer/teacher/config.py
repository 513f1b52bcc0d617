"""The teacher's typed config: where it is, how hard to push it, what it costs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from pydantic import Field

from primer.config import ConfigModel


class TeacherConfig(ConfigModel):
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, TGI, Ollama, `primer serve`) or a
    local checkpoint path served in-process with transformers."""

    env_defaults: ClassVar[Mapping[str, str]] = {"url": "PRIMER_TEACHER_URL",
                                                 "model": "PRIMER_TEACHER_MODEL"}

    url: str = Field("", description="Base URL of the OpenAI-compatible API (e.g. "
                     "http://vllm:8000/v1), or a local checkpoint path for the in-process "
                     "transformers backend. Empty: OPENAI_BASE_URL or api.openai.com.")
    model: str = Field("gpt-3.5-turbo", description="Model name sent with every request.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the environment variable "
                             "holding the API key (the key itself never goes in a config).")
    max_concurrency: int = Field(64, ge=1, description="Requests in flight at once.")
    requests_per_minute: float | None = Field(None, gt=0, description="Request rate limit; "
                                              "none when unset.")
    tokens_per_minute: float | None = Field(None, gt=0, description="Token rate limit "
                                            "(prompt + max completion tokens); none when unset.")
    max_retries: int = Field(8, ge=0, description="Retries of one request on 429, 5xx, "
                             "timeouts, dropped connections and malformed responses.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds before one request times out.")
    backoff_base_s: float = Field(0.5, gt=0, description="First retry delay; doubles per "
                                  "attempt, with full jitter, unless the server sends "
                                  "Retry-After.")
    backoff_max_s: float = Field(60.0, gt=0, description="Longest delay between retries.")
    cache_uri: str | None = Field(None, description="Storage URI of the response cache "
                                  "(shared by workers on S3); none disables it.")
    price_input_per_1k: float | None = Field(None, ge=0, description="USD per 1,000 prompt "
                                             "tokens, for cost accounting and estimates.")
    price_output_per_1k: float | None = Field(None, ge=0, description="USD per 1,000 "
                                              "completion tokens.")

    def api_key(self) -> str:
        # Local servers (vLLM, the test server) accept any key; the client insists on one.
        return os.environ.get(self.api_key_env) or "EMPTY"

    def is_local_checkpoint(self) -> bool:
        return bool(self.url) and "://" not in self.url and os.path.isdir(self.url)
