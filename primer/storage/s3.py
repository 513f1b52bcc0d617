"""S3 storage (MinIO, SeaweedFS, AWS, any S3 API) through the ``minio`` client.

Configuration comes from the environment, never from a config file in git:

- ``PRIMER_S3_ENDPOINT``: ``http://host:port`` or ``https://host`` (default: AWS S3);
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (optional ``AWS_SESSION_TOKEN``,
  ``AWS_REGION``);
- ``PRIMER_S3_RETRIES``: attempts for a transient failure (default 5), with exponential
  backoff and jitter.

Writes stream into a multipart upload fed from a bounded queue, so at most a few parts are in
memory; the object appears only when the upload completes and is aborted on error.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import InvalidResponseError, S3Error, ServerError

from primer.storage.base import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    StorageError,
    StorageUnavailableError,
    normalize_key,
)

T = TypeVar("T")

PART_SIZE = 16 << 20  # 16 MiB: few requests per GiB, small enough to keep 3-4 in memory
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
               "ExpiredToken", "AllAccessDisabled"}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "RequestTimeTooSkewed", "OperationAborted", "Throttling"}
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)

_clients: dict[tuple, Minio] = {}
_clients_lock = threading.Lock()


def s3_client() -> Minio:
    """The shared client for the endpoint and credentials in the environment."""
    endpoint = os.environ.get("PRIMER_S3_ENDPOINT", "https://s3.amazonaws.com")
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StorageError(
            f"PRIMER_S3_ENDPOINT={endpoint!r} is not an http(s)://host[:port] address")
    access = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    token = os.environ.get("AWS_SESSION_TOKEN")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    key = (parsed.netloc, parsed.scheme, access, secret, token, region)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=10, read=300),
                maxsize=16,
                # Part uploads and GETs are retried here (their bodies are in memory);
                # whole operations are retried by _retry below.
                retries=urllib3.Retry(total=3, connect=1, backoff_factor=0.2,
                                      status_forcelist=[500, 502, 503, 504]),
            )
            client = Minio(parsed.netloc, access_key=access, secret_key=secret,
                           session_token=token, secure=parsed.scheme == "https",
                           region=region, http_client=http)
            _clients[key] = client
    return client


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix``."""

    def __init__(self, bucket: str, prefix: str = "", client: Minio | None = None,
                 part_size: int = PART_SIZE):
        self.bucket = bucket
        self.prefix = normalize_key(prefix)
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client or s3_client()
        self.part_size = part_size
        self.attempts = max(1, int(os.environ.get("PRIMER_S3_RETRIES", "5")))

    def _name(self, key: str) -> str:
        key = normalize_key(key)
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def url(self, key: str) -> str:
        name = self._name(key)
        return f"s3://{self.bucket}/{name}".rstrip("/")

    # -- errors and retries ---------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], T], key: str = "",
               attempts: int | None = None) -> T:
        """Run ``fn``, retrying transient failures with backoff; map errors to StorageError."""
        where = self.url(key) if key else self.uri
        attempts = attempts or self.attempts
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except S3Error as exc:
                if exc.code in _TRANSIENT_CODES and attempt < attempts:
                    _backoff(attempt)
                    continue
                raise self._map_s3_error(exc, what, where) from None
            except (ServerError, InvalidResponseError, *_NETWORK_ERRORS) as exc:
                if attempt < attempts:
                    _backoff(attempt)
                    continue
                raise StorageUnavailableError(
                    f"{what} {where} failed after {attempt} attempts: cannot reach the S3 "
                    f"endpoint {self.client._base_url.host} ({type(exc).__name__}: {exc}); "
                    "check PRIMER_S3_ENDPOINT and that the server is running") from None
        raise AssertionError("unreachable")

    def _map_s3_error(self, exc: S3Error, what: str, where: str) -> StorageError:
        if exc.code == "NoSuchBucket":
            return BucketNotFoundError(
                f"{what} {where}: bucket {self.bucket!r} does not exist at "
                f"{self.client._base_url.host}; create it first (e.g. `mc mb`)")
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return ObjectNotFoundError(f"{what} {where}: no such object")
        if exc.code in _AUTH_CODES:
            return AccessDeniedError(
                f"{what} {where}: the S3 server refused the credentials ({exc.code}); "
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        return StorageError(f"{what} {where}: S3 error {exc.code}: {exc.message}")

    # -- primitives -----------------------------------------------------------------------------

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        name = self._name(key)
        size = self.stat(key).size  # fails clearly for a missing key or bucket
        return io.BufferedReader(_S3Reader(self, key, name, size, offset), 1 << 20)

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        writer = _S3Writer(self, key, self._name(key))
        try:
            yield writer  # type: ignore[misc]
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        st = self._retry("stat", lambda: self.client.stat_object(self.bucket, name), key)
        return ObjectInfo(normalize_key(key), int(st.size or 0))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = prefix.replace("\\", "/").lstrip("/")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        if self.prefix and not prefix:
            full = self.prefix + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0

        def fetch() -> list[ObjectInfo]:
            return [ObjectInfo(o.object_name[cut:], int(o.size or 0))
                    for o in self.client.list_objects(self.bucket, prefix=full, recursive=True)
                    if not o.is_dir]

        yield from sorted(self._retry("list", fetch, prefix), key=lambda o: o.key)

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._retry("delete", lambda: self.client.remove_object(self.bucket, name), key)

    def copy(self, src: str, dst: str) -> None:
        size = self.stat(src).size
        if size > 5 << 30:  # server-side CopyObject is limited to 5 GiB; stream instead
            with self.open_read(src) as fin, self.open_write(dst) as fout:
                while chunk := fin.read(self.part_size):
                    fout.write(chunk)
            return
        source = CopySource(self.bucket, self._name(src))
        self._retry("copy to", lambda: self.client.copy_object(self.bucket, self._name(dst),
                                                               source), dst)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (used by tests, demos and `primer doctor`)."""
        if not self._retry("check bucket", lambda: self.client.bucket_exists(self.bucket)):
            self._retry("create bucket", lambda: self.client.make_bucket(self.bucket))


def _backoff(attempt: int) -> None:
    time.sleep(min(8.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.5))


class _S3Reader(io.RawIOBase):
    """A raw stream over one object; a dropped connection resumes with a ranged GET."""

    def __init__(self, storage: S3Storage, key: str, name: str, size: int, offset: int):
        self._s, self._key, self._name, self._size = storage, key, name, size
        self._pos = offset
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._failures = 0

    def readable(self) -> bool:
        return True

    # Seeking drops the open response; the next read starts a ranged GET there. This is what
    # Parquet needs (footer first, then column chunks) without downloading the whole object.
    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        pos = max(0, base + offset)
        if pos != self._pos:
            self._drop()
            self._pos = pos
        return pos

    def _open(self) -> urllib3.BaseHTTPResponse:
        pos = self._pos
        return self._s._retry("read", lambda: self._s.client.get_object(
            self._s.bucket, self._name, offset=pos), self._key)

    def readinto(self, b) -> int:  # type: ignore[override]
        if self._pos >= self._size or len(b) == 0:
            return 0
        while True:
            if self._resp is None:
                self._resp = self._open()
            try:
                n = self._resp.readinto(b)
            except _NETWORK_ERRORS as exc:
                self._drop()
                self._failures += 1
                if self._failures >= self._s.attempts:
                    raise StorageUnavailableError(
                        f"reading {self._s.url(self._key)} failed at byte {self._pos}: {exc}"
                    ) from None
                _backoff(self._failures)
                continue
            if n == 0 and self._pos < self._size:
                self._drop()  # connection closed early: resume from where we are
                self._failures += 1
                if self._failures >= self._s.attempts:
                    raise StorageError(f"{self._s.url(self._key)} ended at byte {self._pos} "
                                       f"of {self._size}")
                continue
            self._pos += n
            return n

    def _drop(self) -> None:
        if self._resp is not None:
            with contextlib.suppress(Exception):
                self._resp.close()
                self._resp.release_conn()
            self._resp = None

    def close(self) -> None:
        self._drop()
        super().close()


class _Abort(Exception):
    """Raised inside the uploader thread to make minio abort the multipart upload."""


class _S3Writer(io.RawIOBase):
    """A writable stream that feeds ``put_object`` on a background thread, part by part."""

    _EOF = object()
    _ABORT = object()

    def __init__(self, storage: S3Storage, key: str, name: str):
        self._s, self._key, self._name = storage, key, name
        self._part = storage.part_size
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._leftover = memoryview(b"")
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._upload, name=f"s3-put-{key}", daemon=True)
        self._thread.start()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self._check()
        data = bytes(b)
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= self._part:
            self._flush_parts()
        return len(data)

    def _flush_parts(self) -> None:
        blob = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        view = memoryview(blob)
        while len(view) >= self._part:
            self._put(bytes(view[: self._part]) if len(view) > self._part else blob)
            view = view[self._part:]
        self._pending = [bytes(view)] if len(view) else []
        self._pending_len = len(view)

    def _put(self, item) -> None:
        while True:
            self._check()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _check(self) -> None:
        if self._error is not None:
            if isinstance(self._error, StorageError):
                raise self._error
            raise StorageError(f"writing {self._s.url(self._key)} failed: "
                               f"{type(self._error).__name__}: {self._error}")

    # The uploader side: put_object reads from us as from a file.
    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if len(self._leftover):
            out = self._leftover[:n] if n >= 0 else self._leftover
            self._leftover = self._leftover[len(out):]
            return bytes(out)
        item = self._queue.get()
        if item is self._EOF:
            return b""
        if item is self._ABORT:
            raise _Abort()
        if n < 0 or n >= len(item):
            return item
        self._leftover = memoryview(item)[n:]
        return item[:n]

    def _upload(self) -> None:
        try:
            # One attempt: the stream cannot be rewound. Each part is retried by urllib3.
            self._s._retry("write", lambda: self._s.client.put_object(
                self._s.bucket, self._name, self, length=-1, part_size=self._part),
                self._key, attempts=1)
        except _Abort:
            pass
        except BaseException as exc:  # surfaced to the writer on its next call
            self._error = exc
            # Unblock a writer waiting on a full queue; its next _check raises.
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        if self._pending_len:
            self._put(b"".join(self._pending))
            self._pending, self._pending_len = [], 0
        self._put(self._EOF)
        self._thread.join()
        self._check()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(BaseException):
            self._put(self._ABORT)
        self._thread.join()

    def close(self) -> None:  # closing inside the with block is allowed; commit happens on exit
        pass

