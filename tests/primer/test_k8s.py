"""primer.k8s: the PyTorchJob builder against the real CRD schema, and `primer train
submit|status|logs|delete` through the kubeflow-training SDK against a fake API server."""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from typer.testing import CliRunner

from primer.k8s import CONTAINER_NAME, TrainingJobSpec, build_pytorchjob, to_yaml
from primer.k8s.cli import jobs_app
from tests.charts.k8s_schemas import validate

BASE = dict(name="phi1-run", image="ghcr.io/primer-ml/primer-train:0.1.0",
            data="s3://primer/shards", output="s3://primer/runs/phi1-run")


def test_single_node_job_has_only_a_master():
    job = build_pytorchjob(TrainingJobSpec(**BASE, gpus_per_node=8))
    validate(job)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert job["spec"]["nprocPerNode"] == "8"


def test_multi_node_job():
    spec = TrainingJobSpec(**BASE, nodes=4, gpus_per_node=8, steps=1000, namespace="ml",
                           s3_secret="creds", s3_endpoint="http://minio:9000")
    job = build_pytorchjob(spec)
    validate(job)  # the Training Operator 1.9.4 CRD, unknown fields rejected
    assert job["metadata"]["namespace"] == "ml"
    assert job["spec"]["runPolicy"] == {"backoffLimit": 3, "cleanPodPolicy": "Running"}
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"  # a lost pod restarts and resumes
        pod = replica["template"]["spec"]
        (c,) = pod["containers"]
        assert c["name"] == CONTAINER_NAME == "pytorch"
        assert c["command"] == [
            "torchrun", "--nproc-per-node", "8", "-m", "model.train", "--preset", "phi1",
            "--data", "s3://primer/shards", "--output", "s3://primer/runs/phi1-run",
            "--resume", "auto", "--steps", "1000"]
        env = {e["name"]: e for e in c["env"]}
        assert env["PRIMER_S3_ENDPOINT"]["value"] == "http://minio:9000"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": key}
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        shm = {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]
        assert shm["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert pod["automountServiceAccountToken"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_cpu_job_asks_for_no_gpus():
    job = build_pytorchjob(TrainingJobSpec(**BASE, gpus_per_node=0, preset="tiny_cpu"))
    validate(job)
    (c,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert job["spec"]["nprocPerNode"] == "1"


@pytest.mark.parametrize("cpu, gpus, threads", [
    ("8", 8, 1), ("16", 4, 4), ("7500m", 0, 7), ("0.5", 0, 1)])
def test_each_process_gets_the_pods_whole_cpus_as_threads(cpu, gpus, threads):
    """Torch would start a thread per core of the node, not of the pod's CPU limit."""
    job = build_pytorchjob(TrainingJobSpec(**BASE, cpu=cpu, gpus_per_node=gpus))
    (c,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert {"name": "OMP_NUM_THREADS", "value": str(threads)} in c["env"]


@pytest.mark.parametrize("change, message", [
    ({"name": "Bad_Name"}, "name"),
    ({"cpu": "lots"}, "CPU quantity"),
    ({"cpu": "0"}, "CPU quantity"),
    ({"image": "ghcr.io/primer-ml/primer-train:latest"}, "pin a tag"),
    ({"image": "ghcr.io/primer-ml/primer-train"}, "pin a tag"),
    ({"data": "/local/path"}, "s3://"),
    ({"nodes": 0}, "nodes"),
    ({"clean_pod_policy": "Sometimes"}, "clean_pod_policy"),
])
def test_spec_rejects_bad_input(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainingJobSpec(**{**BASE, **change})


def test_submit_dry_run_prints_the_builders_job():
    args = ["submit", "--preset", "phi1", "--nodes", "2", "--gpus-per-node", "8",
            "--data", BASE["data"], "--output", BASE["output"], "--image", BASE["image"],
            "--name", "phi1-run", "--namespace", "ml", "--dry-run"]
    result = CliRunner().invoke(jobs_app, args)
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.output)
    validate(job)
    assert job == build_pytorchjob(TrainingJobSpec(**BASE, nodes=2, namespace="ml"))


def test_submit_rejects_bad_input_before_contacting_a_cluster():
    result = CliRunner().invoke(jobs_app, [
        "submit", "--data", "/tmp/x", "--output", BASE["output"], "--image", BASE["image"],
        "--dry-run"])
    assert result.exit_code == 2
    assert "s3://" in result.output


# -- a fake Kubernetes API server: the calls the SDK makes, answered as the real one does ------

PYTORCHJOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)/log)?$")


class FakeKube:
    """PyTorchJobs in memory; a created job gets a Running master pod, as the operator would."""

    def __init__(self):
        self.jobs: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []

    def status(self, code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code}

    def handle(self, method: str, path: str, query: dict, body: dict | None):
        self.requests.append((method, path))
        if m := PYTORCHJOBS.match(path):
            ns, name = m.groups()
            if method == "POST" and name is None:
                name = body["metadata"]["name"]
                if (ns, name) in self.jobs:
                    return self.status(409, "AlreadyExists",
                                       f'pytorchjobs.kubeflow.org "{name}" already exists')
                obj = json.loads(json.dumps(body))
                obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1",
                                       creationTimestamp="2026-01-01T00:00:00Z")
                self.jobs[(ns, name)] = obj
                return 201, obj
            if name and (ns, name) not in self.jobs:
                return self.status(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
            if method == "GET" and name:
                obj = dict(self.jobs[(ns, name)])
                obj["status"] = {"conditions": [
                    {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
                    {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}],
                    "replicaStatuses": {"Master": {"active": 1}}}
                return 200, obj
            if method == "DELETE" and name:
                del self.jobs[(ns, name)]
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if m := PODS.match(path):
            ns, pod = m.groups()
            if method == "GET" and pod is None:
                selector = dict(kv.split("=") for kv in query["labelSelector"][0].split(","))
                items = [self.pod(ns, n) for (jns, n) in self.jobs if jns == ns]
                items = [p for p in items
                         if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())]
                return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                             "items": items}
            if method == "GET" and pod:
                assert query["container"] == [CONTAINER_NAME]
                return 200, f"step 1 loss 10.5\nlog of {pod}\n"
        return self.status(404, "NotFound", f"no route {method} {path}")

    @staticmethod
    def pod(ns: str, job: str) -> dict:
        return {"metadata": {"name": f"{job}-master-0", "namespace": ns, "labels": {
            "training.kubeflow.org/job-name": job, "training.kubeflow.org/job-role": "master",
            "training.kubeflow.org/replica-type": "master",
            "training.kubeflow.org/replica-index": "0"}},
            "spec": {"containers": [{"name": CONTAINER_NAME, "image": "x"}]},
            "status": {"phase": "Running"}}


@pytest.fixture
def fake_kube(tmp_path, monkeypatch):
    kube = FakeKube()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, payload = kube.handle(self.command, url.path, parse_qs(url.query), body)
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, str)
                             else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {
            "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me",
                                                  "namespace": "team-a"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(config))
    yield kube
    server.shutdown()
    server.server_close()


def test_submit_status_logs_delete_through_the_sdk(fake_kube):
    cli = CliRunner()
    submit = ["submit", "--name", "phi1-run", "--data", BASE["data"], "--output",
              BASE["output"], "--image", BASE["image"], "--nodes", "2"]
    result = cli.invoke(jobs_app, submit)
    assert result.exit_code == 0, result.output
    assert "team-a/phi1-run created" in result.output  # namespace from the kubeconfig context
    # What reached the API server is exactly the builder's object.
    sent = fake_kube.jobs[("team-a", "phi1-run")]
    expected = build_pytorchjob(TrainingJobSpec(**BASE, nodes=2, namespace="team-a"))
    sent_meta = {k: v for k, v in sent["metadata"].items()
                 if k not in ("uid", "resourceVersion", "creationTimestamp")}
    assert {**sent, "metadata": sent_meta} == expected

    again = cli.invoke(jobs_app, submit)
    assert again.exit_code == 1
    assert "already exists" in again.output

    status = cli.invoke(jobs_app, ["status", "phi1-run"])
    assert status.exit_code == 0, status.output
    assert "team-a/phi1-run: Running" in status.output
    assert "Master: active=1" in status.output

    logs = cli.invoke(jobs_app, ["logs", "phi1-run"])
    assert logs.exit_code == 0, logs.output
    assert "==> phi1-run-master-0 <==" in logs.output and "step 1 loss 10.5" in logs.output

    deleted = cli.invoke(jobs_app, ["delete", "phi1-run"])
    assert deleted.exit_code == 0, deleted.output
    assert ("team-a", "phi1-run") not in fake_kube.jobs
    missing = cli.invoke(jobs_app, ["delete", "phi1-run"])
    assert missing.exit_code == 1
    assert "not found" in missing.output
    assert ("POST", "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs") in fake_kube.requests


def test_to_yaml_keeps_the_built_order():
    text = to_yaml(build_pytorchjob(TrainingJobSpec(**BASE)))
    assert text.startswith("apiVersion: kubeflow.org/v1\nkind: PyTorchJob\nmetadata:")
