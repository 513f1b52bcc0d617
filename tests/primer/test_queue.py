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
