"""The Helm chart as tested code: lint, render, validate every object against real schemas,
check the security defaults and autoscaling wiring, run checkov, reject bad values.

The secure defaults (issue 14) are asserted on `helm template` with default values: a
generated gateway token, Redis with a password and protected mode, one prefix-scoped S3 user
per component (MinIO's root user only in MinIO and the bucket Job), and NetworkPolicies that
let evaluation pods reach only Redis, S3 and DNS and only intended clients reach the gateway."""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from primer.k8s import TrainingJobSpec, build_pytorchjob
from primer.k8s.evaluation_job import SANDBOX_SECURITY_CONTEXT
from primer.runs import QUEUES
from services.gateway.config import GatewayConfig
from tests.charts.k8s_schemas import CHART, REPO, helm, validate
from tests.servers import free_port

NS = "primer-ns"
#: Every optional feature on, in-cluster backends (KEDA, vLLM teacher, the PyTorchJob).
ALL_ON = {
    "keda": {"enabled": True},
    "teacher": {"enabled": True, "hfTokenSecret": "hf", "extraArgs": ["--max-model-len", "8192"]},
    "trainingJob": {"enabled": True, "nodes": 3, "gpusPerNode": 4, "steps": 100},
    "operator": {"enabled": True},
    "gateway": {"auth": {"existingSecret": "gateway-auth"}},
    "commonLabels": {"team": "ml"},
}
#: Production: external S3, Redis with a password (KEDA TriggerAuthentication), external teacher.
PRODUCTION = {
    "keda": {"enabled": True},
    "minio": {"enabled": False},
    "externalS3": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "existingSecret": "s3-creds",
                   "componentSecrets": {"evaluation": "s3-eval"}},
    "redis": {"enabled": False, "external": {"host": "redis.example.internal",
                                             "existingSecret": "redis-auth"}},
    "teacher": {"externalUrl": "https://api.openai.com/v1", "apiKeySecret": "openai"},
    "trainingJob": {"enabled": True},
    "operator": {"enabled": True},
}
SCENARIOS = {"defaults": {}, "all-on": ALL_ON, "production": PRODUCTION}


def run_helm(*args: str, values: dict | None = None, tmp: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    cmd = [helm(), *args]
    if values:
        path = (tmp or Path("/tmp")) / f"values-{abs(hash(str(values)))}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """Each scenario rendered once (CRDs included, helm test pod included)."""
    tmp = tmp_path_factory.mktemp("values")
    out = {}
    for name, values in SCENARIOS.items():
        text = run_helm("template", "rel", str(CHART), "--namespace", NS, "--include-crds",
                        values=values, tmp=tmp).stdout
        out[name] = [d for d in yaml.safe_load_all(text) if d]
    return out


def pods(docs):
    """(owner, pod spec) for everything that makes pods."""
    for d in docs:
        kind = d["kind"]
        if kind == "Pod":
            yield d, d["spec"]
        elif kind in ("Deployment", "StatefulSet", "Job"):
            yield d, d["spec"]["template"]["spec"]
        elif kind == "PyTorchJob":
            for replica in d["spec"]["pytorchReplicaSpecs"].values():
                yield d, replica["template"]["spec"]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container_env(owner, index: int = 0) -> dict[str, dict]:
    """name → env entry of a Deployment's/StatefulSet's container."""
    return {e["name"]: e for e in owner["spec"]["template"]["spec"]["containers"][index]["env"]}


def secret_data(docs, name: str) -> dict[str, str]:
    data = by_kind(docs, "Secret")[name]["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict(scenario, tmp_path):
    proc = run_helm("lint", "--strict", str(CHART), values=SCENARIOS[scenario], tmp=tmp_path)
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_is_valid(rendered, scenario):
    docs = rendered[scenario]
    for obj in docs:
        validate(obj)  # kubernetes-validate (strict) or the upstream CRD schema
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "NetworkPolicy", "PodDisruptionBudget", "CustomResourceDefinition",
            "Pod"} <= kinds
    # The operator (and so its Role) is on by default now that operators/ ships.
    assert "Role" in kinds and "ClusterRole" not in kinds


def test_optional_features_render(rendered):
    defaults, all_on, prod = (rendered[s] for s in SCENARIOS)
    assert not by_kind(defaults, "PyTorchJob") and not by_kind(defaults, "ScaledObject")
    assert set(by_kind(all_on, "StatefulSet")) == {"rel-primer-redis", "rel-primer-minio"}
    assert "rel-primer-teacher" in by_kind(all_on, "Deployment")
    assert by_kind(all_on, "ScaledObject") and not by_kind(all_on, "HorizontalPodAutoscaler")
    # Production: no in-cluster data services, credentials only from the named Secrets (the
    # gateway token, which the chart generates unless one is named, aside).
    assert not by_kind(prod, "StatefulSet")
    assert set(by_kind(prod, "Secret")) == {"rel-primer-gateway-token"}
    assert by_kind(prod, "TriggerAuthentication")
    env = {e["name"]: e for e in by_kind(prod, "Deployment")["rel-primer-generation"]
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert env["PRIMER_S3_ENDPOINT"]["value"] == "https://s3.eu-west-1.amazonaws.com"
    assert env["PRIMER_REDIS_URL"]["value"] == \
        "redis://:$(REDIS_PASSWORD)@redis.example.internal:6379/0"
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "openai"
    # Per-component external Secrets: evaluation's own, the rest the shared one.
    evaluation = container_env(by_kind(prod, "Deployment")["rel-primer-evaluation"])
    assert evaluation["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-eval"
    assert "OPENAI_API_KEY" not in evaluation  # only generation calls the teacher


def test_crds_cover_the_operator_rbac(rendered):
    docs = rendered["all-on"]
    crds = {d["spec"]["names"]["plural"]: d for d in docs
            if d["kind"] == "CustomResourceDefinition"}
    assert set(crds) == {"curationruns", "generationruns", "trainingruns", "evaluationruns"}
    assert {c["spec"]["group"] for c in crds.values()} == {"primer.dev"}
    role = by_kind(docs, "Role")["rel-primer-operator"]
    granted = {r for rule in role["rules"] if "primer.dev" in rule["apiGroups"]
               for r in rule["resources"]}
    assert set(crds) <= granted
    for rule in role["rules"]:  # least privilege: no wildcards, no secrets
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "secrets" not in rule["resources"]
    # Exactly what the handlers use (operators/): no reads of pods, no list of children.
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
             for r in rule["resources"]}
    assert verbs[("kubeflow.org", "pytorchjobs")] == {"create", "get", "delete"}
    assert verbs[("batch", "jobs")] == {"create", "get", "delete"}
    assert ("", "pods") not in verbs
    dep = by_kind(docs, "Deployment")["rel-primer-operator"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in dep["containers"][0]["env"]}
    assert env["PRIMER_S3_CREDENTIALS"] == "rel-primer-s3-training"
    assert env["PRIMER_S3_CREDENTIALS_EVALUATION"] == "rel-primer-s3-evaluation"
    assert env["PRIMER_RELEASE"] == "rel"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_defaults(rendered, scenario):
    for owner, spec in pods(rendered[scenario]):
        name = f"{owner['kind']}/{owner['metadata']['name']}"
        # Only the operator and a gateway in cluster mode talk to the Kubernetes API.
        needs_api = owner["metadata"]["name"].endswith("-operator") or (
            owner["metadata"]["name"].endswith("-gateway") and owner["kind"] == "Deployment"
            and container_env(owner)["PRIMER_GATEWAY_MODE"]["value"] == "cluster")
        assert spec["automountServiceAccountToken"] is needs_api, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        runs_code = owner["kind"] == "Deployment" and owner["metadata"]["name"].endswith(
            ("-generation", "-evaluation"))
        if runs_code:  # the sandbox's shape: root and capabilities in its own user namespace
            assert spec["hostUsers"] is False, name
            assert "runAsUser" not in spec["securityContext"], name
        else:
            assert "hostUsers" not in spec, name
            assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            if runs_code:
                assert sc == SANDBOX_SECURITY_CONTEXT, name  # as the evaluation Job's
                assert {"name": "PRIMER_SANDBOX_ALLOW_MISSING", "value": "cgroup"} in c["env"]
            else:
                assert sc["allowPrivilegeEscalation"] is False, name
                assert sc["capabilities"]["drop"] == ["ALL"], name
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), (name, part)
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            for env in c.get("env", []):  # credentials come from Secrets only
                if any(w in env["name"] for w in ("SECRET", "PASSWORD", "TOKEN", "API_KEY")):
                    assert "secretKeyRef" in env["valueFrom"], (name, env["name"])


def test_code_running_workers_take_the_restricted_shape_when_asked(tmp_path):
    """``sandbox.userNamespaces=false`` (clusters without user namespaces): the workers keep
    the restricted shape, and refuse to run code there (tests/primer/test_sandbox_container)."""
    docs = list(yaml.safe_load_all(run_helm(
        "template", "rel", str(CHART), values={"sandbox": {"userNamespaces": False,
                                                           "allowMissing": ""}},
        tmp=tmp_path).stdout))
    for d in docs:
        if d and d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-evaluation"):
            spec = d["spec"]["template"]["spec"]
            assert "hostUsers" not in spec
            assert spec["securityContext"]["runAsNonRoot"] is True
            (c,) = spec["containers"]
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert all(e["name"] != "PRIMER_SANDBOX_ALLOW_MISSING" for e in c["env"])
            return
    raise AssertionError("no evaluation Deployment rendered")


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        inside = labels.get(e["key"]) in e["values"]
        if (e["operator"] == "In") != inside:
            return False
    return True


def _pod_labels(docs, kind: str, name: str) -> dict[str, str]:
    return by_kind(docs, kind)[name]["spec"]["template"]["metadata"]["labels"]


def _peer_admits(peer: dict, labels: dict, namespace: str) -> bool:
    """Does a NetworkPolicyPeer (of a policy in NS) match a pod with ``labels`` in ``namespace``?"""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": namespace}
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != NS:
        return False
    return _selects(peer.get("podSelector", {}), labels)


def _allowed(policies, direction: str, pod: dict, peer: dict, peer_ns: str, port: int) -> bool:
    """Is traffic allowed for ``pod`` (labels, in NS) to/from ``peer`` (labels) on ``port``,
    by the policies that select ``pod`` (isolated ones deny what no rule allows)?"""
    kind, key, peers = (("Egress", "egress", "to") if direction == "egress"
                        else ("Ingress", "ingress", "from"))
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], pod)
                 and kind in p["spec"]["policyTypes"]]
    if not selecting:
        return True  # not isolated in this direction
    for p in selecting:
        for rule in p["spec"].get(key, []):
            ports = rule.get("ports")
            if ports and not any(x.get("port") == port for x in ports):
                continue
            if not rule.get(peers) or any(_peer_admits(x, peer, peer_ns) for x in rule[peers]):
                return True
    return False


def test_network_policies(rendered):
    docs = rendered["all-on"]
    policies = list(by_kind(docs, "NetworkPolicy").values())
    deployments = by_kind(docs, "Deployment")

    def applying(component):
        labels = deployments[f"rel-primer-{component}"]["spec"]["template"]["metadata"]["labels"]
        return [p for p in policies if _selects(p["spec"]["podSelector"], labels)]

    # Evaluation pods: no one connects to them.
    evaluation = applying("evaluation")
    assert any("Ingress" in p["spec"]["policyTypes"] for p in evaluation)
    assert all(not p["spec"].get("ingress") for p in evaluation)
    # Generation workers reach the rest of the release and the outside (teacher, S3).
    generation = applying("generation")
    assert sum(len(p["spec"].get("egress", [])) for p in generation) >= 3
    # No other pod's egress rules name evaluation pods as a destination.
    eval_labels = deployments["rel-primer-evaluation"]["spec"]["template"]["metadata"]["labels"]
    for p in policies:
        for rule in p["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert not _selects(peer["podSelector"], eval_labels), p["metadata"]["name"]


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_evaluation_reaches_only_redis_s3_and_dns(rendered, scenario):
    """Evaluation workers are Celery workers: they must reach Redis (and S3, DNS), and nothing
    else, not even the gateway, the teacher or the outside."""
    docs = rendered[scenario]
    policies = list(by_kind(docs, "NetworkPolicy").values())
    worker = _pod_labels(docs, "Deployment", "rel-primer-evaluation")
    redis = _pod_labels(docs, "StatefulSet", "rel-primer-redis")
    minio = _pod_labels(docs, "StatefulSet", "rel-primer-minio")
    dns = {"k8s-app": "kube-dns"}
    # Both ends agree: the worker may send, Redis and MinIO accept.
    for peer, port in ((redis, 6379), (minio, 9000)):
        assert _allowed(policies, "egress", worker, peer, NS, port), (peer, port)
        assert _allowed(policies, "ingress", peer, worker, NS, port), (peer, port)
    assert _allowed(policies, "egress", worker, dns, "kube-system", 53)
    # Nothing else: other release pods, other ports, other namespaces, the Internet.
    for component, port in (("gateway", 8000), ("curation", 8000), ("operator", 8080),
                            ("redis", 9000), ("minio", 6379)):
        peer = {**worker, "app.kubernetes.io/component": component}
        assert not _allowed(policies, "egress", worker, peer, NS, port), component
    if scenario == "all-on":
        teacher = _pod_labels(docs, "Deployment", "rel-primer-teacher")
        assert not _allowed(policies, "egress", worker, teacher, NS, 8000)
    assert not _allowed(policies, "egress", worker, {"app": "x"}, "other", 443)
    for p in policies:
        if _selects(p["spec"]["podSelector"], worker):
            for rule in p["spec"].get("egress", []):
                assert rule.get("to"), f"{p['metadata']['name']}: an egress rule to anywhere"
                assert not any("ipBlock" in peer for peer in rule["to"]), p["metadata"]["name"]


def test_gateway_admits_only_its_intended_clients(tmp_path):
    values = {"networkPolicy": {"gatewayClientNamespaces": ["ingress-nginx"]}}
    text = run_helm("template", "rel", str(CHART), "-n", NS, values=values, tmp=tmp_path).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    policies = list(by_kind(docs, "NetworkPolicy").values())
    gateway = _pod_labels(docs, "Deployment", "rel-primer-gateway")
    port = by_kind(docs, "Deployment")["rel-primer-gateway"]["spec"]["template"]["spec"][
        "containers"][0]["ports"][0]["containerPort"]
    test_pod = next(d for d in docs if d["kind"] == "Pod")["metadata"]["labels"]
    client = {"app": "my-client", "primer.dev/gateway-client": "true"}
    assert _allowed(policies, "ingress", gateway, client, NS, port)
    assert _allowed(policies, "ingress", gateway, test_pod, NS, port)  # helm test
    assert _allowed(policies, "ingress", gateway, {"app": "nginx"}, "ingress-nginx", port)
    # Every pod of the release but the test pod, any unlabelled pod, any other namespace: no.
    for owner, _ in pods(docs):
        labels = owner["spec"].get("template", {}).get("metadata", {}).get("labels")
        if labels and labels["app.kubernetes.io/component"] != "gateway":
            assert not _allowed(policies, "ingress", gateway, labels, NS, port), \
                owner["metadata"]["name"]
    assert not _allowed(policies, "ingress", gateway, {"app": "x"}, NS, port)
    assert not _allowed(policies, "ingress", gateway, client, "elsewhere", port)
    for p in policies:  # no rule admits everyone
        if _selects(p["spec"]["podSelector"], gateway):
            assert all(rule.get("from") for rule in p["spec"].get("ingress", []))


def test_every_deployment_has_a_pdb(rendered):
    docs = rendered["all-on"]
    pdbs = by_kind(docs, "PodDisruptionBudget").values()
    for name, dep in by_kind(docs, "Deployment").items():
        if dep["spec"].get("replicas", 2) == 1 and dep["spec"].get("strategy", {}).get(
                "type") == "Recreate":
            continue  # single-replica operator/teacher: a PDB would only block drains
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert any(_selects(p["spec"]["selector"], labels) for p in pdbs), name


@pytest.mark.parametrize("keda", [True, False])
def test_generation_scales_without_losing_work(tmp_path, keda):
    text = run_helm("template", "rel", str(CHART), "-n", NS, values={"keda": {"enabled": keda}},
                    tmp=tmp_path).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    dep = by_kind(docs, "Deployment")["rel-primer-generation"]
    assert "replicas" not in dep["spec"]  # the autoscaler owns it; upgrades don't reset it
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 600  # room for warm shutdown
    cmd = pod["containers"][0]["command"]
    assert cmd[:4] == ["celery", "-A", "primer.executor.celery_app", "worker"]
    for flag, value in (("-Q", "generation"), ("--concurrency", "1"),
                        ("--prefetch-multiplier", "1"), ("--pool", "prefork")):
        assert cmd[cmd.index(flag) + 1] == value
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PRIMER_CELERY_QUEUE"] == "generation"
    scaled, hpa = by_kind(docs, "ScaledObject"), by_kind(docs, "HorizontalPodAutoscaler")
    if keda:
        assert not hpa
        (so,) = scaled.values()
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == env["PRIMER_CELERY_QUEUE"]
        assert trigger["metadata"]["address"] == f"rel-primer-redis.{NS}.svc:6379"
        assert so["spec"]["scaleTargetRef"]["name"] == "rel-primer-generation"
    else:
        assert not scaled
        (h,) = hpa.values()
        assert h["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert h["spec"]["behavior"]["scaleDown"]["policies"][0]["value"] == 1


@pytest.mark.parametrize("values, message", [
    ({"generation": {"replicas": -1}}, "/generation/replicas"),
    ({"minio": {"enabled": False}}, "externalS3/existingSecret"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"gateway": {"replicaz": 2}}, "replicaz"),
    ({"containerSecurityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
])
def test_schema_rejects_bad_values(tmp_path, values, message):
    proc = run_helm("template", "rel", str(CHART), values=values, tmp=tmp_path, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_chart_pytorchjob_equals_the_python_builder(rendered):
    """One builder, two doors: the chart's template and build_pytorchjob give the same object."""
    (chart_job,) = by_kind(rendered["all-on"], "PyTorchJob").values()
    values = {**yaml.safe_load((CHART / "values.yaml").read_text())["trainingJob"],
              **ALL_ON["trainingJob"]}
    spec = TrainingJobSpec(
        name=values["name"], image=f"{values['image']['repository']}:0.1.0",
        data=values["data"], output=values["output"], preset=values["preset"],
        nodes=values["nodes"], gpus_per_node=values["gpusPerNode"], steps=values["steps"],
        namespace=NS, s3_secret="rel-primer-s3-training",
        s3_endpoint=f"http://rel-primer-minio.{NS}.svc:9000", cpu=values["cpu"],
        memory=values["memory"], shm_size=values["shmSize"],
        backoff_limit=values["backoffLimit"], clean_pod_policy=values["cleanPodPolicy"],
        labels=chart_job["metadata"]["labels"])  # the chart adds its release labels
    assert build_pytorchjob(spec) == chart_job
    assert chart_job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2


@pytest.mark.parametrize("cpu, gpus", [("7500m", 0), ("16", 4)])
def test_chart_gives_training_processes_the_builders_thread_count(tmp_path, cpu, gpus):
    values = {"trainingJob": {**ALL_ON["trainingJob"], "cpu": cpu, "gpusPerNode": gpus}}
    docs = list(yaml.safe_load_all(run_helm("template", "rel", str(CHART), values=values,
                                            tmp=tmp_path).stdout))
    (job,) = (d for d in docs if d and d["kind"] == "PyTorchJob")
    (c,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    threads = TrainingJobSpec(name="x", image="i:1", data="s3://d", output="s3://o", cpu=cpu,
                              gpus_per_node=gpus).threads_per_proc
    assert {"name": "OMP_NUM_THREADS", "value": str(threads)} in c["env"]


@pytest.mark.slow
def test_checkov_passes_with_the_short_skip_list(rendered, tmp_path):
    config = yaml.safe_load((REPO / ".checkov.yaml").read_text())
    assert len(config["skip-check"]) <= 5
    for scenario in ("all-on", "production"):
        (tmp_path / f"{scenario}.yaml").write_text(yaml.safe_dump_all(rendered[scenario]))
    # checkov pins packaging<24 (pytest wants >=24), so it may live in its own venv.
    candidates = [Path(sys.executable).parent / "checkov", shutil.which("checkov"),
                  REPO / ".tools" / "checkov" / "bin" / "checkov"]
    checkov = next((str(c) for c in candidates if c and Path(c).is_file()), None)
    if checkov is None:
        pytest.fail("checkov not found in the venv, on PATH or in .tools/checkov: "
                    "pip install 'checkov>=3.2,<4'", pytrace=False)
    proc = subprocess.run([checkov, "--config-file", str(REPO / ".checkov.yaml"),
                           "-d", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Failed checks: 0" in proc.stdout
    assert "Passed checks: 0" not in proc.stdout  # it did scan the manifests


def test_every_value_is_documented():
    """Each leaf key in values.yaml has a comment above it (or sits in a documented block)."""
    undocumented, stack = [], []  # stack: (indent, documented)
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, _, rest = stripped.partition(":")
        commented = i > 0 and lines[i - 1].strip().startswith("#")
        inherited = any(doc for _, doc in stack)
        is_section = not rest.strip()
        if not (commented or inherited or is_section):
            undocumented.append(key)
        stack.append((indent, commented and lines[i - 1].strip().startswith("# --")))
    assert not undocumented, f"values without a comment: {undocumented}"


def test_helm_test_pod_checks_gateway_s3_and_redis(rendered):
    (pod,) = [d for d in rendered["defaults"] if d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    compile(script, "test-connection", "exec")  # the embedded check is valid Python
    for probe in ("/healthz", ".ping()", "list_objects"):
        assert probe in script
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert {"GATEWAY_URL", "PRIMER_REDIS_URL", "PRIMER_S3_ENDPOINT", "AWS_ACCESS_KEY_ID"} <= \
        set(env)
    # It checks with the gateway's read-only S3 user, which proves the bucket Job made the users.
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == \
        "rel-primer-s3-gateway"


def test_skaffold_config_is_valid():
    import json

    import jsonschema

    from tests.charts.k8s_schemas import schema_text
    schema = json.loads(schema_text("skaffold-v4beta14.schema.json"))
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(config)
    assert {p["name"] for p in config["profiles"]} == {"dev", "gpu"}
    images = {a["image"]: a["docker"]["dockerfile"] for a in config["build"]["artifacts"]}
    assert images == {"ghcr.io/primer-ml/primer": "docker/Dockerfile",
                      "ghcr.io/primer-ml/primer-train": "docker/Dockerfile.train"}
    for dockerfile in images.values():
        assert (REPO / dockerfile).is_file()
    # Every value skaffold sets exists in the chart's values (a renamed key fails here).
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    releases = config["deploy"]["helm"]["releases"]
    keys = list(releases[0]["setValueTemplates"])
    for profile in config["profiles"]:
        for patch in profile.get("patches", []):
            keys += list(patch["value"])
    for key in keys:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, key
            node = node[part]
    # The schema is strict: a misspelt key is an error, so this test can fail.
    releases[0]["setValueTemplate"] = releases[0].pop("setValueTemplates")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(config)


def test_gateway_gets_its_token_from_a_secret_and_the_workers_queues(rendered):
    def env(scenario):
        deploy = by_kind(rendered[scenario], "Deployment")["rel-primer-gateway"]
        return {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}

    on, off = env("all-on"), env("defaults")
    assert on["PRIMER_GATEWAY_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "gateway-auth",
                                                                      "key": "token"}
    assert "rel-primer-gateway-token" not in by_kind(rendered["all-on"], "Secret")
    # Defaults: a generated token, never no auth.
    assert off["PRIMER_GATEWAY_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "rel-primer-gateway-token", "key": "token"}
    token = secret_data(rendered["defaults"], "rel-primer-gateway-token")["token"]
    assert re.fullmatch(r"[A-Za-z0-9]{48}", token)
    workers = {c: by_kind(rendered["defaults"], "Deployment")[f"rel-primer-{c}"]
               for c in ("curation", "generation", "evaluation")}
    for component, deploy in workers.items():
        worker_env = {e["name"]: e.get("value") for e in
                      deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert off[f"PRIMER_GATEWAY_QUEUE_{component.upper()}"]["value"] == \
            worker_env["PRIMER_CELERY_QUEUE"] == QUEUES[component]


def test_the_readme_starts_workers_on_the_queues_runs_are_sent_to():
    """One set of queue names: what the README's worker consumes is what every door sends to
    (the gateway's and the operator's defaults, the CLI's per component)."""
    readme = (REPO / "README.md").read_text()
    consumed = re.search(r"celery -A primer.executor.celery_app worker -Q (\S+)", readme)
    assert consumed and set(consumed[1].split(",")) == set(QUEUES.values())
    assert GatewayConfig().queues == QUEUES
    # Imported here: importing the operator package at collection would load the kubernetes
    # client before tests/operators/conftest.py points it at the test cluster.
    from operators.config import OperatorConfig

    operator = OperatorConfig()
    assert (operator.curation_queue, operator.generation_queue) == \
        (QUEUES["curation"], QUEUES["generation"])



def test_the_gateway_in_cluster_mode_may_create_read_and_cancel_runs_and_nothing_else(
        rendered, tmp_path):
    docs = rendered["defaults"]  # the operator runs, so the gateway hands runs to it
    deploy = by_kind(docs, "Deployment")["rel-primer-gateway"]
    env = container_env(deploy)
    assert env["PRIMER_GATEWAY_MODE"]["value"] == "cluster"
    assert env["PRIMER_GATEWAY_NAMESPACE"]["value"] == NS
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-primer-gateway"
    assert by_kind(docs, "ServiceAccount")["rel-primer-gateway"][
        "automountServiceAccountToken"] is False  # only the Deployment's pods mount it
    runs, events = by_kind(docs, "Role")["rel-primer-gateway"]["rules"]
    assert runs == {"apiGroups": ["primer.dev"], "verbs": ["create", "get", "list", "delete"],
                    "resources": ["curationruns", "generationruns", "evaluationruns"]}
    assert events == {"apiGroups": [""], "verbs": ["get", "list"], "resources": ["events"]}
    assert env["PRIMER_GATEWAY_RUN_TTL_SECONDS"]["value"] == str(7 * 24 * 3600)
    binding = by_kind(docs, "RoleBinding")["rel-primer-gateway"]
    assert binding["roleRef"]["name"] == "rel-primer-gateway"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-primer-gateway",
                                    "namespace": NS}]
    # Without the operator the gateway plans runs itself: no Role, no token.
    text = run_helm("template", "rel", str(CHART), "--namespace", NS,
                    values={"operator": {"enabled": False}}, tmp=tmp_path).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    deploy = by_kind(docs, "Deployment")["rel-primer-gateway"]
    assert container_env(deploy)["PRIMER_GATEWAY_MODE"]["value"] == "embedded"
    assert deploy["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "rel-primer-gateway" not in by_kind(docs, "Role")
    assert "rel-primer-gateway" not in by_kind(docs, "ServiceAccount")


def test_gateway_policy_as_rendered_admits_only_the_charts_teacher(rendered, monkeypatch):
    """The gateway reads what it may accept from the env the chart gives it: parse that env
    with the gateway's own config, per scenario."""
    from services.gateway.config import GatewayConfig

    def config(scenario) -> GatewayConfig:
        deploy = by_kind(rendered[scenario], "Deployment")["rel-primer-gateway"]
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]:
            if e["name"].startswith("PRIMER_GATEWAY_") and "value" in e:
                monkeypatch.setenv(e["name"], e["value"])
        return GatewayConfig.from_env()

    defaults = config("defaults")
    assert not defaults.endpoints and not defaults.input_roots
    assert (defaults.max_body_bytes, defaults.rate_limit) == (262144, 600)
    teacher = by_kind(rendered["all-on"], "Service")["rel-primer-teacher"]
    (only,) = config("all-on").endpoints  # the in-cluster vLLM, nothing else
    assert f"//{teacher['metadata']['name']}" in only
    assert list(config("production").endpoints) == ["https://api.openai.com/v1"]


# -- Secure defaults: Redis ----------------------------------------------------------------------

def test_redis_requires_the_generated_password_in_protected_mode(rendered):
    docs = rendered["defaults"]
    redis = by_kind(docs, "StatefulSet")["rel-primer-redis"]
    cmd = redis["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--protected-mode") + 1] == "yes"
    assert cmd[cmd.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = container_env(redis)
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):  # the server, and redis-cli in the probes
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "rel-primer-redis",
                                                          "key": "password"}
    assert re.fullmatch(r"[A-Za-z0-9]{32}", secret_data(docs, "rel-primer-redis")["password"])
    # Every Redis client gets the password from the same Secret, spliced into its URL.
    clients = 0
    for owner, spec in pods(docs):
        for c in spec["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            if "PRIMER_REDIS_URL" in env:
                clients += 1
                assert env["PRIMER_REDIS_URL"]["value"] == \
                    f"redis://:$(REDIS_PASSWORD)@rel-primer-redis.{NS}.svc:6379/0"
                names = [e["name"] for e in c["env"]]  # $(VAR) needs VAR defined before
                assert names.index("REDIS_PASSWORD") < names.index("PRIMER_REDIS_URL")
                assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == \
                    "rel-primer-redis", owner["metadata"]["name"]
    assert clients >= 6  # gateway, three workers, operator, helm test
    # KEDA's scaler too (all-on turns KEDA on).
    all_on = rendered["all-on"]
    (auth,) = by_kind(all_on, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": "rel-primer-redis",
                                                "key": "password"}]
    (scaled,) = by_kind(all_on, "ScaledObject").values()
    assert scaled["spec"]["triggers"][0]["authenticationRef"]["name"] == auth["metadata"]["name"]


def _kubernetes_expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


def test_redis_as_rendered_refuses_clients_without_the_password(rendered, tmp_path):
    """The rendered redis-server command, run for real: no password, no queue; the URL the
    workers get (expanded as Kubernetes does) works, and so does the probes' redis-cli."""
    import redis as redis_py

    from primer.executor.celery_app import CeleryConfig, make_app

    docs = rendered["defaults"]
    password = secret_data(docs, "rel-primer-redis")["password"]
    secrets = {"REDIS_PASSWORD": password, "REDISCLI_AUTH": password}
    container = by_kind(docs, "StatefulSet")["rel-primer-redis"]["spec"]["template"]["spec"][
        "containers"][0]
    port = free_port()
    cmd = [_kubernetes_expand(a, secrets) for a in container["command"]]
    cmd[cmd.index("--dir") + 1] = str(tmp_path)
    cmd += ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis_py.Redis.from_url(url, socket_timeout=5)
        deadline = time.monotonic() + 20
        while True:  # until the server listens
            try:
                client.ping()
            except redis_py.AuthenticationError:
                break
            except redis_py.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
                time.sleep(0.05)
            else:
                pytest.fail("redis answered PING without a password")
        # The worker's URL, with the Service name mapped to this machine.
        worker_env = container_env(by_kind(docs, "Deployment")["rel-primer-evaluation"])
        worker_url = _kubernetes_expand(worker_env["PRIMER_REDIS_URL"]["value"], secrets)
        worker_url = worker_url.replace(f"rel-primer-redis.{NS}.svc:6379", f"127.0.0.1:{port}")
        assert redis_py.Redis.from_url(worker_url, socket_timeout=5).ping()
        app = make_app(CeleryConfig(redis_url=worker_url))
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        # The probes: `redis-cli ping` with REDISCLI_AUTH from the Secret.
        probe = container["readinessProbe"]["exec"]["command"]
        out = subprocess.run([probe[0], "-p", str(port), *probe[1:]], capture_output=True,
                             text=True, env={**os.environ, "REDISCLI_AUTH": password},
                             timeout=10)
        assert out.stdout.strip() == "PONG", out
        # The password is not visible in the server's command line (redis sets its title).
        assert password not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(
            errors="replace")
    finally:
        proc.terminate()
        proc.wait(10)


# -- Secure defaults: S3 users -------------------------------------------------------------------

COMPONENT_OF = {"rel-primer-gateway": "gateway", "rel-primer-operator": "operator",
                "rel-primer-curation": "curation", "rel-primer-generation": "generation",
                "rel-primer-evaluation": "evaluation", "phi1-pretrain": "training",
                "rel-primer-test-connection": "gateway"}


def _secret_refs(spec: dict) -> set[str]:
    """Every Secret a pod spec names: env, envFrom and volumes."""
    refs = set()
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        for e in c.get("env", []):
            if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                refs.add(ref["name"])
        for e in c.get("envFrom", []):
            if "secretRef" in e:
                refs.add(e["secretRef"]["name"])
    for v in spec.get("volumes", []):
        if "secret" in v:
            refs.add(v["secret"]["secretName"])
        for source in v.get("projected", {}).get("sources", []):
            if "secret" in source:
                refs.add(source["secret"]["name"])
    return refs


@pytest.mark.parametrize("scenario", ["defaults", "all-on"])
def test_root_credentials_only_in_minio_and_the_bucket_job(rendered, scenario):
    docs = rendered[scenario]
    root = by_kind(docs, "Secret")["rel-primer-s3"]
    assert base64.b64decode(root["data"]["AWS_ACCESS_KEY_ID"]).decode() == "primer"
    holders = {owner["metadata"]["name"] for owner, spec in pods(docs)
               if "rel-primer-s3" in _secret_refs(spec)}
    assert holders == {"rel-primer-minio", "rel-primer-minio-bucket"}
    # Every other pod has its own component's S3 user, and only that one.
    for owner, spec in pods(docs):
        name = owner["metadata"]["name"]
        if name in COMPONENT_OF:
            s3 = {r for r in _secret_refs(spec) if r.startswith("rel-primer-s3")}
            assert s3 == {f"rel-primer-s3-{COMPONENT_OF[name]}"}, name
    users = {secret_data(docs, f"rel-primer-s3-{c}")["AWS_ACCESS_KEY_ID"]
             for c in set(COMPONENT_OF.values())}
    assert len(users) == 6 and "primer" not in users


def _policies(docs) -> dict[str, dict]:
    data = by_kind(docs, "ConfigMap")["rel-primer-minio-policies"]["data"]
    return {k.removesuffix(".json"): json.loads(v) for k, v in data.items()}


def _may(policy: dict, action: str, key: str | None = None, prefix: str | None = None) -> bool:
    """IAM evaluation (Allow statements only, as ours are): may ``action`` on the object ``key``
    (or, for s3:ListBucket, list with ``prefix``) of bucket primer?"""
    for st in policy["Statement"]:
        if st["Effect"] != "Allow" or action not in st["Action"]:
            continue
        if key is not None:
            if any(fnmatch.fnmatchcase(f"arn:aws:s3:::primer/{key}", r) for r in st["Resource"]):
                return True
        elif "arn:aws:s3:::primer" in st["Resource"]:
            allowed = st.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
            if allowed is None or any(fnmatch.fnmatchcase(prefix or "", a) for a in allowed):
                return True
    return False


def _can_read(policy, key):
    return _may(policy, "s3:GetObject", key) and _may(policy, "s3:ListBucket", prefix=key)


def _can_write(policy, key):
    return all(_may(policy, a, key) for a in ("s3:PutObject", "s3:DeleteObject",
                                             "s3:AbortMultipartUpload"))


def _key(uri: str) -> str:
    return uri.removeprefix("s3://primer/") + "/part-00000.parquet"


def test_each_s3_user_reaches_only_its_prefixes(rendered):
    policies = _policies(rendered["defaults"])
    assert set(policies) == {"gateway", "operator", "curation", "generation", "evaluation",
                             "training"}
    for policy in policies.values():
        assert _may(policy, "s3:GetBucketLocation")  # what the minio client asks first
        assert not any(a == "*" or a.endswith(":*") for st in policy["Statement"]
                       for a in st["Action"])
    examples = {p.stem: yaml.safe_load(p.read_text())["spec"]
                for p in (CHART / "examples").glob("*.yaml")}
    # The shipped examples work with the default policies.
    cur, gen, train, ev = (examples[k] for k in ("curationrun", "generationrun", "trainingrun",
                                                  "evaluationrun"))
    assert _can_read(policies["curation"], _key(cur["input"]))
    assert _can_write(policies["curation"], _key(cur["output"]))
    assert _can_write(policies["generation"], _key(gen["output"]))
    assert _can_read(policies["training"], _key(train["data"]))
    assert _can_write(policies["training"], _key(train["output"]) + "/checkpoints/step-1/x")
    assert _can_read(policies["evaluation"], _key(ev["checkpoint"]))
    assert _can_write(policies["evaluation"], _key(ev["output"]))
    # The gateway's runs (runs/<id>/<component>): their component writes, the gateway reads.
    for component in ("curation", "generation", "evaluation"):
        key = f"primer/runs/run-0123456789ab/{component}/_work/gateway/done"
        assert _can_write(policies[component], key)
        assert _can_read(policies["gateway"], key) and _can_read(policies["operator"], key)
        # in embedded mode the gateway plans them: it clears a resent unit's failure record
        assert _can_write(policies["gateway"],
                          f"primer/runs/run-0123456789ab/{component}/_work/_failures/u1")
    # …and nothing more: the code-running components are the most confined.
    ev_policy, gen_policy = policies["evaluation"], policies["generation"]
    assert not _can_read(ev_policy, "primer/raw/the-stack/part-00000.parquet")
    assert not _can_write(ev_policy, "primer/runs/phi1/checkpoints/step-1/model.pt")
    assert not _can_write(ev_policy, "primer/curated/x/part-00000.parquet")
    assert not _can_read(gen_policy, "primer/runs/phi1/checkpoints/step-1/model.pt")
    assert not _can_write(gen_policy, "primer/runs/run-0123456789ab/evaluation/summary.json")
    assert not _can_read(ev_policy, "other-tenant/primer/runs/x")
    for reader in ("gateway", "operator"):
        assert not _can_write(policies[reader], "primer/runs/x/curation/y")
    assert not _may(policies["gateway"], "s3:ListBucket", prefix="")  # no bucket-wide listing
    assert not _can_read(policies["gateway"], "primer/shards/phi1/part-00000.bin")
    assert _can_read(policies["gateway"], _key(gen["output"]) + "/_work/done/u1")


def test_bucket_job_creates_each_user_with_its_policy(rendered, tmp_path):
    """The Job's script, run with the rendered env and files; MinIO cannot run here, so a
    stand-in `mc` records each call (the MinIO server is the only thing not real)."""
    docs = rendered["defaults"]
    job = by_kind(docs, "Job")["rel-primer-minio-bucket"]
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    root = secret_data(docs, "rel-primer-s3")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "MC_LOG": str(tmp_path / "mc.log")}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "rel-primer-s3"
            env[e["name"]] = root[ref["key"]]
    env["USERS_DIR"], env["POLICIES_DIR"] = str(tmp_path / "users"), str(tmp_path / "policies")
    # The projected volume and the ConfigMap, as the kubelet lays them out.
    (users,) = [v for v in spec["volumes"] if v["name"] == "users"]
    for source in users["projected"]["sources"]:
        data = secret_data(docs, source["secret"]["name"])
        for item in source["secret"]["items"]:
            path = tmp_path / "users" / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[item["key"]])  # no trailing newline, as mounted
    (tmp_path / "policies").mkdir()
    for name, text in by_kind(docs, "ConfigMap")["rel-primer-minio-policies"]["data"].items():
        (tmp_path / "policies" / name).write_text(text)
    (tmp_path / "bin").mkdir()
    mc = tmp_path / "bin" / "mc"
    mc.write_text('#!/bin/sh\nprintf \'%s\\037\' "$@" >> "$MC_LOG"\necho >> "$MC_LOG"\n')
    mc.chmod(0o755)
    proc = subprocess.run(container["command"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    calls = [line.rstrip("\x1f").split("\x1f")[2:]  # drop --config-dir /tmp/mc
             for line in (tmp_path / "mc.log").read_text().splitlines()]
    assert calls[0] == ["alias", "set", "primer", env["PRIMER_S3_ENDPOINT"], "primer",
                        root["AWS_SECRET_ACCESS_KEY"]]
    assert calls[1] == ["mb", "--ignore-existing", "primer/primer"]
    expected = []
    for component in env["COMPONENTS"].split():
        user = secret_data(docs, f"rel-primer-s3-{component}")
        name = user["AWS_ACCESS_KEY_ID"]
        expected += [["admin", "user", "add", "primer", name, user["AWS_SECRET_ACCESS_KEY"]],
                     ["admin", "policy", "create", "primer", name,
                      f"{env['POLICIES_DIR']}/{component}.json"],
                     ["admin", "policy", "attach", "primer", name, "--user", name]]
    assert calls[2:] == expected
    assert len(expected) == 18


def test_operator_children_get_their_components_s3_user(rendered):
    """The operator's PyTorchJobs and evaluation Jobs mount the training and evaluation users
    (Secrets the chart creates), from the env the chart gives the operator."""
    from operators.config import OperatorConfig
    from operators.evaluation import evaluation_job_for
    from operators.training import pytorchjob_for
    from primer.runs import EvaluationRun, TrainingRun

    docs = rendered["defaults"]
    operator_env = {k: e["value"] for k, e in
                    container_env(by_kind(docs, "Deployment")["rel-primer-operator"]).items()
                    if "value" in e}
    saved = dict(os.environ)
    try:
        os.environ.update(operator_env)
        config = OperatorConfig.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    examples = {p.stem: yaml.safe_load(p.read_text())["spec"]
                for p in (CHART / "examples").glob("*.yaml")}
    job = evaluation_job_for(EvaluationRun(**examples["evaluationrun"]), "e1", NS, config)
    train = pytorchjob_for(TrainingRun(**examples["trainingrun"]), "t1", NS, config)
    secrets = set(by_kind(docs, "Secret"))
    assert _secret_refs(job["spec"]["template"]["spec"]) == {"rel-primer-s3-evaluation"}
    for replica in train["spec"]["pytorchReplicaSpecs"].values():
        assert _secret_refs(replica["template"]["spec"]) == {"rel-primer-s3-training"}
    assert {"rel-primer-s3-evaluation", "rel-primer-s3-training"} <= secrets
    # The evaluation Job is held by the evaluation NetworkPolicy like the workers.
    policies = list(by_kind(docs, "NetworkPolicy").values())
    labels = job["spec"]["template"]["metadata"]["labels"]
    redis = _pod_labels(docs, "StatefulSet", "rel-primer-redis")
    minio = _pod_labels(docs, "StatefulSet", "rel-primer-minio")
    assert _allowed(policies, "egress", labels, minio, NS, 9000)
    assert not _allowed(policies, "egress", labels, {"app": "x"}, "other", 443)
    assert not _allowed(policies, "egress", labels, redis, NS, 9000)


# -- Generated Secrets are kept across upgrades ------------------------------------------------

#: What `helm template --dry-run=server` discovers and looks up for a default install.
API_KINDS = {
    "v1": {"secrets": "Secret", "configmaps": "ConfigMap", "services": "Service", "pods": "Pod",
           "serviceaccounts": "ServiceAccount", "persistentvolumeclaims": "PersistentVolumeClaim",
           "namespaces": "Namespace"},
    "apps/v1": {"deployments": "Deployment", "statefulsets": "StatefulSet"},
    "batch/v1": {"jobs": "Job"},
    "policy/v1": {"poddisruptionbudgets": "PodDisruptionBudget"},
    "networking.k8s.io/v1": {"networkpolicies": "NetworkPolicy"},
    "rbac.authorization.k8s.io/v1": {"roles": "Role", "rolebindings": "RoleBinding"},
    "autoscaling/v2": {"horizontalpodautoscalers": "HorizontalPodAutoscaler"},
}


async def _render_against_api(secrets: dict[str, dict[str, str]], kubeconfig: Path) -> str:
    """`helm template --dry-run=server` (Helm's `lookup` reads the cluster, as on an upgrade)
    against kmock's emulator holding ``secrets`` (name → data) of release rel."""
    import kmock

    verbs = {"get", "list", "create", "patch", "update", "delete"}
    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        for group_version, kinds in API_KINDS.items():
            for plural, kind in kinds.items():
                api.resources[f"{group_version}/{plural}"] = kmock.ResourceInfo(
                    kind=kind, namespaced=kind != "Namespace", verbs=verbs)
        # A version the chart accepts, and the core group's discovery as a real server says it.
        api["get /version"] << {"major": "1", "minor": "35", "gitVersion": "v1.35.0"}
        api["get /api/v1"] << {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": plural, "kind": kind, "namespaced": kind != "Namespace",
             "singularName": kind.lower(), "verbs": sorted(verbs)}
            for plural, kind in API_KINDS["v1"].items()]}
        for name, data in secrets.items():  # as the previous release left them
            api.objects[kmock.resource("v1/secrets"), NS, name] = {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": NS,
                             "labels": {"app.kubernetes.io/managed-by": "Helm"},
                             "annotations": {"meta.helm.sh/release-name": "rel",
                                             "meta.helm.sh/release-namespace": NS}},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                       "namespace": NS}}]}))
        proc = await asyncio.create_subprocess_exec(
            helm(), "template", "rel", str(CHART), "-n", NS, "--dry-run=server",
            "--disable-openapi-validation", "--kubeconfig", str(kubeconfig),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-3000:]
        return out.decode()


def test_generated_secrets_are_kept_across_upgrades(tmp_path):
    """An upgrade keeps every generated credential (clients and MinIO's users keep working);
    only a Secret that does not exist yet gets a new random value."""
    live = {"rel-primer-gateway-token": {"token": "kept-gateway-token"},
            "rel-primer-redis": {"password": "kept-redis-password"},
            "rel-primer-s3": {"AWS_ACCESS_KEY_ID": "primer", "AWS_SECRET_ACCESS_KEY": "kept-root"},
            "rel-primer-s3-evaluation": {"AWS_ACCESS_KEY_ID": "primer-evaluation",
                                         "AWS_SECRET_ACCESS_KEY": "kept-evaluation"}}
    text = asyncio.run(_render_against_api(live, tmp_path / "kubeconfig"))
    docs = [d for d in yaml.safe_load_all(text) if d]
    for name, data in live.items():
        assert secret_data(docs, name) == data, name
    fresh = secret_data(docs, "rel-primer-s3-gateway")  # not there before: generated
    assert fresh["AWS_ACCESS_KEY_ID"] == "primer-gateway"
    assert re.fullmatch(r"[A-Za-z0-9]{40}", fresh["AWS_SECRET_ACCESS_KEY"])
