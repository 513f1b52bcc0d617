"""CurationRun and GenerationRun: work units on the Celery queues, progress from markers.

create/resume → :func:`enqueue_units` (once: a resumed run whose units were sent is left
alone; units are idempotent anyway); timer → :func:`report_progress`; delete →
:func:`cancel_units` (the run's waiting units are removed from the queue).
"""

from __future__ import annotations

from typing import Any

import kopf

from operators import queue, units
from operators.config import DELETE_ATTEMPTS, POLL_SECONDS, RETRY_SECONDS, OperatorConfig
from operators.specs import CurationSpec, GenerationSpec
from operators.status import (
    GROUP,
    VERSION,
    count_done,
    eta_seconds,
    finish,
    is_terminal,
    refuse_invalid,
    start,
)
from primer.executor import Job
from primer.storage import StorageError

#: plural → (spec model, units builder, queue chooser)
KINDS: dict[str, Any] = {
    "generationruns": (GenerationSpec,
                       lambda s, c: units.generation_units(s, c.teacher_url),
                       lambda c: c.generation_queue),
    "curationruns": (CurationSpec, lambda s, c: units.curation_units(s),
                     lambda c: c.curation_queue),
}


def _job(plural: str, spec: Any, name: str, patch: kopf.Patch) -> Job:
    model, build, _ = KINDS[plural]
    parsed = refuse_invalid(model, spec, patch)
    return Job(name, build(parsed, OperatorConfig.from_env()), units.state_uri(parsed.output))


def _running(status: Any, **_: Any) -> bool:
    return (status or {}).get("phase") in ("Pending", "Running")


@kopf.on.resume(GROUP, VERSION, "generationruns")
@kopf.on.create(GROUP, VERSION, "generationruns")
@kopf.on.resume(GROUP, VERSION, "curationruns")
@kopf.on.create(GROUP, VERSION, "curationruns")
def enqueue_units(spec, name, namespace, uid, status, patch, resource, logger, **_):
    """Send the run's units to its queue (once; a resumed run that has them is left alone)."""
    if is_terminal(status) or (status or {}).get("units"):
        return
    job = _job(resource.plural, spec, name, patch)
    config = OperatorConfig.from_env()
    queue_name = KINDS[resource.plural][2](config)
    try:
        sent = queue.enqueue(job, queue_name, config.redis_url,
                             queue.task_prefix(namespace, name, uid))
    except queue.QueueUnavailable as e:
        raise kopf.TemporaryError(str(e), delay=RETRY_SECONDS) from e
    start(patch, "Running", f"{sent} units sent to queue {queue_name}", queue=queue_name,
          units={"done": 0, "total": sent}, progress=f"0/{sent} units")
    logger.info(f"sent {sent} units to {queue_name}")


@kopf.timer(GROUP, VERSION, "generationruns", interval=POLL_SECONDS, when=_running)
@kopf.timer(GROUP, VERSION, "curationruns", interval=POLL_SECONDS, when=_running)
def report_progress(spec, name, namespace, uid, status, patch, resource, memo, logger, **_):
    """Units done/total, tokens and ETA from the completion markers; Succeeded when all done."""
    job = _job(resource.plural, spec, name, patch)
    try:
        done, tokens = count_done(job.state_uri, {u.id for u in job.units}, memo)
    except (StorageError, OSError) as e:
        raise kopf.TemporaryError(f"cannot read progress from {job.state_uri}: {e}",
                                  delay=RETRY_SECONDS) from e
    total = len(job.units)
    patch.status.update(units={"done": done, "total": total}, tokens=tokens,
                        progress=f"{done}/{total} units",
                        etaSeconds=eta_seconds(status.get("startedAt"), done, total))
    if done < total:
        return
    if resource.plural == "curationruns":
        finish(patch, "Succeeded", f"all {total} units done")
        return
    # A generation run ends with one more unit: later rounds, if needed, and the commit.
    if count_done(job.state_uri, {units.FINISH_ID}, memo)[0]:
        finish(patch, "Succeeded", f"all {total} units done; dataset committed")
    elif not status.get("finishing"):
        config = OperatorConfig.from_env()
        parsed = GenerationSpec.model_validate(dict(spec))
        last = Job(name, [units.generation_finish_unit(parsed, config.teacher_url)],
                   job.state_uri)
        try:
            queue.enqueue(last, status.get("queue") or config.generation_queue,
                          config.redis_url, queue.task_prefix(namespace, name, uid))
        except queue.QueueUnavailable as e:
            raise kopf.TemporaryError(str(e), delay=RETRY_SECONDS) from e
        patch.status.update(finishing=True, message="first round done; finishing "
                                                    "(later rounds if needed, then the commit)")


@kopf.on.delete(GROUP, VERSION, "generationruns", retries=DELETE_ATTEMPTS, backoff=RETRY_SECONDS)
@kopf.on.delete(GROUP, VERSION, "curationruns", retries=DELETE_ATTEMPTS, backoff=RETRY_SECONDS)
def cancel_units(name, namespace, uid, status, retry, logger, **_):
    """Remove the run's waiting units from its queue; with Redis gone, give up after a few
    attempts rather than keep the object (its units are idempotent and harmless)."""
    queue_name = (status or {}).get("queue")
    if not queue_name:
        return  # nothing was sent
    config = OperatorConfig.from_env()
    try:
        removed = queue.cancel(queue_name, config.redis_url,
                               queue.task_prefix(namespace, name, uid))
    except queue.QueueUnavailable as e:
        if retry + 1 >= DELETE_ATTEMPTS:
            logger.warning(f"{e}; giving up: waiting units of {name} may still run")
            return
        raise kopf.TemporaryError(str(e), delay=RETRY_SECONDS) from e
    logger.info(f"removed {removed} waiting units of {name} from {queue_name}")
