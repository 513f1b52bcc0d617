"""Executors with real parts: a forkserver process pool, and real Celery workers on Redis.

The unit functions live in ``tests/primer/executor_units.py`` and count their own
invocations in storage, so "a rerun does no work" is measured, not assumed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from primer.executor import (
    CeleryExecutor,
    Job,
    LocalExecutor,
    WorkUnit,
    completed_ids,
    failed_ids,
    failure_key,
    read_marker,
    run_unit,
)
from primer.executor.celery_app import CeleryConfig, make_app
from primer.storage import open_storage

UNITS = "tests.primer.executor_units"
REPO = Path(__file__).resolve().parents[2]


def square_units(uri: str, n: int) -> list[WorkUnit]:
    return [WorkUnit(f"sq-{i}", f"{UNITS}:square", {"uri": uri, "unit": f"sq-{i}", "n": i})
            for i in range(n)]


def unit(kind: str, uri: str, unit_id: str, **args) -> WorkUnit:
    return WorkUnit(unit_id, f"{UNITS}:{kind}", {"uri": uri, "unit": unit_id, **args})


def calls(uri: str, unit_id: str) -> list[dict]:
    store = open_storage(uri)
    return [json.loads(store.read_text(o.key)) for o in store.list(f"calls/{unit_id}/")]


# -- the unit contract ----------------------------------------------------------------------


def test_work_unit_rejects_bad_ids_fns_and_args():
    with pytest.raises(ValueError, match="id"):
        WorkUnit("a/b", f"{UNITS}:square")
    with pytest.raises(ValueError, match="fn"):
        WorkUnit("a", "not-an-import-path")
    with pytest.raises(ValueError, match="JSON"):
        WorkUnit("a", f"{UNITS}:square", {"path": Path("/x")})
    with pytest.raises(ValueError, match="duplicate"):
        Job("j", [WorkUnit("a", f"{UNITS}:square")] * 2, state_uri="x")


def test_run_unit_writes_marker_after_the_function_and_then_skips(tmp_path):
    uri = str(tmp_path / "s")
    u = unit("square", uri, "u", n=7)
    first = run_unit(u, uri, "job")
    second = run_unit(u, uri, "job")
    assert (first.result, first.skipped) == (49, False)
    assert (second.result, second.skipped) == (49, True)
    assert len(calls(uri, "u")) == 1
    marker = read_marker(open_storage(uri), "u")
    assert marker["result"] == 49 and marker["job"] == "job"
    assert {"host", "pid", "duration_s", "finished_at"} <= marker.keys()


# -- LocalExecutor --------------------------------------------------------------------------


def test_local_runs_every_unit_once_and_a_rerun_does_no_work(storage_uri):
    job = Job("squares", square_units(storage_uri, 5), state_uri=storage_uri)
    first = LocalExecutor(workers=2).run(job, progress=True)
    assert first.ok and sorted(first.done) == [f"sq-{i}" for i in range(5)]
    assert first.skipped == []
    assert first.results == {f"sq-{i}": i * i for i in range(5)}
    store = open_storage(storage_uri)
    assert [store.read_text(f"out/sq-{i}.txt") for i in range(5)] == ["0", "1", "4", "9", "16"]
    assert completed_ids(store) == {f"sq-{i}" for i in range(5)}

    second = LocalExecutor(workers=2).run(job, progress=False)
    assert second.done == [] and sorted(second.skipped) == sorted(first.done)
    assert second.results == first.results  # read back from the markers
    assert all(len(calls(storage_uri, u.id)) == 1 for u in job.units)


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "pool"])
def test_local_failing_unit_is_reported_with_traceback_and_others_complete(tmp_path, workers):
    uri = str(tmp_path / "s")
    job = Job("mixed", [*square_units(uri, 3), unit("fail", uri, "bad", message="boom-4711")],
              state_uri=uri)
    result = LocalExecutor(workers=workers).run(job, progress=False)
    assert not result.ok
    assert [f.unit_id for f in result.failed] == ["bad"]
    failure = result.failed[0]
    assert failure.error == "ValueError: boom-4711"
    assert "executor_units.py" in failure.traceback and "boom-4711" in failure.traceback
    assert sorted(result.done) == ["sq-0", "sq-1", "sq-2"]
    assert completed_ids(open_storage(uri)) == {"sq-0", "sq-1", "sq-2"}  # no marker for "bad"
    assert failed_ids(open_storage(uri)) == {"bad"}  # a record progress readers can count
    record = json.loads(open_storage(uri).read_text(failure_key("bad")))
    assert record["error"] == "ValueError: boom-4711" and "boom-4711" in record["traceback"]

    again = LocalExecutor(workers=workers).run(job, progress=False)
    assert [f.unit_id for f in again.failed] == ["bad"]  # a failure is retried on rerun
    assert sorted(again.skipped) == ["sq-0", "sq-1", "sq-2"] and again.done == []
    assert len(calls(uri, "bad")) == 2


def test_a_failure_record_is_removed_when_the_unit_succeeds(tmp_path):
    uri = str(tmp_path / "s")
    job = Job("flaky", [unit("fail_first", uri, "flaky")], state_uri=uri)
    first = LocalExecutor(workers=1).run(job, progress=False)
    assert [f.unit_id for f in first.failed] == ["flaky"]
    assert failed_ids(open_storage(uri)) == {"flaky"}
    second = LocalExecutor(workers=1).run(job, progress=False)
    assert second.ok and second.results == {"flaky": "ok"}
    assert failed_ids(open_storage(uri)) == set() and completed_ids(open_storage(uri)) == {
        "flaky"}


def test_local_unit_whose_process_dies_is_a_failure_and_the_rest_run(tmp_path):
    uri = str(tmp_path / "s")
    units = [*square_units(uri, 2), unit("die", uri, "dead"), *square_units(uri, 6)[2:]]
    result = LocalExecutor(workers=2).run(Job("crash", units, state_uri=uri), progress=False)
    assert [f.unit_id for f in result.failed] == ["dead"]
    assert "died" in result.failed[0].error
    assert sorted(result.done) == [f"sq-{i}" for i in range(6)]
    assert result.results == {f"sq-{i}": i * i for i in range(6)}
    assert completed_ids(open_storage(uri)) == {f"sq-{i}" for i in range(6)}


# -- CeleryExecutor against real workers ----------------------------------------------------


def test_celery_config_has_the_delivery_guarantees(monkeypatch):
    monkeypatch.setenv("PRIMER_CELERY_VISIBILITY_TIMEOUT", "5")
    monkeypatch.setenv("PRIMER_CELERY_QUEUE", "q1")
    conf = make_app().conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.task_serializer == "json"
    assert conf.task_default_queue == "q1"
    assert conf.broker_transport_options == {"visibility_timeout": 5.0,
                                             "unacked_restore_interval": 1.0,
                                             "unacked_restore_throttle": 1}
    assert CeleryConfig.from_env().queue == "q1"
    assert CeleryConfig.from_env().max_deliveries == 5


def test_a_components_units_go_to_its_own_queue_unless_one_is_named(monkeypatch):
    from primer.executor.celery_executor import CeleryExecutor

    monkeypatch.delenv("PRIMER_CELERY_QUEUE", raising=False)
    assert CeleryExecutor("redis://localhost:1/0", component="curation").queue == "curation"
    assert CeleryExecutor("redis://localhost:1/0", component="generation",
                          queue="mine").queue == "mine"
    monkeypatch.setenv("PRIMER_CELERY_QUEUE", "q1")
    assert CeleryExecutor("redis://localhost:1/0", component="curation").queue == "q1"


@contextlib.contextmanager
def celery_workers(redis_url: str, queue: str, logs: Path, n: int = 2, **extra_env: str):
    """``n`` real ``celery worker`` processes (each its own process group) on ``queue``."""
    env = {**os.environ, "PRIMER_REDIS_URL": redis_url, "PRIMER_CELERY_QUEUE": queue,
           "PRIMER_CELERY_VISIBILITY_TIMEOUT": "5", "PYTHONPATH": str(REPO), **extra_env}
    celery = str(Path(sys.executable).parent / "celery")
    logs.mkdir(parents=True, exist_ok=True)
    workers: list[tuple[subprocess.Popen, Path]] = []
    try:
        for i in range(n):
            log = logs / f"worker-{i}.log"
            with open(log, "wb") as out:
                workers.append((subprocess.Popen(
                    [celery, "-A", "primer.executor.celery_app", "worker", "-Q", queue,
                     "--pool", "prefork", "--concurrency", "1", "-n", f"w{i}-{queue}@%h",
                     "-l", "info", "--without-gossip", "--without-mingle"],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True), log))
        deadline = time.monotonic() + 60
        for proc, log in workers:
            while "ready." not in log.read_text():
                assert proc.poll() is None, f"worker exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"worker not ready:\n{log.read_text()}"
                time.sleep(0.1)
        yield [proc for proc, _ in workers]
    finally:
        for proc, _ in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def celery_queue(redis_url, tmp_path_factory):
    """Two workers shared by the tests that do not kill them; yields their queue."""
    queue = f"primer-test-{uuid.uuid4().hex[:8]}"
    with celery_workers(redis_url, queue, tmp_path_factory.mktemp("celery-logs")):
        yield queue


@pytest.mark.integration
def test_celery_runs_units_on_workers_and_a_rerun_sends_nothing(celery_queue, redis_url,
                                                                 tmp_path):
    uri = str(tmp_path / "s")
    job = Job("squares", square_units(uri, 4), state_uri=uri)
    executor = CeleryExecutor(redis_url, queue=celery_queue, timeout=60)
    first = executor.run(job)
    assert first.ok, first.failed
    # polled with get_many: nothing was subscribed on the result backend's pub/sub
    assert executor.app.backend.result_consumer._pubsub is None
    assert sorted(first.done) == [f"sq-{i}" for i in range(4)]
    assert first.results == {f"sq-{i}": i * i for i in range(4)}
    store = open_storage(uri)
    assert [store.read_text(f"out/sq-{i}.txt") for i in range(4)] == ["0", "1", "4", "9"]
    assert completed_ids(store) == {f"sq-{i}" for i in range(4)}
    # Ran in the worker processes, not here.
    assert all(read_marker(store, f"sq-{i}")["pid"] != os.getpid() for i in range(4))

    # No worker listens on this queue: a sent task would never finish and hit the timeout.
    idle = f"nobody-{uuid.uuid4().hex[:8]}"
    second = CeleryExecutor(redis_url, queue=idle, timeout=5).run(job, progress=False)
    assert second.ok and second.done == [] and sorted(second.skipped) == sorted(first.done)
    assert second.results == first.results
    assert redis.Redis.from_url(redis_url).llen(idle) == 0
    assert all(len(calls(uri, u.id)) == 1 for u in job.units)


@pytest.mark.integration
def test_celery_failing_unit_reports_the_remote_traceback(celery_queue, redis_url, tmp_path):
    uri = str(tmp_path / "s")
    job = Job("mixed", [unit("fail", uri, "bad", message="boom-0815"), *square_units(uri, 3)],
              state_uri=uri)
    result = CeleryExecutor(redis_url, queue=celery_queue, timeout=60).run(job, progress=False)
    assert [f.unit_id for f in result.failed] == ["bad"]
    failure = result.failed[0]
    assert failure.error == "ValueError: boom-0815"
    assert "executor_units.py" in failure.traceback and "boom-0815" in failure.traceback
    assert sorted(result.done) == ["sq-0", "sq-1", "sq-2"]
    assert completed_ids(open_storage(uri)) == {"sq-0", "sq-1", "sq-2"}


@pytest.mark.integration
@pytest.mark.slow
def test_celery_unit_survives_kill_9_of_its_worker(storage_uri, redis_url, tmp_path):
    """kill -9 of the worker running a unit: after the visibility timeout the surviving
    worker gets it again, and the half-written output of the first attempt never shows."""
    queue = f"primer-kill-{uuid.uuid4().hex[:8]}"
    job = Job("kill", [unit("slow_first_time", storage_uri, "slow", pause=60),
                       *square_units(storage_uri, 2)], state_uri=storage_uri)
    with celery_workers(redis_url, queue, tmp_path / "logs") as workers, \
            concurrent.futures.ThreadPoolExecutor(1) as waiter:
        running = waiter.submit(CeleryExecutor(redis_url, queue=queue, timeout=45).run, job,
                                progress=False)
        deadline = time.monotonic() + 30
        while not (started := calls(storage_uri, "slow")):
            assert time.monotonic() < deadline and not running.done(), "unit never started"
            time.sleep(0.1)
        victim = started[0]["pgid"]
        assert victim in {w.pid for w in workers}
        os.killpg(victim, signal.SIGKILL)
        result = running.result(timeout=60)

    assert result.ok, result.failed
    assert sorted(result.done) == ["slow", "sq-0", "sq-1"]
    assert result.results["slow"] == 2  # the second attempt completed it
    attempts = calls(storage_uri, "slow")
    assert len(attempts) == 2
    survivor = ({w.pid for w in workers} - {victim}).pop()
    assert {a["pgid"] for a in attempts} == {victim, survivor}
    store = open_storage(storage_uri)
    assert [o.key for o in store.list("out/slow")] == ["out/slow.txt"]
    assert store.read_text("out/slow.txt") == "first half,second half"
    assert read_marker(store, "slow")["result"] == 2


@pytest.mark.integration
@pytest.mark.slow
def test_celery_unit_that_always_kills_its_worker_is_failed_after_max_deliveries(
        redis_url, tmp_path):
    """A poison unit is requeued each time its process dies, then failed with a clear error,
    while the other units of the job complete."""
    queue = f"primer-poison-{uuid.uuid4().hex[:8]}"
    uri = str(tmp_path / "s")
    job = Job("poison", [unit("die", uri, "poison"), *square_units(uri, 2)], state_uri=uri)
    with celery_workers(redis_url, queue, tmp_path / "logs", n=1,
                        PRIMER_CELERY_MAX_DELIVERIES="2"):
        result = CeleryExecutor(redis_url, queue=queue, timeout=60).run(job, progress=False)
    assert [f.unit_id for f in result.failed] == ["poison"]
    assert "delivered 3 times (limit 2)" in result.failed[0].error
    assert len(calls(uri, "poison")) == 2  # ran twice, refused the third time
    assert sorted(result.done) == ["sq-0", "sq-1"]
