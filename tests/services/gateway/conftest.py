"""The gateway on a real uvicorn server (a free loopback port) against the real Redis."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import uvicorn

from services.gateway.app import create_app
from services.gateway.config import COMPONENTS, GatewayConfig
from tests.plain import error_texts, markup_in
from tests.servers import free_port


class PlainErrors:
    """ASGI wrapper that reads every JSON response the gateway sends (to ``http()``, to
    ``primer runs``) and notes each error or traceback in it that has terminal markup."""

    def __init__(self, app):
        self.app, self.problems = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        is_json = False

        async def read(message):
            nonlocal is_json
            if message["type"] == "http.response.start":
                kind = dict(message.get("headers") or []).get(b"content-type", b"")
                is_json = kind.startswith(b"application/json")
            elif message["type"] == "http.response.body" and is_json:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.check(f"{scope['method']} {scope['path']}", b"".join(chunks))
            await send(message)

        await self.app(scope, receive, read)

    def check(self, request: str, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            return
        for where, text in error_texts(body):
            if found := markup_in(text):
                self.problems.append(f"{request} → {where} has {', '.join(found)}: {text!r}")


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """``app`` on ``http://127.0.0.1:<free port>`` in a thread; stopped on exit. Every error
    and traceback it answered with must be plain text (checked on a clean exit)."""
    port = free_port()
    app = PlainErrors(app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
    assert not app.problems, "terminal markup in the API's errors:\n" + "\n".join(app.problems)


TEACHER = "http://teacher:8000/v1"  # the one endpoint test gateways allow unless told


def gateway_config(redis_url: str, tmp_path, queue: str | None = None, **kw) -> GatewayConfig:
    """Every component on one fresh queue; runs write under ``tmp_path/data`` and may read
    under ``tmp_path/inputs``; one allowed teacher endpoint; the reconciler idle unless
    ``reconcile_seconds`` is given (runs other tests left in Redis are not its business)."""
    queue = queue or f"gw-test-{uuid.uuid4().hex[:8]}"
    kw = {"input_roots": (str(tmp_path / "inputs"),), "endpoints": (TEACHER,),
          "reconcile_seconds": 3600.0, "storage_root": str(tmp_path / "data"), **kw}
    return GatewayConfig(redis_url=redis_url, queues={c: queue for c in COMPONENTS}, **kw)


def own_db(redis_url: str, db: int) -> str:
    """``redis_url`` on database ``db``, emptied: a reconciler there sees this test's runs
    only."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def gateway(redis_url, tmp_path) -> Iterator[tuple[str, GatewayConfig]]:
    config = gateway_config(redis_url, tmp_path)
    with serve(create_app(config)) as url:
        yield url, config
