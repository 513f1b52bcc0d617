"""A unit that runs for many visibility timeouts: never redelivered while its worker lives,
redelivered once when the worker is killed. Real Redis, real ``celery worker`` processes.

The visibility timeout is 2 s and the unit sleeps 10 s: without the heartbeat, the other
worker's restore sweep (every second) hands the unit over after 2 s and it starts twice.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
import types
import uuid
from pathlib import Path

import pytest
import redis

from primer.executor import CeleryExecutor, Job, WorkUnit
from primer.executor.celery_app import CeleryConfig, make_app
from primer.executor.heartbeat import delivery_tag, heartbeat
from tests.primer.test_executor import celery_workers

UNIT_SECONDS = 10.0
TIMEOUT = "2"  # PRIMER_CELERY_VISIBILITY_TIMEOUT in the workers


def long_job(tmp_path: Path) -> tuple[Job, Path]:
    starts = tmp_path / "starts.txt"
    unit = WorkUnit("long", "tests.primer.long_units:sleep_and_record",
                    {"starts": str(starts), "seconds": UNIT_SECONDS})
    return Job("long", [unit], state_uri=str(tmp_path / "state")), starts


def started_in(starts: Path) -> list[int]:
    """The process group of each start of the unit, in order."""
    return [int(line) for line in starts.read_text().splitlines()] if starts.exists() else []


def delivery_ages(client: redis.Redis, queue: str) -> list[float]:
    """Seconds since each unacknowledged delivery from ``queue`` was stamped (kombu keeps
    the message, with its routing key, in ``unacked`` and the stamp in ``unacked_index``)."""
    now = time.time()
    ages = []
    for tag, entry in client.hgetall("unacked").items():
        score = client.zscore("unacked_index", tag)
        if json.loads(entry)[2] == queue and score is not None:
            ages.append(now - score)
    return ages


# -- the heartbeat on its own ----------------------------------------------------------------


def fake_task(app, tag: str) -> types.SimpleNamespace:
    """What the heartbeat reads from a bound task: its app and its request's properties."""
    return types.SimpleNamespace(app=app, request=types.SimpleNamespace(
        delivery_info={"exchange": "", "routing_key": "q"}, properties={"delivery_tag": tag}))


def test_the_heartbeat_beats_three_times_per_visibility_timeout():
    assert CeleryConfig(visibility_timeout=3600).heartbeat_interval == 1200
    with pytest.raises(ValueError, match="PRIMER_CELERY_VISIBILITY_TIMEOUT"):
        CeleryConfig(visibility_timeout=0)


def test_delivery_tag_comes_from_the_message_properties():
    assert delivery_tag(fake_task(None, "t-1").request) == "t-1"
    assert delivery_tag(types.SimpleNamespace(delivery_info=None, properties=None)) is None


def test_heartbeat_restamps_its_own_entry_under_the_key_prefix_and_stops(redis_url):
    app = make_app(CeleryConfig(redis_url=redis_url))
    app.conf.broker_transport_options = {"global_keyprefix": "pfx:"}
    client = redis.Redis.from_url(redis_url)
    key = "pfx:unacked_index"
    client.zadd(key, {"mine": 100.0, "other": 100.0})
    with heartbeat(fake_task(app, "mine"), interval=0.1):
        time.sleep(0.5)
        assert client.zscore(key, "mine") > time.time() - 1  # stamped with the current time
    stamped = client.zscore(key, "mine")
    time.sleep(0.3)
    assert client.zscore(key, "mine") == stamped  # the thread ended with the block
    assert client.zscore(key, "other") == 100.0  # other deliveries untouched
    assert not any(t.name.startswith("heartbeat-") for t in threading.enumerate())

    # An entry acknowledged (or restored) meanwhile is never re-added (ZADD XX).
    with heartbeat(fake_task(app, "acked"), interval=0.1):
        time.sleep(0.3)
    assert client.zscore(key, "acked") is None


def test_a_unit_that_raises_stops_its_heartbeat(redis_url):
    app = make_app(CeleryConfig(redis_url=redis_url))
    with pytest.raises(ValueError, match="boom"):
        with heartbeat(fake_task(app, "failing"), interval=0.1):
            raise ValueError("boom")
    assert not any(t.name.startswith("heartbeat-") for t in threading.enumerate())


# -- long units on real workers --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_a_unit_longer_than_the_visibility_timeout_runs_once_while_its_worker_lives(
        redis_url, tmp_path):
    queue = f"primer-long-{uuid.uuid4().hex[:8]}"
    job, starts = long_job(tmp_path)
    client = redis.Redis.from_url(redis_url)
    with celery_workers(redis_url, queue, tmp_path / "logs",
                        PRIMER_CELERY_VISIBILITY_TIMEOUT=TIMEOUT) as workers, \
            concurrent.futures.ThreadPoolExecutor(1) as waiter:
        running = waiter.submit(CeleryExecutor(redis_url, queue=queue, timeout=60).run, job,
                                progress=False)
        ages = []  # how old the unit's delivery stamp looks to the restore sweep
        while not running.done():
            ages += delivery_ages(client, queue)
            time.sleep(0.2)
        result = running.result()

    assert result.ok, result.failed
    assert len(started_in(starts)) == 1  # ran once though the timeout passed five times
    assert result.results["long"] == started_in(starts)[0]
    assert started_in(starts)[0] in {w.pid for w in workers}
    assert len(ages) > 20 and max(ages) < float(TIMEOUT)


@pytest.mark.slow
@pytest.mark.integration
def test_a_long_unit_whose_worker_is_killed_runs_once_more_on_the_survivor(redis_url,
                                                                           tmp_path):
    queue = f"primer-long-kill-{uuid.uuid4().hex[:8]}"
    job, starts = long_job(tmp_path)
    with celery_workers(redis_url, queue, tmp_path / "logs",
                        PRIMER_CELERY_VISIBILITY_TIMEOUT=TIMEOUT) as workers, \
            concurrent.futures.ThreadPoolExecutor(1) as waiter:
        running = waiter.submit(CeleryExecutor(redis_url, queue=queue, timeout=60).run, job,
                                progress=False)
        deadline = time.monotonic() + 30
        while not started_in(starts):
            assert time.monotonic() < deadline and not running.done(), "unit never started"
            time.sleep(0.1)
        time.sleep(float(TIMEOUT) * 1.5)  # mid-run, past one timeout: its heartbeat is alive
        assert len(started_in(starts)) == 1
        victim = started_in(starts)[0]
        os.killpg(victim, signal.SIGKILL)  # worker and its pool child: a lost pod
        result = running.result(timeout=60)

    assert result.ok, result.failed
    survivor = ({w.pid for w in workers} - {victim}).pop()
    assert started_in(starts) == [victim, survivor]  # redelivered once, to the survivor
    assert result.results["long"] == survivor
