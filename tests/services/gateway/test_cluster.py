"""Cluster mode against kmock's Kubernetes emulator: a POST creates the custom resource, and
GET/list map its status (written here as the operator would) to the same Run."""

from __future__ import annotations

import pytest

from primer.runs import EvaluationRun, GenerationRun
from services.gateway.app import create_app
from tests.operators.conftest import NS, Cluster
from tests.operators.test_crds import validator
from tests.servers import free_port
from tests.services.gateway.conftest import TEACHER, gateway_config, serve
from tests.services.gateway.test_api import http
from tests.services.gateway.test_runs_e2e import cli, printed

pytestmark = pytest.mark.integration
API = "primer.dev/v1alpha1"


@pytest.fixture
def cluster():
    with Cluster() as cluster:
        yield cluster


def cluster_gateway(redis_url, tmp_path, kube_api: str):
    return create_app(gateway_config(redis_url, tmp_path, mode="cluster", kube_api=kube_api,
                                     namespace=NS, storage_root="s3://primer/data",
                                     input_roots=("s3://primer/models",)))


def test_a_run_is_a_custom_resource_and_its_status_is_the_runs(cluster, redis_url, tmp_path):
    with serve(cluster_gateway(redis_url, tmp_path, cluster.url)) as url:
        status, run, headers = http("POST", f"{url}/v1/runs", {
            "component": "generation", "kind": "exercises", "count": 40, "batchSize": 8,
            "teacher": {"url": TEACHER, "model": "phi-teacher"},
            "config": {"generation.temperature": 0.5}})
        assert status == 201, run
        name = run["id"]
        assert headers["Location"] == f"/v1/runs/{name}" and run["phase"] == "Pending"
        out = f"s3://primer/data/runs/{name}/generation"
        cr = cluster.get(API, "generationruns", name)
        assert cr["kind"] == "GenerationRun" and cr["metadata"]["namespace"] == NS
        validator("GenerationRun").validate(cr)  # the CRD's schema (kmock checks none)
        # the CR's spec is the same model, camelCase on the wire, output resolved
        assert GenerationRun.model_validate(cr["spec"]) == GenerationRun(
            kind="exercises", count=40, batch_size=8, output=out,
            teacher={"url": TEACHER, "model": "phi-teacher"},
            config={"generation.temperature": 0.5})
        assert cr["spec"]["batchSize"] == 8 and run["output"] == out

        cluster.patch_status(API, "generationruns", name, {
            "phase": "Running", "startedAt": "2026-01-01T00:00:00Z", "queue": "generation",
            "units": {"done": 3, "total": 8}, "progress": "3/8 units", "tokens": 1200})
        got = http("GET", f"{url}/v1/runs/{name}")[1]
        assert got["phase"] == "Running" and got["queue"] == "generation"
        assert got["progress"] == {"units_done": 3, "units_total": 8, "stage": "",
                                   "detail": "3/8 units"}
        assert got["stats"]["tokens_generated"] == 1200 and got["error"] is None

        cluster.patch_status(API, "generationruns", name, {
            "phase": "Succeeded", "completedAt": "2026-01-01T01:00:00Z",
            "units": {"done": 9, "total": 9}, "rows": 40, "manifest": f"{out}/_manifest.json"})
        got = http("GET", f"{url}/v1/runs/{name}")[1]
        assert got["phase"] == "Succeeded" and got["finished_at"] == "2026-01-01T01:00:00Z"
        assert got["outputs"] == {"rows": 40, "manifest": f"{out}/_manifest.json"}
        assert got["error"] is None and got["traceback"] is None

        # an evaluation is an EvaluationRun: the operator's hardened Job
        status, ev, _ = http("POST", f"{url}/v1/runs", {
            "component": "evaluation", "checkpoint": "s3://primer/models/phi",
            "benchmarks": ["humaneval"], "samples": 5})
        assert status == 201, ev
        cr = cluster.get(API, "evaluationruns", ev["id"])
        validator("EvaluationRun").validate(cr)
        assert EvaluationRun.model_validate(cr["spec"]).model_dump() == EvaluationRun(
            checkpoint="s3://primer/models/phi", benchmarks=["humaneval"], samples=5,
            output=f"s3://primer/data/runs/{ev['id']}/evaluation").model_dump()
        trace = "Traceback (most recent call last):\n  File \"x.py\", line 1\nMemoryError"
        cluster.patch_status(API, "evaluationruns", ev["id"], {
            "phase": "Failed", "message": "the Job failed: OOMKilled", "traceback": trace})
        got = http("GET", f"{url}/v1/runs/{ev['id']}")[1]
        assert got["phase"] == "Failed" and got["error"] == "the Job failed: OOMKilled"
        assert got["traceback"] == trace and got["outputs"] == {}

        listed = http("GET", f"{url}/v1/runs")[1]
        assert [r["id"] for r in listed["runs"]] == [ev["id"], name]
        listed = http("GET", f"{url}/v1/runs?component=generation&phase=Succeeded")[1]
        assert [r["id"] for r in listed["runs"]] == [name]
        assert http("GET", f"{url}/v1/runs/run-ffffffffffff")[0] == 404
        # the policy holds in this mode too
        status, data, _ = http("POST", f"{url}/v1/runs", {
            "component": "evaluation", "checkpoint": "s3://tenant-b/model"})
        assert status == 422 and data["fields"][0]["field"] == "checkpoint"


def test_an_unreachable_api_is_a_503_naming_it(redis_url, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    with serve(cluster_gateway(redis_url, tmp_path, down)) as url:
        status, data, _ = http("POST", f"{url}/v1/runs", {
            "component": "curation", "input": "s3://primer/data/raw"})
        assert status == 503 and "Kubernetes API" in data["error"], data
        assert "create CurationRun" in data["error"]
        status, data, _ = http("GET", f"{url}/v1/runs")
        assert status == 503 and "Kubernetes API" in data["error"], data


def test_primer_runs_reads_the_cluster_as_it_reads_embedded_mode(cluster, redis_url, tmp_path):
    with serve(cluster_gateway(redis_url, tmp_path, cluster.url)) as url:
        sent = cli("runs", "submit", "curation", "input=s3://primer/data/raw", "keepTop=0.2",
                   "--classify.n_estimators=10", "--gateway", url)
        assert sent.exit_code == 0, sent.output
        run = printed(sent.output)
        assert run["phase"] == "Pending" and run["component"] == "curation"
        cr = cluster.get(API, "curationruns", run["id"])
        validator("CurationRun").validate(cr)
        assert cr["spec"] == {"input": "s3://primer/data/raw", "keepTop": 0.2,
                              "config": {"classify.n_estimators": 10},
                              "output": f"s3://primer/data/runs/{run['id']}/curation"}
        cluster.patch_status(API, "curationruns", run["id"], {
            "phase": "Running", "units": {"done": 2, "total": 5}})
        listed = cli("runs", "list", "--gateway", url)
        assert f"{run['id']}  curation    Running    2/5 units" in listed.output
        cluster.patch_status(API, "curationruns", run["id"], {
            "phase": "Succeeded", "units": {"done": 12, "total": 12}, "rows": 7})
        done = cli("runs", "get", run["id"], "--wait", "--interval", "0.1", "--gateway", url)
        assert done.exit_code == 0 and printed(done.output)["outputs"] == {"rows": 7}
