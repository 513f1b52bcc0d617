"""Status helpers shared by the handlers: phases, refusals, progress from markers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, TypeVar

import kopf

from primer.errors import clip, one_line, plain
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
        finish(patch, "Failed", str(e), reason="InvalidSpec")
        raise kopf.PermanentError(str(e)) from None


def finish(patch: kopf.Patch, phase: str, message: str, *, reason: str = "",
           traceback: str | None = None, status: Any = None) -> None:
    """End the run. ``message`` is kept to one plain line; a longer one goes whole into
    ``status.traceback`` (with ``traceback``, when given). A failed run gets a ``Failed``
    condition with ``reason`` (CamelCase, as Kubernetes writes them) and the message; the
    other conditions (``status``'s, or those this patch sets) stay."""
    short = one_line(message)
    if traceback is None and short != message.strip():
        traceback = plain(message)
    patch.status.update(phase=phase, message=short, completedAt=now())
    if phase == "Failed":
        base = patch.status.get("conditions", (status or {}).get("conditions") or [])
        patch.status["conditions"] = set_condition(base, "Failed", "True",
                                                   reason or "Failed", short)
    if traceback:
        patch.status["traceback"] = clip(plain(traceback))


def set_condition(conditions: list[dict[str, Any]], type_: str, state: str, reason: str,
                  message: str) -> list[dict[str, Any]]:
    """``conditions`` with the one of ``type_`` replaced (its transition time kept when its
    state did not change), as a status's ``conditions`` list is kept in Kubernetes."""
    old = next((c for c in conditions if c.get("type") == type_), {})
    since = old.get("lastTransitionTime") if old.get("status") == state else None
    new = {"type": type_, "status": state, "reason": reason, "message": message,
           "lastTransitionTime": since or now()}
    return [c for c in conditions if c.get("type") != type_] + [new]


def start(patch: kopf.Patch, phase: str, message: str, **fields: Any) -> None:
    patch.status.update(phase=phase, message=message, startedAt=now(), **fields)


def read_json(uri: str, key: str) -> dict[str, Any] | None:
    """A small JSON object from storage, or None if it is not there (yet)."""
    from primer.storage import ObjectNotFoundError

    try:
        return json.loads(open_storage(uri).read_text(key))
    except ObjectNotFoundError:
        return None
