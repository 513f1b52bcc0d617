"""Status helpers shared by the handlers: phases, refusals, progress from markers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, TypeVar

import kopf

from primer.runs import TERMINAL, RunSpec, SpecError, parse_spec
from primer.storage import open_storage

GROUP, VERSION = "primer.dev", "v1alpha1"
M = TypeVar("M", bound=RunSpec)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def is_terminal(status: Any) -> bool:
    return (status or {}).get("phase") in TERMINAL


def refuse_invalid(model: type[M], spec: Any, patch: kopf.Patch) -> M:
    """The parsed spec; an invalid one marks the run Failed with the field-naming message."""
    try:
        return parse_spec(model, spec)
    except SpecError as e:
        finish(patch, "Failed", str(e))
        raise kopf.PermanentError(str(e)) from None


def finish(patch: kopf.Patch, phase: str, message: str) -> None:
    patch.status.update(phase=phase, message=message, completedAt=now())


def start(patch: kopf.Patch, phase: str, message: str, **fields: Any) -> None:
    patch.status.update(phase=phase, message=message, startedAt=now(), **fields)


def read_json(uri: str, key: str) -> dict[str, Any] | None:
    """A small JSON object from storage, or None if it is not there (yet)."""
    from primer.storage import ObjectNotFoundError

    try:
        return json.loads(open_storage(uri).read_text(key))
    except ObjectNotFoundError:
        return None
