"""The embedded-mode executor: a process pool on this machine, with a rich progress bar.

Processes come from the ``forkserver`` context: forking a process that already runs threads
(the S3 client's, the progress bar's) can deadlock, and ``spawn`` re-imports everything per
worker. Each worker gets the environment of the ``run`` call (S3 endpoint, credentials),
not the one the fork server happened to start with.

A worker that dies hard (``os._exit``, a segfault, the OOM killer) breaks the whole pool and
every unit in flight with it, without saying which one killed it. So at most ``workers``
units are in flight, and after a break each of them is rerun alone in a fresh pool: the one
that dies again is reported as failed, the others complete, and the remaining units go on.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from primer.errors import plain_traceback, short_error
from primer.executor.base import (
    Executor,
    Job,
    JobResult,
    ProgressBar,
    UnitFailure,
    UnitOutcome,
    WorkUnit,
    log,
    report,
    run_unit_captured,
    skipped_outcomes,
)
from primer.storage import open_storage

_DIED = ("the worker process died while running this unit (os._exit, a crash, or killed by "
         "a signal such as the OOM killer)")


def _init_worker(environ: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(environ)


class LocalExecutor(Executor):
    """Runs units in ``workers`` processes; ``workers=1`` runs them in this process (for a
    debugger; a unit that calls ``os._exit`` then ends this process too)."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)

    def run(self, job: Job, *, progress: bool = True) -> JobResult:
        result = JobResult(job.name)
        with ProgressBar(job, enabled=progress) as bar:
            for outcome in skipped_outcomes(job, open_storage(job.state_uri)):
                report(job, result, outcome, ran_now=False)
                bar.advance(outcome)
            todo = [u for u in job.units if u.id not in result.results]
            log.info("job %s: running %d units (%d skipped) on %d local workers", job.name,
                     len(todo), len(result.skipped), self.workers, extra={"job": job.name})
            outcomes = (self._in_process(job, todo) if self.workers == 1
                        else self._in_pool(job, todo))
            for outcome in outcomes:
                report(job, result, outcome)
                bar.advance(outcome)
        log.info(result.summary(), extra={"job": job.name})
        return result

    def _in_process(self, job: Job, units: list[WorkUnit]) -> Iterator[UnitOutcome | UnitFailure]:
        for unit in units:
            yield run_unit_captured(unit, job.state_uri, job.name)

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=_init_worker, initargs=(dict(os.environ),))

    def _in_pool(self, job: Job, units: list[WorkUnit]) -> Iterator[UnitOutcome | UnitFailure]:
        queue = deque(units)
        while queue:
            suspects: list[WorkUnit] = []
            pool = self._pool(self.workers)
            in_flight: dict[Future, WorkUnit] = {}
            try:
                while (queue and not suspects) or in_flight:
                    while queue and not suspects and len(in_flight) < self.workers:
                        unit = queue.popleft()
                        in_flight[pool.submit(run_unit_captured, unit, job.state_uri,
                                              job.name)] = unit
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        unit = in_flight.pop(future)
                        try:
                            outcome = future.result()
                        except BrokenProcessPool:
                            suspects.append(unit)
                            continue
                        except Exception as exc:
                            outcome = UnitFailure(unit.id, short_error(exc),
                                                  plain_traceback(exc))
                        yield outcome
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if suspects:
                log.warning("job %s: a worker process died; rerunning %d units one by one to "
                            "find it: %s", job.name, len(suspects),
                            ", ".join(u.id for u in suspects), extra={"job": job.name})
            for unit in suspects:
                yield self._alone(job, unit)

    def _alone(self, job: Job, unit: WorkUnit) -> UnitOutcome | UnitFailure:
        """Run ``unit`` in a pool of its own, so a dead process is surely its own."""
        pool = self._pool(1)
        try:
            return pool.submit(run_unit_captured, unit, job.state_uri, job.name).result()
        except BrokenProcessPool:
            return UnitFailure(unit.id, f"WorkerDied: {_DIED}", "")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
