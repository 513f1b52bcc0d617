"""Work units, jobs, completion markers and the :class:`Executor` interface.

A *work unit* is one shard of one step: an importable function (``"pkg.module:function"``)
and JSON arguments, so the same unit runs in a local process pool and in a Celery worker.
Units are idempotent. :func:`run_unit` is the one place a unit is run, by every executor:
it skips a unit whose completion marker exists, otherwise calls the function and then writes
``<state_uri>/_markers/<unit_id>.json`` atomically. The marker is written only after the
function returned, so a unit killed half-way runs again on the next attempt; its output must
therefore be published atomically too (``Storage.open_write`` does that).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime
import importlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from primer.errors import plain_traceback, short_error
from primer.storage import ObjectNotFoundError, Storage, open_storage

log = logging.getLogger("primer.executor")

MARKERS = "_markers"
FAILURES = "_failures"
_UNIT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one storage key segment, no "/"
_FN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
T = TypeVar("T")


@dataclass(frozen=True)
class WorkUnit:
    """One idempotent piece of a job."""

    id: str
    """Unique in the job; letters, digits, ``. _ -`` (it names the marker object)."""
    fn: str
    """Import path ``"package.module:function"``, resolvable in the worker process."""
    args: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable keyword arguments; the unit runs ``fn(**args)``."""

    def __post_init__(self) -> None:
        if not _UNIT_ID.fullmatch(self.id):
            raise ValueError(f"work unit id {self.id!r}: use letters, digits, '.', '_', '-'")
        if not _FN.fullmatch(self.fn):
            raise ValueError(f"work unit {self.id}: fn {self.fn!r} is not 'package.module:name'")
        try:  # checked here, not first on a Celery worker
            json.dumps(self.args)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"work unit {self.id}: args are not JSON-serialisable: {exc}") \
                from None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "fn": self.fn, "args": self.args}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkUnit:
        return cls(data["id"], data["fn"], dict(data.get("args") or {}))


@dataclass
class Job:
    """A named set of units whose completion markers live under ``state_uri``."""

    name: str
    units: list[WorkUnit]
    state_uri: str
    """Storage URI (path or ``s3://…``) for ``_markers/``; one per job (step), not shared."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for unit in self.units:
            if unit.id in seen:
                raise ValueError(f"job {self.name}: duplicate work unit id {unit.id!r}")
            seen.add(unit.id)


@dataclass(frozen=True)
class UnitOutcome:
    """A unit that completed: now (``skipped=False``) or in an earlier run (``skipped=True``)."""

    unit_id: str
    result: Any
    skipped: bool
    duration_s: float = 0.0


@dataclass(frozen=True)
class UnitFailure:
    """A unit that raised, or whose process died; it has no marker and runs again next time."""

    unit_id: str
    error: str
    """``"ExceptionType: message"``, one line (:func:`primer.errors.short_error`)."""
    traceback: str
    """The plain-text traceback from the process that ran the unit ("" if it died hard)."""


@dataclass
class JobResult:
    """What one ``Executor.run`` did. Lists hold unit ids, in completion order."""

    job: str
    done: list[str] = field(default_factory=list)
    """Units that ran now and wrote their marker."""
    skipped: list[str] = field(default_factory=list)
    """Units whose marker already existed, so nothing ran."""
    failed: list[UnitFailure] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    """The return value of every completed unit (done or skipped), by unit id."""

    @property
    def ok(self) -> bool:
        return not self.failed

    def add(self, outcome: UnitOutcome | UnitFailure) -> None:
        if isinstance(outcome, UnitFailure):
            self.failed.append(outcome)
            return
        (self.skipped if outcome.skipped else self.done).append(outcome.unit_id)
        self.results[outcome.unit_id] = outcome.result

    def summary(self) -> str:
        return (f"job {self.job}: {len(self.done)} done, {len(self.skipped)} skipped, "
                f"{len(self.failed)} failed")


# -- markers --------------------------------------------------------------------------------


def marker_key(unit_id: str) -> str:
    return f"{MARKERS}/{unit_id}.json"


def failure_key(unit_id: str) -> str:
    """Where the last failure of a unit is recorded (removed once the unit succeeds), so
    progress readers (the gateway, the operator) can count failed units without the logs."""
    return f"{FAILURES}/{unit_id}.json"


def failed_ids(state: Storage) -> set[str]:
    """Ids of the units whose last attempt failed (and that have not succeeded since)."""
    return set(_listed(state, FAILURES))


def completed_ids(state: Storage) -> set[str]:
    """Ids of every unit with a marker: one listing instead of one lookup per unit."""
    return set(_listed(state, MARKERS))


def _listed(state: Storage, folder: str) -> dict[str, int]:
    """``{unit id: object size}`` of the records in ``folder`` (one listing)."""
    suffix = ".json"
    return {o.key[len(folder) + 1:-len(suffix)]: o.size for o in state.list(folder + "/")
            if o.key.endswith(suffix)}


def read_marker(state: Storage, unit_id: str) -> dict[str, Any] | None:
    """The marker of ``unit_id`` (result, host, pid, duration_s, finished_at), or None."""
    try:
        return json.loads(state.read_text(marker_key(unit_id)))
    except ObjectNotFoundError:
        return None


def marker_result(state: Storage, unit_id: str) -> Any:
    """What a completed unit returned (kept in its marker); None if it has not completed."""
    return (read_marker(state, unit_id) or {}).get("result")


class Markers:
    """A run's markers as the planners and the progress reader see them, read once per run.

    A door that ticks (the operator every ``POLL_SECONDS``, the gateway every 2 s) keeps one
    of these per run; :func:`~primer.executor.plan.reconcile` starts each tick with
    :meth:`clear_tick`, and the door clears it again once the tick is over. Within a tick a
    state's markers are listed once and each marker is read at most once, whoever asks (the
    planner, ``reconcile``, the progress reader), while they fit in ``TICK_BYTES``. Across
    ticks, what was made from finished markers is kept (:meth:`result`, :meth:`derive`),
    because :func:`run_unit` writes a marker once and never rewrites it; whole markers are
    not (a batch's result can be large), so what a tick keeps is what the next tick needs.
    Without a kept instance (a new one per call) every marker is read again, as a planner
    that restarts must.

    What the cache cannot hide: a kept value is trusted only while this tick's listing shows
    each marker it was made from with the size it had then. A deleted marker (a user deleting
    the output to start over) drops out of the listing, so its unit counts as not done and
    everything made from it is forgotten; a marker written again later is read again.
    """

    #: Whole markers (bytes as listed) a tick keeps for its other readers. Past it a marker
    #: is read again when asked again, so a tick's memory does not grow with the run (a
    #: generation run's batch markers hold every record's near-dup keys).
    TICK_BYTES = 32 * 2**20

    def __init__(self) -> None:
        self._listings: dict[str, tuple[Storage, dict[str, int]]] = {}
        """This tick's listings: state URI → (state, {unit id: marker size})."""
        self._failures: dict[str, set[str]] = {}
        """This tick's failure records: state URI → unit ids."""
        self._read: dict[tuple[str, str], dict[str, Any] | None] = {}
        """This tick's markers read: (state URI, unit id) → marker (up to ``TICK_BYTES``)."""
        self._read_bytes = 0
        self._kept: dict[str, dict[str, tuple[dict[str, int | None], Any]]] = {}
        """For the run's life: state URI → {name: (marker sizes it was made from, value)}."""

    def clear_tick(self) -> None:
        """Forget this tick's listings and markers read (not what was kept from them): at
        the start of a tick, and at its end (whole markers need not wait for the next)."""
        self._listings.clear()
        self._failures.clear()
        self._read.clear()
        self._read_bytes = 0

    def done(self, state: Storage) -> set[str]:
        """Ids of the units of ``state`` with a marker (listed once per tick)."""
        return set(self._listing(state))

    def failed(self, state: Storage) -> set[str]:
        """Ids of the units of ``state`` whose last attempt failed (listed once per tick)."""
        if state.uri not in self._failures:
            self._failures[state.uri] = set(_listed(state, FAILURES))
        return self._failures[state.uri]

    def marker(self, state: Storage, unit_id: str) -> dict[str, Any] | None:
        """The marker of ``unit_id`` if this tick's listing shows it (read once per tick)."""
        if unit_id not in self._listing(state):
            return None
        if (state.uri, unit_id) in self._read:
            return self._read[state.uri, unit_id]
        marker = read_marker(state, unit_id)
        size = self._listing(state)[unit_id]
        if self._read_bytes + size <= self.TICK_BYTES:
            self._read[state.uri, unit_id] = marker
            self._read_bytes += size
        return marker

    def result(self, state: Storage, unit_id: str) -> Any:
        """What a completed unit returned, kept for the run (a stage's plan, a threshold);
        None if this tick's listing has no marker for it."""
        if unit_id not in self._listing(state):
            return None
        return self.derive(state, f"result/{unit_id}", [unit_id],
                           lambda: (self.marker(state, unit_id) or {}).get("result"))

    def derive(self, state: Storage, name: str, unit_ids: list[str],
               compute: Callable[[], T]) -> T:
        """``compute()``, a value made from the markers of ``unit_ids`` (all in this tick's
        listing), kept under ``name`` while each of them is listed as it was then: e.g. a
        planner's selection over its finished rounds, which costs more than the reads."""
        listing = self._listing(state)
        inputs = {unit_id: listing.get(unit_id) for unit_id in unit_ids}
        kept = self._kept.setdefault(state.uri, {})
        if name in kept and kept[name][0] == inputs and None not in inputs.values():
            return kept[name][1]
        value = compute()
        kept[name] = (inputs, value)
        return value

    def listed(self) -> list[tuple[Storage, set[str]]]:
        """The states listed this tick, with their completed unit ids."""
        return [(state, set(ids)) for state, ids in self._listings.values()]

    def scan(self, root: Storage) -> None:
        """List every state under ``root`` in one recursive listing (for a reader that does
        not know where a component keeps its markers)."""
        found: dict[str, dict[str, dict[str, int]]] = {}
        for o in root.list():
            head, _, name = o.key.rpartition("/")
            parent, _, folder = head.rpartition("/")
            if folder in (MARKERS, FAILURES) and name.endswith(".json"):
                found.setdefault(parent, {MARKERS: {}, FAILURES: {}})[folder][name[:-5]] = \
                    o.size
        for parent, records in found.items():
            state = root.child(parent) if parent else root
            self._remember(state, records[MARKERS])
            self._failures[state.uri] = set(records[FAILURES])

    def _listing(self, state: Storage) -> dict[str, int]:
        if state.uri not in self._listings:
            self._remember(state, _listed(state, MARKERS))
        return self._listings[state.uri][1]

    def _remember(self, state: Storage, listing: dict[str, int]) -> None:
        self._listings[state.uri] = (state, listing)
        kept = self._kept.get(state.uri, {})
        # Forget what was made from markers deleted (or rewritten) since.
        for name in [n for n, (inputs, _) in kept.items()
                     if any(listing.get(i) != size for i, size in inputs.items())]:
            del kept[name]


def skipped_outcomes(job: Job, state: Storage) -> Iterator[UnitOutcome]:
    """Outcomes for the units of ``job`` that already have a marker, with stored results."""
    done = completed_ids(state)
    for unit in job.units:
        if unit.id in done:
            marker = read_marker(state, unit.id) or {}
            yield UnitOutcome(unit.id, marker.get("result"), skipped=True)


# -- running one unit -----------------------------------------------------------------------


def resolve(fn: str):
    """Import ``"package.module:attr.path"`` and return the object."""
    module_name, _, attr = fn.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def run_unit(unit: WorkUnit, state_uri: str, job: str = "",
             worker: str | None = None) -> UnitOutcome:
    """Run ``unit`` unless its marker exists; write the marker after the function returns.

    ``worker`` names who ran it in the marker and failure record (a Celery worker's node
    name, ``w1@pod``); default: this host's name. Exceptions from the unit propagate (the
    caller reports them); no marker is written then.
    """
    host = worker or socket.gethostname()
    state = open_storage(state_uri)
    marker = read_marker(state, unit.id)
    if marker is not None:
        log.info("job %s unit %s: already done, skipped", job, unit.id,
                 extra={"job": job, "unit": unit.id})
        return UnitOutcome(unit.id, marker.get("result"), skipped=True)
    start = time.monotonic()
    try:
        result = resolve(unit.fn)(**unit.args)
    except Exception as exc:
        with contextlib.suppress(Exception):  # recording must not hide the unit's own error
            state.write_text(failure_key(unit.id), json.dumps({
                "job": job, "unit": unit.id, "fn": unit.fn, "error": short_error(exc),
                "traceback": plain_traceback(exc), "host": host,
                "failed_at": datetime.datetime.now(datetime.UTC).isoformat()}, indent=1))
        raise
    duration = time.monotonic() - start
    state.delete(failure_key(unit.id))  # an earlier failure is history now
    state.write_text(marker_key(unit.id), json.dumps({
        "job": job, "unit": unit.id, "fn": unit.fn, "result": result,
        "host": host, "pid": os.getpid(), "duration_s": round(duration, 3),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }, indent=1))
    log.info("job %s unit %s: done in %.2fs", job, unit.id, duration,
             extra={"job": job, "unit": unit.id, "duration_s": duration})
    return UnitOutcome(unit.id, result, skipped=False, duration_s=duration)


def run_unit_captured(unit: WorkUnit, state_uri: str, job: str = "") -> UnitOutcome | UnitFailure:
    """:func:`run_unit`, with an exception turned into a :class:`UnitFailure` (traceback as
    text, so nothing unpicklable has to cross a process boundary)."""
    try:
        return run_unit(unit, state_uri, job)
    except Exception as exc:
        return UnitFailure(unit.id, short_error(exc), plain_traceback(exc))


# -- the executor interface -----------------------------------------------------------------


class Executor(abc.ABC):
    """Runs every unit of a job; a failing unit never stops the others."""

    @abc.abstractmethod
    def run(self, job: Job, *, progress: bool = True) -> JobResult:
        """Run the units of ``job`` that have no marker; report done, skipped and failed."""


def report(job: Job, result: JobResult, outcome: UnitOutcome | UnitFailure,
           *, ran_now: bool = True) -> None:
    """Record ``outcome`` in ``result`` and log a failure with its traceback.

    ``ran_now``: the unit had no marker when the run began, so if it reports "skipped" its
    marker was written during this run (a retry after its process died past the marker, a
    redelivery of a finished unit): it counts as done, not skipped.
    """
    if ran_now and isinstance(outcome, UnitOutcome) and outcome.skipped:
        outcome = dataclasses.replace(outcome, skipped=False)
    result.add(outcome)
    if isinstance(outcome, UnitFailure):
        log.error("job %s unit %s failed: %s\n%s", job.name, outcome.unit_id, outcome.error,
                  outcome.traceback, extra={"job": job.name, "unit": outcome.unit_id})


class ProgressBar:
    """A rich progress bar over a job's units: done/total and a failure count."""

    def __init__(self, job: Job, enabled: bool = True):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
            TimeRemainingColumn(), disable=not enabled)
        self._task = self._progress.add_task(job.name, total=len(job.units), failed=0)
        self._failed = 0

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, outcome: UnitOutcome | UnitFailure) -> None:
        self._failed += isinstance(outcome, UnitFailure)
        self._progress.update(self._task, advance=1, failed=self._failed)

