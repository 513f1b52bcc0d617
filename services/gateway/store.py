"""Run records in Redis (embedded mode): one hash per run (``primer:gateway:run:<id>``, JSON
values), a sorted set of run ids by creation time (``primer:gateway:runs``) and the set of
runs not yet ended (``primer:gateway:active``), so every gateway replica sees the same runs;
a per-run lock lets one replica at a time reconcile a run."""

from __future__ import annotations

import datetime
import json
from typing import Any

import redis

PREFIX = "primer:gateway"
INDEX = f"{PREFIX}:runs"
ACTIVE = f"{PREFIX}:active"
TERMINAL = ("Succeeded", "Failed")
# Compare-and-delete: a lock is released only by the holder that took it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) " \
           "end return 0"


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
            pipe.sadd(ACTIVE, record["id"])
            pipe.execute()

    def get(self, run_id: str) -> dict[str, Any] | None:
        return _decode(self.client.hgetall(self.key(run_id))) or None

    def update(self, run_id: str, **fields: Any) -> None:
        """Set ``fields`` of an existing run (a deleted run is not brought back)."""
        key = self.key(run_id)
        if self.client.exists(key):
            self.client.hset(key, mapping=_encode(fields))
            if fields.get("phase") in TERMINAL:
                self.client.srem(ACTIVE, run_id)

    def active(self) -> list[str]:
        """Ids of the runs not yet Succeeded or Failed."""
        return sorted(m.decode() for m in self.client.smembers(ACTIVE))

    def lock(self, run_id: str, token: str, ttl_s: float) -> bool:
        """Take the run's lock for ``ttl_s`` (SET NX PX): False when another holder has it."""
        return bool(self.client.set(f"{PREFIX}:lock:{run_id}", token, nx=True,
                                    px=max(1, int(ttl_s * 1000))))

    def unlock(self, run_id: str, token: str) -> None:
        self.client.eval(_RELEASE, 1, f"{PREFIX}:lock:{run_id}", token)

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
