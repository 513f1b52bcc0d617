"""Run a job's idempotent work units locally (process pool) or on Celery workers.

>>> job = Job("tokenize", [WorkUnit(f"shard-{i:05d}", "pkg.steps:tokenize", {"shard": i})
...                        for i in range(8)], state_uri="./primer-data/runs/r1/tokenize")
>>> LocalExecutor(workers=4).run(job).ok          # or CeleryExecutor().run(job)
"""

from __future__ import annotations

from primer.executor.base import (
    Executor,
    Job,
    JobResult,
    UnitFailure,
    UnitOutcome,
    WorkUnit,
    completed_ids,
    failed_ids,
    failure_key,
    marker_key,
    marker_result,
    read_marker,
    run_unit,
)
from primer.executor.local import LocalExecutor

__all__ = [
    "CeleryExecutor", "Executor", "Job", "JobResult", "LocalExecutor", "UnitFailure",
    "UnitOutcome", "WorkUnit", "completed_ids", "failed_ids", "failure_key", "marker_key",
    "marker_result", "read_marker", "run_unit",
]


def __getattr__(name: str):
    # Celery is imported only by code that uses it (the CLI's local mode never does).
    if name == "CeleryExecutor":
        from primer.executor.celery_executor import CeleryExecutor

        return CeleryExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
