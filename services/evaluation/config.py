"""The evaluation component's config: benchmarks, generation, sandbox, scoring."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from primer.benchmarks import BenchmarkConfig
from primer.config import ConfigModel
from primer.sandbox import SandboxConfig
from services.evaluation.samples import MAX_LINE_BYTES, MAX_SAMPLES


class GenerationConfig(ConfigModel):
    """How completions are produced. temperature 0 = greedy (pass@1)."""

    n_samples: int = Field(1, gt=0, description="Completions per problem (n for pass@k).")
    temperature: float = Field(0.0, ge=0, description="0: greedy; pass@10/100 use ~0.8.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling when temperature > 0.")
    max_new_tokens: int = Field(384, gt=0, description="Tokens generated per completion.")
    batch_size: int = Field(8, gt=0, description="Prompts per generate() call (transformers).")
    seed: int = Field(1234, description="Sampling seed.")
    device: str = Field("auto", description="transformers device: auto, cpu, cuda, cuda:1 …")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="transformers weights dtype (auto: bf16 on GPU, fp32 on CPU).")
    api_base: str | None = Field(None, description=(
        "OpenAI-compatible endpoint (e.g. http://vllm:8000/v1); set it to use the API "
        "backend, with --model naming the served model."))
    api_key_env: str = Field("OPENAI_API_KEY", description=(
        "Environment variable holding the API key (never put keys in config files)."))
    concurrency: int = Field(8, gt=0, description="Requests in flight (API backend).")
    retries: int = Field(5, ge=0, description="Retries on 429/5xx/timeouts, with backoff.")
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (API).")
    requests_per_minute: float | None = Field(None, gt=0, description=(
        "Request rate limit of the API backend; none when unset."))
    cache_uri: str | None = Field(None, description=(
        "Storage URI of the API backend's response cache (the teacher's); none disables it."))


class EvalConfig(ConfigModel):
    """Root config of ``primer eval``."""

    benchmarks: BenchmarkConfig = Field(default_factory=BenchmarkConfig,
                                        description="Benchmark data and prompt formats.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig,
                                         description="Completion backend settings.")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig,
                                   description="Limits for running completions.")
    limit: int | None = Field(None, ge=1, description=(
        "Use only the first N problems of each benchmark (quick runs); pass@k is then over "
        "those N, and the summary says so (n_problems)."))
    workers: int = Field(0, ge=0, description="Programs run in parallel (0: one per core).")
    max_samples: int = Field(MAX_SAMPLES, gt=0, description=(
        "Most samples a samples file may hold; more is refused (the file is streamed)."))
    max_sample_bytes: int = Field(MAX_LINE_BYTES, gt=0, description=(
        "Longest line of a samples file, in bytes; a longer one is refused with its line."))
    ks: list[int] = Field([1, 10, 100], description="pass@k reported where n >= k.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Minimum level of log records that are emitted.")
