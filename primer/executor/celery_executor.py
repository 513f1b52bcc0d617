"""The cluster-mode executor: sends units to Celery workers over Redis and waits for them.

Units whose marker exists are not sent at all. Results are collected with one Redis ``MGET``
per poll (Celery's ``backend.get_many``), so waiting on many units stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import celery.exceptions

from primer.errors import clip, plain, short_error
from primer.executor.base import (
    Executor,
    Job,
    JobResult,
    ProgressBar,
    UnitFailure,
    UnitOutcome,
    log,
    report,
    skipped_outcomes,
)
from primer.executor.celery_app import TASK_NAME, CeleryConfig, make_app
from primer.runs import QUEUES
from primer.storage import open_storage


class CeleryExecutor(Executor):
    """Runs units as ``primer.run_unit`` tasks on whatever workers consume :attr:`queue`."""

    def __init__(self, broker_url: str | None = None, *, queue: str | None = None,
                 component: str | None = None, timeout: float | None = None,
                 poll_interval: float = 0.5):
        """``broker_url`` defaults to ``PRIMER_REDIS_URL``; ``queue`` to
        ``PRIMER_CELERY_QUEUE``, else ``component``'s queue (:data:`primer.runs.QUEUES`, what
        the chart's and the README's workers consume); ``timeout`` bounds the wait for
        results (None: forever), after which the units still out are reported failed (a rerun
        picks them up)."""
        env = CeleryConfig.from_env()
        if not queue and component and not os.environ.get("PRIMER_CELERY_QUEUE"):
            queue = QUEUES[component]
        self.config = CeleryConfig(redis_url=broker_url or env.redis_url,
                                   queue=queue or env.queue,
                                   visibility_timeout=env.visibility_timeout)
        self.app = make_app(self.config)
        # Results are polled with get_many, never awaited one by one: a send subscribes to
        # nothing on the result backend's pub/sub connection (an AsyncResult dropped later
        # would unsubscribe there from whatever thread the garbage collector runs in).
        self.app.backend.on_task_call = lambda producer, task_id: None
        self.timeout = timeout
        self.poll_interval = poll_interval

    @property
    def queue(self) -> str:
        """The Redis list holding waiting units (what a KEDA ``redis`` scaler watches)."""
        return self.config.queue

    def run(self, job: Job, *, progress: bool = True) -> JobResult:
        result = JobResult(job.name)
        with ProgressBar(job, enabled=progress) as bar:
            for outcome in skipped_outcomes(job, open_storage(job.state_uri)):
                report(job, result, outcome, ran_now=False)
                bar.advance(outcome)
            sent = {}
            for unit in job.units:
                if unit.id not in result.results:
                    task = self.app.send_task(
                        TASK_NAME, kwargs={"unit": unit.to_dict(), "state_uri": job.state_uri,
                                           "job": job.name}, queue=self.queue)
                    sent[task.id] = unit.id
            log.info("job %s: sent %d units to queue %s (%d skipped)", job.name, len(sent),
                     self.queue, len(result.skipped), extra={"job": job.name})
            for outcome in self._collect(sent):
                report(job, result, outcome)
                bar.advance(outcome)
        log.info(result.summary(), extra={"job": job.name})
        return result

    def _collect(self, sent: dict[str, str]) -> Iterator[UnitOutcome | UnitFailure]:
        """Outcomes as results arrive; ``sent`` maps task id to unit id."""
        waiting = dict(sent)
        try:
            for task_id, meta in self.app.backend.get_many(
                    set(sent), timeout=self.timeout, interval=self.poll_interval):
                unit_id = waiting.pop(task_id)
                if meta["status"] == "SUCCESS":
                    value = meta["result"]
                    yield UnitOutcome(unit_id, value["result"], value["skipped"],
                                      value["duration_s"])
                else:  # FAILURE or REVOKED; the result is the exception
                    exc = meta["result"]
                    yield UnitFailure(unit_id, short_error(exc),
                                      clip(plain(meta.get("traceback") or "")))
        except celery.exceptions.TimeoutError:
            for unit_id in waiting.values():
                yield UnitFailure(unit_id, f"TimeoutError: no result after {self.timeout}s "
                                  f"(no worker on queue {self.queue}?)", "")
        finally:
            for task_id in sent:
                self.app.backend.forget(task_id)
