"""Planners: the one place a component says which units a run is made of.

A run is planned step by step. Given a run's resolved config, a component's
:class:`Planner` reads the progress so far (completion markers) and answers either the next
:class:`Step` (a :class:`Job` whose units have not all completed) or :class:`Done` (the run
is finished; its result). Planning is a pure function of the config and the markers, so every
door drives the same planner and gets the same units with the same arguments:

- the CLI drives it with an :class:`Executor` (local processes or Celery) — :func:`drive`;
- the operator's timers and the gateway's reconciler call :func:`reconcile` on every tick:
  it sends the step's missing units to the queue once and reports progress, and nothing
  waits on a worker.

Planners are found through the ``primer.planners`` entry-point group (kind → class), as the
CLI finds its sub-commands, so neither the gateway nor the operator imports a component.
"""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from primer.errors import MESSAGE_LIMIT, clip, one_line, plain
from primer.executor.base import (
    Executor,
    Job,
    Markers,
    failure_key,
    marker_result,
)
from primer.storage import ObjectNotFoundError, open_storage

log = logging.getLogger("primer.executor")

GROUP = "primer.planners"
C = TypeVar("C", bound=BaseModel)


class RunFailed(RuntimeError):
    """A step's units failed (or the plan cannot go on); the message says which and why."""


@dataclass(frozen=True)
class Step:
    """The units to run next. ``job.name`` is unique within the run (e.g. ``curate-read``,
    ``generate-textbooks-round-1``): the async doors remember it to send each step once."""

    job: Job
    stage: str = ""
    """A word for people: ``read``, ``round 2``, ``commit``."""


@dataclass(frozen=True)
class Done:
    """The run is finished; ``result`` is what its last unit returned (outputs, counts)."""

    result: dict[str, Any] = field(default_factory=dict)


class Planner(abc.ABC, Generic[C]):
    """A component's planner: run spec → config, then config + markers → next step."""

    kind: ClassVar[str]
    """The run kind (``curation``, ``generation``): the entry point's name."""

    @abc.abstractmethod
    def resolve(self, spec: BaseModel) -> C:
        """The component config a run spec (:mod:`primer.runs`) stands for."""

    @abc.abstractmethod
    def next(self, config: C, markers: Markers | None = None) -> Step | Done:
        """The next step of the run, from the markers written so far: read through
        ``markers`` (a door that ticks keeps one per run, so the results of finished steps
        are read once), or all again without it."""

    @abc.abstractmethod
    def output(self, config: C) -> str:
        """The run's output URI (its markers live under ``<output>/_work``)."""


def planner(kind: str) -> Planner:
    """The planner registered for ``kind`` in the ``primer.planners`` entry-point group."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if kind not in found:
        raise RunFailed(f"no planner for run kind {kind!r} (installed: "
                        f"{', '.join(sorted(found)) or 'none'}); is the component installed?")
    return found[kind].load()()


# -- the synchronous door: an executor runs each step --------------------------------------


def drive(plan: Planner[C], config: C, executor: Executor, *, progress: bool = True,
          on_step: Callable[[Step], None] | None = None) -> dict[str, Any]:
    """Run ``config``'s plan to the end with ``executor``; returns the final result."""
    last: str | None = None
    markers = Markers()  # each step's results are read once for the whole drive
    while True:
        markers.clear_tick()
        step = plan.next(config, markers)
        if isinstance(step, Done):
            return step.result
        if step.job.name == last:  # a planner bug would otherwise loop forever
            raise RunFailed(f"planner {plan.kind} asked for job {last} again after it ran")
        last = step.job.name
        if on_step is not None:
            on_step(step)
        result = executor.run(step.job, progress=progress)
        if not result.ok:
            first = result.failed[0]
            raise RunFailed(
                f"{step.job.name}: {len(result.failed)} of {len(step.job.units)} units failed; "
                f"first {first.unit_id}: {first.error}. Run the same command again to retry "
                f"only the failed units.\n{first.traceback}")


# -- the asynchronous doors: a reconciler sends each step once -----------------------------


@dataclass(frozen=True)
class Tick:
    """What one :func:`reconcile` call found and did."""

    phase: str
    """``Running``, ``Succeeded`` or ``Failed``."""
    job: str | None
    """The current step's job (remember it and pass it back as ``sent``)."""
    stage: str = ""
    done: int = 0
    total: int = 0
    sent: int = 0
    """Units sent to the queue by this call."""
    result: dict[str, Any] | None = None
    error: str | None = None
    """Why the run failed, in one line (:func:`primer.errors.short_error`)."""
    traceback: str | None = None
    """The plain-text traceback behind ``error``, when there is one."""


def reconcile(plan: Planner[C], config: C, sent: str | None,
              send: Callable[[Job], int], markers: Markers | None = None) -> Tick:
    """One tick of an asynchronous door: plan, send the step's missing units unless ``sent``
    (the job sent earlier) is this step's, and say where the run stands.

    A unit that failed on a worker (an exception: Celery does not redeliver it) fails the
    run with its error; sending a step clears its units' old failure records first, so a
    run resumed after a failure retries exactly the units that failed.

    ``markers``: the run's :class:`Markers`, kept by the door from tick to tick: this tick
    lists the markers once (pass the same object to :func:`primer.progress.unit_stats`
    after it) and reads only the markers written since the last tick.
    """
    markers = Markers() if markers is None else markers
    markers.clear_tick()
    step = plan.next(config, markers)
    if isinstance(step, Done):
        return Tick("Succeeded", None, "done", result=step.result)
    job = step.job
    state = open_storage(job.state_uri)
    ids = [u.id for u in job.units]
    done = markers.done(state) & set(ids)
    count = 0
    if job.name != sent:
        todo = [u for u in job.units if u.id not in done]
        for unit in todo:
            state.delete(failure_key(unit.id))
        count = send(Job(job.name, todo, job.state_uri))
        log.info("run step %s: sent %d units (%d already done)", job.name, count, len(done),
                 extra={"job": job.name})
    else:
        failed = sorted(markers.failed(state) & (set(ids) - done))
        if failed:
            error, trace = _failure_message(state, job, failed)
            return Tick("Failed", job.name, step.stage, len(done), len(ids), error=error,
                        traceback=trace)
    return Tick("Running", job.name, step.stage, len(done), len(ids), count)


def _failure_message(state, job: Job, failed: list[str]) -> tuple[str, str | None]:
    """(one line: the first failed unit's exception, then where; its plain traceback)."""
    try:
        record = json.loads(state.read_text(failure_key(failed[0])))
    except (ObjectNotFoundError, ValueError):
        record = {}
    # A record's error is already one line; plain() again for records older workers wrote.
    where = f" (unit {failed[0]} of step {job.name}; {len(failed)} unit(s) failed)"
    error = one_line(record.get("error") or "unknown error", MESSAGE_LIMIT - len(where))
    trace = record.get("traceback")
    return error + where, clip(plain(trace)) if trace else None


def unit_result(state_uri: str, unit_id: str) -> Any:
    """The stored result of a completed unit (from its marker); None if it has none."""
    return marker_result(open_storage(state_uri), unit_id)
