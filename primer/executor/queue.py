"""Sending units to the Celery queue and taking them back: the shared executor's task.

Units go out as the ``primer.run_unit`` task of :mod:`primer.executor.celery_app` (what
``CeleryExecutor`` sends), without waiting for results: the asynchronous doors (the
operator, the gateway) poll completion markers instead
(:func:`primer.executor.plan.reconcile`). Task ids are ``<run prefix><unit id>``, so a run's
messages can be found in the queue and removed when the run is deleted, with no list of
ids kept anywhere.
"""

from __future__ import annotations

import contextlib
import json

import redis
from kombu.exceptions import OperationalError

from primer.executor import Job
from primer.executor.celery_app import TASK_NAME, CeleryConfig, make_app

TIMEOUT_S = 5.0  # a dead Redis fails a call within seconds; a finalizer never hangs on it


class QueueUnavailable(RuntimeError):
    """Redis could not be reached; the message says which and why."""


def task_prefix(*parts: str) -> str:
    """The prefix of a run's task ids, from what makes it unique (the operator: namespace,
    name and uid, which changes when a run is deleted and created again; the gateway: the
    run id)."""
    return ".".join(parts) + "."


SENT_KEY = "primer:sent:{prefix}{job}"
SENT_TTL_S = 30 * 24 * 3600


def enqueue(job: Job, queue: str, redis_url: str, prefix: str) -> int:
    """Send every unit of ``job`` to ``queue`` once per run; returns how many were sent (0
    when this run's ``job`` was sent already).

    Two ticks of one run can overlap (an operator's create handler and its first timer, both
    before the status patch that names the job is seen): a Redis ``SET NX`` on the run's job
    lets exactly one of them send. A send that fails midway releases it for the next tick.
    """
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=TIMEOUT_S,
                                  socket_timeout=TIMEOUT_S)
    sent = SENT_KEY.format(prefix=prefix, job=job.name)
    app = make_app(CeleryConfig(redis_url=redis_url, queue=queue))
    app.conf.broker_connection_timeout = TIMEOUT_S
    policy = {"max_retries": 2, "interval_start": 0.5, "interval_step": 1, "interval_max": 2}
    try:
        if not client.set(sent, len(job.units), nx=True, ex=SENT_TTL_S):
            return 0
        for unit in job.units:
            # ignore_result: nothing waits on these results (the markers are the truth), so
            # no result is stored and the sender subscribes to none. A subscription would
            # be undone by the AsyncResult's __del__ on the result backend's pub/sub
            # connection, from whichever thread the garbage collector runs in; a reconciler
            # thread was seen spinning there for ten minutes.
            app.send_task(TASK_NAME, task_id=prefix + unit.id, queue=queue, retry_policy=policy,
                          ignore_result=True,
                          kwargs={"unit": unit.to_dict(), "state_uri": job.state_uri,
                                  "job": job.name})
    except (OperationalError, redis.RedisError, OSError) as e:
        with contextlib.suppress(redis.RedisError, OSError):
            client.delete(sent)
        raise QueueUnavailable(f"cannot send units to {queue} at {redis_url}: {e}") from e
    finally:
        app.close()
        client.close()
    return len(job.units)


def cancel(queue: str, redis_url: str, prefix: str) -> int:
    """Remove this run's units still waiting in ``queue``; returns how many were removed.

    Units already taken by a worker finish (they are idempotent and their output is
    atomic); nothing new of this run starts after this returns.
    """
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=TIMEOUT_S,
                                  socket_timeout=TIMEOUT_S)
    removed = 0
    try:
        for raw in client.lrange(queue, 0, -1):
            try:
                task_id = json.loads(raw)["headers"]["id"]
            except (ValueError, KeyError, TypeError):
                continue  # not a Celery message: not ours
            if task_id.startswith(prefix):
                removed += client.lrem(queue, 1, raw)
    except (redis.RedisError, OSError) as e:
        raise QueueUnavailable(f"cannot reach {redis_url} to cancel units on {queue}: {e}") from e
    finally:
        client.close()
    return removed
