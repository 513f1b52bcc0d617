"""Keep a running unit's Celery message from being redelivered while its worker lives.

kombu's Redis transport emulates acknowledgements: a delivered message waits in the
``unacked`` hash, its delivery tag in the ``unacked_index`` sorted set scored by delivery
time, and every worker's event loop puts the entries older than the visibility timeout back
on their queue (``restore_visible``), so the units of a worker that vanished are run again.
That sweep cannot tell a dead worker from a live one still running a long unit.

:func:`heartbeat` tells it: while a task runs, a thread re-scores the task's delivery tag
with the current time every ``interval`` seconds (a third of the visibility timeout), so the
entry never looks expired while the process lives. ``ZADD XX`` only updates an entry, never
re-adds one that was acknowledged or restored meanwhile. When the worker dies, the beats
stop and the sweep restores the message one visibility timeout after the last beat.

Key names and the global key prefix come from the broker connection's own channel, so the
beat touches exactly the entry kombu wrote, whatever the transport options say.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import Task

log = logging.getLogger("primer.executor")


def delivery_tag(request: Any) -> str | None:
    """The broker's delivery tag of the message ``request`` came from (None when the task
    was called directly). Celery keeps it in the message properties; ``delivery_info``
    holds only exchange, routing key, priority and the redelivered flag."""
    for source in (getattr(request, "delivery_info", None), getattr(request, "properties", None)):
        tag = (source or {}).get("delivery_tag")
        if tag:
            return str(tag)
    return None


@contextlib.contextmanager
def heartbeat(task: Task, interval: float) -> Iterator[None]:
    """Refresh ``task``'s current delivery in the broker every ``interval`` seconds until
    the block ends (by return or exception)."""
    tag = delivery_tag(task.request)
    if tag is None:
        yield
        return
    beat = _Beat(task, tag, interval)
    beat.start()
    try:
        yield
    finally:
        beat.stop()


class _Beat(threading.Thread):
    """The beating thread: connects on its first beat, so a unit shorter than ``interval``
    costs no connection."""

    def __init__(self, task: Task, tag: str, interval: float):
        super().__init__(name=f"heartbeat-{tag}", daemon=True)
        self.app, self.tag, self.interval = task.app, tag, interval
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=10)  # at most one ZADD in flight

    def run(self) -> None:
        with self.app.connection_for_write() as connection:
            while not self._stopped.wait(self.interval):
                try:
                    if not self._beat(connection.default_channel):
                        return
                except Exception as exc:  # the next beat retries; the unit runs on
                    log.warning("heartbeat of delivery %s failed: %s", self.tag, exc)

    def _beat(self, channel: Any) -> bool:
        """One refresh; False when there is nothing (more) to keep alive."""
        if not getattr(channel, "ack_emulation", False):
            return False  # a broker with real acknowledgements has no visibility timeout
        changed = channel.client.zadd(channel.unacked_index_key, {self.tag: time.time()},
                                      xx=True, ch=True)
        if not changed:
            log.warning("delivery %s is no longer unacked (restored to the queue before its "
                        "heartbeat?); another worker may run this unit too", self.tag)
        return bool(changed)
