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

from primer.storage import ObjectNotFoundError, open_storage
from primer.teacher.client import LATENCY_BUCKETS

MARKER_DIR = "/_markers/"
FAILURE_DIR = "/_failures/"  # primer.executor records a unit's last failure there


def _records(output: str, folder: str):
    store = open_storage(output.rstrip("/") + "/_work")
    return store, [o.key for o in store.list() if folder in f"/{o.key}"
                   and o.key.endswith(".json") and "/gateway/" not in f"/{o.key}"]


def _markers(output: str):
    return _records(output, MARKER_DIR)


def units_done(output: str) -> int:
    """Markers written so far (one listing, no reads)."""
    return len(_markers(output)[1])


def unit_stats(output: str, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Totals over every marker: units done and failed, seconds, and the teacher's tokens,
    requests (answered, failed for good, retried) and latency.

    ``cache`` (kept by a caller that polls, e.g. in the operator's memo) holds the markers
    already read: a marker never changes once written, so each is read once."""
    store, keys = _markers(output)
    cache = {} if cache is None else cache
    stats = {"units_done": len(keys), "units_failed": len(_records(output, FAILURE_DIR)[1]),
             "unit_seconds": 0.0, "tokens_generated": 0, "teacher_requests": 0,
             "teacher_failures": 0, "teacher_retries": 0, "teacher_seconds": 0.0,
             "teacher_latency_counts": [0] * (len(LATENCY_BUCKETS) + 1)}
    for key in keys:
        if key not in cache:  # keep only what is summed (results can be large)
            full = json.loads(store.read_text(key))
            result = full.get("result")
            cache[key] = {"duration_s": full.get("duration_s"), "result": {
                "usage": result.get("usage") if isinstance(result, dict) else None}}
        marker = cache[key]
        stats["unit_seconds"] += float(marker.get("duration_s") or 0.0)
        result = marker.get("result")
        usage = result.get("usage") if isinstance(result, dict) else None
        if isinstance(usage, dict):
            stats["tokens_generated"] += int(usage.get("completion_tokens") or 0)
            stats["teacher_requests"] += int(usage.get("requests") or 0)
            stats["teacher_failures"] += int(usage.get("failures") or 0)
            stats["teacher_retries"] += int(usage.get("retries") or 0)
            stats["teacher_seconds"] += float(usage.get("latency_s") or 0.0)
            counts = usage.get("latency_counts")
            if isinstance(counts, list) and len(counts) == len(LATENCY_BUCKETS) + 1:
                stats["teacher_latency_counts"] = [
                    a + int(b) for a, b in zip(stats["teacher_latency_counts"], counts,
                                               strict=True)]
    return stats


def failures(output: str) -> list[dict[str, Any]]:
    """Every unit whose last attempt failed, oldest first: unit, job, error, host, failed_at
    and traceback (the records :func:`primer.executor.base.run_unit` writes)."""
    store, keys = _records(output, FAILURE_DIR)
    found = []
    for key in keys:
        try:
            record = json.loads(store.read_text(key))
        except (ObjectNotFoundError, ValueError):  # the unit succeeded meanwhile, or a torn file
            continue
        found.append({k: str(record.get(k) or "") for k in
                      ("unit", "job", "error", "host", "failed_at", "traceback")})
    return sorted(found, key=lambda f: (f["failed_at"], f["job"], f["unit"]))


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
        return found
    try:
        manifest = json.loads(store.read_text("_manifest.json"))
    except ObjectNotFoundError:
        return found
    found.update({k: manifest[k] for k in ("rows", "tokens", "drop_counts") if k in manifest})
    found["manifest"] = store.url("_manifest.json")
    return found
