"""The PyTorchJob `primer train submit --dry-run` prints, run as its pods: the Master and Worker
replicas as containers of the built training image, with the environment the Training Operator
v1.9 injects (tests/rehearsal/pytorchjob.py cites where: ``envvar.go`` ``setPodEnv``,
``master.go`` ``MasterEnvVarGenerator.Generate``, ``pytorch_defaults.go``
``SetDefaults_PyTorchJob``), 2 nodes × 1 process (gloo on CPU), checkpoints in S3 (SeaweedFS
on this machine's loopback, the pods on host networking, Service names mapped with
``--add-host``). The Worker is killed mid-run and restarted as ``restartPolicy: OnFailure``
makes the kubelet do; the job resumes from the last committed checkpoint and finishes.

Then the evaluation Job the operator would create for the run (primer/k8s/evaluation_job.py),
run as its pod from the services image: the ``primer export`` init container (restricted),
then the scoring container (the sandbox's pod shape), which writes ``summary.json`` to S3.
(Running it first found that ``primer eval run --model`` takes an exported model, not a
training checkpoint; hence the init container.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from model.checkpoint import CheckpointManager
from primer.k8s.evaluation_job import EvaluationJobSpec, build_evaluation_job
from primer.storage import open_storage
from tests.model.conftest import losses
from tests.rehearsal import pytorchjob
from tests.rehearsal.containers import IMAGE, TRAIN_IMAGE, containers, require_images
from tests.rehearsal.podspec import Objects, Pod, run_args
from tests.servers import free_port

pytestmark = [pytest.mark.rehearsal, pytest.mark.slow, pytest.mark.timeout(1800)]

S3_HOST = "primer-s3.rehearsal.svc"  # what the pods call the S3 server
STEPS = 75  # the tiny preset checkpoints every 50 steps: one checkpoint before the kill


def _upload(local: str, uri: str) -> None:
    src, dst = open_storage(local), open_storage(uri)
    for info in src.list():
        dst.write_bytes(info.key, src.read_bytes(info.key))


def _dry_run(*args: str) -> dict:
    primer = Path(sys.executable).parent / "primer"
    proc = subprocess.run([str(primer), "train", "submit", "--dry-run", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def _supervise(group, pods: list[str], backoff_limit: int, timeout: float, tick) -> int:
    """The kubelet under ``restartPolicy: OnFailure`` (and the operator's backoffLimit over
    all restarts): a container that exits non-zero is started again in place after the
    kubelet's back-off (10 s, doubling per restart); returns the number of restarts once every
    container exited 0."""
    restarts, done, exited_at, per_pod = 0, set(), {}, dict.fromkeys(pods, 0)
    deadline = time.monotonic() + timeout
    while len(done) < len(pods):
        if time.monotonic() > deadline:
            raise TimeoutError("job not finished:\n" + "\n".join(
                f"--- {p}\n{group.logs(p)[-2500:]}" for p in pods))
        tick()
        for pod in pods:
            status, code = group.state(pod)
            if pod in done or status not in ("exited", "stopped"):
                continue
            if code == 0:
                done.add(pod)
                continue
            exited_at.setdefault(pod, time.monotonic())
            if time.monotonic() - exited_at[pod] < 10 * 2 ** per_pod[pod]:
                continue  # CrashLoopBackOff
            restarts += 1
            per_pod[pod] += 1
            del exited_at[pod]
            assert restarts <= backoff_limit, f"backoffLimit exceeded; {pod}:\n" + group.logs(
                pod)[-3000:]
            group.start(pod)
        time.sleep(1)
    return restarts


def test_pytorchjob_pods_train_and_survive_a_killed_worker(
        packed, s3_bucket, s3_server, tmp_path):
    require_images(TRAIN_IMAGE, IMAGE)
    s3_port = s3_server.endpoint.rsplit(":", 1)[1]
    data, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/runs/tiny"
    _upload(packed, data)
    job = _dry_run("--name", "tiny-rehearsal", "--image", TRAIN_IMAGE, "--preset", "tiny",
                   "--nodes", "2", "--gpus-per-node", "0", "--steps", str(STEPS),
                   "--data", data, "--output", out, "--s3-endpoint",
                   f"http://{S3_HOST}:{s3_port}", "--cpu", "1", "--memory", "3Gi",
                   "--shm-size", "256Mi", "--s3-secret", "primer-s3")
    # A free rendezvous port instead of the default 23456: the pods share the host's network.
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    master["ports"] = [{"name": pytorchjob.PORT_NAME, "containerPort": free_port()}]
    job = pytorchjob.apply_defaults(job)
    # The Secret the user creates beside the job (the chart's, or kubectl create secret).
    secret = {"kind": "Secret", "metadata": {"name": "primer-s3"},
              "stringData": {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                             "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}}
    objects = Objects([job, secret])
    hosts = {S3_HOST: "127.0.0.1", pytorchjob.pod_name(job, "Master", 0): "127.0.0.1"}

    with containers() as group:
        pods = []
        for rtype in ("Master", "Worker"):
            replica = job["spec"]["pytorchReplicaSpecs"][rtype]
            assert replica["restartPolicy"] == "OnFailure"
            for index in range(replica["replicas"]):
                name = pytorchjob.pod_name(job, rtype, index)
                pod = Pod(replica["template"]["spec"], name, "default", tmp_path / "volumes",
                          hosts, pytorchjob.operator_env(job, rtype, index))
                group.run(name, run_args(pod, pytorchjob.CONTAINER, objects))
                pods.append(name)
        worker = pytorchjob.pod_name(job, "Worker", 0)
        manager = CheckpointManager(out)
        killed_after: list[list[int]] = []

        def kill_worker_after_first_checkpoint() -> None:
            if not killed_after and (steps := manager.committed_steps()):
                group.kill(worker)
                killed_after.append(steps)

        restarts = _supervise(group, pods, job["spec"]["runPolicy"]["backoffLimit"], 900,
                              kill_worker_after_first_checkpoint)
        master_log = group.logs(pods[0])

    assert killed_after and killed_after[0][-1] < STEPS, "the worker was never killed mid-run"
    assert restarts >= 1
    assert "resumed from" in master_log, master_log[-3000:]
    assert manager.committed_steps()[-1] == STEPS
    ckpt = manager.latest()
    keys = {o.key for o in ckpt.list()}  # sharded (torch.distributed.checkpoint)
    assert keys >= {"COMMITTED", ".metadata", "trainer.pt", "rng-0.pt", "rng-1.pt"}, keys
    assert any(k.endswith(".distcp") for k in keys), keys
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "metrics.jsonl").write_bytes(manager.root.read_bytes("metrics.jsonl"))
    assert list(losses(metrics)) == list(range(1, STEPS + 1))

    # The evaluation Job on the result, as its pod: init container, then the main one.
    report = f"s3://{s3_bucket}/runs/tiny/eval"
    ev = build_evaluation_job(EvaluationJobSpec(
        name="tiny-rehearsal-eval", image=IMAGE, checkpoint=out, output=report,
        benchmarks=("humaneval",), s3_secret="primer-s3",
        s3_endpoint=f"http://{S3_HOST}:{s3_port}", cpu="2", memory="4Gi"))
    spec = ev["spec"]["template"]["spec"]
    pod = Pod(spec, "tiny-rehearsal-eval-x7k2p", "default", tmp_path / "volumes", hosts)
    with containers() as group:
        for container in [*spec["initContainers"], *spec["containers"]]:
            name = container["name"]
            group.run(name, run_args(pod, name, objects))
            code = group.wait_exit(name, 900)
            assert code == 0, f"{name} exited {code}:\n{group.logs(name)[-4000:]}"
    summary = json.loads(open_storage(report).read_text("humaneval/summary.json"))
    assert summary["n_problems"] == 164 and summary["n_samples"] == 164, summary
    assert summary["sandbox"]["degraded"] in ([], ["cgroup"]), summary
