"""The training PyTorchJob (Kubeflow Training Operator 1.9.x, ``kubeflow.org/v1``), built once.

:func:`build_pytorchjob` is the only place the object is assembled in Python; the chart's
``templates/training-pytorchjob.yaml`` renders the same object for GitOps users, and
``tests/charts`` renders both from the same inputs and compares them. Edit them together.

What the object guarantees:

- one ``Master`` plus ``nodes - 1`` ``Worker`` replicas, container ``pytorch`` (the name the
  operator and the SDK look for), ``nprocPerNode`` = GPUs per node. The operator sets
  ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``, which
  ``torchrun`` reads, so the command names only what is ours;
- ``restartPolicy: OnFailure`` and ``runPolicy.backoffLimit``: a lost pod is restarted and the
  run resumes from the last committed checkpoint (``--resume auto``);
- S3 credentials only from a Secret (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` keys);
- a memory-backed ``/dev/shm`` (NCCL and DataLoader workers need more than the 64 MiB default);
- the hardened pod of the rest of Primer: non-root, read-only root file system, no
  capabilities, seccomp ``RuntimeDefault``, no service-account token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
PLURAL = "pytorchjobs"
CONTAINER_NAME = "pytorch"  # the Training Operator finds the training container by this name
CLEAN_POD_POLICIES = ("None", "Running", "All")
RUN_AS_USER = 10001  # the non-root user of docker/Dockerfile.train
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 50  # pods are named <job>-worker-<i>; keep the result under 63 characters


def name_and_image_problems(name: str, image: str, max_name: int) -> list[str]:
    """What is wrong with a job's name (a DNS label short enough for its pods' names) and
    image (a pinned tag or digest, never ``:latest``); shared by every builder here."""
    problems = []
    if not _NAME.match(name) or len(name) > max_name:
        problems.append(f"name {name!r}: lower-case letters, digits and '-', starting "
                        f"with a letter, at most {max_name} characters")
    if not image or image.endswith(":latest") or (
            ":" not in image.rsplit("/", 1)[-1] and "@" not in image):
        problems.append(f"image {image!r}: pin a tag or digest (not :latest)")
    return problems


@dataclass(frozen=True)
class TrainingJobSpec:
    """Everything that decides the PyTorchJob; the chart's ``trainingJob`` values mirror it."""

    name: str
    """Job name (DNS-1123 label, at most 50 characters); also the run's identity."""
    image: str
    """Training image (``docker/Dockerfile.train``), pinned: ``repo:tag`` or ``repo@sha256:…``."""
    data: str
    """Packed training shards, an ``s3://`` URI."""
    output: str
    """Run output (checkpoints, logs), an ``s3://`` URI."""
    preset: str = "phi1"
    """Model/training preset of ``model.train`` (``phi1``, ``phi1_small``, ``tiny_cpu``…)."""
    nodes: int = 1
    """Pods (one per node): one Master and ``nodes - 1`` Workers."""
    gpus_per_node: int = 8
    """GPUs per pod (= processes per pod); 0 trains on CPU with one process per pod."""
    steps: int | None = None
    """Stop after this many optimizer steps (default: the preset's)."""
    namespace: str | None = None
    """Namespace; None leaves it to the client (kubeconfig context / in-cluster namespace)."""
    s3_secret: str = "primer-s3-training"
    """Secret holding ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (the chart's training
    user, ``<release>-primer-s3-training``; never MinIO's root user)."""
    s3_endpoint: str | None = None
    """``PRIMER_S3_ENDPOINT`` (e.g. ``http://primer-minio:9000``); None: AWS S3."""
    cpu: str = "8"
    """CPU per pod (request = limit)."""
    memory: str = "64Gi"
    """Memory per pod (request = limit), not counting ``/dev/shm``."""
    shm_size: str = "16Gi"
    """Size limit of the memory-backed ``/dev/shm``."""
    backoff_limit: int = 3
    """Pod failures tolerated before the job is marked failed."""
    clean_pod_policy: str = "Running"
    """Pods deleted when the job ends: ``None``, ``Running`` (keep failed pods' logs), ``All``."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy; tags are pinned, so ``IfNotPresent`` is safe."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels for the job and its pods."""

    def __post_init__(self) -> None:
        problems = name_and_image_problems(self.name, self.image, _MAX_NAME)
        for key in ("data", "output"):
            if not getattr(self, key).startswith("s3://"):
                problems.append(f"{key} {getattr(self, key)!r}: cluster pods need an s3:// URI")
        if self.nodes < 1:
            problems.append(f"nodes {self.nodes}: at least 1")
        if self.gpus_per_node < 0:
            problems.append(f"gpus_per_node {self.gpus_per_node}: 0 or more")
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps {self.steps}: at least 1")
        if self.backoff_limit < 0:
            problems.append(f"backoff_limit {self.backoff_limit}: 0 or more")
        if _cpu_cores(self.cpu) is None:
            problems.append(f"cpu {self.cpu!r}: a Kubernetes CPU quantity (e.g. 8, 7.5, 7500m)")
        if self.clean_pod_policy not in CLEAN_POD_POLICIES:
            problems.append(f"clean_pod_policy {self.clean_pod_policy!r}: one of "
                            f"{', '.join(CLEAN_POD_POLICIES)}")
        if problems:
            raise ValueError("invalid training job: " + "; ".join(problems))

    @property
    def procs_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    @property
    def threads_per_proc(self) -> int:
        """Intra-op threads per process: the pod's whole CPUs shared by its processes. Torch
        would otherwise start one thread per core of the node, not of the CPU limit, and the
        throttled threads of a CPU pod wait on each other."""
        return max(1, int((_cpu_cores(self.cpu) or 1) // self.procs_per_node))


def _cpu_cores(quantity: str) -> float | None:
    """Cores in a Kubernetes CPU quantity (``8``, ``7.5``, ``7500m``); None if it is not one."""
    text = str(quantity).strip()
    try:
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None
    return cores if cores > 0 else None


def build_pytorchjob(spec: TrainingJobSpec) -> dict[str, Any]:
    """The PyTorchJob for ``spec`` as a plain dict (``kubeflow.org/v1``)."""
    labels = {"app.kubernetes.io/name": "primer", "app.kubernetes.io/component": "training",
              "primer.dev/run": spec.name, **spec.labels}
    metadata: dict[str, Any] = {"name": spec.name}
    if spec.namespace:
        metadata["namespace"] = spec.namespace
    metadata["labels"] = labels
    replica_specs: dict[str, Any] = {"Master": _replica(spec, 1, labels)}
    if spec.nodes > 1:
        replica_specs["Worker"] = _replica(spec, spec.nodes - 1, labels)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(spec.procs_per_node),
            "runPolicy": {"backoffLimit": spec.backoff_limit,
                          "cleanPodPolicy": spec.clean_pod_policy},
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def to_yaml(obj: Mapping[str, Any]) -> str:
    """A manifest as YAML, keys in the order they were built (what ``--dry-run`` prints)."""
    return yaml.safe_dump(dict(obj), sort_keys=False, default_flow_style=False)


def _command(spec: TrainingJobSpec) -> list[str]:
    command = ["torchrun", "--nproc-per-node", str(spec.procs_per_node), "-m", "model.train",
               "--preset", spec.preset, "--data", spec.data, "--output", spec.output,
               "--resume", "auto"]
    if spec.steps is not None:
        command += ["--steps", str(spec.steps)]
    return command


def pod_env(s3_endpoint: str | None, s3_secret: str) -> list[dict[str, Any]]:
    """The environment of every Primer job pod: a writable HOME, unbuffered logs, and the S3
    endpoint and credentials (from a Secret, never inline); shared by every builder here."""
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"},  # root fs is read-only
                                 {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if s3_endpoint:
        env.append({"name": "PRIMER_S3_ENDPOINT", "value": s3_endpoint})
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": s3_secret,
                                                                "key": key}}})
    return env


def _replica(spec: TrainingJobSpec, replicas: int, labels: Mapping[str, str]) -> dict[str, Any]:
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": spec.cpu, "memory": spec.memory},
        "limits": {"cpu": spec.cpu, "memory": spec.memory},
    }
    if spec.gpus_per_node:
        gpus = str(spec.gpus_per_node)
        resources["requests"]["nvidia.com/gpu"] = gpus
        resources["limits"]["nvidia.com/gpu"] = gpus
    container = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": _command(spec),
        "env": [*pod_env(spec.s3_endpoint, spec.s3_secret),
                {"name": "OMP_NUM_THREADS", "value": str(spec.threads_per_proc)}],
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                                    "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
                ],
            },
        },
    }
