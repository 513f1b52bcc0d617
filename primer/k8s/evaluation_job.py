"""The evaluation Job (``batch/v1``): one hardened pod that runs ``primer eval run``.

:func:`build_evaluation_job` is the only place the object is assembled; the operator builds
one per ``EvaluationRun`` and tests validate it against the Kubernetes schemas. The pod has
the shape of the chart's evaluation workers, because it executes model-written code in the
sandbox: labelled ``app.kubernetes.io/component: evaluation`` so the release's deny-all
NetworkPolicy applies to it, a user namespace of its own (``hostUsers: false``) in which the
scoring container is root with the sandbox's few capabilities (each program then runs as its
own uid, in its own namespaces), a read-only root file system, seccomp ``RuntimeDefault``, no
service-account token, a deadline and requests = limits. An init container with the
restricted shape exports the checkpoint first. The report lands in
``<output>/<benchmark>/summary.json`` (``pass@1`` …).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from primer.k8s.pytorchjob import name_and_image_problems, pod_env

API_VERSION = "batch/v1"
KIND = "Job"
CONTAINER_NAME = "evaluate"
BENCHMARKS = ("humaneval", "mbpp")
RUN_AS_USER = 10001  # the non-root user of docker/Dockerfile
#: The container of a pod that runs model- or teacher-written code (primer/sandbox/README.md;
#: the chart's code-running workers take the same): root and these capabilities hold only in
#: the pod's own user namespace (``hostUsers: false``), and each program runs as its own uid.
#: allowPrivilegeEscalation stays unset: the API refuses false beside SYS_ADMIN.
SANDBOX_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "privileged": False,
    "readOnlyRootFilesystem": True, "procMount": "Unmasked",
    "appArmorProfile": {"type": "Unconfined"},
    "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN", "SETUID", "SETGID", "CHOWN"]}}
#: Layers such a pod lacks: its cgroup fs is read-only (results record ``degraded``).
SANDBOX_ALLOW_MISSING = "cgroup"
_MAX_NAME = 52  # Job pods are named <job>-<5 chars>; CronJob-style limit keeps it < 63


@dataclass(frozen=True)
class EvaluationJobSpec:
    """Everything that decides the evaluation Job."""

    name: str
    """Job name (DNS-1123 label, at most 52 characters)."""
    image: str
    """Primer image with ``services.evaluation`` (``docker/Dockerfile``), pinned."""
    checkpoint: str
    """Checkpoint folder or export to evaluate (any storage URI the pod can read)."""
    output: str
    """Report folder: ``<output>/<benchmark>/{samples.jsonl,results.jsonl,summary.json}``."""
    benchmarks: tuple[str, ...] = BENCHMARKS
    """Benchmarks, in order."""
    samples: int = 1
    """Samples per problem (``generation.n_samples``)."""
    namespace: str | None = None
    """Namespace; None leaves it to the client."""
    s3_secret: str = "primer-s3-evaluation"
    """Secret holding ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (the chart's
    evaluation user, ``<release>-primer-s3-evaluation``, scoped to what evaluation reads and
    writes)."""
    s3_endpoint: str | None = None
    """``PRIMER_S3_ENDPOINT``; None: AWS S3."""
    cpu: str = "4"
    """CPU (request = limit)."""
    memory: str = "16Gi"
    """Memory (request = limit)."""
    gpus: int = 0
    """GPUs for generating completions; 0: CPU."""
    active_deadline_seconds: int = 86400
    """The Job is stopped (Failed) after this long."""
    backoff_limit: int = 1
    """Pod retries before the Job fails."""
    model_size: str = "20Gi"
    """Size limit of the volume holding the exported model (phi-1 in fp32: about 6 GB)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels for the Job and its pod (e.g. ``app.kubernetes.io/instance``)."""

    def __post_init__(self) -> None:
        problems = name_and_image_problems(self.name, self.image, _MAX_NAME)
        if not self.benchmarks or set(self.benchmarks) - set(BENCHMARKS):
            problems.append(f"benchmarks {list(self.benchmarks)}: one or more of "
                            f"{', '.join(BENCHMARKS)}")
        for key in ("samples", "active_deadline_seconds"):
            if getattr(self, key) < 1:
                problems.append(f"{key} {getattr(self, key)}: at least 1")
        for key in ("gpus", "backoff_limit"):
            if getattr(self, key) < 0:
                problems.append(f"{key} {getattr(self, key)}: 0 or more")
        if problems:
            raise ValueError("invalid evaluation job: " + "; ".join(problems))


def build_evaluation_job(spec: EvaluationJobSpec) -> dict[str, Any]:
    """The evaluation Job for ``spec`` as a plain dict (``batch/v1``)."""
    labels = {"app.kubernetes.io/name": "primer", "app.kubernetes.io/component": "evaluation",
              **spec.labels}
    metadata: dict[str, Any] = {"name": spec.name}
    if spec.namespace:
        metadata["namespace"] = spec.namespace
    metadata["labels"] = labels
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {"metadata": {"labels": dict(labels)}, "spec": _pod(spec)},
        },
    }


MODEL_DIR = "/model"  # the export, on a volume shared by the two containers


def export_command(spec: EvaluationJobSpec) -> list[str]:
    """``primer export``: the checkpoint (a training run, a step folder or an export, in S3)
    as a local ``save_pretrained`` folder, which is what ``primer eval run`` loads."""
    return ["primer", "export", spec.checkpoint, MODEL_DIR]


def command(spec: EvaluationJobSpec) -> list[str]:
    """``primer eval run`` for the spec (the same command a person runs on a laptop)."""
    return ["primer", "eval", "run", "--model", MODEL_DIR,
            "--benchmark", ",".join(spec.benchmarks), "--output", spec.output,
            f"--generation.n_samples={spec.samples}"]


def _pod(spec: EvaluationJobSpec) -> dict[str, Any]:
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": spec.cpu, "memory": spec.memory},
        "limits": {"cpu": spec.cpu, "memory": spec.memory},
    }
    if spec.gpus:
        resources["requests"]["nvidia.com/gpu"] = str(spec.gpus)
        resources["limits"]["nvidia.com/gpu"] = str(spec.gpus)
    env = pod_env(spec.s3_endpoint, spec.s3_secret)
    # The export holds no model code: the restricted shape, as every other Primer container.
    restricted = {"runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "runAsNonRoot": True,
                  "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "capabilities": {"drop": ["ALL"]}}
    tmp = {"name": "tmp", "mountPath": "/tmp"}
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostUsers": False,  # scoring runs model-written code: the sandbox's pod shape
        "securityContext": {"fsGroup": RUN_AS_USER,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        # The export runs first, and alone: no model-written code has run yet in the pod.
        "initContainers": [{
            "name": "export",
            "image": spec.image,
            "imagePullPolicy": "IfNotPresent",
            "command": export_command(spec),
            "env": env,
            "resources": resources,
            "securityContext": restricted,
            "volumeMounts": [tmp, {"name": "model", "mountPath": MODEL_DIR}],
        }],
        "containers": [{
            "name": CONTAINER_NAME,
            "image": spec.image,
            "imagePullPolicy": "IfNotPresent",
            "command": command(spec),
            "env": [*env, {"name": "PRIMER_SANDBOX_ALLOW_MISSING",
                           "value": SANDBOX_ALLOW_MISSING}],
            "resources": resources,
            "securityContext": copy.deepcopy(SANDBOX_SECURITY_CONTEXT),  # a Job of its own
            "volumeMounts": [tmp, {"name": "model", "mountPath": MODEL_DIR, "readOnly": True}],
        }],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
                    {"name": "model", "emptyDir": {"sizeLimit": spec.model_size}}],
    }
