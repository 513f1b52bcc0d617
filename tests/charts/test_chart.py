"""The Helm chart as tested code: lint, render, validate every object against real schemas,
check the security defaults and autoscaling wiring, run checkov, reject bad values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from primer.k8s import TrainingJobSpec, build_pytorchjob
from tests.charts.k8s_schemas import CHART, REPO, helm, validate

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
    "externalS3": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "existingSecret": "s3-creds"},
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
    # Production: no in-cluster data services, credentials only from the named Secrets.
    assert not by_kind(prod, "StatefulSet") and not by_kind(prod, "Secret")
    assert by_kind(prod, "TriggerAuthentication")
    env = {e["name"]: e for e in by_kind(prod, "Deployment")["rel-primer-generation"]
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert env["PRIMER_S3_ENDPOINT"]["value"] == "https://s3.eu-west-1.amazonaws.com"
    assert env["PRIMER_REDIS_URL"]["value"] == \
        "redis://:$(REDIS_PASSWORD)@redis.example.internal:6379/0"
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "openai"


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
    assert env["PRIMER_S3_CREDENTIALS"] == "rel-primer-s3" and env["PRIMER_RELEASE"] == "rel"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_defaults(rendered, scenario):
    for owner, spec in pods(rendered[scenario]):
        name = f"{owner['kind']}/{owner['metadata']['name']}"
        is_operator = owner["metadata"]["name"].endswith("-operator")
        assert spec["automountServiceAccountToken"] is is_operator, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), (name, part)
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            for env in c.get("env", []):  # credentials come from Secrets only
                if any(w in env["name"] for w in ("SECRET", "PASSWORD", "TOKEN", "API_KEY")):
                    assert "secretKeyRef" in env["valueFrom"], (name, env["name"])


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        inside = labels.get(e["key"]) in e["values"]
        if (e["operator"] == "In") != inside:
            return False
    return True


def test_network_policies(rendered):
    docs = rendered["all-on"]
    policies = list(by_kind(docs, "NetworkPolicy").values())
    deployments = by_kind(docs, "Deployment")

    def applying(component):
        labels = deployments[f"rel-primer-{component}"]["spec"]["template"]["metadata"]["labels"]
        return [p for p in policies if _selects(p["spec"]["podSelector"], labels)]

    # Evaluation pods: isolated both ways, and no policy opens anything for them.
    evaluation = applying("evaluation")
    assert any("Egress" in p["spec"]["policyTypes"] for p in evaluation)
    assert all(not p["spec"].get("egress") and not p["spec"].get("ingress") for p in evaluation)
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
        namespace=NS, s3_secret="rel-primer-s3",
        s3_endpoint=f"http://rel-primer-minio.{NS}.svc:9000", cpu=values["cpu"],
        memory=values["memory"], shm_size=values["shmSize"],
        backoff_limit=values["backoffLimit"], clean_pod_policy=values["cleanPodPolicy"],
        labels=chart_job["metadata"]["labels"])  # the chart adds its release labels
    assert build_pytorchjob(spec) == chart_job
    assert chart_job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2


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
    for probe in ("/healthz", ".ping()", "bucket_exists"):
        assert probe in script
    env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert {"GATEWAY_URL", "PRIMER_REDIS_URL", "PRIMER_S3_ENDPOINT", "AWS_ACCESS_KEY_ID"} <= env


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
    assert "PRIMER_GATEWAY_TOKEN" not in off
    workers = {c: by_kind(rendered["defaults"], "Deployment")[f"rel-primer-{c}"]
               for c in ("curation", "generation", "evaluation")}
    for component, deploy in workers.items():
        worker_env = {e["name"]: e.get("value") for e in
                      deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert off[f"PRIMER_GATEWAY_QUEUE_{component.upper()}"]["value"] == \
            worker_env["PRIMER_CELERY_QUEUE"]
