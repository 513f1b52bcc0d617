"""One storage suite, run against local disk and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading

import pytest

from primer.storage import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
    UnknownSchemeError,
    open_storage,
)
from primer.storage.local import LocalStorage
from primer.storage.s3 import S3Storage
from tests.servers import free_port


def test_round_trip_and_overwrite(storage_uri):
    store = open_storage(storage_uri)
    store.write_bytes("a/b/c.bin", b"first")
    assert store.read_bytes("a/b/c.bin") == b"first"
    store.write_text("a/b/c.bin", "second")
    assert store.read_text("a/b/c.bin") == "second"
    assert store.stat("a/b/c.bin").size == 6
    assert store.exists("a/b/c.bin") and not store.exists("a/b/missing")


def test_list_with_prefix_is_sorted_and_recursive(storage_uri):
    store = open_storage(storage_uri)
    for key in ["ds/part-00001.parquet", "ds/part-00000.parquet", "ds/_manifest.json",
                "ds/sub/x.txt", "other/y.txt", "dsx.txt"]:
        store.write_bytes(key, key.encode())
    assert [o.key for o in store.list("ds/")] == [
        "ds/_manifest.json", "ds/part-00000.parquet", "ds/part-00001.parquet", "ds/sub/x.txt"]
    # a prefix may end inside a name, as in S3
    assert [o.key for o in store.list("ds/part-")] == [
        "ds/part-00000.parquet", "ds/part-00001.parquet"]
    assert [o.key for o in store.list("ds")] == [
        "ds/_manifest.json", "ds/part-00000.parquet", "ds/part-00001.parquet", "ds/sub/x.txt",
        "dsx.txt"]
    assert len(list(store.list())) == 6
    assert list(store.list("nothing/")) == []


def test_delete_is_idempotent_and_delete_prefix(storage_uri):
    store = open_storage(storage_uri)
    store.write_bytes("d/1", b"1")
    store.write_bytes("d/2", b"2")
    store.write_bytes("keep", b"k")
    store.delete("d/1")
    store.delete("d/1")  # second delete of a missing key is fine
    assert not store.exists("d/1")
    assert store.delete_prefix("d/") == 1
    assert [o.key for o in store.list()] == ["keep"]


def test_missing_object_is_a_clear_error(storage_uri):
    store = open_storage(storage_uri)
    with pytest.raises(ObjectNotFoundError, match="nope"):
        store.open_read("nope")
    with pytest.raises(ObjectNotFoundError):
        store.stat("nope")


def test_failed_write_publishes_nothing_and_keeps_the_old_object(storage_uri):
    store = open_storage(storage_uri)
    store.write_bytes("obj", b"old")
    with pytest.raises(RuntimeError, match="boom"), store.open_write("obj") as f:
        f.write(b"new partial data" * 1000)
        raise RuntimeError("boom")
    assert store.read_bytes("obj") == b"old"
    with pytest.raises(RuntimeError), store.open_write("fresh") as f:
        f.write(b"x")
        raise RuntimeError("boom")
    assert not store.exists("fresh")
    assert [o.key for o in store.list()] == ["obj"]  # no temp debris is listed


def test_failed_multipart_write_is_aborted(storage_uri):
    """An error after several parts went up publishes nothing and keeps the old object."""
    store = open_storage(storage_uri)
    if isinstance(store, S3Storage):
        store.part_size = 5 << 20
    store.write_bytes("big", b"old")
    with pytest.raises(RuntimeError, match="boom"), store.open_write("big") as f:
        for _ in range(13):
            f.write(os.urandom(1 << 20))
        raise RuntimeError("boom")
    assert store.read_bytes("big") == b"old"
    assert [o.key for o in store.list()] == ["big"]


def test_object_is_invisible_until_the_write_commits(storage_uri):
    store = open_storage(storage_uri)
    with store.open_write("pending") as f:
        f.write(b"x" * 1024)
        assert not store.exists("pending")
    assert store.exists("pending")


def test_streaming_multipart_round_trip_with_offset(storage_uri):
    """Several parts, written in odd-sized chunks, read back with a checksum and an offset."""
    store = open_storage(storage_uri)
    if isinstance(store, S3Storage):
        store.part_size = 5 << 20  # S3's minimum part size: forces a 4-part upload
    chunk = os.urandom(1_000_003)
    digest = hashlib.sha256()
    with store.open_write("big.bin") as f:
        for i in range(18):
            data = chunk[i:] + chunk[:i]
            digest.update(data)
            f.write(data)
    size = 18 * len(chunk)
    assert store.stat("big.bin").size == size
    got = hashlib.sha256()
    with store.open_read("big.bin") as f:
        while block := f.read(777_777):
            got.update(block)
    assert got.hexdigest() == digest.hexdigest()
    with store.open_read("big.bin", offset=size - 10) as f:
        assert f.read() == (chunk[17:] + chunk[:17])[-10:]


def test_copy_and_move(storage_uri):
    store = open_storage(storage_uri)
    store.write_bytes("tmp/x", b"payload")
    store.copy("tmp/x", "copy/x")
    store.move("tmp/x", "final/x")
    assert store.read_bytes("copy/x") == b"payload" == store.read_bytes("final/x")
    assert not store.exists("tmp/x")
    with pytest.raises(ObjectNotFoundError):
        store.move("tmp/x", "final/y")


def test_child_storage_is_rooted_under_the_prefix(storage_uri):
    store = open_storage(storage_uri)
    child = store.child("runs/r1")
    child.write_bytes("a.txt", b"a")
    assert store.read_bytes("runs/r1/a.txt") == b"a"
    assert [o.key for o in child.list()] == ["a.txt"]
    assert child.url("a.txt") == store.url("runs/r1/a.txt")


def test_keys_cannot_escape_the_root(storage_uri):
    store = open_storage(storage_uri)
    with pytest.raises(StorageError, match=r"\.\."):
        store.write_bytes("../escape", b"x")


def test_concurrent_writers_to_one_key_leave_one_whole_object(storage_uri):
    store = open_storage(storage_uri)
    payloads = [bytes([i]) * 200_000 for i in range(6)]

    def write(p):
        store.write_bytes("race", p)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read_bytes("race") in payloads
    assert [o.key for o in store.list()] == ["race"]


# -- URIs and failures --------------------------------------------------------------------------

def test_uri_forms(tmp_path):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    file_store = open_storage(f"file://{tmp_path}/x")
    assert isinstance(file_store, LocalStorage) and file_store.uri == f"{tmp_path}/x"
    with pytest.raises(UnknownSchemeError, match="gs"):
        open_storage("gs://bucket/x")
    with pytest.raises(UnknownSchemeError, match="host"):
        open_storage("file://otherhost/x")
    with pytest.raises(StorageError, match="bucket"):
        open_storage("s3:///x")


def test_missing_bucket_names_the_bucket(s3_env):
    store = open_storage("s3://no-such-bucket-here/p")
    with pytest.raises(BucketNotFoundError, match="no-such-bucket-here"):
        store.write_bytes("x", b"1")
    with pytest.raises(BucketNotFoundError, match="no-such-bucket-here"):
        list(store.list())


def test_wrong_credentials_say_which_variables(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_storage(f"s3://{s3_bucket}/p")
    with pytest.raises(AccessDeniedError, match="AWS_SECRET_ACCESS_KEY"):
        store.read_bytes("x")
    with pytest.raises(AccessDeniedError):
        store.write_bytes("x", b"data")


def test_unreachable_endpoint_fails_after_retries(monkeypatch):
    monkeypatch.setenv("PRIMER_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("PRIMER_S3_RETRIES", "2")
    store = open_storage("s3://bucket/p")
    with pytest.raises(StorageUnavailableError, match="PRIMER_S3_ENDPOINT"):
        store.stat("x")


def test_bad_endpoint_setting(monkeypatch):
    monkeypatch.setenv("PRIMER_S3_ENDPOINT", "ftp://host")
    with pytest.raises(StorageError, match="PRIMER_S3_ENDPOINT"):
        open_storage("s3://bucket/p")


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs; the tests and CI run as root)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"mounting a tmpfs needs root: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_is_reported_and_loses_nothing(tiny_disk):
    store = LocalStorage(tiny_disk)
    store.write_bytes("kept", b"k" * 1000)
    with pytest.raises(StorageError, match="no space left"), store.open_write("big") as f:
        for _ in range(4):
            f.write(os.urandom(512 << 10))
    with pytest.raises(StorageError, match="no space left"):
        store.write_bytes("kept", os.urandom(2 << 20))
    assert [o.key for o in store.list()] == ["kept"]
    assert store.read_bytes("kept") == b"k" * 1000
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["kept"]  # no temp files left


def test_a_write_that_need_not_be_durable_skips_only_the_fsync(tmp_path, monkeypatch):
    import os

    from primer.storage import open_storage

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    store = open_storage(str(tmp_path / "s"))
    store.write_text("a/durable.json", "1")
    assert len(synced) == 1
    store.write_text("a/cache.json", "2", durable=False)
    assert len(synced) == 1 and store.read_text("a/cache.json") == "2"
    assert sorted(o.key for o in store.list()) == ["a/cache.json", "a/durable.json"]
    assert not [p for p in (tmp_path / "s" / "a").iterdir() if p.name.startswith(".")]


def test_objects_are_readable_by_every_uid_and_a_taken_temp_name_is_skipped(tmp_path,
                                                                            monkeypatch):
    """Temp names come from a per-process tag and a counter, which a forked child shares with
    its parent: a name another process holds is skipped, never overwritten. Published objects
    are 0644 whatever the umask (a worker under another uid reads the cache)."""
    import itertools

    from primer.storage import local

    (tmp_path / "a").mkdir()
    taken = tmp_path / "a" / f"{local._TMP_TAG}7"
    taken.write_bytes(b"another process's write")
    monkeypatch.setattr(local, "_tmp_counter", itertools.count(7))
    store = LocalStorage(tmp_path)
    old = os.umask(0o077)
    try:
        store.write_bytes("a/x.json", b"1", durable=False)
        with store.open_write("b/y.json") as f:
            f.write(b"2")
    finally:
        os.umask(old)
    assert taken.read_bytes() == b"another process's write"
    assert store.read_bytes("a/x.json") == b"1" and store.read_bytes("b/y.json") == b"2"
    assert {oct((tmp_path / k).stat().st_mode & 0o777) for k in ("a/x.json", "b/y.json")} \
        == {"0o644"}
