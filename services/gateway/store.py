"""Run records in Redis: one hash per run (``primer:gateway:run:<id>``, JSON values) and a
sorted set of run ids by creation time (``primer:gateway:runs``), so every gateway replica
and every worker sees the same runs."""

from __future__ import annotations

import datetime
import json
from typing import Any

import redis

PREFIX = "primer:gateway"
INDEX = f"{PREFIX}:runs"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class RunStore:
    def __init__(self, client: redis.Redis):
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> RunStore:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2))

    @staticmethod
    def key(run_id: str) -> str:
        return f"{PREFIX}:run:{run_id}"

    def create(self, record: dict[str, Any], created: float) -> None:
        with self.client.pipeline() as pipe:
            pipe.hset(self.key(record["id"]), mapping=_encode(record))
            pipe.zadd(INDEX, {record["id"]: created})
            pipe.execute()

    def get(self, run_id: str) -> dict[str, Any] | None:
        return _decode(self.client.hgetall(self.key(run_id))) or None

    def update(self, run_id: str, **fields: Any) -> None:
        """Set ``fields`` of an existing run (a deleted run is not brought back)."""
        key = self.key(run_id)
        if self.client.exists(key):
            self.client.hset(key, mapping=_encode(fields))

    def list(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first."""
        ids = self.client.zrevrange(INDEX, offset, offset + limit - 1)
        with self.client.pipeline() as pipe:
            for run_id in ids:
                pipe.hgetall(self.key(run_id.decode()))
            rows = pipe.execute()
        return [r for r in map(_decode, rows) if r]

    def count(self) -> int:
        return int(self.client.zcard(INDEX))


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in fields.items()}


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in raw.items()}
