"""A GenerationRun whose progress is read from a real S3 server: when its first-round units
are done, the operator sends the finishing unit (later rounds + commit), and only its marker
makes the run Succeeded."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from operators.units import GENERATION_FINISH_FN
from primer.storage import open_storage
from tests.operators.conftest import NS, run_operator, wait_for
from tests.operators.test_operator import GV, run


@pytest.fixture(scope="module")
def operator_with_s3(cluster, redis_url, s3_server):
    bucket = "operator-gen"
    s3_server.client().make_bucket(bucket)
    with run_operator(cluster, {"PRIMER_REDIS_URL": redis_url, "PRIMER_S3_RETRIES": "2",
                                **s3_server.env()}) as runner:
        yield bucket, runner


def marker(state, unit_id: str, tokens: int) -> None:
    state.write_text(f"_markers/{unit_id}.json", json.dumps(
        {"unit": unit_id, "result": {"tokens": tokens}}))


def test_generationrun_finishes_with_the_commit_unit(cluster, operator_with_s3, redis_url,
                                                     s3_server, monkeypatch):
    bucket, _ = operator_with_s3
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    queue = redis.Redis.from_url(redis_url)
    queue.delete("generation")
    output = f"s3://{bucket}/gen2"
    cluster.create(GV, "generationruns", run("GenerationRun", "gen2", {
        "kind": "textbooks", "count": 3, "batchSize": 2, "output": output,
        "teacher": {"url": "http://teacher:8000/v1", "model": "m"}}))
    wait_for(lambda: ((cluster.get(GV, "generationruns", "gen2").get("status") or {})
                      .get("units") or {}).get("total") == 2, "2 first-round units sent")
    state = open_storage(f"{output}/_work")
    marker(state, "textbooks-000000000", 100)
    marker(state, "textbooks-000000002", 50)

    status = wait_for(lambda: (cluster.get(GV, "generationruns", "gen2").get("status") or {}
                               ) if (cluster.get(GV, "generationruns", "gen2").get("status")
                                     or {}).get("finishing") else None, "finishing unit sent")
    assert status["phase"] == "Running" and status["tokens"] == 150
    sent = [json.loads(m) for m in queue.lrange("generation", 0, -1)]
    last = [m for m in sent if m["headers"]["id"] == f"{NS}.gen2.uid-gen2.finish"]
    assert len(last) == 1
    body = last[0]["body"]
    if last[0]["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    _, kwargs, _ = json.loads(body)
    assert kwargs["unit"]["fn"] == GENERATION_FINISH_FN
    assert kwargs["unit"]["args"]["count"] == 3 and kwargs["unit"]["args"]["output"] == output

    marker(state, "finish", 0)
    done = wait_for(lambda: (cluster.get(GV, "generationruns", "gen2").get("status") or {}
                             ) if (cluster.get(GV, "generationruns", "gen2").get("status")
                                   or {}).get("phase") == "Succeeded" else None, "Succeeded")
    assert "dataset committed" in done["message"]

    cluster.delete(GV, "generationruns", "gen2")
    wait_for(lambda: cluster.get(GV, "generationruns", "gen2") is None, "finalizer released")
