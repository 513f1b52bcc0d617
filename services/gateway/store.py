"""Run records in Redis (embedded mode): one hash per run (``primer:gateway:run:<id>``, JSON
values), a sorted set of run ids by creation time (``primer:gateway:runs``), the set of runs
not yet ended (``primer:gateway:active``) and a capped list of each run's driver events
(``primer:gateway:log:<id>``), so every gateway replica sees the same runs; a per-run lock
lets one replica at a time reconcile a run.

A run that ended expires ``ttl_s`` after its end: its hash and its log get a Redis EXPIRE,
and its id goes into ``primer:gateway:ended`` (scored by when it expires), so
:meth:`RunStore.prune` drops expired ids from the index without scanning it. Runs not yet
ended never expire.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import redis

from primer.runs import TERMINAL

PREFIX = "primer:gateway"
INDEX = f"{PREFIX}:runs"
ACTIVE = f"{PREFIX}:active"
ENDED = f"{PREFIX}:ended"
LOG_LENGTH = 500  # events kept per run (the newest)
# Compare-and-delete: a lock is released only by the holder that took it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) " \
           "end return 0"
# Set fields of a run not yet ended, atomically: a run that ended (Cancelled while a tick was
# under way) is never changed again. KEYS: hash, log, active, ended; ARGV: run id, ttl (s),
# expiry time (unix s), whether these fields end the run (1/0), the ended phases (JSON list of
# encoded values), then field, value pairs. Returns 1, 0 (no such run) or the ended phase.
_UPDATE = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local phase = redis.call('hget', KEYS[1], 'phase')
for _, ended in ipairs(cjson.decode(ARGV[5])) do
  if phase == ended then return phase end
end
redis.call('hset', KEYS[1], unpack(ARGV, 6))
if ARGV[4] == '1' then
  redis.call('srem', KEYS[3], ARGV[1])
  redis.call('expire', KEYS[1], ARGV[2])
  redis.call('expire', KEYS[2], ARGV[2])
  redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
end
return 1
"""
# Append an event to a run's log, keep the newest, expire it with the record. KEYS: hash,
# log; ARGV: event, length.
_LOG = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('rpush', KEYS[2], ARGV[1])
redis.call('ltrim', KEYS[2], -tonumber(ARGV[2]), -1)
local ttl = redis.call('pttl', KEYS[1])
if ttl > 0 then redis.call('pexpire', KEYS[2], ttl) end
return 1
"""
WEEK_S = 7 * 24 * 3600


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class RunStore:
    def __init__(self, client: redis.Redis, ttl_s: int = WEEK_S):
        self.client, self.ttl_s = client, ttl_s
        self._update = client.register_script(_UPDATE)
        self._log = client.register_script(_LOG)

    @classmethod
    def from_url(cls, url: str, ttl_s: int = WEEK_S) -> RunStore:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2), ttl_s)

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def key(run_id: str) -> str:
        return f"{PREFIX}:run:{run_id}"

    @staticmethod
    def log_key(run_id: str) -> str:
        return f"{PREFIX}:log:{run_id}"

    def create(self, record: dict[str, Any], created: float) -> None:
        with self.client.pipeline() as pipe:
            pipe.hset(self.key(record["id"]), mapping=_encode(record))
            pipe.zadd(INDEX, {record["id"]: created})
            pipe.sadd(ACTIVE, record["id"])
            pipe.execute()

    def get(self, run_id: str) -> dict[str, Any] | None:
        return _decode(self.client.hgetall(self.key(run_id))) or None

    def update(self, run_id: str, **fields: Any) -> bool:
        """Set ``fields`` of a run not yet ended; False when it has ended (or is gone: a
        deleted or expired run is not brought back). Fields that end the run start its
        expiry."""
        ends = fields.get("phase") in TERMINAL
        pairs = [x for item in _encode(fields).items() for x in item]
        done = self._update(
            keys=[self.key(run_id), self.log_key(run_id), ACTIVE, ENDED],
            args=[run_id, max(1, self.ttl_s), int(time.time()) + self.ttl_s, int(ends),
                  json.dumps([json.dumps(p) for p in TERMINAL]), *pairs])
        return done == 1

    def log(self, run_id: str, message: str) -> None:
        """Append an event (``at``, ``message``) to the run's log (kept: the newest
        :data:`LOG_LENGTH`)."""
        event = json.dumps({"at": now(), "message": message})
        self._log(keys=[self.key(run_id), self.log_key(run_id)], args=[event, LOG_LENGTH])

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.client.lrange(self.log_key(run_id), 0, -1)]

    def active(self) -> list[str]:
        """Ids of the runs not yet ended."""
        return sorted(m.decode() for m in self.client.smembers(ACTIVE))

    def lock(self, run_id: str, token: str, ttl_s: float) -> bool:
        """Take the run's lock for ``ttl_s`` (SET NX PX): False when another holder has it."""
        return bool(self.client.set(f"{PREFIX}:lock:{run_id}", token, nx=True,
                                    px=max(1, int(ttl_s * 1000))))

    def unlock(self, run_id: str, token: str) -> None:
        self.client.eval(_RELEASE, 1, f"{PREFIX}:lock:{run_id}", token)

    def list(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first (an expired run found on the way leaves the index)."""
        ids = self.client.zrevrange(INDEX, offset, offset + limit - 1)
        with self.client.pipeline() as pipe:
            for run_id in ids:
                pipe.hgetall(self.key(run_id.decode()))
            rows = pipe.execute()
        if gone := [run_id for run_id, row in zip(ids, rows, strict=True) if not row]:
            self.client.zrem(INDEX, *gone)
        return [r for r in map(_decode, rows) if r]

    def prune(self) -> int:
        """Drop the runs expired by now from the index; returns how many."""
        expired = self.client.zrangebyscore(ENDED, "-inf", int(time.time()))
        if expired:
            with self.client.pipeline() as pipe:
                pipe.zrem(INDEX, *expired)
                pipe.zrem(ENDED, *expired)
                pipe.execute()
        return len(expired)

    def count(self) -> int:
        return int(self.client.zcard(INDEX))


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in fields.items()}


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in raw.items()}
