"""The HTTP contract without workers: validation, auth, records in Redis, health, metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest
import redis

from services.gateway.app import create_app
from tests.services.gateway.conftest import gateway_config, own_db, serve

pytestmark = pytest.mark.integration


def http(method: str, url: str, body=None, token: str | None = None):
    """(status, parsed JSON or text, headers)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method),
                                    timeout=10) as resp:
            status, raw, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, raw, hdrs = exc.code, exc.read(), exc.headers
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(), hdrs


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    raise AssertionError(f"no {name}{{{want}}} in\n{text}")


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"component": "generation", "kind": "textbooks", "count": 0}, "count", "greater"),
    ({"component": "generation", "count": 5}, "kind", "required"),
    ({"component": "training"}, "body", "component"),
    ({"component": "curation", "input": "--help"}, "input", "pattern"),
    ({"component": "curation", "keepTop": 0.2, "min_score": 0.5}, "body",
     "keepTop or minScore"),
    ({"component": "evaluation", "benchmarks": ["humaneval"]}, "checkpoint", "required"),
    ({"component": "curation", "config": {"Bad Key": 1}}, "config.Bad Key.[key]",
     "pattern"),
    ({"component": "curation", "colour": "red"}, "colour", "not permitted"),
    ({"component": "generation", "kind": "textbooks", "count": 2,
      "teacher": {"url": "ftp://x"}}, "teacher.url", "pattern"),
])
def test_a_bad_run_is_a_422_naming_the_field(gateway, body, field, words):
    url, _ = gateway
    status, data, _ = http("POST", f"{url}/v1/runs", body)
    assert status == 422, data
    fields = {f["field"]: f["message"] for f in data["fields"]}
    assert field in fields, data
    assert words.lower() in (fields[field] + data["error"]).lower(), data
    assert data["error"].startswith("invalid request: ")


def test_the_reconciler_sends_the_planners_units_of_a_submitted_run(redis_url, tmp_path):
    """No worker here: the run's first step is on the queue, sent once, as units of the
    planner's job under the gateway's task ids."""
    own = own_db(redis_url, 11)
    config = gateway_config(own, tmp_path, reconcile_seconds=0.1)
    queue = config.queues["generation"]
    with serve(create_app(config)) as url:
        before = metric(http("GET", f"{url}/metrics")[1], "primer_queue_length", queue=queue)
        status, run, headers = http("POST", f"{url}/v1/runs", {
            "component": "generation", "kind": "exercises", "count": 7, "batchSize": 4,
            "teacher": {"url": "http://teacher:8000/v1"}, "config": {"generation.seed": 3}})
        assert status == 201, run
        assert headers["Location"] == f"/v1/runs/{run['id']}"
        out = f"{config.storage_root}/runs/{run['id']}/generation"
        assert run["phase"] == "Pending" and run["queue"] == queue and run["output"] == out
        assert run["spec"]["teacher"] == {"url": "http://teacher:8000/v1"}
        assert run["spec"]["batchSize"] == 4 and run["spec"]["output"] == out
        got = wait_for_phase(url, run["id"], "Running")
        assert got["job"] == "generate-exercises-round-0" and got["started_at"]
        total = got["progress"]["units_total"]
        assert total >= 2 and got["progress"]["units_done"] == 0  # 7 x overgenerate / 4
        time.sleep(0.5)  # more passes: the step is not sent again
        client = redis.Redis.from_url(own)
        ids = [json.loads(m)["headers"]["id"] for m in client.lrange(queue, 0, -1)]
        assert len(ids) == total == len(set(ids))
        assert all(i.startswith(f"gateway.{run['id']}.") for i in ids)
        message = json.loads(client.lindex(queue, 0))
        assert message["headers"]["task"] == "primer.run_unit"
        text = http("GET", f"{url}/metrics")[1]
        assert metric(text, "primer_queue_length", queue=queue) == before + total
        assert metric(text, "primer_runs", component="generation", phase="Running") == 1

        status, listed, _ = http("GET", f"{url}/v1/runs?component=generation&phase=Running")
        assert status == 200 and [r["id"] for r in listed["runs"]] == [run["id"]]
        status, listed, _ = http("GET", f"{url}/v1/runs?component=curation")
        assert listed["runs"] == []


def wait_for_phase(url: str, run_id: str, phase: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = http("GET", f"{url}/v1/runs/{run_id}")[1]
        if run["phase"] == phase:
            return run
        assert time.monotonic() < deadline, f"still {run['phase']}, not {phase}: {run}"
        time.sleep(0.05)


def test_a_config_the_component_refuses_is_a_422_naming_the_key(gateway):
    url, _ = gateway
    status, data, _ = http("POST", f"{url}/v1/runs", {
        "component": "generation", "kind": "textbooks", "count": 2,
        "config": {"generation.batch_size": "many"}})
    assert status == 422, data
    assert "generation.batch_size" in {f["field"]: f["message"] for f in data["fields"]}[
        "config"], data


def test_an_evaluation_is_accepted_in_embedded_mode_for_its_workers(redis_url, tmp_path):
    config = gateway_config(redis_url, tmp_path, input_roots=("s3://primer/models",),
                            storage_root="s3://primer/data")
    with serve(create_app(config)) as url:
        status, data, _ = http("POST", f"{url}/v1/runs", {
            "component": "evaluation", "checkpoint": "s3://primer/models/phi",
            "benchmarks": ["mbpp"]})
        outside, refused, _ = http("POST", f"{url}/v1/runs", {
            "component": "evaluation", "checkpoint": "s3://other/models/phi"})
    assert status == 201, data
    assert data["queue"] == config.queues["evaluation"] and data["phase"] == "Pending"
    assert data["output"] == f"s3://primer/data/runs/{data['id']}/evaluation"
    assert data["spec"]["checkpoint"] == "s3://primer/models/phi"
    assert outside == 422 and "checkpoint" in {f["field"] for f in refused["fields"]}, refused


def test_a_run_whose_spec_broke_fails_with_the_field_named(redis_url, tmp_path):
    """A record whose spec no longer parses (written by an older gateway, say) is failed by
    the reconciler with the field named, not retried for ever."""
    from services.gateway.store import RunStore, now

    own = own_db(redis_url, 11)
    config = gateway_config(own, tmp_path, reconcile_seconds=0.1)
    store = RunStore.from_url(own)
    store.create({"id": "run-0000000000ab", "component": "generation", "phase": "Pending",
                  "spec": {"kind": "textbooks", "count": 0, "output": str(tmp_path / "o")},
                  "output": str(tmp_path / "o"), "queue": "nowhere", "job": None,
                  "created_at": now(), "progress": {}, "stats": {}, "outputs": {},
                  "error": None}, time.time())
    with serve(create_app(config)) as url:
        run = wait_for_phase(url, "run-0000000000ab", "Failed")
    assert "spec.count" in run["error"] and "greater than or equal to 1" in run["error"]
    assert run["error"].startswith("SpecError: invalid GenerationRun") and "\n" not in run["error"]
    assert run["traceback"].startswith("Traceback (most recent call last)")
    assert "in parse_spec" in run["traceback"]  # where it was raised, in plain text
    assert run["finished_at"] and store.active() == []


def test_an_error_with_terminal_markup_fails_the_gateway_tests(redis_url, tmp_path):
    """serve() reads every JSON answer: an error with markup in it fails the test."""
    from fastapi import HTTPException

    app = create_app(gateway_config(redis_url, tmp_path))

    @app.get("/loud")
    def loud():
        raise HTTPException(500, "\x1b[1mboom\x1b[0m ╭─╮")

    with pytest.raises(AssertionError, match=r"GET /loud → error has an ANSI escape, box"):
        with serve(app) as url:
            assert http("GET", f"{url}/loud")[0] == 500


def test_unknown_run_and_bad_query_are_clear_4xx(gateway):
    url, _ = gateway
    status, data, _ = http("GET", f"{url}/v1/runs/run-000000000000")
    assert status == 404 and "run-000000000000" in data["error"]
    status, data, _ = http("GET", f"{url}/v1/runs?phase=Done")
    assert status == 422 and data["fields"][0]["field"] == "phase"
    status, data, _ = http("GET", f"{url}/v1/runs/not-an-id")
    assert status == 422 and data["fields"][0]["field"] == "run_id"


def test_bearer_token_guards_the_api_but_not_health(redis_url, tmp_path):
    app = create_app(gateway_config(redis_url, tmp_path, token="s3cret"))
    body = {"component": "curation"}
    with serve(app) as url:
        status, data, headers = http("POST", f"{url}/v1/runs", body)
        assert status == 401 and "bearer token" in data["error"]
        assert headers["WWW-Authenticate"] == "Bearer"
        assert http("GET", f"{url}/v1/runs", token="wrong")[0] == 401
        assert http("POST", f"{url}/v1/runs", body, token="s3cret")[0] == 201
        assert http("GET", f"{url}/v1/runs", token="s3cret")[0] == 200
        assert http("GET", f"{url}/healthz")[0] == 200
        assert http("GET", f"{url}/readyz")[0] == 200


def test_readyz_fails_while_redis_is_unreachable(tmp_path):
    from tests.servers import free_port

    down = f"redis://127.0.0.1:{free_port()}/0"
    with serve(create_app(gateway_config(down, tmp_path))) as url:
        assert http("GET", f"{url}/healthz")[0] == 200
        status, data, _ = http("GET", f"{url}/readyz")
        assert status == 503 and "does not answer" in data["error"]
        status, data, _ = http("GET", f"{url}/v1/runs")
        assert status == 503 and "Redis" in data["error"]


def test_teacher_latency_and_failed_units_metrics(redis_url, tmp_path):
    """Finished generation runs carry the teacher client's usage (requests, summed latency)
    and their failed-unit count; /metrics reports the mean latency and the failures."""
    from services.gateway.store import RunStore

    # A database of its own: other tests' finished runs would move the mean.
    own = f"{redis_url.rsplit('/', 1)[0]}/13"
    redis.Redis.from_url(own).flushdb()
    with serve(create_app(gateway_config(own, tmp_path))) as url:
        _latency_and_failures(url, RunStore.from_url(own))


def _latency_and_failures(url: str, store) -> None:
    for i, (requests, seconds) in enumerate([(4, 2.0), (6, 3.0)]):
        status, run, _ = http("POST", f"{url}/v1/runs", {
            "component": "generation", "kind": "textbooks", "count": 2,
            "teacher": {"url": "http://teacher:8000/v1"}})
        assert status == 201, run
        # what the reconciler records when the run ends (see services/gateway/embedded.py)
        store.update(run["id"], phase="Succeeded", stats={
            "units_done": 1, "units_failed": i, "teacher_requests": requests,
            "teacher_seconds": seconds, "tokens_generated": 10, "unit_seconds": 9.0})
    text = http("GET", f"{url}/metrics")[1]
    assert metric(text, "primer_teacher_latency_seconds") == pytest.approx(0.5)
    assert metric(text, "primer_teacher_requests", component="generation") >= 10
    assert metric(text, "primer_units_failed", component="generation") >= 1


def test_a_run_another_replica_holds_is_left_to_it(redis_url, tmp_path):
    """Two gateways never tick one run at once: a pass skips a run whose lock is taken, and a
    lock is released by its holder only."""
    own = own_db(redis_url, 11)
    config = gateway_config(own, tmp_path)  # passes driven by hand below
    app = create_app(config)
    store, reconciler = app.state.store, app.state.runs.reconciler
    queue = config.queues["generation"]
    with serve(app) as url:
        status, run, _ = http("POST", f"{url}/v1/runs", {
            "component": "generation", "kind": "textbooks", "count": 3})
        assert status == 201, run
        assert store.lock(run["id"], "other-replica", ttl_s=30)
        reconciler.pass_once()
        assert store.get(run["id"])["phase"] == "Pending"
        assert redis.Redis.from_url(own).llen(queue) == 0
        store.unlock(run["id"], "not-the-holder")  # no effect
        reconciler.pass_once()
        assert store.get(run["id"])["phase"] == "Pending"
        store.unlock(run["id"], "other-replica")
        reconciler.pass_once()
        assert store.get(run["id"])["phase"] == "Running"
        assert redis.Redis.from_url(own).llen(queue) > 0
        assert store.lock(run["id"], "next", ttl_s=1)  # the pass released its own lock
