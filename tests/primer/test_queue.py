"""Sending a run's units to the queue (real Redis): each step once per run, even when two
ticks of the run overlap; a failed send leaves the step free for the next tick."""

from __future__ import annotations

import types
import uuid

import pytest
import redis

from primer.executor import Job, WorkUnit
from primer.executor.queue import QueueUnavailable, cancel, enqueue, task_prefix


def job(name: str = "generate-round-0") -> Job:
    return Job(name, [WorkUnit(f"u{i}", "tests.primer.executor_units:square", {"i": i})
                      for i in range(3)], "/tmp/unused-state")


def test_a_step_is_sent_once_per_run_and_cancel_takes_it_back(redis_url):
    queue = f"q-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_url)
    run_a, run_b = task_prefix("ns", "a", "uid1"), task_prefix("ns", "b", "uid2")
    assert enqueue(job(), queue, redis_url, run_a) == 3
    assert enqueue(job(), queue, redis_url, run_a) == 0  # an overlapping tick sends nothing
    assert client.llen(queue) == 3
    assert enqueue(job(), queue, redis_url, run_b) == 3  # another run's step is its own
    assert enqueue(job("generate-round-1"), queue, redis_url, run_a) == 3  # the next step
    assert client.llen(queue) == 9
    assert cancel(queue, redis_url, run_a) == 6 and client.llen(queue) == 3


def test_a_send_that_fails_midway_is_released_for_the_next_tick(redis_url, monkeypatch):
    from kombu.exceptions import OperationalError

    from primer.executor import queue as queue_module

    class Broken:  # the broker drops the connection after the step was claimed
        conf = types.SimpleNamespace()

        def send_task(self, *args, **kwargs):
            raise OperationalError("connection reset by peer")

        def close(self):
            pass

    prefix = task_prefix("gateway", uuid.uuid4().hex[:8])
    name = f"q-{uuid.uuid4().hex[:6]}"
    with monkeypatch.context() as m:
        m.setattr(queue_module, "make_app", lambda config: Broken())
        with pytest.raises(QueueUnavailable, match="connection reset by peer"):
            enqueue(job(), name, redis_url, prefix)
    assert enqueue(job(), name, redis_url, prefix) == 3  # the next tick sends it
    assert redis.Redis.from_url(redis_url).llen(name) == 3


def test_a_sent_unit_subscribes_to_no_result_and_asks_for_none_to_be_stored(redis_url,
                                                                            monkeypatch):
    """The doors read markers, never Celery results: a result subscription would only be
    undone later by the AsyncResult's __del__ on the backend's pub/sub connection, from
    whatever thread the garbage collector happens to run in."""
    import json

    from primer.executor import queue as queue_module

    subscribed: list[str] = []
    real_make_app = queue_module.make_app

    def watched(config):
        app = real_make_app(config)
        backend = app.backend
        on_task_call = backend.on_task_call
        backend.on_task_call = lambda producer, task_id: (subscribed.append(task_id),
                                                          on_task_call(producer, task_id))
        return app

    monkeypatch.setattr(queue_module, "make_app", watched)
    name = f"q-{uuid.uuid4().hex[:6]}"
    assert enqueue(job(), name, redis_url, task_prefix("gateway", "r1")) == 3
    assert subscribed == []
    messages = [json.loads(m) for m in redis.Redis.from_url(redis_url).lrange(name, 0, -1)]
    assert [m["headers"]["ignore_result"] for m in messages] == [True, True, True]
