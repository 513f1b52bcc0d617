"""The one progress reader: what a run has done so far, from its output's completion markers
and manifests. The CLI's bars, the gateway's run records and the operator's status all read
it, so they agree.

Every component keeps its work units' markers under ``<output>/_work/**/_markers/`` (see
``primer.executor``), so counting them needs no knowledge of the component.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from primer.executor.base import Markers, failure_key
from primer.storage import ObjectNotFoundError, Storage, open_storage
from primer.teacher.client import LATENCY_BUCKETS


def _listed(output: str, markers: Markers) -> list[tuple[Storage, set[str]]]:
    """The states under ``<output>/_work`` this tick's listing shows: the planner's if it has
    listed them this tick (so a door lists the markers once per tick), else one scan."""
    work = open_storage(output.rstrip("/") + "/_work")

    def under() -> list[tuple[Storage, set[str]]]:
        return [(state, ids) for state, ids in markers.listed()
                if state.uri == work.uri or state.uri.startswith(work.uri + "/")]

    if not under():
        markers.scan(work)
    return under()


def units_done(output: str) -> int:
    """Markers written so far (one listing, no reads)."""
    return sum(len(ids) for _, ids in _listed(output, Markers()))


def unit_stats(output: str, markers: Markers | None = None) -> dict[str, Any]:
    """Totals over every marker: units done and failed, seconds, and the teacher's tokens,
    requests (answered, failed for good, retried) and latency.

    ``markers``: the run's :class:`~primer.executor.base.Markers`, kept by a door that polls
    (the operator's memo, the gateway's reconciler): this tick's listing is reused and each
    marker is read once per run."""
    markers = Markers() if markers is None else markers
    listed = _listed(output, markers)
    stats = {"units_done": sum(len(ids) for _, ids in listed),
             "units_failed": sum(len(markers.failed(state)) for state, _ in listed),
             "unit_seconds": 0.0, "tokens_generated": 0, "teacher_requests": 0,
             "teacher_failures": 0, "teacher_retries": 0, "teacher_seconds": 0.0,
             "teacher_latency_counts": [0] * (len(LATENCY_BUCKETS) + 1)}
    for state, ids in listed:
        for unit_id in sorted(ids):
            seconds, usage = markers.derive(state, f"stats/{unit_id}", [unit_id],
                                            lambda s=state, u=unit_id: _summed(markers, s, u))
            stats["unit_seconds"] += seconds
            if isinstance(usage, dict):
                _add_usage(stats, usage)
    return stats


def failures(output: str) -> list[dict[str, Any]]:
    """Every unit whose last attempt failed, oldest first: unit, job, error, host, failed_at
    and traceback (the records :func:`primer.executor.base.run_unit` writes)."""
    markers = Markers()
    markers.scan(open_storage(output.rstrip("/") + "/_work"))
    keys = [(state, failure_key(unit_id)) for state, _ in markers.listed()
            for unit_id in markers.failed(state)]
    found = []
    for state, key in keys:
        try:
            record = json.loads(state.read_text(key))
        except (ObjectNotFoundError, ValueError):  # the unit succeeded meanwhile, or a torn file
            continue
        found.append({k: str(record.get(k) or "") for k in
                      ("unit", "job", "error", "host", "failed_at", "traceback")})
    return sorted(found, key=lambda f: (f["failed_at"], f["job"], f["unit"]))

def _summed(markers: Markers, state: Storage, unit_id: str) -> tuple[float, Any]:
    """What the totals take from a marker (kept per run; the rest of a result can be large)."""
    marker = markers.marker(state, unit_id) or {}
    result = marker.get("result")
    return (float(marker.get("duration_s") or 0.0),
            result.get("usage") if isinstance(result, dict) else None)


def _add_usage(stats: dict[str, Any], usage: dict[str, Any]) -> None:
    stats["tokens_generated"] += int(usage.get("completion_tokens") or 0)
    stats["teacher_requests"] += int(usage.get("requests") or 0)
    stats["teacher_failures"] += int(usage.get("failures") or 0)
    stats["teacher_retries"] += int(usage.get("retries") or 0)
    stats["teacher_seconds"] += float(usage.get("latency_s") or 0.0)
    counts = usage.get("latency_counts")
    if isinstance(counts, list) and len(counts) == len(LATENCY_BUCKETS) + 1:
        stats["teacher_latency_counts"] = [
            a + int(b) for a, b in zip(stats["teacher_latency_counts"], counts, strict=True)]


def eta_seconds(started_at: str | None, done: int, total: int) -> int | None:
    """Seconds left at the rate so far (``started_at``: ISO 8601), None when unknown."""
    if not started_at or not done or done >= total:
        return None
    elapsed = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(
        started_at.replace("Z", "+00:00"))).total_seconds()
    return int(elapsed / done * (total - done))


def outputs(component: str, output: str) -> dict[str, Any]:
    """Where the results are: the dataset manifest's counts, or the evaluation summaries."""
    store = open_storage(output)
    found: dict[str, Any] = {"uri": store.uri}
    if component == "evaluation":
        summaries = {}
        for o in store.list():
            if o.key == "summary.json" or o.key.endswith("/summary.json"):
                summary = json.loads(store.read_text(o.key))
                summaries[summary.get("benchmark", o.key)] = {
                    k: v for k, v in summary.items() if k != "per_task"}
        found["summaries"] = summaries
        # as the operator's EvaluationRun status has it: the same field in either gateway mode
        found["passAt1"] = {b: s["pass@1"] for b, s in summaries.items() if "pass@1" in s}
        return found
    try:
        manifest = json.loads(store.read_text("_manifest.json"))
    except ObjectNotFoundError:
        return found
    found.update({k: manifest[k] for k in ("rows", "tokens", "drop_counts") if k in manifest})
    found["manifest"] = store.url("_manifest.json")
    return found
