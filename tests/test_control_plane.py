"""One control plane: the same CurationRun and GenerationRun, started from the CLI (Celery
executor), from the operator (kmock) and from the gateway (embedded mode), publish
byte-identical datasets (manifests equal but for ``created_at``), their units run on three
real Celery workers, and each run's markers name at least two of them.

Everything is real but the Kubernetes API (kmock): Redis, SeaweedFS S3, ``celery worker``
processes, the OpenAI-compatible test teacher.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from primer.executor import completed_ids, read_marker
from primer.runs import CurationRun, GenerationRun
from primer.storage import open_storage
from services.gateway.app import create_app
from services.gateway.config import COMPONENTS, GatewayConfig
from tests.openai_server import OpenAIServer
from tests.operators.conftest import Cluster, run_operator, wait_for
from tests.operators.test_operator import GV, run
from tests.primer.test_executor import celery_workers
from tests.services.curation import corpus
from tests.services.gateway.conftest import own_db, serve
from tests.services.gateway.test_api import http
from tests.services.generation.teacher_responder import responder

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

# Small units, so each run has several to spread over the workers.
CURATION = {"reader.files_per_unit": 20, "reader.max_bytes": corpus.MAX_BYTES,
            "filters.max_chars": 60000, "annotate.sample_size": 200,
            "classify.n_estimators": 50, "classify.max_tokens": 128}
COUNT, BATCH = 12, 3
# A door's run ends well within the test's own timeout, so a stuck run fails with its record.
DOOR_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def plane(redis_url, s3_server, tmp_path_factory):
    """Three workers on one queue, a teacher, a bucket, kmock and the operator, all on a Redis
    database of their own: what other tests left in Redis (gateway runs, sent steps) is not
    theirs to see."""
    redis_url = own_db(redis_url, 15)
    queue = f"plane-{uuid.uuid4().hex[:6]}"
    bucket = "plane"
    s3_server.client().make_bucket(bucket)
    env = {**s3_server.env(), "PRIMER_S3_RETRIES": "2"}
    with OpenAIServer(responder) as teacher, \
            celery_workers(redis_url, queue, tmp_path_factory.mktemp("logs"), n=3, **env), \
            Cluster() as cluster, \
            run_operator(cluster, {"PRIMER_REDIS_URL": redis_url, **env,
                                   "PRIMER_OPERATOR_ENDPOINTS": teacher.base_url,
                                   "PRIMER_CURATION_QUEUE": queue,
                                   "PRIMER_GENERATION_QUEUE": queue}):
        yield {"queue": queue, "bucket": bucket, "teacher": teacher, "cluster": cluster,
               "env": env, "redis_url": redis_url,
               "src": corpus.build(tmp_path_factory.mktemp("corpus"))}


# -- the doors ------------------------------------------------------------------------------


def cli(plane: dict, monkeypatch, argv: list[str]) -> None:
    for k, v in {**plane["env"], "PRIMER_REDIS_URL": plane["redis_url"],
                 "PRIMER_CELERY_QUEUE": plane["queue"]}.items():
        monkeypatch.setenv(k, v)
    res = CliRunner().invoke(build_app(), argv, catch_exceptions=False)
    assert res.exit_code == 0, res.output


def operator(plane: dict, plural: str, kind: str, name: str, spec: dict) -> dict:
    cluster = plane["cluster"]
    resource = run(kind, name, spec)
    # A fresh uid, as the API server gives: the operator's units are sent once per
    # (namespace, name, uid), and an earlier test's run of this name may have had the fixed one.
    resource["metadata"]["uid"] = str(uuid.uuid4())
    cluster.create(GV, plural, resource)
    status = wait_for(lambda: ((cluster.get(GV, plural, name) or {}).get("status") or {})
                      if ((cluster.get(GV, plural, name) or {}).get("status") or {})
                      .get("phase") in ("Succeeded", "Failed") else None,
                      f"{kind} {name} finished", timeout=DOOR_TIMEOUT_S)
    assert status["phase"] == "Succeeded", status
    return status


def gateway(plane: dict, monkeypatch, body: dict) -> str:
    """POST ``body`` to a gateway in embedded mode; its output once the run has succeeded."""
    for k, v in plane["env"].items():  # the gateway reads and plans on S3
        monkeypatch.setenv(k, v)
    config = GatewayConfig(
        redis_url=plane["redis_url"], storage_root=f"s3://{plane['bucket']}/gateway",
        input_roots=(str(plane["src"]),), endpoints=(plane["teacher"].base_url,),
        queues={c: plane["queue"] for c in COMPONENTS}, reconcile_seconds=0.2, rate_limit=0)
    with serve(create_app(config)) as url:
        status, posted, _ = http("POST", f"{url}/v1/runs", body)
        assert status == 201, posted
        run = f"{url}/v1/runs/{posted['id']}"
        deadline = time.monotonic() + DOOR_TIMEOUT_S
        found = http("GET", run)[1]
        while found["phase"] not in ("Succeeded", "Failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            found = http("GET", run)[1]
        # Where a run stands and what its driver did say why it did not finish.
        assert found["phase"] == "Succeeded", (found, http("GET", f"{run}/logs")[1])
    return found["output"]


def curation_spec(plane: dict, output: str) -> dict[str, Any]:
    spec = CurationRun(input=str(plane["src"]), output=output, min_score=0.5,
                       config=CURATION)
    return spec.model_dump(by_alias=True, exclude_none=True)


def generation_spec(plane: dict, output: str) -> dict[str, Any]:
    spec = GenerationRun(kind="textbooks", count=COUNT, output=output, batch_size=BATCH,
                         teacher={"url": plane["teacher"].base_url, "model": "test-teacher"})
    return spec.model_dump(by_alias=True, exclude_none=True)


def curate_by_cli(plane, monkeypatch, output: str) -> None:
    cli(plane, monkeypatch, [
        "curate", "--input", str(plane["src"]), "--output", output, "--min-score", "0.5",
        "--executor", "celery", *(f"--{k}={v}" for k, v in CURATION.items())])


def generate_by_cli(plane, monkeypatch, output: str) -> None:
    cli(plane, monkeypatch, [
        "generate", "textbooks", "--count", str(COUNT), "--output", output, "--teacher-url",
        plane["teacher"].base_url, "--teacher-model", "test-teacher", "--executor", "celery",
        f"--generation.batch_size={BATCH}"])


# -- what they publish ----------------------------------------------------------------------


def manifest(output: str) -> dict[str, Any]:
    data = json.loads(open_storage(output).read_text("_manifest.json"))
    data.pop("created_at")
    return data


def hosts(state_uri: str) -> set[str]:
    """Worker nodes named by the unit markers under ``state_uri`` (one stage or the run)."""
    store = open_storage(state_uri)
    return {read_marker(store, u)["host"] for u in completed_ids(store)}


def stage_hosts(output: str, stages: list[str]) -> set[str]:
    return set().union(*(hosts(f"{output}/_work/state/{s}") for s in stages))


def from_every_door(plane, monkeypatch, component: str, by_cli, spec_of) -> dict[str, str]:
    """Start the same run from the CLI, the operator and the gateway; each one's output, once
    each has published a manifest equal to the CLI's (but for ``created_at``)."""
    base = f"s3://{plane['bucket']}/{component}"
    by_cli(plane, monkeypatch, f"{base}/cli")
    kind = {"curation": "CurationRun", "generation": "GenerationRun"}[component]
    operator(plane, f"{component}runs", kind, f"{component[:3]}1",
             spec_of(plane, f"{base}/operator"))
    body = spec_of(plane, "unused")
    body.pop("output")  # the gateway writes under runs/<id>/
    outputs = {"cli": f"{base}/cli", "operator": f"{base}/operator",
               "gateway": gateway(plane, monkeypatch, {"component": component, **body})}
    reference = manifest(outputs["cli"])
    assert manifest(outputs["operator"]) == manifest(outputs["gateway"]) == reference
    return outputs


def test_one_curation_run_is_the_same_whoever_starts_it(plane, monkeypatch):
    outputs = from_every_door(plane, monkeypatch, "curation", curate_by_cli, curation_spec)
    assert manifest(outputs["cli"])["rows"] > 0
    for door, output in outputs.items():
        seen = stage_hosts(output, ["read", "score", "select"])
        assert len(seen) >= 2 and all("@" in h for h in seen), (door, seen)


def test_one_generation_run_is_the_same_whoever_starts_it(plane, monkeypatch):
    outputs = from_every_door(plane, monkeypatch, "generation", generate_by_cli,
                              generation_spec)
    assert manifest(outputs["cli"])["rows"] == COUNT
    for door, output in outputs.items():
        seen = hosts(f"{output}/_work") - {""}
        assert len(seen) >= 2 and all("@" in h for h in seen), (door, seen)
