"""Status helpers shared by the handlers: phases, refusals, progress from markers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, TypeVar

import kopf

from operators.specs import parse_spec
from primer.executor import completed_ids, read_marker
from primer.storage import open_storage

GROUP, VERSION = "primer.dev", "v1alpha1"
TERMINAL = ("Succeeded", "Failed")
M = TypeVar("M")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def is_terminal(status: Any) -> bool:
    return (status or {}).get("phase") in TERMINAL


def refuse_invalid(model: type[M], spec: Any, patch: kopf.Patch) -> M:
    """The parsed spec; an invalid one marks the run Failed with the field-naming message."""
    try:
        return parse_spec(model, spec)
    except kopf.PermanentError as e:
        finish(patch, "Failed", str(e))
        raise


def finish(patch: kopf.Patch, phase: str, message: str) -> None:
    patch.status.update(phase=phase, message=message, completedAt=now())


def start(patch: kopf.Patch, phase: str, message: str, **fields: Any) -> None:
    patch.status.update(phase=phase, message=message, startedAt=now(), **fields)


def count_done(state: str, unit_ids: set[str], memo: kopf.Memo) -> tuple[int, int]:
    """(units done, tokens) from the completion markers under ``state``.

    Raises the storage's error when it cannot be reached (the caller retries). Markers are
    read once each (a run's token count is kept in the operator's memo between polls).
    """
    store = open_storage(state)
    done = completed_ids(store) & unit_ids
    counted: dict[str, int] = memo.setdefault("tokens", {})
    for unit in done - counted.keys():
        result = (read_marker(store, unit) or {}).get("result") or {}
        tokens = result.get("tokens", 0) if isinstance(result, dict) else 0
        counted[unit] = sum(tokens) if isinstance(tokens, list) else int(tokens or 0)
    return len(done), sum(counted[u] for u in done)


def eta_seconds(started_at: str | None, done: int, total: int) -> int | None:
    if not started_at or not done or done >= total:
        return None
    elapsed = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(
        started_at.replace("Z", "+00:00"))).total_seconds()
    return int(elapsed / done * (total - done))


def read_json(uri: str, key: str) -> dict[str, Any] | None:
    """A small JSON object from storage, or None if it is not there (yet)."""
    from primer.storage import ObjectNotFoundError

    try:
        return json.loads(open_storage(uri).read_text(key))
    except ObjectNotFoundError:
        return None
