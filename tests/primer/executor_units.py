"""Unit functions for the executor tests, importable by pool workers and Celery workers.

Each records every invocation as its own object under ``calls/`` (works on local disk and
S3, across processes), so a test can count how often a unit really ran.
"""

from __future__ import annotations

import json
import os
import time
import uuid

from primer.storage import open_storage


def _record_call(store, unit: str) -> int:
    """Record this invocation; returns how many earlier invocations of ``unit`` there were."""
    earlier = len(list(store.list(f"calls/{unit}/")))
    store.write_text(f"calls/{unit}/{uuid.uuid4().hex}.json",
                     json.dumps({"pid": os.getpid(), "pgid": os.getpgrp()}))
    return earlier


def square(uri: str, unit: str, n: int) -> int:
    """Write ``n*n`` to ``out/<unit>.txt`` atomically and return it."""
    store = open_storage(uri)
    _record_call(store, unit)
    store.write_text(f"out/{unit}.txt", str(n * n))
    return n * n


def fail(uri: str, unit: str, message: str) -> None:
    _record_call(open_storage(uri), unit)
    raise ValueError(message)


def die(uri: str, unit: str) -> None:
    """End the process the way the OOM killer would: no exception, no cleanup."""
    _record_call(open_storage(uri), unit)
    os._exit(1)


def slow_first_time(uri: str, unit: str, pause: float) -> int:
    """Start writing ``out/<unit>.txt``, and on the first attempt pause half-way (long enough
    to be killed there); later attempts finish at once. Returns the attempt number."""
    store = open_storage(uri)
    attempt = _record_call(store, unit) + 1
    with store.open_write(f"out/{unit}.txt") as f:
        f.write(b"first half,")
        if attempt == 1:
            time.sleep(pause)
        f.write(b"second half")
    return attempt


def fail_first(uri: str, unit: str) -> str:
    """Fail on the first attempt, succeed on later ones (a transient error)."""
    if _record_call(open_storage(uri), unit) == 0:
        raise RuntimeError("transient failure")
    return "ok"
