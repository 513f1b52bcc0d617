"""S3 storage under injected faults: a real SeaweedFS server behind tests.faulty_proxy.

Each test points PRIMER_S3_ENDPOINT at a fresh proxy and clears the module's client cache, so
the storage builds a real minio client (with its urllib3 Retry) that talks through the proxy.
Request counts are asserted, so a test cannot pass by never meeting the fault.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import pytest

import primer.storage.s3 as s3mod
from primer.storage import StorageError, StorageUnavailableError, open_storage
from tests.faulty_proxy import FaultyProxy, Request

ATTEMPTS = 3  # PRIMER_S3_RETRIES in these tests
HTTP_TRIES = 4  # urllib3.Retry(total=3) in s3_client(): 1 request + 3 retries per attempt


def is_part_upload(r: Request) -> bool:
    return r.method == "PUT" and "partNumber=" in r.target


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"f-{uuid.uuid4().hex[:12]}"
    s3_server.client().make_bucket(name)
    return name


@pytest.fixture
def proxy(s3_server, monkeypatch):
    with FaultyProxy(s3_server.endpoint) as p:
        monkeypatch.setenv("PRIMER_S3_ENDPOINT", p.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
        monkeypatch.setenv("PRIMER_S3_RETRIES", str(ATTEMPTS))
        monkeypatch.setattr(s3mod, "_clients", {})  # a new client, through this proxy
        yield p


@pytest.fixture
def backoffs(monkeypatch) -> list[int]:
    """Record _retry's backoffs (the attempts it made beyond the first) without sleeping."""
    calls: list[int] = []
    monkeypatch.setattr(s3mod, "_backoff", calls.append)
    return calls


def test_proxy_relays_keep_alive_traffic_unchanged(proxy, bucket, s3_server):
    store = open_storage(f"s3://{bucket}/p")
    data = os.urandom(300_000)
    for i in range(3):
        store.write_bytes(f"k{i}", data)
        assert store.read_bytes(f"k{i}") == data
    assert [o.key for o in store.list()] == ["k0", "k1", "k2"]
    # every request was seen, and they shared few connections (keep-alive was relayed)
    assert proxy.count("PUT") == 3 and proxy.count("GET") >= 4
    direct = s3_server.client().get_object(bucket, "p/k1")
    assert direct.read() == data


@pytest.mark.parametrize("op", ["stat", "write_bytes", "read_bytes"])
def test_two_slowdowns_then_success(proxy, bucket, s3_server, op):
    store = open_storage(f"s3://{bucket}/p")
    store.write_bytes("obj", b"payload")
    before = len(proxy.requests)
    proxy.fail_next(2, status=503, code="SlowDown")

    if op == "stat":
        assert store.stat("obj").size == 7
    elif op == "write_bytes":
        store.write_bytes("obj", b"new payload")
        assert s3_server.client().get_object(bucket, "p/obj").read() == b"new payload"
    else:
        assert store.read_bytes("obj") == b"payload"

    seen = proxy.requests[before:]
    # the two failed requests were sent again: the proxy saw them, and one more that went through
    first = seen[0]
    assert sum(1 for r in seen if (r.method, r.target) == (first.method, first.target)) == 3
    assert len(seen) == 3  # read_bytes is one GET: no HEAD first


def test_slowdown_on_post_is_retried_by_retry_loop(proxy, bucket, backoffs):
    # urllib3 never retries POST, so CreateMultipartUpload's SlowDown reaches _retry as S3Error
    store = open_storage(f"s3://{bucket}/p")
    store.part_size = 5 << 20
    data = os.urandom(6 << 20)
    proxy.fail_next(2, status=503, code="SlowDown", match=lambda r: r.method == "POST")
    store.write_bytes("big", data)
    assert hashlib.sha256(store.read_bytes("big")).digest() == hashlib.sha256(data).digest()
    assert backoffs == [1, 2]
    assert proxy.count("POST", lambda r: "?uploads" in r.target) == 3


@pytest.mark.parametrize("op", ["stat", "write_bytes", "read_bytes", "list"])
@pytest.mark.slow
def test_persistent_failure_names_the_uri(proxy, bucket, s3_server, backoffs, op):
    store = open_storage(f"s3://{bucket}/p")
    store.write_bytes("obj", b"payload")
    before = len(proxy.requests)
    proxy.fail_next(10_000, status=503, code="SlowDown")
    call = {"stat": lambda: store.stat("obj"), "read_bytes": lambda: store.read_bytes("obj"),
            "write_bytes": lambda: store.write_bytes("obj", b"x"), "list": lambda: store.list()}
    with pytest.raises(StorageError) as err:
        list(call[op]()) if op == "list" else call[op]()
    message = str(err.value)
    uri = f"s3://{bucket}/p" if op == "list" else f"s3://{bucket}/p/obj"
    assert uri in message, message
    assert isinstance(err.value, StorageUnavailableError)
    # every attempt of _retry was made, each with urllib3's own retries
    assert backoffs == list(range(1, ATTEMPTS))
    assert len(proxy.requests) - before == ATTEMPTS * HTTP_TRIES
    # and nothing was written (asked of the server itself, not through the proxy)
    assert s3_server.client().get_object(bucket, "p/obj").read() == b"payload"


def test_refused_connection_is_unavailable_and_names_the_uri(proxy, bucket, backoffs):
    store = open_storage(f"s3://{bucket}/p")
    proxy.refuse()
    with pytest.raises(StorageUnavailableError) as err:
        store.stat("gone")
    assert f"s3://{bucket}/p/gone" in str(err.value)
    assert "PRIMER_S3_ENDPOINT" in str(err.value)
    assert backoffs == list(range(1, ATTEMPTS))


def is_get(r: Request) -> bool:
    return r.method == "GET" and "?" not in r.target


# A read cut mid-body resumes from the byte it reached, with a ranged GET, whether the caller
# reads in small chunks or all at once (each urllib3 read is capped, so little is lost).
@pytest.mark.parametrize("chunk", [64 << 10, -1],
                         ids=["chunked-reads", "read-all"])
def test_dropped_download_resumes_with_a_ranged_get(proxy, bucket, s3_server, chunk):
    size, cut = 3 << 20, (1 << 20) + 12345
    data = os.urandom(size)
    s3_server.client().put_object(bucket, "p/blob", io.BytesIO(data), size)
    store = open_storage(f"s3://{bucket}/p")
    proxy.cut_next_response_after(cut, match=is_get)

    with store.open_read("blob") as f:
        if chunk < 0:
            got = f.read()
        else:
            got = b"".join(iter(lambda: f.read(chunk), b""))

    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    gets = [r for r in proxy.requests if is_get(r)]
    assert len(gets) == 2, gets
    assert "range" not in gets[0].headers
    # the resume asked only for what was missing: it may ask again for the read that was cut
    # short (a chunk), but not for what was already returned, and not from the start
    rng = gets[1].headers.get("range", "")
    assert rng.startswith("bytes=") and rng.endswith("-"), f"resume GET without Range: {rng!r}"
    start = int(rng[len("bytes="):-1])
    lowest = cut - chunk if chunk > 0 else cut // 2
    assert lowest <= start <= cut, (start, cut)


@pytest.mark.slow
def test_failed_multipart_write_publishes_nothing(proxy, bucket, s3_server, backoffs):
    store = open_storage(f"s3://{bucket}/p")
    store.part_size = 5 << 20
    old = os.urandom(100_000)
    store.write_bytes("obj", old)
    proxy.fail_next(10_000, status=500, code="InternalError", match=is_part_upload)

    with pytest.raises(StorageError) as err, store.open_write("obj") as f:
        for _ in range(12):
            f.write(os.urandom(1 << 20))
    assert f"s3://{bucket}/p/obj" in str(err.value)
    assert proxy.count(match=is_part_upload) >= ATTEMPTS * HTTP_TRIES  # it was retried
    assert proxy.count("POST", lambda r: "uploadId=" in r.target) == 0  # never completed
    assert proxy.count("DELETE", lambda r: "uploadId=" in r.target) == 1  # it was aborted

    direct = s3_server.client()  # the server itself, not through the proxy
    assert direct.get_object(bucket, "p/obj").read() == old
    assert direct.stat_object(bucket, "p/obj").size == len(old)
    uploads = direct._list_multipart_uploads(bucket, prefix="p/obj").uploads
    assert uploads == []


# A resumed GET is pinned to the version the read started on (If-Match with its ETag), so an
# overwrite between the drop and the resume is an error, never old bytes followed by new ones.
def test_resume_after_overwrite_never_splices_two_versions(proxy, bucket, s3_server):
    size = 3 << 20
    old, new = os.urandom(size), os.urandom(size)
    direct = s3_server.client()
    direct.put_object(bucket, "p/blob", io.BytesIO(old), size)
    store = open_storage(f"s3://{bucket}/p")
    proxy.cut_next_response_after(1 << 20, match=is_get)

    with pytest.raises(StorageError, match="changed while it was being read"):
        with store.open_read("blob") as f:
            got = f.read(64 << 10)
            direct.put_object(bucket, "p/blob", io.BytesIO(new), size)  # overwritten mid-read
            while f.read(64 << 10):
                pass
    assert got == old[: 64 << 10]
    assert proxy.count(match=is_get) == 2

