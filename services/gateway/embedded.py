"""Embedded mode: the gateway drives each run's planner over Celery itself.

A background thread started with the app passes over the runs not yet ended every
``reconcile_seconds``. For each, under a per-run Redis lock (several gateway replicas never
tick one run at once), it resolves the run's spec with its component's planner and calls
:func:`primer.executor.plan.reconcile`: the current step's missing units go to the
component's queue once (task ids ``gateway.<run id>.<unit id>``), the workers run them and
write their markers, and the record gets the phase, progress, totals and outputs. Nothing
waits on a worker, so a gateway restart loses nothing: the next pass reads the markers.

Cancelling a run ends it (phase Cancelled) and removes its units still waiting in the queue;
a unit a worker already runs finishes, and no further step is sent: a record that ended is
never updated again (:meth:`RunStore.update` is conditional), and a tick that raced the
cancel removes what it sent. Each pass also appends the driver's events to the run's log
(step sent, step done, ended) and drops expired runs from the index.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import redis

from primer import progress
from primer.errors import one_line, plain_traceback, short_error
from primer.executor import Job
from primer.executor.base import Markers
from primer.executor.plan import RunFailed, Tick, planner, reconcile
from primer.executor.queue import QueueUnavailable, cancel, enqueue, task_prefix
from primer.runs import KINDS, TERMINAL, parse_spec
from primer.storage.base import StorageUnavailableError
from services.gateway.config import GatewayConfig
from services.gateway.models import Body, RunEnded, spec_of
from services.gateway.store import RunStore, now

log = logging.getLogger("primer.gateway")

#: Errors a later pass may not meet again (Redis, S3 or the broker down): the run stays as it
#: is, with the error shown in its progress. Anything else fails the run with its message.
TRANSIENT = (QueueUnavailable, StorageUnavailableError, redis.RedisError, ConnectionError,
             TimeoutError)


class EmbeddedRuns:
    """Runs as records in Redis, carried out by this process's :class:`Reconciler`."""

    def __init__(self, store: RunStore, config: GatewayConfig):
        self.store, self.config = store, config
        self.reconciler = Reconciler(store, config)

    def submit(self, run_id: str, body: Body, output: str) -> dict[str, Any]:
        component = body.component
        try:
            plan = planner(component)
        except RunFailed as exc:  # the component is not installed beside this gateway
            raise NotPlanned(str(exc)) from None
        spec = spec_of(body, output)
        plan.resolve(spec)  # a config the component refuses is a 422 now, not a Failed run
        record = {"id": run_id, "component": component, "phase": "Pending",
                  "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                  "output": spec.output, "queue": self.config.queues[component], "job": None,
                  "created_at": now(), "progress": {"detail": "waiting for the reconciler"},
                  "stats": {}, "outputs": {}, "error": None, "traceback": None}
        self.store.create(record, time.time())
        self.store.log(run_id, f"submitted: {component} run, units go to queue "
                               f"{record['queue']}")
        return record

    def get(self, run_id: str) -> dict[str, Any] | None:
        return self.store.get(run_id)

    def cancel(self, run_id: str) -> dict[str, Any] | None:
        """End the run as Cancelled and remove its waiting units; None if there is no such
        run, :class:`RunEnded` if it had ended already."""
        record = self.store.get(run_id)
        if record is None:
            return None
        if not self.store.update(run_id, phase="Cancelled", finished_at=now(),
                                 progress={**record["progress"], "detail": "cancelled"}):
            ended = self.store.get(run_id)
            if ended is None:
                return None
            raise RunEnded(run_id, ended["phase"], ended.get("finished_at"))
        removed = unqueue(record, self.config)
        self.store.log(run_id, f"cancelled: {removed} waiting units removed from queue "
                               f"{record['queue']}; units already running finish")
        return self.store.get(run_id)

    def logs(self, run_id: str) -> dict[str, Any] | None:
        """The driver's events and the units' failures; None if there is no such run."""
        record = self.store.get(run_id)
        if record is None:
            return None
        return {"events": self.store.events(run_id),
                "failures": progress.failures(record["output"])}

    def list(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        return self.store.list(limit, offset)


class NotPlanned(Exception):
    """A run kind no planner here drives."""


class Reconciler:
    def __init__(self, store: RunStore, config: GatewayConfig):
        self.store, self.config = store, config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._markers: dict[str, Markers] = {}
        """Per run id, while the run is active here: its markers are read once, not once
        per pass. A run that ends (or that another replica ends) drops its own."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="primer-reconciler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.reconcile_seconds):
            try:
                self.pass_once()
            except Exception:  # Redis away: log, and try again next pass
                log.exception("reconciler pass failed")

    def pass_once(self) -> None:
        """Tick every run not yet ended (those another replica holds are skipped); forget
        the expired ones."""
        self.store.prune()
        active = list(self.store.active())
        for run_id in set(self._markers) - set(active):
            del self._markers[run_id]
        for run_id in active:
            token = uuid.uuid4().hex
            # The lock outlives a slow tick (sending a big step) but not a dead replica.
            if not self.store.lock(run_id, token, ttl_s=max(60.0, 10 * self.config.
                                                            reconcile_seconds)):
                continue
            try:
                record = self.store.get(run_id)
                if record is not None and record["phase"] not in TERMINAL:
                    self.advance(record)
            finally:
                self.store.unlock(run_id, token)

    def advance(self, record: dict[str, Any]) -> None:
        """Tick the run and record what changed, unless it ended meanwhile (cancelled): then
        what this tick sent leaves the queue again."""
        run_id = record["id"]
        changes = self.tick(record)
        sent = changes.pop("sent", 0)
        if not self.store.update(run_id, **changes):
            unqueue(record, self.config)
            self._markers.pop(run_id, None)
            return
        if changes.get("phase") in TERMINAL:
            self._markers.pop(run_id, None)  # the run has ended: its markers may go
        for event in _events(record, changes, sent):
            self.store.log(run_id, event)

    def tick(self, record: dict[str, Any]) -> dict[str, Any]:
        """One step of one run: the fields of its record that change."""
        run_id, component = record["id"], record["component"]
        queue = record["queue"]
        markers = self._markers.setdefault(run_id, Markers())
        started = {} if record.get("started_at") else {"started_at": now()}

        def send(job: Job) -> int:
            return enqueue(job, queue, self.config.redis_url, task_prefix("gateway", run_id))

        try:
            plan = planner(component)
            tick = reconcile(plan, plan.resolve(parse_spec(KINDS[component], record["spec"])),
                             record.get("job"), send, markers)
        except TRANSIENT as exc:
            markers.clear_tick()
            return {"progress": {**record["progress"],
                                 "detail": f"will retry: {one_line(str(exc))}"}}
        except Exception as exc:  # the spec, its config or the plan is wrong: say so, stop
            log.warning("run %s failed: %s", run_id, exc)
            last = record["progress"]
            tick = Tick("Failed", record.get("job"), last.get("stage", ""),
                        last.get("units_done", 0), last.get("units_total", 0),
                        error=short_error(exc), traceback=plain_traceback(exc))
        changes: dict[str, Any] = {
            **started, "phase": tick.phase, "job": tick.job,
            "progress": {"units_done": tick.done, "units_total": tick.total,
                         "stage": tick.stage, "detail": f"step {tick.job}" if tick.job else ""},
            "sent": tick.sent}  # for the log (advance), not the record
        if tick.done != record["progress"].get("units_done") or tick.phase != "Running":
            changes["stats"] = _stats(record["output"], markers)
        markers.clear_tick()  # whole markers need not wait in memory for the next pass
        if tick.phase == "Succeeded":
            changes.update(finished_at=now(),
                           outputs=progress.outputs(component, record["output"]))
            done = changes["stats"].get("units_done", 0)
            changes["progress"].update(units_done=done, units_total=done)
        elif tick.phase == "Failed":
            changes.update(finished_at=now(), error=tick.error, traceback=tick.traceback)
            unqueue(record, self.config)
        return changes


def unqueue(record: dict[str, Any], config: GatewayConfig) -> int:
    """Remove the run's units still waiting in its queue; how many there were."""
    return cancel(record["queue"], config.redis_url, task_prefix("gateway", record["id"]))


def _events(record: dict[str, Any], changes: dict[str, Any], sent: int) -> list[str]:
    """What a tick did, in words, for the run's log."""
    events = []
    job, phase = changes.get("job"), changes.get("phase")
    detail = changes["progress"].get("detail", "")
    if detail.startswith("will retry") and detail != record["progress"].get("detail"):
        events.append(detail)
    if record.get("job") and "job" in changes and job != record["job"]:
        events.append(f"step {record['job']} done")
    if sent:
        events.append(f"step {job}: {sent} units sent to queue {record['queue']}")
    if phase == "Succeeded":
        events.append("succeeded")
    elif phase == "Failed":
        events.append(f"failed: {changes.get('error')}")
    return events


def _stats(output: str, markers: Markers) -> dict[str, Any]:
    try:
        return progress.unit_stats(output, markers)
    except Exception as exc:  # totals are best effort; the phase is recorded anyway
        return {"error": short_error(exc)}
