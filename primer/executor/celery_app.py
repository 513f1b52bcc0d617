"""The Celery app and its one generic task, ``primer.run_unit``: the cluster-mode worker entry.

Launch a worker (one unit at a time per process; scale with more workers)::

    PRIMER_REDIS_URL=redis://redis:6379/0 celery -A primer.executor.celery_app worker \\
        -Q primer --pool prefork --concurrency 1

Environment: ``PRIMER_REDIS_URL`` (broker and result backend, default
``redis://localhost:6379/0``), ``PRIMER_CELERY_QUEUE`` (default ``primer``; the Redis list a
KEDA autoscaler watches), ``PRIMER_CELERY_VISIBILITY_TIMEOUT`` (seconds, default 3600).

Delivery is at-least-once: a unit is acknowledged only after it ran (``acks_late``), a
worker child that dies requeues it (``task_reject_on_worker_lost``), and a message held by a
worker that vanished (kill -9, lost node) goes back to the queue once it has been unacked
for the visibility timeout; a live worker's event loop sweeps for those. A unit may run far
longer than that timeout: while it runs, a heartbeat thread in its process re-stamps its
delivery every third of the timeout (:mod:`primer.executor.heartbeat`), so the sweep never
hands a live worker's unit to a second worker. The timeout is thus how long the unit of a
dead worker waits before it runs elsewhere, not a bound on a unit's run time.

Because a process death requeues the unit, a unit that always kills its process (a poison
input, an out-of-memory shard) would come back forever. Each delivery is counted in Redis
under the task id, and past ``PRIMER_CELERY_MAX_DELIVERIES`` (default 5) the unit fails with
an error that says so instead of running again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from celery import Celery
from pydantic import ConfigDict, Field, field_validator

from primer.config import ConfigModel, load_config
from primer.executor.base import WorkUnit, run_unit
from primer.executor.heartbeat import heartbeat

TASK_NAME = "primer.run_unit"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


class CeleryConfig(ConfigModel):
    """Where the queue is and how deliveries behave; a config section like any other, whose
    defaults come from the service variables the chart sets (``env_defaults``)."""

    model_config = ConfigDict(frozen=True)
    env_defaults: ClassVar[Mapping[str, str]] = {
        "redis_url": "PRIMER_REDIS_URL", "queue": "PRIMER_CELERY_QUEUE",
        "visibility_timeout": "PRIMER_CELERY_VISIBILITY_TIMEOUT",
        "max_deliveries": "PRIMER_CELERY_MAX_DELIVERIES"}

    redis_url: str = Field(DEFAULT_REDIS_URL, description=(
        "Broker and result backend (redis://host:port/db)."))
    queue: str = Field("primer", description=(
        "Queue (Redis list) the units are sent to and workers consume (-Q)."))
    visibility_timeout: float = Field(3600.0, description=(
        "Seconds after its worker's last heartbeat before an unacknowledged unit goes back "
        "to the queue (the wait before a dead worker's unit runs elsewhere)."))
    max_deliveries: int = Field(5, ge=1, description=(
        "Deliveries of one unit before it is failed instead of run again (a unit whose "
        "worker process dies every time would otherwise be requeued forever)."))
    restore_interval: float = Field(0.0, ge=0, description=(
        "Seconds between a worker's sweeps for expired unacked units; 0: derived from the "
        "visibility timeout (kombu's default is a scan every 100 s, too slow for short "
        "timeouts)."))

    @field_validator("visibility_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"Celery visibility timeout must be positive, got {value} "
                             "(PRIMER_CELERY_VISIBILITY_TIMEOUT)")
        return value

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between a running unit's heartbeats: three per timeout, so one late or
        failed beat still leaves the delivery fresh."""
        return self.visibility_timeout / 3

    @classmethod
    def from_env(cls) -> CeleryConfig:
        return load_config(cls)

    def transport_options(self) -> dict[str, Any]:
        interval = self.restore_interval or min(10.0, max(1.0, self.visibility_timeout / 5))
        # kombu scans every `interval * throttle` seconds; throttle 1 makes it `interval`.
        return {"visibility_timeout": self.visibility_timeout,
                "unacked_restore_interval": interval, "unacked_restore_throttle": 1}


def make_app(config: CeleryConfig | None = None) -> Celery:
    """A Celery app with Primer's delivery settings and the ``primer.run_unit`` task."""
    config = config or CeleryConfig.from_env()
    app = Celery("primer", broker=config.redis_url, backend=config.redis_url,
                 set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # On a lost broker connection the unacked unit is redelivered elsewhere; stop the
        # local copy instead of running it twice.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=config.queue,
        broker_transport_options=config.transport_options(),
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=TASK_NAME, bind=True)
    def run_unit_task(self, unit: dict[str, Any], state_uri: str, job: str = "") -> dict[str, Any]:
        deliveries = _count_delivery(self.app, self.request.id)
        if deliveries > config.max_deliveries:
            raise DeliveryLimitError(
                f"unit {unit.get('id')} of job {job or '?'} was delivered {deliveries} times "
                f"(limit {config.max_deliveries}): its worker process died each time (killed, "
                "out of memory?); giving up. Raise PRIMER_CELERY_MAX_DELIVERIES to allow more.")
        with heartbeat(self, interval=config.heartbeat_interval):
            outcome = run_unit(WorkUnit.from_dict(unit), state_uri, job, self.request.hostname)
        return {"result": outcome.result, "skipped": outcome.skipped,
                "duration_s": outcome.duration_s}

    return app


class DeliveryLimitError(RuntimeError):
    """A unit was redelivered more often than ``max_deliveries`` allows."""


def _count_delivery(app: Celery, task_id: str) -> int:
    """Count one delivery of ``task_id`` (the id survives redelivery); kept for a week."""
    client = app.backend.client  # the result backend is the same Redis as the broker
    key = f"primer:deliveries:{task_id}"
    with client.pipeline() as pipe:
        count, _ = pipe.incr(key).expire(key, 7 * 24 * 3600).execute()
    return int(count)


app = make_app()
