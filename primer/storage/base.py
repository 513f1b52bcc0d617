"""The storage interface every backend implements, and its errors.

A :class:`Storage` is rooted at a URI (``./primer-data``, ``file:///data``,
``s3://bucket/prefix``); every method takes a *key* relative to that root, with ``/`` as the
separator whatever the backend. Reads and writes stream: no method holds a whole large object
in memory except the explicit ``read_bytes`` / ``write_bytes`` conveniences.

Atomicity: ``open_write`` publishes the object only when the ``with`` block ends without an
exception. Until then readers see the old object or nothing; on an exception nothing is
published. Local disk writes a temporary file beside the target and renames it; S3 streams a
multipart upload, which the server makes visible only on completion, and aborts it on error.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class StorageError(Exception):
    """Base class of every storage error; the message says what failed and where."""


class UnknownSchemeError(StorageError, ValueError):
    """The URI's scheme is not one Primer can store to."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The key does not exist under the storage root."""


class BucketNotFoundError(StorageError):
    """The S3 bucket named in the URI does not exist."""


class AccessDeniedError(StorageError, PermissionError):
    """Credentials were rejected, or they do not allow the operation."""


class StorageUnavailableError(StorageError, ConnectionError):
    """The backend could not be reached, even after retries."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key relative to the storage root and its size in bytes."""

    key: str
    size: int


def normalize_key(key: str) -> str:
    """Return ``key`` as a clean relative key; refuse keys that escape the root."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise StorageError(f"key {key!r} must not contain '..'")
    return "/".join(parts)


class Storage(abc.ABC):
    """Streaming object storage rooted at :attr:`uri`."""

    #: The root URI this storage was opened with, normalised (no trailing slash).
    uri: str
    #: Whether a call is a system call on a local file system (tens of microseconds) rather
    #: than a network request: an event loop may then make small calls itself, which costs
    #: less than handing them to a thread (see primer.teacher's cache).
    local: bool = False

    @abc.abstractmethod
    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        """Open ``key`` for streaming reads from byte ``offset``.

        Raises :class:`ObjectNotFoundError` when the key does not exist.
        """

    @abc.abstractmethod
    def open_write(self, key: str, durable: bool = True
                   ) -> contextlib.AbstractContextManager[BinaryIO]:
        """A context manager yielding a writable stream; the object is published atomically
        when the block exits cleanly and discarded when it raises. ``durable=False`` is for
        what can be made again (a cache entry): the object is still published whole, but a
        crash of the host (not of the process) may lose it (local storage skips the fsync;
        an S3 PUT is durable once answered either way)."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size of ``key``; :class:`ObjectNotFoundError` when absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively), sorted by key."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error (idempotent)."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` inside this storage, atomically for ``dst``."""

    @abc.abstractmethod
    def url(self, key: str) -> str:
        """The full URI of ``key`` (a local path for local storage)."""

    # -- conveniences built on the primitives -------------------------------------------------

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def write_bytes(self, key: str, data: bytes, durable: bool = True) -> None:
        with self.open_write(key, durable) as f:
            f.write(data)

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str, durable: bool = True) -> None:
        self.write_bytes(key, text.encode("utf-8"), durable)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        keys = [o.key for o in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def move(self, src: str, dst: str) -> None:
        """Publish ``src`` as ``dst`` (copy then delete; local storage renames)."""
        self.copy(src, dst)
        self.delete(src)

    def download(self, directory: str | os.PathLike[str], prefix: str = "") -> Path:
        """Stream every object under ``prefix`` into ``directory`` (keys become paths); the
        folder, for what needs local files (a model's weights: GBs, never in memory)."""
        out = Path(directory).resolve()
        for info in self.list(prefix):
            target = (out / info.key).resolve()
            if not target.is_relative_to(out):  # an S3 key may say "../"
                raise StorageError(f"{self.url(info.key)}: the key leaves {out}; not written")
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.open_read(info.key) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        return out

    def child(self, prefix: str) -> Storage:
        """A storage rooted at ``prefix`` under this one."""
        from primer.storage import open_storage

        return open_storage(self.url(normalize_key(prefix)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

