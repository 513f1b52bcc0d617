"""Curation and GenerationRuns in the operator: the component's planner decides the units,
the operator sends each step once to the queue (real Redis), reads progress from the markers
(real S3), and deleting a run takes its waiting units back."""

from __future__ import annotations

import io
import json

import pytest
import redis

from primer.errors import MESSAGE_LIMIT
from primer.executor.plan import planner
from primer.runs import GenerationRun
from tests.operators.conftest import NS, run_operator, wait_for
from tests.operators.test_crds import validator
from tests.operators.test_operator import GV, run
from tests.plain import assert_plain
from tests.primer.test_executor import celery_workers


@pytest.fixture(scope="module")
def operator_with_s3(cluster, redis_url, s3_server):
    bucket = "operator-gen"
    s3_server.client().make_bucket(bucket)
    with run_operator(cluster, {"PRIMER_REDIS_URL": redis_url, "PRIMER_S3_RETRIES": "2",
                                "PRIMER_GENERATION_QUEUE": "generation-op",
                                "PRIMER_CURATION_QUEUE": "curation-op",
                                "PRIMER_OPERATOR_ENDPOINTS": "http://teacher:8000/v1",
                                **s3_server.env()}) as runner:
        yield bucket, runner


def status_of(cluster, name: str) -> dict:
    return (cluster.get(GV, "generationruns", name) or {}).get("status") or {}


def test_generationrun_sends_the_planned_step_once_and_delete_takes_it_back(
        cluster, operator_with_s3, redis_url, s3_server, monkeypatch):
    bucket, _ = operator_with_s3
    queue = redis.Redis.from_url(redis_url)
    queue.delete("generation-op")
    spec = {"kind": "exercises", "count": 5, "batchSize": 2, "output": f"s3://{bucket}/gen1",
            "teacher": {"url": "http://teacher:8000/v1", "model": "m"}}
    cluster.create(GV, "generationruns", run("GenerationRun", "gen1", spec))
    status = wait_for(lambda: status_of(cluster, "gen1").get("units"), "units sent")
    assert status == {"done": 0, "total": 4}  # ceil(5 × 1.25) = 7 specs in batches of 2
    wait_for(lambda: status_of(cluster, "gen1").get("job") == "generate-exercises-round-0",
             "job recorded")
    messages = [json.loads(m) for m in queue.lrange("generation-op", 0, -1)]
    # Several timer ticks have passed by now: the step was sent once, not once per tick.
    assert sorted(m["headers"]["id"] for m in messages) == [
        f"{NS}.gen1.uid-gen1.exercises-00000000{i}" for i in (0, 2, 4, 6)]
    assert {m["headers"]["task"] for m in messages} == {"primer.run_unit"}
    # No worker consumes generation-op here: the run's status says so, naming the queue.
    waiting = wait_for(lambda: [c for c in status_of(cluster, "gen1").get("conditions", [])
                                if c["type"] == "Waiting"], "a Waiting condition")
    assert waiting[0]["status"] == "True" and waiting[0]["reason"] == "NoConsumer"
    assert "no worker consumes queue 'generation-op'" in waiting[0]["message"]
    assert "worker -Q generation-op" in waiting[0]["message"]
    validator("GenerationRun").validate(cluster.get(GV, "generationruns", "gen1"))

    # The units sent are the planner's, argument for argument, as any door would build them.
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    plan = planner("generation")
    step = plan.next(plan.resolve(GenerationRun.model_validate(spec)))
    sent = {m["headers"]["id"].rsplit(".", 1)[1]: _kwargs(m)["unit"] for m in messages}
    assert sent == {u.id: u.to_dict() for u in step.job.units}

    cluster.delete(GV, "generationruns", "gen1")
    wait_for(lambda: cluster.get(GV, "generationruns", "gen1") is None, "finalizer released")
    assert queue.llen("generation-op") == 0  # nothing of the deleted run is left to run


def test_an_output_that_pods_cannot_reach_is_refused(cluster, operator_with_s3):
    cluster.create(GV, "generationruns", run("GenerationRun", "local1", {
        "kind": "textbooks", "count": 2, "output": "/tmp/not-in-the-cluster"}))
    status = wait_for(lambda: status_of(cluster, "local1") if status_of(cluster, "local1")
                      .get("phase") == "Failed" else None, "refusal")
    assert status["message"] == "spec.output: give an s3:// URI (pods read and write S3)"
    cluster.delete(GV, "generationruns", "local1")
    wait_for(lambda: cluster.get(GV, "generationruns", "local1") is None, "finalizer released")


def test_a_unit_that_raises_fails_the_run_with_a_short_message_a_condition_and_a_traceback(
        cluster, operator_with_s3, redis_url, s3_server, tmp_path):
    bucket, _ = operator_with_s3
    rows = "".join(json.dumps({"content": f"x = {i}"}) + "\n" for i in range(3)).encode()
    s3_server.client().put_object(bucket, "cur-in/broken.jsonl", io.BytesIO(rows), len(rows))
    source = f"s3://{bucket}/cur-in/broken.jsonl"  # rows without the text column
    with celery_workers(redis_url, "curation-op", tmp_path / "logs", n=1, **s3_server.env()):
        cluster.create(GV, "curationruns", run("CurationRun", "cur1", {
            "input": f"s3://{bucket}/cur-in", "output": f"s3://{bucket}/cur1"}))
        wait_for(lambda: _status(cluster, "cur1").get("phase") == "Failed", "Failed", 60)
    cr = cluster.get(GV, "curationruns", "cur1")
    validator("CurationRun").validate(cr)  # the CRD's status schema declares the traceback
    status = cr["status"]
    message = status["message"]
    assert message.startswith(f"InputError: {source}:1: expected a JSON object with 'text'")
    assert message.endswith("(unit read-00000 of step curate-read; 1 unit(s) failed)")
    assert "\n" not in message and len(message) <= MESSAGE_LIMIT
    (failed,) = [c for c in status["conditions"] if c["type"] == "Failed"]
    assert failed["status"] == "True" and failed["reason"] == "UnitFailed"
    assert failed["message"] == message and failed["lastTransitionTime"]
    assert status["traceback"].startswith("Traceback (most recent call last)")
    assert "in read_data_file" in status["traceback"]
    for text in (message, status["traceback"]):
        assert_plain(text)
    cluster.delete(GV, "curationruns", "cur1")
    wait_for(lambda: cluster.get(GV, "curationruns", "cur1") is None, "finalizer released")


def _status(cluster, name: str) -> dict:
    return (cluster.get(GV, "curationruns", name) or {}).get("status") or {}


def _kwargs(message: dict) -> dict:
    import base64

    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)[1]
