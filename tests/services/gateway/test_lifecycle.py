"""Run lifecycle: cancel, expiry and logs, against the real Redis (and, end to end, real S3 and
Celery workers; in cluster mode kmock's Kubernetes emulator plays the API server).

The fast tests drive the reconciler by hand (``pass_once``), with no workers: what the queue
holds is then exactly what the gateway sent and removed.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from primer import progress
from primer.executor import WorkUnit
from primer.executor.base import run_unit
from primer.executor.queue import task_prefix
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.gateway.store import ENDED, INDEX
from tests.openai_server import OpenAIServer
from tests.operators.conftest import NS, Cluster, run_operator, wait_for
from tests.primer.test_executor import celery_workers
from tests.services.gateway.conftest import TEACHER, gateway_config, own_db, serve
from tests.services.gateway.test_api import http
from tests.services.gateway.test_runs_e2e import FAST_RETRIES, cli, printed
from tests.services.generation.teacher_responder import responder

pytestmark = pytest.mark.integration
API = "primer.dev/v1alpha1"
GENERATION = {"component": "generation", "kind": "textbooks", "count": 40, "batchSize": 4,
              "teacher": {"url": TEACHER}}


def queued(client: redis.Redis, queue: str, run_id: str) -> int:
    """This run's units waiting in ``queue`` (task ids ``gateway.<run id>.<unit>``)."""
    prefix = task_prefix("gateway", run_id)
    return sum(json.loads(raw)["headers"]["id"].startswith(prefix)
               for raw in client.lrange(queue, 0, -1))


def explode(message: str) -> None:
    """A unit function that fails (its failure record is what ``logs`` shows)."""
    raise RuntimeError(message)


@pytest.fixture
def embedded(redis_url, tmp_path):
    """A gateway on its own Redis database, the reconciler idle (tests call ``pass_once``)."""
    config = gateway_config(own_db(redis_url, 13), tmp_path, run_ttl_seconds=2)
    app = create_app(config)
    with serve(app) as url:
        yield url, config, app.state.runs, redis.Redis.from_url(config.redis_url)


def test_cancel_removes_the_waiting_units_and_the_run_ends_cancelled(embedded):
    url, config, runs, client = embedded
    queue = config.queues["generation"]
    ids = [http("POST", f"{url}/v1/runs", GENERATION)[1]["id"] for _ in range(2)]
    runs.reconciler.pass_once()  # both runs' first step goes to the queue
    waiting = queued(client, queue, ids[0])
    assert waiting >= 10 and queued(client, queue, ids[1]) == waiting

    status, run, _ = http("DELETE", f"{url}/v1/runs/{ids[0]}")
    assert status == 200, run
    assert run["phase"] == "Cancelled" and run["finished_at"] and run["id"] == ids[0]
    assert queued(client, queue, ids[0]) == 0
    assert queued(client, queue, ids[1]) == waiting  # another run's units are not touched

    job = run["job"]
    for _ in range(2):  # no further step, and the record stays as it is
        runs.reconciler.pass_once()
    again = http("GET", f"{url}/v1/runs/{ids[0]}")[1]
    assert again["phase"] == "Cancelled" and again["job"] == job
    assert queued(client, queue, ids[0]) == 0
    assert http("GET", f"{url}/v1/runs?phase=Cancelled")[1]["count"] == 1
    waited = cli("runs", "get", ids[0], "--wait", "--gateway", url)  # it ended, not well
    assert waited.exit_code == 1 and printed(waited.output)["phase"] == "Cancelled"
    listed = cli("runs", "list", "--gateway", url)
    assert f"{ids[0]}  generation  Cancelled" in listed.output

    status, body, _ = http("DELETE", f"{url}/v1/runs/{ids[0]}")
    assert status == 409 and f"run {ids[0]} already ended: Cancelled" in body["error"], body
    status, body, _ = http("DELETE", f"{url}/v1/runs/run-ffffffffffff")
    assert status == 404 and "run-ffffffffffff" in body["error"]
    assert http("DELETE", f"{url}/v1/runs/not-a-run")[0] == 422


def test_a_tick_racing_the_cancel_neither_revives_the_run_nor_leaves_units(embedded):
    url, config, runs, client = embedded
    queue = config.queues["generation"]
    run_id = http("POST", f"{url}/v1/runs", GENERATION)[1]["id"]
    stale = runs.get(run_id)  # what a tick read just before the cancel
    assert http("DELETE", f"{url}/v1/runs/{run_id}")[0] == 200
    runs.reconciler.advance(stale)  # that tick now sends the first step and records it
    sent = client.keys(f"primer:sent:{task_prefix('gateway', run_id)}*")
    assert sent, "the tick did not send its step"
    assert runs.get(run_id)["phase"] == "Cancelled"
    assert runs.get(run_id)["job"] is None
    assert queued(client, queue, run_id) == 0  # what it sent was taken back
    # cancelling a run that ended another way is refused too
    other = http("POST", f"{url}/v1/runs", GENERATION)[1]["id"]
    assert runs.store.update(other, phase="Failed", finished_at="2026-01-01T00:00:00+00:00")
    status, body, _ = http("DELETE", f"{url}/v1/runs/{other}")
    assert status == 409 and "already ended: Failed at 2026-01-01" in body["error"]


def test_logs_show_the_drivers_events_and_each_failed_unit_with_its_traceback(embedded):
    url, config, runs, client = embedded
    run_id = http("POST", f"{url}/v1/runs", GENERATION)[1]["id"]
    runs.reconciler.pass_once()
    run = runs.get(run_id)
    # a unit of the run that failed, recorded as a worker records it
    state = f"{run['output']}/_work/{run['job']}"
    with pytest.raises(RuntimeError):
        run_unit(WorkUnit("shard-00007", f"{__name__}:explode",
                          {"message": "the teacher said no"}), state, run["job"], "w1@pod")
    assert http("DELETE", f"{url}/v1/runs/{run_id}")[0] == 200

    status, logs, _ = http("GET", f"{url}/v1/runs/{run_id}/logs")
    assert status == 200, logs
    messages = [e["message"] for e in logs["events"]]
    assert messages[0].startswith("submitted: generation run, units go to queue ")
    assert messages[1].startswith(f"step {run['job']}: ") and "units sent" in messages[1]
    assert messages[2].startswith("cancelled: ") and "waiting units removed" in messages[2]
    assert len(messages) == 3 and all(e["at"] for e in logs["events"])
    (failure,) = logs["failures"]
    assert failure["unit"] == "shard-00007" and failure["job"] == run["job"]
    assert failure["error"] == "RuntimeError: the teacher said no" and failure["host"] == "w1@pod"
    assert failure["failed_at"] and "Traceback (most recent call last)" in failure["traceback"]
    assert "in explode" in failure["traceback"]

    shown = cli("runs", "logs", run_id, "--gateway", url)
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert text.index("submitted: ") < text.index("units sent") < text.index("cancelled: ")
    assert (f"unit shard-00007 of {run['job']} failed on w1@pod: RuntimeError: the teacher "
            f"said no") in text
    assert text.index("cancelled: ") < text.index("Traceback (most recent call last)")
    missing = cli("runs", "logs", "run-ffffffffffff", "--gateway", url)
    assert missing.exit_code == 2 and "HTTP 404" in missing.output


def test_a_run_that_ended_expires_after_the_ttl_and_an_active_one_never(embedded):
    url, config, runs, client = embedded
    ended, active = (http("POST", f"{url}/v1/runs", GENERATION)[1]["id"] for _ in range(2))
    runs.reconciler.pass_once()
    cancelled = cli("runs", "cancel", ended, "--gateway", url)
    assert cancelled.exit_code == 0 and printed(cancelled.output)["phase"] == "Cancelled"
    store = runs.store
    assert 0 < client.ttl(store.key(ended)) <= 2 and 0 < client.ttl(store.log_key(ended)) <= 2
    assert client.ttl(store.key(active)) == -1 and client.ttl(store.log_key(active)) == -1

    time.sleep(2.5)
    assert http("GET", f"{url}/v1/runs/{ended}")[0] == 404
    assert http("GET", f"{url}/v1/runs/{ended}/logs")[0] == 404
    assert not client.exists(store.log_key(ended))
    assert client.zscore(INDEX, ended) is not None  # until a pass or a listing prunes it
    runs.reconciler.pass_once()
    assert client.zscore(INDEX, ended) is None and client.zscore(ENDED, ended) is None
    listed = [r["id"] for r in http("GET", f"{url}/v1/runs")[1]["runs"]]
    assert listed == [active]
    assert http("GET", f"{url}/v1/runs/{active}")[1]["phase"] == "Running"
    again = cli("runs", "cancel", ended, "--gateway", url)
    assert again.exit_code == 2 and "HTTP 404" in again.output


def test_a_listing_prunes_expired_runs_from_the_index(embedded):
    url, config, runs, client = embedded
    run_id = http("POST", f"{url}/v1/runs", GENERATION)[1]["id"]
    assert http("DELETE", f"{url}/v1/runs/{run_id}")[0] == 200
    time.sleep(2.5)
    assert client.zscore(INDEX, run_id) is not None
    assert http("GET", f"{url}/v1/runs")[1]["count"] == 0
    assert client.zscore(INDEX, run_id) is None


def test_the_ttl_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PRIMER_GATEWAY_MODE", "embedded")
    assert GatewayConfig.from_env().run_ttl_seconds == 7 * 24 * 3600
    monkeypatch.setenv("PRIMER_GATEWAY_RUN_TTL_SECONDS", "3600")
    assert GatewayConfig.from_env().run_ttl_seconds == 3600
    for bad in ("0", "a week"):
        monkeypatch.setenv("PRIMER_GATEWAY_RUN_TTL_SECONDS", bad)
        with pytest.raises(ValueError, match=f"PRIMER_GATEWAY_RUN_TTL_SECONDS='{bad}'"):
            GatewayConfig.from_env()


def test_failures_reader_lists_every_failed_unit_of_every_step(tmp_path):
    out = tmp_path / "out"
    for job, unit in (("step-b", "u2"), ("step-a", "u1")):
        with pytest.raises(RuntimeError):
            run_unit(WorkUnit(unit, f"{__name__}:explode", {"message": f"{unit} broke"}),
                     str(out / "_work" / job), job, "host-1")
    found = progress.failures(str(out))
    assert [(f["job"], f["unit"], f["error"]) for f in found] == [
        ("step-b", "u2", "RuntimeError: u2 broke"), ("step-a", "u1", "RuntimeError: u1 broke")]
    assert progress.failures(str(tmp_path / "nothing-yet")) == []


@pytest.mark.slow  # real workers and a slow teacher (~30 s here)
def test_cancel_logs_and_expiry_end_to_end_with_workers_on_s3(redis_url, s3_bucket, tmp_path):
    """A generation run on S3 is cancelled while a worker runs one of its units: that unit
    finishes, nothing of the run runs after it; a broken curation run fails and its logs
    show the worker's traceback; both records expire."""
    own = own_db(redis_url, 14)
    client = redis.Redis.from_url(own)
    with OpenAIServer(responder, latency_s=0.5) as teacher:
        config = gateway_config(own, tmp_path, reconcile_seconds=0.2, run_ttl_seconds=15,
                                storage_root=f"s3://{s3_bucket}/data",
                                endpoints=(teacher.base_url,))
        queue = config.queues["generation"]
        with celery_workers(own, queue, tmp_path / "logs", n=1), \
                serve(create_app(config)) as url:
            sent = cli("runs", "submit", "generation", "kind=textbooks", "count=40",
                       "batch_size=4", f"teacher.url={teacher.base_url}", *FAST_RETRIES,
                       "--gateway", url)
            assert sent.exit_code == 0, sent.output
            run_id = printed(sent.output)["id"]
            output = printed(sent.output)["output"]
            assert output.startswith(f"s3://{s3_bucket}/")
            wait_for(lambda: progress.units_done(output) >= 1, "the first unit's marker")
            cancelled = cli("runs", "cancel", run_id, "--gateway", url)
            assert cancelled.exit_code == 0, cancelled.output
            at_cancel = progress.units_done(output)
            run = printed(cancelled.output)
            assert run["phase"] == "Cancelled" and run["finished_at"]
            assert queued(client, queue, run_id) == 0
            total = run["progress"]["units_total"]
            # the unit a worker holds finishes (a unit takes over a second here); then nothing
            time.sleep(4)
            settled = progress.units_done(output)
            assert at_cancel <= settled <= at_cancel + 1 < total, (at_cancel, settled, total)
            time.sleep(2)
            assert progress.units_done(output) == settled
            after = http("GET", f"{url}/v1/runs/{run_id}")[1]
            assert after["phase"] == "Cancelled" and after["job"] == run["job"]
            assert client.llen(queue) == 0

            (tmp_path / "inputs").mkdir()
            broken = tmp_path / "inputs" / "broken.jsonl"
            broken.write_text("".join(json.dumps({"content": f"x = {i}"}) + "\n"
                                      for i in range(3)))
            bad = cli("runs", "submit", "curation", f"input={broken}", "--gateway", url,
                      "--classify.n_estimators=10")
            bad_id = printed(bad.output)["id"]
            failed = cli("runs", "get", bad_id, "--wait", "--interval", "0.3", "--gateway", url)
            assert failed.exit_code == 1 and printed(failed.output)["phase"] == "Failed"
            shown = cli("runs", "logs", bad_id, "--gateway", url)
            logs = http("GET", f"{url}/v1/runs/{bad_id}/logs")[1]
            cancelled_logs = http("GET", f"{url}/v1/runs/{run_id}/logs")[1]

            assert shown.exit_code == 0, shown.output
            messages = [e["message"] for e in logs["events"]]
            assert messages[0].startswith("submitted: curation run")
            assert messages[1].startswith("step curate-plan: 1 units sent to queue ")
            assert messages[2:4] == ["step curate-plan done", messages[3]]
            assert messages[3].startswith("step curate-read: ") and "units sent" in messages[3]
            assert len(messages) == 5 and messages[4].startswith("failed: InputError: ")
            assert "(unit read-00000 of step curate-read;" in messages[4]
            assert "expected a JSON object with 'text'" in messages[-1]
            assert logs["failures"], logs
            for failure in logs["failures"]:  # recorded on the worker, in S3
                assert failure["job"] == "curate-read" and failure["host"].startswith("w0-")
                assert "expected a JSON object with 'text'" in failure["error"]
                assert "Traceback (most recent call last)" in failure["traceback"]
                assert f"failed on {failure['host']}: {failure['error']}" in shown.output
            assert shown.output.count("Traceback (most recent call last)") == \
                len(logs["failures"])
            events = [e["message"] for e in cancelled_logs["events"]]
            assert events[-1].startswith("cancelled: ") and not cancelled_logs["failures"]
            assert not any(e.startswith("step") and e.endswith("done") for e in events)

            # both ended: gone TTL after their end, from the record, the logs and the list
            wait_for(lambda: http("GET", f"{url}/v1/runs/{bad_id}")[0] == 404, "expiry", 30)
            wait_for(lambda: http("GET", f"{url}/v1/runs/{run_id}")[0] == 404, "expiry", 30)
            assert http("GET", f"{url}/v1/runs/{run_id}/logs")[0] == 404
            assert http("GET", f"{url}/v1/runs")[1]["count"] == 0
            assert client.zcard(INDEX) == 0
    assert progress.units_done(output) == settled  # the output itself stays


@pytest.mark.slow  # the operator in-process (~20 s here)
def test_in_cluster_mode_cancel_deletes_the_resource_and_logs_are_its_events(
        redis_url, s3_server, tmp_path):
    """The gateway in cluster mode with the operator (kmock plays the API server): logs are
    the operator's Events about the run and its units' failures in S3; cancelling deletes
    the resource and the operator's delete handler takes its waiting units back."""
    queue = f"cluster-{uuid.uuid4().hex[:6]}"
    bucket = f"t-{uuid.uuid4().hex[:8]}"
    s3_server.client().make_bucket(bucket)
    env = {**s3_server.env(), "PRIMER_S3_RETRIES": "2"}
    client = redis.Redis.from_url(redis_url)
    with Cluster() as cluster, \
            run_operator(cluster, {"PRIMER_REDIS_URL": redis_url, **env,
                                   "PRIMER_OPERATOR_ENDPOINTS": TEACHER,
                                   "PRIMER_GENERATION_QUEUE": queue}), \
            pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():  # the gateway reads failure records from S3
            mp.setenv(k, v)
        config = gateway_config(redis_url, tmp_path, mode="cluster", kube_api=cluster.url,
                                namespace=NS, storage_root=f"s3://{bucket}/data")
        with serve(create_app(config)) as url:
            status, run, _ = http("POST", f"{url}/v1/runs", GENERATION)
            assert status == 201, run
            name = run["id"]
            job = wait_for(lambda: (cluster.get(API, "generationruns", name).get("status")
                                    or {}).get("job"), "the operator's first step")
            assert client.llen(queue) > 0
            # a unit of the run failed on a worker
            state = f"{run['output']}/_work/{job}"
            with pytest.raises(RuntimeError):
                run_unit(WorkUnit("shard-00001", f"{__name__}:explode",
                                  {"message": "out of tokens"}), state, job, "w0@pod")
            logs = wait_for(lambda: (lambda found: found if any(
                "units to" in e["message"] for e in found["events"]) else None)(
                http("GET", f"{url}/v1/runs/{name}/logs")[1]), "the operator's Event")
            sent = [e for e in logs["events"] if "units to" in e["message"]]
            assert sent[0]["message"] == f"{job}: sent {client.llen(queue)} units to {queue}"
            assert sent[0]["at"]
            (failure,) = logs["failures"]
            assert failure["unit"] == "shard-00001" and failure["host"] == "w0@pod"
            assert failure["error"] == "RuntimeError: out of tokens"
            assert "Traceback (most recent call last)" in failure["traceback"]
            # an Event about another object is not this run's
            other = http("POST", f"{url}/v1/runs", GENERATION)[1]["id"]
            wait_for(lambda: any("units to" in e["message"] for e in http(
                "GET", f"{url}/v1/runs/{other}/logs")[1]["events"]), "the other run's Event")
            again = http("GET", f"{url}/v1/runs/{name}/logs")[1]
            assert len([e for e in again["events"] if "units to" in e["message"]]) == 1

            shown = cli("runs", "cancel", name, "--gateway", url)
            assert shown.exit_code == 0, shown.output
            cancelled = printed(shown.output)
            assert cancelled["phase"] == "Cancelled" and cancelled["finished_at"]
            wait_for(lambda: cluster.get(API, "generationruns", name) is None,
                     "the operator's finalizer")
            assert not any(json.loads(m)["headers"]["id"].split(".")[1] == name
                           for m in client.lrange(queue, 0, -1))  # its units were taken back
            assert client.llen(queue) > 0  # the other run's are still there
            assert http("GET", f"{url}/v1/runs/{name}")[0] == 404
            assert http("DELETE", f"{url}/v1/runs/{name}")[0] == 404

            def finished() -> bool:
                cluster.patch_status(API, "generationruns", other, {
                    "phase": "Succeeded", "completedAt": "2026-01-01T01:00:00Z"})
                time.sleep(1)  # an operator tick under way may write Running once more
                return http("GET", f"{url}/v1/runs/{other}")[1]["phase"] == "Succeeded"

            wait_for(finished, "the other run to stay Succeeded")
            status, body, _ = http("DELETE", f"{url}/v1/runs/{other}")
            assert status == 409, body
            assert body["error"] == (f"run {other} already ended: Succeeded at "
                                     f"2026-01-01T01:00:00Z; nothing to cancel")
            assert cluster.get(API, "generationruns", other) is not None
    client.delete(queue)
