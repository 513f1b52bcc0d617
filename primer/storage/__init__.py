"""URI-based storage: one interface for local paths, ``file://`` and ``s3://bucket/prefix``.

>>> store = open_storage("./primer-data")            # or "s3://bucket/runs"
>>> with store.open_write("a/b.txt") as f:           # published atomically on exit
...     f.write(b"hello")
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from primer.storage.base import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    StorageError,
    StorageUnavailableError,
    UnknownSchemeError,
    normalize_key,
)

__all__ = [
    "AccessDeniedError", "BucketNotFoundError", "ObjectInfo", "ObjectNotFoundError", "Storage",
    "StorageError", "StorageUnavailableError", "UnknownSchemeError", "normalize_key",
    "open_storage",
]

SCHEMES = ("file", "s3")


def open_storage(uri: str | os.PathLike[str]) -> Storage:
    """Open the storage rooted at ``uri``: a path, ``file://…`` or ``s3://bucket/prefix``."""
    uri = os.fspath(uri)
    if "://" not in uri:
        from primer.storage.local import LocalStorage

        return LocalStorage(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        from primer.storage.local import LocalStorage

        if parsed.netloc not in ("", "localhost"):
            raise UnknownSchemeError(f"{uri}: file:// URIs must name a local path "
                                     "(file:///abs/path), not a host")
        return LocalStorage(unquote(parsed.path))
    if parsed.scheme == "s3":
        from primer.storage.s3 import S3Storage

        if not parsed.netloc:
            raise StorageError(f"{uri}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        return S3Storage(parsed.netloc, parsed.path)
    raise UnknownSchemeError(
        f"{uri}: unknown storage scheme {parsed.scheme!r}; use a local path, file:// or s3://")

