"""CurationRun and GenerationRun: the component's planner says which units run; the operator
sends each step to the component's queue once and follows the markers.

create/resume and timer → :func:`reconcile_run` (one :func:`primer.executor.plan.reconcile`
tick: the planner's next step is sent unless it was already, status shows units, tokens and
ETA, and the run ends Succeeded with the commit unit's result or Failed with a unit's error);
delete → :func:`cancel_units` (the run's waiting units are removed from the queue).
"""

from __future__ import annotations

import re
from typing import Any

import kopf

from operators.config import DELETE_ATTEMPTS, POLL_SECONDS, RETRY_SECONDS, OperatorConfig
from operators.status import (
    GROUP,
    VERSION,
    finish,
    is_terminal,
    now,
    refuse_invalid,
    set_condition,
)
from primer import progress
from primer.config import ConfigError
from primer.errors import plain_traceback, short_error
from primer.executor import queue
from primer.executor.base import Markers
from primer.executor.consumers import Consumers, no_consumer
from primer.executor.plan import RunFailed, planner, reconcile
from primer.policy import ALLOWED_CONFIG, config_problems, endpoint_problems, run_kind
from primer.runs import S3_URI, CurationRun, GenerationRun
from primer.storage import StorageError

#: plural → (planner kind, spec model, queue chooser)
KINDS: dict[str, Any] = {
    "generationruns": ("generation", GenerationRun, lambda c: c.generation_queue),
    "curationruns": ("curation", CurationRun, lambda c: c.curation_queue),
}


def _running(status: Any, **_: Any) -> bool:
    return (status or {}).get("phase") in ("Pending", "Running")


@kopf.on.resume(GROUP, VERSION, "generationruns")
@kopf.on.create(GROUP, VERSION, "generationruns")
@kopf.on.resume(GROUP, VERSION, "curationruns")
@kopf.on.create(GROUP, VERSION, "curationruns")
def start_run(**kwargs):
    """A new (or, after an operator restart, resumed) run: its first tick."""
    reconcile_run(**kwargs)


@kopf.timer(GROUP, VERSION, "generationruns", interval=POLL_SECONDS, when=_running)
@kopf.timer(GROUP, VERSION, "curationruns", interval=POLL_SECONDS, when=_running)
def follow_run(**kwargs):
    reconcile_run(**kwargs)


def refuse_unsafe(spec: CurationRun | GenerationRun, config: OperatorConfig,
                  patch: kopf.Patch) -> None:
    """Fail the run, before anything is sent, if it asks for what the gateway would refuse: a
    config key off its kind's allow-list (the sandbox, a key's variable, a URI) or a teacher
    endpoint the operator does not list (:mod:`primer.policy`)."""
    parts = []
    if keys := [field for field, _ in config_problems(spec, spec.config)]:
        kind = run_kind(spec)
        parts.append(f"{', '.join(f'spec.{k}' for k in keys)}: not config keys a {kind} run "
                     f"may set")
    if isinstance(spec, GenerationRun) and spec.teacher.url:
        parts += [f"spec.{field}: {why}" for field, why in endpoint_problems(
            "teacher.url", spec.teacher.url, config.allowed_endpoints(),
            "the operator's PRIMER_TEACHER_URL and PRIMER_OPERATOR_ENDPOINTS")]
    if parts:
        if keys:  # last, as the status message may be clipped
            parts.append(f"a {kind} run may set: {', '.join(sorted(ALLOWED_CONFIG[kind]))}")
        message = "; ".join(parts)
        finish(patch, "Failed", message, reason="Refused")
        raise kopf.PermanentError(message)


def reconcile_run(spec, name, namespace, uid, status, patch, resource, memo, logger,
                  body=None, **_):
    """Send the planner's next step (once) and report where the run stands."""
    status = status or {}
    if is_terminal(status):
        return
    kind, model, queue_of = KINDS[resource.plural]
    parsed = refuse_invalid(model, spec, patch)
    if not re.match(S3_URI, parsed.output or ""):
        finish(patch, "Failed", "spec.output: give an s3:// URI (pods read and write S3)",
               reason="InvalidSpec")
        raise kopf.PermanentError("spec.output is not an s3:// URI")
    config = OperatorConfig.from_env()
    refuse_unsafe(parsed, config, patch)
    queue_name = status.get("queue") or queue_of(config)
    prefix = queue.task_prefix(namespace, name, uid[:8])
    plan = planner(kind)
    # Kept in the object's memo: each tick lists the markers once (the planner's listing is
    # the progress reader's too) and reads only the markers written since the last tick.
    markers = memo.setdefault("markers", Markers())
    try:
        target = plan.resolve(parsed)
        tick = reconcile(plan, target, status.get("job"),
                         lambda job: queue.enqueue(job, queue_name, config.redis_url, prefix),
                         markers)
        stats = progress.unit_stats(plan.output(target), markers)
    except (queue.QueueUnavailable, StorageError, OSError) as e:
        raise kopf.TemporaryError(short_error(e), delay=RETRY_SECONDS) from e
    except (ConfigError, RunFailed, ValueError) as e:  # the spec cannot be run as it is
        memo.pop("markers", None)
        finish(patch, "Failed", short_error(e), reason="InvalidRun",
               traceback=plain_traceback(e), status=status)
        raise kopf.PermanentError(short_error(e)) from e
    finally:
        markers.clear_tick()  # whole markers need not wait in memory for the next tick
    started = status.get("startedAt") or now()
    patch.status.update(
        phase="Running", startedAt=started, queue=queue_name, job=tick.job, stage=tick.stage,
        units={"done": tick.done, "total": tick.total}, tokens=stats["tokens_generated"],
        progress=f"{tick.stage}: {tick.done}/{tick.total} units",
        etaSeconds=progress.eta_seconds(started, tick.done, tick.total),
        message=status.get("message") if not tick.sent else
        f"{tick.stage}: {tick.sent} units sent to queue {queue_name}")
    if tick.sent:
        sent = f"{tick.job}: sent {tick.sent} units to {queue_name}"
        logger.info(sent)
        _event(body, "StepSent", sent)
    if (conditions := _waiting(status, queue_name, config.redis_url, tick.phase)) is not None:
        patch.status["conditions"] = conditions
    if tick.phase != "Running":
        memo.pop("markers", None)  # the run has ended: its markers need not stay in memory
    if tick.phase == "Succeeded":
        done = f"done: {_summary(tick.result or {})}"
        finish(patch, "Succeeded", done)
        _event(body, "Succeeded", done)
        patch.status.update(progress="done", outputs={
            k: v for k, v in (tick.result or {}).items() if isinstance(v, str | int | float)})
    elif tick.phase == "Failed":
        finish(patch, "Failed", tick.error or "a unit failed", reason="UnitFailed",
               traceback=tick.traceback, status=status)
        _event(body, "Failed", tick.error or "a unit failed", warning=True)


def _event(body: Any, reason: str, message: str, warning: bool = False) -> None:
    """An Event on the run: its log, read by the gateway (`primer runs logs`). kopf posts no
    logger lines by default (settings.posting.loggers), and its own chatter would drown them."""
    if body is not None:  # None: called outside the operator (tests of the planner doors)
        (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)


#: One per broker: the workers are asked at most every few seconds, whatever the runs.
_CONSUMERS: dict[str, Consumers] = {}


def _waiting(status: dict[str, Any], queue_name: str, redis_url: str,
             phase: str) -> list[dict[str, Any]] | None:
    """The run's conditions with ``Waiting`` True (reason NoConsumer, naming the queue and the
    worker command) while no worker consumes its queue, False once one does or the run ended;
    None when nothing changes or the workers cannot be asked."""
    conditions = status.get("conditions") or []
    was = any(c.get("type") == "Waiting" and c.get("status") == "True" for c in conditions)
    if phase != "Running":
        return set_condition(conditions, "Waiting", "False", "RunEnded", "the run has ended") \
            if was else None
    consumers = _CONSUMERS.setdefault(redis_url, Consumers(redis_url))
    try:
        idle = not consumers.counts()[queue_name]
    except Exception:  # the broker is away: the tick's own retry says so
        return None
    if idle:
        waiting = no_consumer(queue_name)
        return set_condition(conditions, "Waiting", "True", waiting["reason"],
                             waiting["message"])
    return set_condition(conditions, "Waiting", "False", "ConsumerFound",
                         f"a worker consumes queue {queue_name!r}") if was else None


def _summary(result: dict[str, Any]) -> str:
    keys = ("rows", "kept", "tokens", "estimated_tokens")
    return ", ".join(f"{k} {result[k]}" for k in keys if k in result) or "committed"


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
                               queue.task_prefix(namespace, name, uid[:8]))
    except queue.QueueUnavailable as e:
        if retry + 1 >= DELETE_ATTEMPTS:
            logger.warning(f"{e}; giving up: waiting units of {name} may still run")
            return
        raise kopf.TemporaryError(str(e), delay=RETRY_SECONDS) from e
    logger.info(f"removed {removed} waiting units of {name} from {queue_name}")
