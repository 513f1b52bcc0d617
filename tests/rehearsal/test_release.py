"""The release rehearsed: the chart rendered with ``helm template``, each workload run as a
container from the built image with the command, env (Secrets resolved from the rendered
objects), user, capabilities, read-only root and limits of its rendered pod spec; then,
through the gateway's Service only (embedded mode: the gateway plans the runs, the workers
run their units), a curation, a generation (against the test teacher) and an evaluation (of a
tiny model uploaded as a training run's export) each reach Succeeded with their outputs in
S3. Stand-ins and what they replace: tests/rehearsal/release.py. Finally the chart's own
``helm test`` pod runs and passes.

The same in cluster mode, the chart's default: the gateway creates the runs as custom resources
and the operator's container drives them, both logging in as pods do (service account token,
HTTPS, the CA checked) to kmock's emulator behind TLS (tests/rehearsal/kube_api.py). The test
plays the Job controller and kubelet for the evaluation Job the operator creates.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from primer.datasets import Producer, write_dataset
from primer.storage import open_storage
from tests.openai_server import OpenAIServer
from tests.rehearsal.containers import IMAGE, containers, require_images
from tests.rehearsal.kube_api import api_server, run_job, wait_job
from tests.rehearsal.podspec import Pod, run_args
from tests.rehearsal.release import (
    NAMESPACE,
    REDIS_IMAGE,
    bucket_job_in_place,
    ensure_redis_image,
    render,
    running,
    submit,
    wait_run,
    weed_in_minio_place,
)
from tests.services.evaluation.tiny_model import save_tiny_model
from tests.services.generation.teacher_responder import responder

pytestmark = [pytest.mark.rehearsal, pytest.mark.slow, pytest.mark.timeout(1800)]
TEACHER_HOST = "teacher.rehearsal"


def _corpus_rows() -> list[dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))
    return [{"id": f"{f.parent.name}_{f.name}", "text": f.read_text()} for f in files[:30]]


@pytest.mark.parametrize("mode", ["embedded", "cluster"])
def test_release_serves_every_run_kind_through_the_gateway(mode, tmp_path, monkeypatch):
    require_images(IMAGE)
    ensure_redis_image()
    with OpenAIServer(responder) as teacher:
        teacher_url = f"http://{TEACHER_HOST}:{teacher.port}/v1"
        # the gateway admits the teacher a run names only if the release lists it
        # (the operator's passes as often as the embedded gateway's: a run's steps follow)
        objects = render(f"gateway.mode={mode}", f"gateway.policy.endpoints={{{teacher_url}}}",
                         "operator.pollSeconds=2")
        if mode == "embedded":
            _rehearse(objects, teacher, teacher_url, tmp_path, monkeypatch)
            return
        with api_server(tmp_path / "pki") as kube:
            _rehearse(objects, teacher, teacher_url, tmp_path, monkeypatch, kube)


def _rehearse(objects, teacher, teacher_url, tmp_path, monkeypatch, kube=None) -> None:
    cluster, api = kube or (None, None)
    with containers() as group, running(objects, group, tmp_path / "volumes",
                                        {TEACHER_HOST: "127.0.0.1"}, api) as rel:
        rel.check_ports()
        rel.start("redis", image=REDIS_IMAGE)
        rel.wait_ready("redis")
        weed_in_minio_place(rel, tmp_path)
        bucket_job_in_place(rel)  # retries until the S3 server answers
        rel.forward_services()
        rel.start("gateway")
        for worker in ("curation", "generation", "evaluation"):
            rel.start(worker)
        if cluster:
            rel.start("operator")
            rel.wait_ready("operator")
        rel.wait_ready("gateway")

        # Inputs written to S3 as a user would upload them (with the release's credentials).
        env = rel.env("gateway")
        monkeypatch.setenv("PRIMER_S3_ENDPOINT", "http://127.0.0.1:" +
                           env["PRIMER_S3_ENDPOINT"].rsplit(":", 1)[1])
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, env[key])
        data = env["PRIMER_DATA"].rstrip("/")
        write_dataset(f"{data}/inputs/corpus", iter(_corpus_rows()), Producer("rehearsal"))
        # where a training run's export lies (the evaluation user reads runs/ only)
        export = open_storage(f"{data}/runs/rehearsal-train/export")
        for f in save_tiny_model(tmp_path / "tiny").iterdir():
            export.write_bytes(f.name, f.read_bytes())

        gateway = "http://127.0.0.1:" + str(next(
            p["port"] for s in objects.of_kind("Service") if s["metadata"]["name"].endswith(
                "gateway") for p in s["spec"]["ports"]))
        headers = ({"Authorization": f"Bearer {env['PRIMER_GATEWAY_TOKEN']}"}
                   if env.get("PRIMER_GATEWAY_TOKEN") else {})
        runs = {
            "curation": {"component": "curation", "input": f"{data}/inputs/corpus",
                         "config": {"classify.n_estimators": 10,
                                    "annotate.positive_score": 0.8}},
            "generation": {"component": "generation", "kind": "textbooks", "count": 3,
                           "teacher": {"url": teacher_url, "model": "test-teacher"}},
            "evaluation": {"component": "evaluation", "checkpoint": export.uri,
                           "benchmarks": ["humaneval"]},
        }
        submitted = {c: submit(gateway, body, headers)["id"] for c, body in runs.items()}
        if cluster:  # the runs are the operator's custom resources now
            for component, run_id in submitted.items():
                run = cluster.get("primer.dev/v1alpha1", f"{component}runs", run_id)
                assert run is not None, (component, run_id)
            # the operator created the evaluation Job; the Job controller and kubelet run it
            job = wait_job(cluster, 120)
            assert job["metadata"]["ownerReferences"][0]["kind"] == "EvaluationRun", job
            code, log = run_job(cluster, job, objects, group, tmp_path / "volumes", rel.hosts,
                                api, 900)
            assert code == 0, log[-4000:]
        done = {c: wait_run(gateway, run_id, headers, 900) for c, run_id in submitted.items()}
        logs = {c: group.logs(c)[-3000:] for c in submitted}
        if cluster:
            logs["operator"] = group.logs("operator")[-3000:]
        failed = {c: (r["phase"], r.get("error"), logs[c]) for c, r in done.items()
                  if r["phase"] != "Succeeded"}
        assert not failed, failed

        for component in ("curation", "generation"):
            out = open_storage(done[component]["output"])
            manifest = json.loads(out.read_text("_manifest.json"))
            assert manifest["rows"] > 0 and manifest["shards"], manifest
        assert teacher.requests >= 3
        # the same files, and the same pass@1 in the run's outputs, in both modes
        scored = open_storage(done["evaluation"]["output"])
        assert scored.exists("humaneval/results.jsonl")
        summary = json.loads(scored.read_text("humaneval/summary.json"))
        assert summary["n_problems"] == 164 and summary["n_samples"] == 164, summary
        # every layer held but, where the host gives no cgroup, the chart's allowed one
        assert summary["sandbox"]["degraded"] in ([], ["cgroup"]), summary
        outputs = done["evaluation"]["outputs"]
        assert outputs["passAt1"] == {"humaneval": summary["pass@1"]}, outputs

        # `helm test`: the chart's own test pod, as rendered, against the running release.
        test_pod = next(p for p in objects.of_kind("Pod")
                        if (p["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test")
        pod = Pod(test_pod["spec"], test_pod["metadata"]["name"], NAMESPACE,
                  tmp_path / "volumes", rel.hosts)
        group.run("helm-test", run_args(pod, test_pod["spec"]["containers"][0]["name"],
                                        objects))
        code = group.wait_exit("helm-test", 120)
        assert code == 0, group.logs("helm-test")
