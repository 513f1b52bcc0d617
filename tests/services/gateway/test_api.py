"""The HTTP contract without workers: validation, auth, records in Redis, health, metrics."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest
import redis

from services.gateway.app import create_app
from tests.services.gateway.conftest import gateway_config, serve

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
    ({"component": "curation", "keep_top": 0.2, "min_score": 0.5}, "body",
     "keep_top or min_score"),
    ({"component": "evaluation", "benchmarks": ["humaneval"]}, "body",
     "exactly one of model"),
    ({"component": "curation", "overrides": {"Bad Key": 1}}, "overrides.Bad Key.[key]",
     "pattern"),
    ({"component": "curation", "colour": "red"}, "colour", "not permitted"),
])
def test_a_bad_run_is_a_422_naming_the_field(gateway, body, field, words):
    url, _ = gateway
    status, data, _ = http("POST", f"{url}/v1/runs", body)
    assert status == 422, data
    fields = {f["field"]: f["message"] for f in data["fields"]}
    assert field in fields, data
    assert words.lower() in (fields[field] + data["error"]).lower(), data
    assert data["error"].startswith("invalid request: ")


def test_submit_records_the_run_and_enqueues_one_task(gateway, redis_url):
    url, config = gateway
    queue = config.queues["generation"]
    before = metric(http("GET", f"{url}/metrics")[1], "primer_queue_length", queue=queue)
    status, run, headers = http("POST", f"{url}/v1/runs", {
        "component": "generation", "kind": "exercises", "count": 7,
        "teacher_url": "http://teacher:8000/v1", "overrides": {"generation.batch_size": 4}})
    assert status == 201, run
    assert headers["Location"] == f"/v1/runs/{run['id']}"
    assert run["phase"] == "Pending" and run["queue"] == queue
    out = f"{config.storage_root}/runs/{run['id']}/generation"
    assert run["command"] == ["primer", "generate", "exercises", "--count", "7", "--output", out,
                              "--executor", "local", "--teacher-url", "http://teacher:8000/v1",
                              "--generation.batch_size=4"]
    # the task on the queue is the generic unit task, naming the driver by path
    message = json.loads(redis.Redis.from_url(redis_url).lindex(queue, 0))
    assert message["headers"]["task"] == "primer.run_unit"
    assert message["headers"]["id"] == run["task_id"]
    text = http("GET", f"{url}/metrics")[1]
    assert metric(text, "primer_queue_length", queue=queue) == before + 1
    assert metric(text, "primer_runs", component="generation", phase="Pending") >= 1

    status, got, _ = http("GET", f"{url}/v1/runs/{run['id']}")
    assert status == 200 and got["id"] == run["id"] and got["phase"] == "Pending"
    assert got["progress"]["units_done"] == 0
    status, listed, _ = http("GET", f"{url}/v1/runs?component=generation&phase=Pending")
    assert status == 200 and run["id"] in [r["id"] for r in listed["runs"]]
    status, listed, _ = http("GET", f"{url}/v1/runs?component=curation")
    assert run["id"] not in [r["id"] for r in listed["runs"]]


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
            "teacher_url": "http://teacher:8000/v1"})
        assert status == 201, run
        # what the driver records when the run ends (see services/gateway/driver.py)
        store.update(run["id"], phase="Succeeded", stats={
            "units_done": 1, "units_failed": i, "teacher_requests": requests,
            "teacher_seconds": seconds, "tokens_generated": 10, "unit_seconds": 9.0})
    text = http("GET", f"{url}/metrics")[1]
    assert metric(text, "primer_teacher_latency_seconds") == pytest.approx(0.5)
    assert metric(text, "primer_teacher_requests", component="generation") >= 10
    assert metric(text, "primer_units_failed", component="generation") >= 1
