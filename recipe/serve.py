"""``primer serve``: an OpenAI-compatible server for a trained checkpoint.

    primer serve --model ./primer-data/runs/r1/export --port 8001          # name: "export"
    primer generate textbooks --count 100 -o out/ \\
        --teacher-url http://127.0.0.1:8001/v1 --teacher-model export     # as the teacher
    primer eval run --model export --benchmark humaneval -o eval/ \\
        --generation.api_base=http://127.0.0.1:8001/v1                    # as an eval backend

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (the chat template of the
tokenizer, or a plain ``role: content`` transcript for a base model; see
:class:`primer.teacher.local.LocalBackend`), ``POST /v1/completions`` (raw prompt, ``n``
choices, up to 4 ``stop`` strings), ``GET /healthz``, ``GET /metrics`` (Prometheus).

This module only speaks HTTP: the text comes from the teacher's local backend
(:class:`~primer.teacher.local.LocalBackend`), the one generation path for a checkpoint, so
serving a model and using it as a teacher give the same text for the same request. Generation
is serialized: one request at a time on a worker thread (the model is loaded once, at start).
A CPU or a single GPU is saturated by one ``generate`` call of a small model; for throughput
behind many workers, serve the export with vLLM instead. Streaming is not supported
(``stream: true`` is refused with a 400). Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, so OpenAI clients raise the right class.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS_LIMIT = 8192


# -- request models (unknown fields are ignored, as OpenAI-compatible servers do) ------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="The served model name (GET /v1/models).")
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS_LIMIT, description="New tokens at most.")
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy decoding.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling.")
    n: int = Field(1, ge=1, le=16, description="Choices to return (seeds seed, seed+1, …).")
    stop: str | list[str] | None = Field(None, description="Cut the text at these strings.")
    seed: int | None = Field(None, description="Sampling seed; a request is reproducible.")
    stream: bool = Field(False, description="Not supported: must be false.")

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Request):
    messages: list[Message] = Field(min_length=1, description="The conversation so far.")


class CompletionRequest(_Request):
    prompt: str = Field(description="Text to continue.")


class ApiError(Exception):
    """Answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = (
            status, message, param, kind, code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


# -- the app -----------------------------------------------------------------------------------


def create_app(model_path: str, name: str | None = None):
    """The FastAPI app serving the checkpoint at ``model_path`` as ``name``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    # (imports openai: not on every CLI start)
    from primer.teacher.client import ChatRequest
    from primer.teacher.local import LocalBackend

    served = LocalBackend(model_path)
    model_name = name or Path(model_path).resolve().name
    created = int(time.time())
    registry = CollectorRegistry()
    latency = Histogram("primer_serve_request_duration_seconds", "Time to answer a request "
                        "(queueing for the model included).", ["endpoint"], registry=registry)
    tokens = Counter("primer_serve_tokens", "Tokens processed.", ["kind"], registry=registry)

    app = FastAPI(title="primer serve", version="1", description=__doc__.split("\n\n")[0])

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        return JSONResponse(ApiError(400, f"{param or 'body'}: {first['msg']}", param).body(),
                            status_code=400)

    def check(request: _Request) -> None:
        if request.model != model_name:
            raise ApiError(404, f"the model {request.model!r} does not exist; this server "
                           f"serves {model_name!r}", "model", code="model_not_found")
        if request.stream:
            raise ApiError(400, "stream: streaming is not supported; send stream=false",
                           "stream")
        if len(request.stops()) > 4:
            raise ApiError(400, "stop: at most 4 stop strings", "stop")

    def usage(prompt: int, completion: int) -> dict[str, int]:
        tokens.labels("prompt").inc(prompt)
        tokens.labels("completion").inc(completion)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": created, "owned_by": "primer"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> dict[str, Any]:
        check(body)
        start = time.monotonic()
        choices, p_tok, c_tok = [], 0, 0
        for i in range(body.n):
            request = ChatRequest([m.model_dump() for m in body.messages], body.temperature,
                                  body.max_tokens, (body.seed or 0) + i, body.top_p,
                                  body.stops() or None)
            text, finish, p_tok, c = await served.generate(request)
            c_tok += c
            choices.append({"index": i, "finish_reason": finish,
                            "message": {"role": "assistant", "content": text}})
        latency.labels("chat").observe(time.monotonic() - start)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": model_name, "choices": choices,
                "usage": usage(p_tok, c_tok)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict[str, Any]:
        check(body)
        start = time.monotonic()
        choices, p_tok, c_tok = [], 0, 0
        for i in range(body.n):
            text, finish, p_tok, c = await served.complete(
                body.prompt, body.max_tokens, body.temperature, body.top_p, (body.seed or 0) + i,
                body.stops())
            c_tok += c
            choices.append({"index": i, "text": text, "finish_reason": finish,
                            "logprobs": None})
        latency.labels("completions").observe(time.monotonic() - start)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": model_name, "choices": choices,
                "usage": usage(p_tok, c_tok)}

    app.state.served = served
    app.state.model_name = model_name
    return app


def cmd_serve(
    model: Annotated[Path, typer.Option(
        "--model", exists=True, file_okay=False,
        help="Checkpoint folder (save_pretrained output, e.g. `primer export`).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    name: Annotated[str | None, typer.Option(
        "--name", help="Model name clients ask for (default: the folder's name).")] = None,
) -> None:
    """Serve a checkpoint over the OpenAI API (/v1/chat/completions, /v1/completions)."""
    import uvicorn

    app = create_app(str(model), name)
    app.state.served.load()  # fail now on a bad checkpoint, not on the first request
    typer.echo(f"serving {model} as {app.state.model_name!r} on http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="warning")
