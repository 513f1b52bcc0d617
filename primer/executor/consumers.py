"""Which Celery queues have a live consumer, so a run never waits in silence.

The workers are asked (Celery's ``active_queues`` broadcast over the broker; a worker that is
up answers within ``timeout``) and the answer is kept for ``ttl`` seconds, so the metrics
scrape, ``/readyz`` and every ``GET /v1/runs`` (or every operator tick) share one question
every few seconds instead of one each. A run whose queue has no consumer gets a ``NoConsumer``
condition naming the queue and the command that starts a worker on it: in the gateway's run
records and in the custom resource's status.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from primer.executor.celery_app import CeleryConfig, make_app
from primer.runs import TERMINAL, worker_command

NO_CONSUMER = "NoConsumer"


class Consumers:
    def __init__(self, redis_url: str, timeout: float = 1.0, ttl: float = 3.0):
        self.timeout, self.ttl = timeout, ttl
        self._app = make_app(CeleryConfig(redis_url=redis_url))
        self._lock = threading.Lock()
        self._asked_at = float("-inf")
        self._counts: Counter[str] = Counter()

    def counts(self) -> Counter[str]:
        """Workers consuming each queue (a queue nobody consumes is absent: 0). Raises the
        broker's error when it cannot be asked (Redis down)."""
        with self._lock:
            if time.monotonic() - self._asked_at >= self.ttl:
                replies = self._app.control.inspect(timeout=self.timeout).active_queues()
                self._counts = Counter(q["name"] for queues in (replies or {}).values()
                                       for q in queues)
                self._asked_at = time.monotonic()
            return Counter(self._counts)

    def close(self) -> None:
        """Release the broker connections (an app that stops; the next ask reconnects)."""
        with self._lock:
            self._app.close()

    def annotate(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``runs`` with a ``NoConsumer`` condition on each one not yet ended whose queue no
        worker consumes; unchanged when the workers cannot be asked (no guess either way)."""
        waiting = [r for r in runs if r.get("queue") and r["phase"] not in TERMINAL]
        if not waiting:
            return runs
        try:
            counts = self.counts()
        except Exception:  # the broker is away: /readyz says so; a run's record stays as is
            return runs
        for run in waiting:
            if not counts[run["queue"]]:
                run["conditions"] = [*run.get("conditions", []), no_consumer(run["queue"])]
        return runs


def idle(queue: str) -> str:
    """What to say of a queue no worker consumes, and how to start one (``/readyz``)."""
    return (f"no worker consumes queue {queue!r}: start one with `{worker_command(queue)}` "
            f"(in the cluster: scale up the chart's workers of that queue)")


def no_consumer(queue: str) -> dict[str, str]:
    """The ``Waiting`` condition of a run whose queue no worker consumes."""
    return {"type": "Waiting", "reason": NO_CONSUMER,
            "message": f"{idle(queue)}; until then no unit of this run can start"}
