"""The S3 writer cuts any sequence of writes into exact parts, copying each byte at most once.

Against the real S3 server (SeaweedFS); the part uploads are observed by wrapping the minio
client's own part call, which still does the upload.
"""

from __future__ import annotations

import os
import tracemalloc

import pytest

from primer.storage import open_storage
from primer.storage.s3 import PARALLEL_PARTS, S3Storage

PART = 5 << 20  # S3's minimum part size


@pytest.fixture
def store(s3_bucket) -> S3Storage:
    store = open_storage(f"s3://{s3_bucket}/w")
    assert isinstance(store, S3Storage)
    store.part_size = PART
    return store


def _record_parts(store: S3Storage) -> dict[int, bytes]:
    """Part number -> the bytes uploaded as that part (copied, for the assertions)."""
    parts: dict[int, bytes] = {}
    upload = store.client._upload_part

    def recording(bucket, name, data, headers, upload_id, number):
        parts[number] = bytes(data)
        return upload(bucket, name, data, headers, upload_id, number)

    store.client._upload_part = recording  # an instance attribute, removed after the test
    return parts


@pytest.fixture
def parts(store):
    recorded = _record_parts(store)
    yield recorded
    del store.client._upload_part


def test_mixed_writes_become_exact_parts(store, parts):
    """Small writes, a multi-part bytes write, a multi-part bytearray and a tail: every part
    but the last is exactly one part long, in order, and the object reads back whole."""
    small = os.urandom(3 << 20)
    big = os.urandom(3 * PART + 777)
    mutable = bytearray(os.urandom(2 * PART + 5))
    mutable_then = bytes(mutable)
    tail = os.urandom(123)
    with store.open_write("obj") as f:
        f.write(small)
        f.write(big)
        f.write(mutable)
        mutable[:] = bytes(len(mutable))  # the caller may reuse its buffer once write returns
        f.write(memoryview(tail))
    expected = small + big + mutable_then + tail
    assert store.read_bytes("obj") == expected
    assert sorted(parts) == list(range(1, len(parts) + 1))
    sizes = [len(parts[i]) for i in sorted(parts)]
    assert sizes[:-1] == [PART] * (len(sizes) - 1)
    assert b"".join(parts[i] for i in sorted(parts)) == expected


def test_small_object_is_one_put(store, parts):
    with store.open_write("small") as f:
        f.write(b"abc")
        f.write(bytearray(b"def"))
    with store.open_write("empty"):
        pass
    assert store.read_bytes("small") == b"abcdef"
    assert store.read_bytes("empty") == b""
    assert parts == {}


def _peak_extra(write) -> int:
    """Peak bytes Python allocated while ``write`` ran, beyond what it started with."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        write()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.slow
def test_large_single_write_is_not_copied_again_per_part(store, kind):
    """A 64 MiB write in one call: bytes are sent as slices (no copy), a mutable buffer is
    copied one part at a time; the old writer held the data twice and re-copied the rest per
    part (peak > 2x the data)."""
    data = kind(os.urandom(64 << 20))

    def write():
        with store.open_write("big") as f:
            f.write(data)

    peak = _peak_extra(write)
    # bytes: only the buffer for the 4 MiB tail; bytearray: that plus the parts in flight.
    bound = 2 * PART if kind is bytes else (PARALLEL_PARTS + 2) * PART
    assert peak < bound, f"{kind.__name__}: peak {peak >> 20} MiB over {bound >> 20} MiB"
    assert store.stat("big").size == len(data)
    with store.open_read("big", offset=(64 << 20) - 1000) as f:
        assert f.read() == bytes(data[-1000:])
