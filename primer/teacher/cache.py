"""The response cache: one object per request, keyed by what determines the answer.

The key is a hash of (model, messages, sampling parameters, seed), so a rerun costs nothing
and a retried or redelivered task gets the very same record. Entries live in any storage
(``./primer-data/cache/teacher`` or ``s3://…``), so every worker shares one cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from primer.storage import ObjectNotFoundError, Storage, open_storage


def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """Stable hash of a chat request; ``params`` holds sampling settings and the seed."""
    canonical = json.dumps({"model": model, "messages": messages, "params": params},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    def __init__(self, uri: str | Storage):
        self.store = uri if isinstance(uri, Storage) else open_storage(uri)

    @staticmethod
    def _key(key: str) -> str:
        return f"{key[:2]}/{key}.json"  # fan out: no directory of millions of files

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            text = self.store.read_text(self._key(key))
        except ObjectNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:  # a corrupt entry is a miss, and is rewritten
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        # Not fsynced: an entry lost to a host crash is asked again, and a torn one reads
        # as a miss. The fsync was most of a put's cost (bench/generation.py).
        self.store.write_text(self._key(key), json.dumps(value, ensure_ascii=False),
                              durable=False)
