"""The operator's wiring, in-process against kmock: runs become PyTorchJobs, Jobs and queued
units (real Redis); status follows the children; deletion removes children and finalizer."""

from __future__ import annotations

import pytest
import redis

from tests.charts.k8s_schemas import validate
from tests.operators.conftest import NS, wait_for

GV = "primer.dev/v1alpha1"


def run(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": GV, "kind": kind, "spec": spec,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}-0000"}}


def test_trainingrun_becomes_an_owned_pytorchjob_and_follows_it(cluster, operator):
    cluster.create(GV, "trainingruns", run("TrainingRun", "tr1", {
        "preset": "tiny", "data": "s3://bkt/shards", "output": "s3://bkt/runs/tr1",
        "nodes": 2, "gpusPerNode": 4, "image": "ghcr.io/primer-ml/primer-train:0.1.0"}))
    job = wait_for(lambda: cluster.get("kubeflow.org/v1", "pytorchjobs", "tr1"), "PyTorchJob")
    validate({k: v for k, v in job.items() if k != "status"})  # the upstream CRD schema, strict
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("TrainingRun", "tr1",
                                                            "uid-tr1-0000")
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"

    cluster.patch_status("kubeflow.org/v1", "pytorchjobs", "tr1", {"conditions": [
        {"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
        {"type": "Succeeded", "status": "True", "message": "PyTorchJob tr1 is successfully "
                                                           "completed."}]})
    done = wait_for(lambda: (cluster.get(GV, "trainingruns", "tr1").get("status") or {}).get(
        "phase") == "Succeeded" and cluster.get(GV, "trainingruns", "tr1"), "Succeeded")
    assert done["status"]["conditions"][-1]["type"] == "Succeeded"
    assert done["status"]["completedAt"]

    cluster.delete(GV, "trainingruns", "tr1")
    wait_for(lambda: cluster.get(GV, "trainingruns", "tr1") is None, "finalizer released")
    assert cluster.get("kubeflow.org/v1", "pytorchjobs", "tr1") is None


def test_invalid_spec_is_refused_with_the_field_named(cluster, operator):
    cluster.create(GV, "generationruns", run("GenerationRun", "bad1", {
        "kind": "textbooks", "count": 0, "output": "s3://bkt/bad"}))
    status = wait_for(lambda: (cluster.get(GV, "generationruns", "bad1").get("status") or {}
                               ).get("message"), "refusal")
    assert "spec.count" in status and "greater than or equal to 1" in status
    status = cluster.get(GV, "generationruns", "bad1")["status"]
    assert status["phase"] == "Failed"
    (failed,) = status["conditions"]
    assert (failed["type"], failed["status"], failed["reason"]) == ("Failed", "True",
                                                                    "InvalidSpec")
    assert failed["message"] == status["message"]
    cluster.delete(GV, "generationruns", "bad1")
    wait_for(lambda: cluster.get(GV, "generationruns", "bad1") is None, "finalizer released")


def test_a_run_asking_for_what_the_gateway_refuses_is_refused_before_anything_is_sent(
        cluster, operator, redis_url):
    """A resource is written by whoever may create it in the namespace: it may not switch the
    workers' sandbox off or have them send their teacher key to an endpoint of its choosing
    (the gateway refuses the same; primer.policy)."""
    cluster.create(GV, "generationruns", run("GenerationRun", "evil1", {
        "kind": "exercises", "count": 2, "output": "s3://bkt/evil1",
        "teacher": {"url": "http://attacker.example/v1"},
        "config": {"sandbox.isolate_network": "false", "teacher.api_key_env":
                   "AWS_SECRET_ACCESS_KEY", "generation.batch_size": "2"}}))
    status = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        cluster.get(GV, "generationruns", "evil1").get("status") or {}), "refusal")
    (failed,) = status["conditions"]
    assert failed["reason"] == "Refused"
    for named in ("spec.config.sandbox.isolate_network", "spec.config.teacher.api_key_env",
                  "spec.teacher.url: 'http://attacker.example/v1' is not an endpoint"):
        assert named in status["message"], status["message"]
    assert "generation.batch_size" not in status["message"].split("may set")[0]
    assert not redis.Redis.from_url(redis_url).keys("primer:sent:*evil1*")  # nothing sent
    cluster.delete(GV, "generationruns", "evil1")
    wait_for(lambda: cluster.get(GV, "generationruns", "evil1") is None, "finalizer released")


@pytest.mark.slow
def test_evaluationrun_becomes_a_hardened_owned_job(cluster, operator):
    cluster.create(GV, "evaluationruns", run("EvaluationRun", "ev1", {
        "checkpoint": "s3://bkt/runs/r/checkpoints/step-10", "output": "s3://bkt/eval/ev1",
        "benchmarks": ["humaneval"]}))
    job = wait_for(lambda: cluster.get("batch/v1", "jobs", "ev1"), "Job")
    validate({k: v for k, v in job.items() if k != "status"})  # Kubernetes 1.30 and 1.35
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-ev1-0000"
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == \
        "evaluation"  # so the release's deny-all NetworkPolicy selects it
    # The checkpoint (a training run's, in S3) is exported first; evaluation loads the export.
    (export,) = pod["initContainers"]
    assert export["command"] == ["primer", "export", "s3://bkt/runs/r/checkpoints/step-10",
                                 "/model"]
    (evaluate,) = pod["containers"]
    assert evaluate["command"][:5] == ["primer", "eval", "run", "--model", "/model"]
    assert {"name": "model", "mountPath": "/model", "readOnly": True} in \
        evaluate["volumeMounts"]
    # scoring runs model-written code: the sandbox's shape (primer/sandbox/README.md); the
    # export holds none and keeps the restricted one
    assert pod["hostUsers"] is False
    assert evaluate["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN", "SETUID",
                                                                  "SETGID", "CHOWN"]
    assert {"name": "PRIMER_SANDBOX_ALLOW_MISSING", "value": "cgroup"} in evaluate["env"]
    assert export["securityContext"]["runAsNonRoot"] is True
    assert export["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    cluster.delete(GV, "evaluationruns", "ev1")
    wait_for(lambda: cluster.get(GV, "evaluationruns", "ev1") is None, "finalizer released")
    assert cluster.get("batch/v1", "jobs", "ev1") is None


def test_a_failed_evaluation_job_fails_the_run_with_kubernetes_reason(cluster, operator):
    cluster.create(GV, "evaluationruns", run("EvaluationRun", "ev2", {
        "checkpoint": "s3://bkt/runs/r/checkpoints/step-10", "output": "s3://bkt/eval/ev2",
        "benchmarks": ["humaneval"]}))
    wait_for(lambda: cluster.get("batch/v1", "jobs", "ev2"), "Job")
    cluster.patch_status("batch/v1", "jobs", "ev2", {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]})
    status = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        cluster.get(GV, "evaluationruns", "ev2").get("status") or {}), "Failed")
    assert status["message"] == ("evaluation Job failed: BackoffLimitExceeded: Job has "
                                 "reached the specified backoff limit")
    (failed,) = status["conditions"]
    assert (failed["reason"], failed["message"]) == ("BackoffLimitExceeded", status["message"])
    cluster.delete(GV, "evaluationruns", "ev2")
    wait_for(lambda: cluster.get(GV, "evaluationruns", "ev2") is None, "finalizer released")
