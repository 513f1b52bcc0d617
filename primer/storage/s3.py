"""S3 storage (MinIO, SeaweedFS, AWS, any S3 API) through the ``minio`` client.

Configuration comes from the environment, never from a config file in git:

- ``PRIMER_S3_ENDPOINT``: ``http://host:port`` or ``https://host`` (default: AWS S3);
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (optional ``AWS_SESSION_TOKEN``,
  ``AWS_REGION``);
- ``PRIMER_S3_RETRIES``: attempts for a transient failure (default 5), with exponential
  backoff and jitter.

Writes stream into a multipart upload, a few parts in flight, so memory stays at a few parts;
the object appears only when the upload completes, and the upload is aborted on error.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.datatypes import Part
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
PARALLEL_PARTS = 3  # parts in flight per writer, as minio's own put_object
READ_CHUNK = 1 << 20  # the most one urllib3 read asks for (what a dropped connection costs)
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
                if exc.code not in _TRANSIENT_CODES:
                    raise self._map_s3_error(exc, what, where) from None
                if attempt < attempts:
                    _backoff(attempt)
                    continue
                raise StorageUnavailableError(
                    f"{what} {where} failed after {attempt} attempts: the S3 server at "
                    f"{self.client._base_url.host} kept answering {exc.code} ({exc.message})"
                ) from None
            except (ServerError, InvalidResponseError, *_NETWORK_ERRORS) as exc:
                if attempt < attempts:
                    _backoff(attempt)
                    continue
                raise StorageUnavailableError(
                    f"{what} {where} failed after {attempt} attempts: "
                    f"{_describe_unavailable(exc, self.client._base_url.host)}") from None
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

        def get() -> urllib3.BaseHTTPResponse | None:
            try:
                return self.client.get_object(self.bucket, name, offset=offset)
            except S3Error as exc:
                if exc.code == "InvalidRange":  # offset at or past the end: nothing to read
                    return None
                raise

        # One GET, no HEAD first: the response says how big the object is.
        resp = self._retry("read", get, key)
        if resp is None:
            size = self.stat(key).size
            return _S3Reader(self, key, name, size, max(offset, size))  # type: ignore[return-value]
        size = _object_size(resp, offset)
        etag = resp.headers.get("ETag")
        # Unbuffered on purpose: reads return whole (urllib3 buffers), so a BufferedReader
        # would only add a copy. Small reads are the caller's to batch.
        return _S3Reader(self, key, name, size, offset, resp, etag)  # type: ignore[return-value]

    @contextlib.contextmanager
    def open_write(self, key: str, durable: bool = True) -> Iterator[BinaryIO]:
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


def _describe_unavailable(exc: BaseException, host: str) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, urllib3.exceptions.ResponseError) or isinstance(exc, ServerError):
        # The server answered, with 5xx every time (urllib3 retried them already).
        return f"the S3 server at {host} kept answering with server errors ({reason or exc})"
    return (f"cannot reach the S3 endpoint {host} ({type(exc).__name__}: {exc}); check "
            "PRIMER_S3_ENDPOINT and that the server is running")


def _object_size(resp: urllib3.BaseHTTPResponse, offset: int) -> int:
    """The whole object's size from a (possibly ranged) GET response."""
    content_range = resp.headers.get("Content-Range", "")  # "bytes 10-99/100"
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    return offset + int(resp.headers.get("Content-Length", "0"))


def _backoff(attempt: int) -> None:
    time.sleep(min(8.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.5))


class _S3Reader(io.RawIOBase):
    """A raw stream over one object; a dropped connection resumes with a ranged GET."""

    def __init__(self, storage: S3Storage, key: str, name: str, size: int, offset: int,
                 resp: urllib3.BaseHTTPResponse | None = None, etag: str | None = None):
        self._s, self._key, self._name, self._size = storage, key, name, size
        self._pos = offset
        self._resp = resp
        self._etag = etag  # every resumed GET must be of this version (If-Match)
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
        pos, s = self._pos, self._s
        headers = {"If-Match": self._etag} if self._etag else None

        def get() -> urllib3.BaseHTTPResponse:
            try:
                return s.client.get_object(s.bucket, self._name, offset=pos,
                                           request_headers=headers)
            except S3Error as exc:
                if exc.code == "PreconditionFailed":  # overwritten since the read began
                    raise StorageError(
                        f"{s.url(self._key)} changed while it was being read (at byte {pos} "
                        "of the old version); read it again") from None
                raise

        return s._retry("read", get, self._key)

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        """Up to ``n`` bytes (all the rest for -1), short only at the end of the object."""
        if n is None or n < 0:
            n = self._size - self._pos
        out: list[bytes] = []
        want = min(n, max(0, self._size - self._pos))
        while want:
            chunk = self._read_some(want)
            out.append(chunk)
            want -= len(chunk)
        return out[0] if len(out) == 1 else b"".join(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _read_some(self, want: int) -> bytes:
        while True:
            if self._resp is None:
                self._resp = self._open()
            try:
                # Capped: when a body is cut, urllib3 drops what one read() had buffered, so
                # large reads would lose (and fetch again) everything since the last return.
                data = self._resp.read(min(want, READ_CHUNK))
                n = len(data)
            except _NETWORK_ERRORS as exc:
                self._drop()
                self._failures += 1
                if self._failures >= self._s.attempts:
                    raise StorageUnavailableError(
                        f"reading {self._s.url(self._key)} failed at byte {self._pos}: {exc}"
                    ) from None
                _backoff(self._failures)
                continue
            if n == 0:
                self._drop()  # connection closed early: resume from where we are
                self._failures += 1
                if self._failures >= self._s.attempts:
                    raise StorageError(f"{self._s.url(self._key)} ended at byte {self._pos} "
                                       f"of {self._size}")
                continue
            self._pos += n
            self._failures = 0  # a budget per dropped connection, not per object
            return data

    def _drop(self) -> None:
        if self._resp is not None:
            with contextlib.suppress(Exception):
                self._resp.close()
                self._resp.release_conn()
            self._resp = None

    def close(self) -> None:
        self._drop()
        super().close()


class _S3Writer(io.RawIOBase):
    """A writable stream that uploads full parts on a few threads while the caller writes.

    Small objects (under one part) go up in one PutObject on commit. Larger ones become a
    multipart upload: each full part is sent as soon as it is buffered, with at most
    ``PARALLEL_PARTS`` in flight, so memory stays at a few parts whatever the object's size.
    The part calls are minio's own (``_create_multipart_upload`` and friends, pinned with
    ``minio<8``): its public ``put_object`` needs a readable stream, not a writer.
    """

    def __init__(self, storage: S3Storage, key: str, name: str):
        self._s, self._key, self._name = storage, key, name
        self._part = storage.part_size
        self._buf: bytearray | None = None  # the part being filled; handed off when full
        self._fill = 0
        self._upload_id: str | None = None
        self._parts: list[Future[str]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(PARALLEL_PARTS)
        self._done = False

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        """Buffer ``b`` into parts, copying each byte at most once (never for ``bytes``).

        A write larger than a part is cut into memoryview slices: whole parts of an immutable
        ``bytes`` go up without a copy; those of a mutable buffer (the caller may reuse it once
        this returns) are copied once each, as they are sent. Only the tail shorter than a part
        is copied into the part buffer.
        """
        if self._done:
            raise ValueError(f"write to {self._s.url(self._key)} after it was committed")
        view = memoryview(b).cast("B")
        n, pos = len(view), 0
        if self._fill:  # top up the part already started
            pos = self._copy_in(view)
        while n - pos >= self._part:
            piece = view[pos:pos + self._part]
            self._send(piece if isinstance(b, bytes) else bytes(piece))
            pos += self._part
        if pos < n:
            self._copy_in(view[pos:])
        return n

    def _copy_in(self, view: memoryview) -> int:
        """Copy as much of ``view`` as fits into the part buffer; send the part when full."""
        if self._buf is None:
            self._buf = bytearray(self._part)
        take = min(len(view), len(self._buf) - self._fill)
        # Through a memoryview: bytearray slice assignment would copy the source first.
        memoryview(self._buf)[self._fill:self._fill + take] = view[:take]
        self._fill += take
        if self._fill == len(self._buf):
            buf, self._buf, self._fill = self._buf, None, 0
            self._send(buf)  # ownership passes to the upload: no copy
        return take

    def _take_tail(self) -> bytes | memoryview:
        """The partly filled part (for commit), without copying it."""
        buf, fill = self._buf, self._fill
        self._buf, self._fill = None, 0
        return memoryview(buf)[:fill] if buf is not None else b""

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        c, bucket, name = self._s.client, self._s.bucket, self._name
        if self._upload_id is None:
            self._upload_id = self._s._retry(
                "start upload of", lambda: c._create_multipart_upload(
                    bucket, name, {"Content-Type": "application/octet-stream"}), self._key)
            self._pool = ThreadPoolExecutor(PARALLEL_PARTS, thread_name_prefix="s3-part")
        for fut in self._parts:  # fail fast: a part that failed makes the rest pointless
            if fut.done() and fut.exception() is not None:
                fut.result()
        number, upload_id = len(self._parts) + 1, self._upload_id
        self._slots.acquire()  # blocks while PARALLEL_PARTS parts are in flight
        try:
            fut = self._pool.submit(
                self._s._retry, f"upload part {number} of",
                lambda: c._upload_part(bucket, name, data, None, upload_id, number), self._key)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _: self._slots.release())
        self._parts.append(fut)
        if len(self._parts) % 1000 == 0:  # S3 allows 10,000 parts: grow them to reach ~16 TiB
            self._part *= 2

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        c, bucket, name = self._s.client, self._s.bucket, self._name
        try:
            data = self._take_tail()
            if self._upload_id is None:
                # One PutObject with the buffer as its body (put_object would copy it again).
                self._s._retry("write", lambda: c._put_object(
                    bucket, name, data if len(data) else b"",
                    {"Content-Type": "application/octet-stream"}), self._key)
                return
            if data:
                self._send(data)
            etags = [fut.result() for fut in self._parts]
            parts = [Part(i + 1, etag) for i, etag in enumerate(etags)]
            upload_id = self._upload_id
            self._s._retry("complete upload of", lambda: c._complete_multipart_upload(
                bucket, name, upload_id, parts), self._key)
        except BaseException:
            self._abort_upload()
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buf, self._fill = None, 0
        self._abort_upload()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _abort_upload(self) -> None:
        for fut in self._parts:
            fut.cancel()
        for fut in self._parts:
            with contextlib.suppress(BaseException):
                fut.result()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(Exception):  # best effort; S3 lifecycle rules reap leftovers
                self._s.client._abort_multipart_upload(self._s.bucket, self._name, upload_id)

    def close(self) -> None:  # closing inside the with block is allowed; commit happens on exit
        pass
