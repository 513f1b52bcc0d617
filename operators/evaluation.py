"""EvaluationRun: a Kubernetes Job running the sandboxed evaluator in a hardened pod.

create/resume → :func:`submit_evaluation_job`; timer → :func:`mirror_evaluation_job` (phase,
and pass@1 per benchmark from ``<output>/<benchmark>/summary.json`` when it succeeded);
delete → :func:`delete_evaluation_job`.
"""

from __future__ import annotations

from typing import Any

import kopf

from operators import kube
from operators.config import DELETE_ATTEMPTS, POLL_SECONDS, RETRY_SECONDS, OperatorConfig
from operators.status import (
    GROUP,
    VERSION,
    finish,
    is_terminal,
    read_json,
    refuse_invalid,
    start,
)
from primer.k8s.evaluation_job import API_VERSION, EvaluationJobSpec, build_evaluation_job
from primer.runs import EvaluationRun
from primer.storage import StorageError


def evaluation_job_for(spec: EvaluationRun, name: str, namespace: str,
                       config: OperatorConfig) -> dict[str, Any]:
    """The run's Job (pure: spec → dict)."""
    try:
        job_spec = EvaluationJobSpec(
            name=name, image=spec.image or config.evaluation_image, checkpoint=spec.checkpoint,
            output=spec.output, benchmarks=tuple(spec.benchmarks), samples=spec.samples,
            namespace=namespace, s3_secret=config.evaluation_s3_secret,
            s3_endpoint=config.s3_endpoint,
            cpu=spec.cpu, memory=spec.memory, gpus=spec.gpus,
            active_deadline_seconds=spec.active_deadline_seconds,
            backoff_limit=spec.backoff_limit, labels=config.child_labels(name))
    except ValueError as e:
        raise kopf.PermanentError(f"metadata.name / spec: {e}") from None
    return build_evaluation_job(job_spec)


@kopf.on.resume(GROUP, VERSION, "evaluationruns")
@kopf.on.create(GROUP, VERSION, "evaluationruns")
def submit_evaluation_job(spec, name, namespace, body, status, patch, **_):
    """Create the evaluation Job (idempotent by name), owned by the run."""
    if is_terminal(status):
        return
    parsed = refuse_invalid(EvaluationRun, spec, patch)
    try:
        job = evaluation_job_for(parsed, name, namespace, OperatorConfig.from_env())
    except kopf.PermanentError as e:
        finish(patch, "Failed", str(e), reason="InvalidSpec", status=status)
        raise
    kube.create_owned(job, "jobs", body)
    if not (status or {}).get("job"):
        start(patch, "Running", f"Job {name} created", job=name, progress="evaluating")


def job_outcome(job: dict[str, Any]) -> str | None:
    """Succeeded / Failed once the Job has a True Complete / Failed condition, else None."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded"
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    return None


def job_failure(job: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) of a failed Job, from its Failed condition (``BackoffLimitExceeded``,
    ``DeadlineExceeded``: what Kubernetes says went wrong)."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            reason = c.get("reason") or "JobFailed"
            detail = c.get("message") or ""
            return reason, f"evaluation Job failed: {reason}" + (f": {detail}" if detail else "")
    return "JobFailed", "evaluation Job failed"


def pass_at_1(spec: EvaluationRun) -> dict[str, float]:
    """pass@1 per benchmark from the evaluator's summaries (those written so far)."""
    scores = {}
    for bench in spec.benchmarks:
        summary = read_json(f"{spec.output.rstrip('/')}/{bench}", "summary.json") or {}
        if "pass@1" in summary:
            scores[bench] = float(summary["pass@1"])
    return scores


@kopf.timer(GROUP, VERSION, "evaluationruns", interval=POLL_SECONDS, id="mirror_evaluation_job",
            when=lambda status, **_: bool((status or {}).get("job")) and not is_terminal(status))
def mirror_evaluation_job(spec, namespace, status, patch, logger, **_):
    """Phase from the Job; pass@1 into status when it succeeded."""
    job = kube.get(f"{API_VERSION}", "jobs", namespace, status["job"])
    if job is None:
        finish(patch, "Failed", f"Job {status['job']} was deleted", reason="JobDeleted",
               status=status)
        return
    outcome = job_outcome(job)
    if outcome is None:
        return
    if outcome == "Failed":
        reason, message = job_failure(job)
        finish(patch, "Failed", message, reason=reason, status=status)
        return
    parsed = refuse_invalid(EvaluationRun, spec, patch)
    try:
        patch.status["passAt1"] = pass_at_1(parsed)
    except (StorageError, OSError) as e:
        raise kopf.TemporaryError(f"cannot read the report in {parsed.output}: {e}",
                                  delay=RETRY_SECONDS) from e
    finish(patch, "Succeeded", "evaluation Job succeeded")


@kopf.on.delete(GROUP, VERSION, "evaluationruns", retries=DELETE_ATTEMPTS, backoff=RETRY_SECONDS)
def delete_evaluation_job(name, namespace, status, retry, logger, **_):
    """Delete the Job and its pod; never hold the run forever."""
    try:
        kube.delete(API_VERSION, "jobs", namespace, (status or {}).get("job") or name)
    except kopf.TemporaryError as e:
        if retry + 1 >= DELETE_ATTEMPTS:
            logger.warning(f"{e}; giving up: the garbage collector removes it by its owner")
            return
        raise
