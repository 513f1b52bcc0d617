"""What every request passes before any of it is parsed (an ASGI middleware).

In this order, without reading the body:

1. ``/v1/*``: the bearer token (when ``PRIMER_GATEWAY_TOKEN`` is set) → 401;
2. ``/v1/*``: the rate limit, per token (per client address when auth is off), counted in
   Redis so every replica shares it → 429 with ``Retry-After``;
3. every path: a ``Content-Length`` above ``max_body_bytes`` → 413; a body sent without one
   (chunked) is read up to the cap and refused as soon as it passes it.

Only then does FastAPI see the request, its body replayed from memory: an anonymous or
oversized body costs the gateway nothing but a header parse.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

import anyio.to_thread
import redis

from services.gateway.auth import token_error
from services.gateway.config import GatewayConfig
from services.gateway.store import PREFIX

WINDOW_S = 60


class RateLimiter:
    """Fixed one-minute windows: one Redis counter per caller and window (INCR, EXPIRE)."""

    def __init__(self, client: redis.Redis, per_minute: int):
        self.client, self.per_minute = client, per_minute

    def hit(self, who: str) -> int:
        """Count one request by ``who``: 0 when admitted, else the seconds until it may retry."""
        now = time.time()
        window = int(now // WINDOW_S)
        key = f"{PREFIX}:rate:{who}:{window}"
        with self.client.pipeline() as pipe:
            count, _ = pipe.incr(key).expire(key, 2 * WINDOW_S).execute()
        if count <= self.per_minute:
            return 0
        return max(1, math.ceil((window + 1) * WINDOW_S - now))


class Guard:
    """The ASGI middleware; ``limiter`` None means no rate limit."""

    def __init__(self, app: Any, config: GatewayConfig, limiter: RateLimiter | None):
        self.app, self.config, self.limiter = app, config, limiter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if scope["path"] == "/v1" or scope["path"].startswith("/v1/"):
            refusal = await self._admit(scope, headers)
            if refusal is not None:
                await _reply(send, *refusal)
                return
        cap = self.config.max_body_bytes
        too_big = (413, f"the request body is larger than this gateway's limit of {cap} bytes "
                   "(PRIMER_GATEWAY_MAX_BODY_BYTES)", {})
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _reply(send, 400, f"Content-Length {declared!r} is not a number", {})
                return
            if int(declared) > cap:
                await _reply(send, *too_big)
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                await _reply(send, *too_big)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _admit(self, scope: dict, headers: dict[str, str]) -> tuple | None:
        """(status, message, headers) refusing the request, or None."""
        token = self.config.token
        if error := token_error(headers.get("authorization"), token):
            return 401, error, {"WWW-Authenticate": "Bearer"}
        if self.limiter is None:
            return None
        who = hashlib.sha256(token.encode()).hexdigest()[:16] if token else \
            f"addr-{(scope.get('client') or ('unknown',))[0]}"
        try:
            wait = await anyio.to_thread.run_sync(self.limiter.hit, who)
        except redis.RedisError as exc:
            return 503, f"the run store (Redis) is unavailable: {exc}", {}
        if wait:
            return 429, (f"rate limit: more than {self.limiter.per_minute} requests a minute "
                         f"(PRIMER_GATEWAY_RATE_LIMIT); retry in {wait} s"), \
                {"Retry-After": str(wait)}
        return None


def _replay(body: bytes, receive: Any):
    """A ``receive`` that hands over the buffered body once, then the real channel."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reply(send: Any, status: int, error: str, headers: dict[str, str]) -> None:
    body = json.dumps({"error": error, "fields": []}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
