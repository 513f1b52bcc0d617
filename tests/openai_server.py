"""A small OpenAI-compatible chat server for tests and benchmarks, which can misbehave on purpose.

It answers ``POST /v1/chat/completions`` deterministically (the answer is a function of the
request), like a teacher with temperature 0, and injects the faults a hosted teacher shows:

- ``429`` with a ``Retry-After`` header (rate limited),
- ``500`` (server error),
- ``slow``: answers only after ``slow_s`` seconds (past the client's timeout),
- ``cut``: the HTTP body stops half-way and the connection closes (truncated response),
- ``malformed``: ``200`` with a body that is not a chat completion.

Faults are drawn per request from a seeded RNG with probability ``fail_rate``, so a retry
of the same request usually succeeds, as with the real thing.

    with OpenAIServer(fail_rate=0.3) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="test")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

FAULTS = ("429", "500", "slow", "cut", "malformed")


def echo_responder(body: dict[str, Any]) -> str:
    """The default answer: names the last user message and a digest of the whole request."""
    last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    return f"Answer about: {last[:80]} [{digest}]"


class OpenAIServer:
    """uvicorn on a free loopback port, in a background thread."""

    def __init__(self, responder: Callable[[dict[str, Any]], str] = echo_responder, *,
                 latency_s: float = 0.0, fail_rate: float = 0.0,
                 faults: tuple[str, ...] = FAULTS, seed: int = 0, slow_s: float = 5.0,
                 retry_after_s: float = 0.05, model: str = "test-teacher",
                 fail_first: int = 0, api_key: str | None = None):
        self.responder, self.latency_s, self.fail_rate = responder, latency_s, fail_rate
        self.faults, self.slow_s, self.retry_after_s = faults, slow_s, retry_after_s
        self.model, self.fail_first, self.api_key = model, fail_first, api_key
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self.answered = 0
        self.inflight = self.max_inflight = 0
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _draw_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.requests <= self.fail_first or (
                    self.fail_rate and self._rng.random() < self.fail_rate):
                fault = self._rng.choice(self.faults)
                self.injected[fault] += 1
                return fault
            return None

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "Incorrect API key provided",
                                               "type": "invalid_request_error",
                                               "code": "invalid_api_key"}}, status_code=401)
            body = await request.json()
            fault = self._draw_fault()
            with self._lock:
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                return await self._answer(body, fault)
            finally:
                with self._lock:
                    self.inflight -= 1

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": self.model, "object": "model",
                                                "created": 0, "owned_by": "primer-tests"}]}

        return app

    async def _answer(self, body: dict[str, Any], fault: str | None) -> Response:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "429":
            return JSONResponse(
                {"error": {"message": "Rate limit reached", "type": "requests",
                           "code": "rate_limit_exceeded"}},
                status_code=429, headers={"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "500":
            return JSONResponse({"error": {"message": "internal error", "type": "server"}},
                                status_code=500)
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "malformed":
            return Response('{"id": "x", "choices": "not-a-list"', status_code=200,
                            media_type="application/json")
        payload = json.dumps(self._completion(body)).encode()
        if fault == "cut":
            return _CutResponse(payload)
        with self._lock:
            self.answered += 1
        return Response(payload, media_type="application/json")

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self.responder(body)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        return {
            "id": "chatcmpl-" + hashlib.sha256(text.encode()).hexdigest()[:16],
            "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())},
        }

    def __enter__(self) -> OpenAIServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="critical",
                                lifespan="off", timeout_keep_alive=30, backlog=2048)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(10)


class _CutResponse(Response):
    """Announces the whole body, sends half of it, then drops the connection."""

    def __init__(self, payload: bytes):
        super().__init__(status_code=200, media_type="application/json")
        self.payload = payload

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.payload)).encode())]})
        await send({"type": "http.response.body", "body": self.payload[: len(self.payload) // 2],
                    "more_body": True})
        raise ConnectionResetError("injected: response cut short")
