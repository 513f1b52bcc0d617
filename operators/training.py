"""TrainingRun: a PyTorchJob from the builder ``primer train submit`` uses, owned by the run.

create/resume → :func:`submit_pytorchjob`; timer → :func:`mirror_pytorchjob` (conditions
and phase), :func:`record_checkpoint` (latest committed step) and, with ``evaluateEvery``,
:func:`evaluate_checkpoints`; delete → :func:`delete_pytorchjob`.
"""

from __future__ import annotations

import re
from typing import Any

import kopf

from operators import kube
from operators.config import DELETE_ATTEMPTS, POLL_SECONDS, RETRY_SECONDS, OperatorConfig
from operators.status import GROUP, VERSION, finish, is_terminal, refuse_invalid, start
from primer.k8s import API_VERSION, PLURAL, TrainingJobSpec, build_pytorchjob
from primer.runs import TrainingRun
from primer.storage import ObjectNotFoundError, StorageError, open_storage

#: PyTorchJob condition (the last one that is True) → TrainingRun phase.
PHASES = {"Created": "Pending", "Running": "Running", "Restarting": "Running",
          "Suspended": "Pending", "Succeeded": "Succeeded", "Failed": "Failed"}
_STEP = re.compile(r"^step-(\d+)$")


def pytorchjob_for(spec: TrainingRun, name: str, namespace: str,
                   config: OperatorConfig) -> dict[str, Any]:
    """The run's PyTorchJob (pure: spec → dict), exactly what ``primer train submit`` sends."""
    try:
        job_spec = TrainingJobSpec(
            name=name, image=spec.image or config.training_image, data=spec.data,
            output=spec.output, preset=spec.preset, nodes=spec.nodes,
            gpus_per_node=spec.gpus_per_node, steps=spec.steps, namespace=namespace,
            s3_secret=config.s3_secret, s3_endpoint=config.s3_endpoint, cpu=spec.cpu,
            memory=spec.memory, shm_size=spec.shm_size, backoff_limit=spec.backoff_limit,
            clean_pod_policy=spec.clean_pod_policy, labels=config.child_labels(name))
    except ValueError as e:  # e.g. a run name too long for its pods' names
        raise kopf.PermanentError(f"metadata.name / spec: {e}") from None
    return build_pytorchjob(job_spec)


@kopf.on.resume(GROUP, VERSION, "trainingruns")
@kopf.on.create(GROUP, VERSION, "trainingruns")
def submit_pytorchjob(spec, name, namespace, body, status, patch, **_):
    """Create the PyTorchJob (idempotent by name), owned by the run."""
    if is_terminal(status):
        return
    parsed = refuse_invalid(TrainingRun, spec, patch)
    try:
        job = pytorchjob_for(parsed, name, namespace, OperatorConfig.from_env())
    except kopf.PermanentError as e:
        finish(patch, "Failed", str(e), reason="InvalidSpec", status=status)
        raise
    kube.create_owned(job, PLURAL, body)
    if not (status or {}).get("job"):
        start(patch, "Pending", f"PyTorchJob {name} created", job=name, progress="submitted")


def phase_of(job: dict[str, Any]) -> tuple[str, str]:
    """(phase, message) from the PyTorchJob's conditions."""
    conditions = (job.get("status") or {}).get("conditions") or []
    current = [c for c in conditions if c.get("status") == "True"]
    if not current:
        return "Pending", "waiting for the Training Operator"
    last = current[-1]
    return PHASES.get(last.get("type"), "Running"), last.get("message") or last.get("type")


@kopf.timer(GROUP, VERSION, "trainingruns", interval=POLL_SECONDS, id="mirror_pytorchjob",
            when=lambda status, **_: bool((status or {}).get("job")) and not is_terminal(status))
def mirror_pytorchjob(spec, name, namespace, body, status, patch, memo, logger, **_):
    """The PyTorchJob's conditions and phase into the run's status; then checkpoints."""
    job = kube.get(API_VERSION, PLURAL, namespace, status["job"])
    if job is None:
        finish(patch, "Failed", f"PyTorchJob {status['job']} was deleted",
               reason="PyTorchJobDeleted", status=status)
        return
    phase, message = phase_of(job)
    conditions = (job.get("status") or {}).get("conditions") or []
    patch.status.update(phase=phase, message=message, conditions=conditions)
    if phase in ("Succeeded", "Failed"):
        reason = next((c.get("reason") for c in conditions if c.get("type") == "Failed"), "")
        finish(patch, phase, message, reason=reason or "PyTorchJobFailed")
    parsed = refuse_invalid(TrainingRun, spec, patch)
    step = record_checkpoint(parsed.output, patch, logger)
    if step is not None and parsed.evaluate_every:
        evaluate_checkpoints(parsed, name, namespace, body, step, status, patch)


def latest_checkpoint(output: str) -> int | None:
    """The newest committed step under ``<output>/checkpoints`` (``latest``, if committed)."""
    store = open_storage(output.rstrip("/") + "/checkpoints")
    try:
        match = _STEP.match(store.read_text("latest").strip())
    except ObjectNotFoundError:
        return None
    if match and store.exists(f"{match.group(0)}/COMMITTED"):
        return int(match.group(1))
    return None


def record_checkpoint(output: str, patch: kopf.Patch, logger) -> int | None:
    """Latest committed checkpoint into status; storage trouble is logged, not fatal."""
    try:
        step = latest_checkpoint(output)
    except (StorageError, OSError) as e:
        logger.warning(f"cannot read checkpoints of {output} (will retry): {e}")
        return None
    if step is not None:
        uri = f"{output.rstrip('/')}/checkpoints/step-{step}"
        patch.status.update(checkpoint={"step": step, "uri": uri}, progress=f"step {step}")
    return step


def steps_to_evaluate(step: int, every: int, evaluated: list[int]) -> list[int]:
    """The checkpoint to evaluate now: the latest one, if on the ``every`` grid and new."""
    return [step] if every and step % every == 0 and step not in evaluated else []


def evaluation_run_for(spec: TrainingRun, run: str, namespace: str, step: int
                       ) -> dict[str, Any]:
    """An EvaluationRun for checkpoint ``step`` of training run ``run`` (pure)."""
    out = spec.output.rstrip("/")
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EvaluationRun",
        "metadata": {"name": f"{run}-step-{step}", "namespace": namespace,
                     "labels": {"primer.dev/run": run, "primer.dev/step": str(step)}},
        "spec": {"checkpoint": f"{out}/checkpoints/step-{step}",
                 "output": f"{out}/eval/step-{step}",
                 "benchmarks": list(spec.evaluation.benchmarks),
                 "samples": spec.evaluation.samples},
    }


def evaluate_checkpoints(spec: TrainingRun, name, namespace, body, step, status, patch):
    evaluated = list((status or {}).get("evaluatedSteps") or [])
    for s in steps_to_evaluate(step, spec.evaluate_every, evaluated):
        run = evaluation_run_for(spec, name, namespace, s)
        kube.create_owned(run, "evaluationruns", body)
        evaluated.append(s)
    patch.status["evaluatedSteps"] = evaluated


@kopf.on.delete(GROUP, VERSION, "trainingruns", retries=DELETE_ATTEMPTS, backoff=RETRY_SECONDS)
def delete_pytorchjob(name, namespace, status, retry, logger, **_):
    """Delete the PyTorchJob and its pods (checkpoints stay); never hold the run forever."""
    try:
        kube.delete(API_VERSION, PLURAL, namespace, (status or {}).get("job") or name)
    except kopf.TemporaryError as e:
        if retry + 1 >= DELETE_ATTEMPTS:
            logger.warning(f"{e}; giving up: the garbage collector removes it by its owner")
            return
        raise
