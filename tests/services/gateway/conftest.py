"""The gateway on a real uvicorn server (a free loopback port) against the real Redis."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import uvicorn

from services.gateway.app import create_app
from services.gateway.config import COMPONENTS, GatewayConfig
from tests.servers import free_port


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """``app`` on ``http://127.0.0.1:<free port>`` in a thread; stopped on exit."""
    port = free_port()
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
