"""What the Kubeflow Training Operator v1.9 does to a PyTorchJob's pods, reproduced for the
rehearsal (kubeflow/training-operator, branch release-1.9):

- defaulting, ``pkg/apis/kubeflow.org/v1/pytorch_defaults.go`` ``SetDefaults_PyTorchJob``:
  replicas 1, restartPolicy OnFailure, and the ``pytorch`` container gets port
  ``pytorchjob-port`` 23456 unless it names one (``setPyTorchDefaultPort``); ``nprocPerNode``
  defaults to "auto" (``setDefaultNprocPerNode``);
- the environment, ``pkg/controller.v1/pytorch/envvar.go`` ``setPodEnv`` (called from
  ``PyTorchJobReconciler.SetClusterSpec`` in ``pytorchjob_controller.go``), appended to every
  container: ``PYTHONUNBUFFERED=1``; with a Master replica, ``MasterEnvVarGenerator.Generate``
  (``master.go``): ``MASTER_PORT``, ``PET_MASTER_PORT`` (the Master's ``pytorchjob-port``),
  ``MASTER_ADDR``, ``PET_MASTER_ADDR`` (``<job>-master-0``, the Master's headless Service,
  ``replicaName``); then ``WORLD_SIZE`` (total replicas × nprocPerNode, ``getNprocPerNodeInt``),
  ``RANK`` and ``PET_NODE_RANK`` (the replica index, +1 for Workers); ``PET_NPROC_PER_NODE``
  when nprocPerNode is set; ``PET_NNODES`` (total replicas) without an elasticPolicy.
- pod names ``<job>-<replica type, lower case>-<index>`` (``replicaName``).
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_PORT = 23456
PORT_NAME = "pytorchjob-port"
CONTAINER = "pytorch"


def apply_defaults(job: dict[str, Any]) -> dict[str, Any]:
    """The job after the operator's defaulting (a copy)."""
    job = copy.deepcopy(job)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        replica.setdefault("replicas", 1)
        replica.setdefault("restartPolicy", "OnFailure")
        for container in replica["template"]["spec"]["containers"]:
            if container["name"] == CONTAINER and not any(
                    p.get("name") == PORT_NAME for p in container.get("ports") or []):
                container.setdefault("ports", []).append(
                    {"name": PORT_NAME, "containerPort": DEFAULT_PORT})
    if job["spec"].get("elasticPolicy") is None:
        job["spec"].setdefault("nprocPerNode", "auto")
    return job


def master_port(job: dict[str, Any]) -> int:
    container = next(c for c in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
                     ["spec"]["containers"] if c["name"] == CONTAINER)
    return next(p["containerPort"] for p in container["ports"] if p["name"] == PORT_NAME)


def pod_name(job: dict[str, Any], replica_type: str, index: int) -> str:
    return f"{job['metadata']['name']}-{replica_type.lower()}-{index}"


def operator_env(job: dict[str, Any], replica_type: str, index: int) -> list[dict[str, str]]:
    """The variables ``setPodEnv`` appends to a replica's containers (job already defaulted)."""
    spec = job["spec"]
    replicas = sum(r["replicas"] for r in spec["pytorchReplicaSpecs"].values())
    nproc = spec.get("nprocPerNode")
    nproc_int = int(nproc) if nproc and nproc.isdigit() else 1
    env = [("PYTHONUNBUFFERED", "1")]
    if "Master" in spec["pytorchReplicaSpecs"]:
        port, addr = str(master_port(job)), pod_name(job, "Master", 0)
        rank = index + 1 if replica_type == "Worker" else index
        env += [("MASTER_PORT", port), ("PET_MASTER_PORT", port), ("MASTER_ADDR", addr),
                ("PET_MASTER_ADDR", addr), ("WORLD_SIZE", str(replicas * nproc_int)),
                ("RANK", str(rank)), ("PET_NODE_RANK", str(rank))]
    if nproc is not None:
        env.append(("PET_NPROC_PER_NODE", nproc))
    if spec.get("elasticPolicy") is not None:
        raise NotImplementedError("elastic PyTorchJobs are not rehearsed")
    env.append(("PET_NNODES", str(replicas)))
    return [{"name": k, "value": v} for k, v in env]
