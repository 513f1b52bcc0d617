"""The dataset format on local disk and S3: manifest last, loadable by HF datasets, clear
errors for partial or corrupt datasets."""

from __future__ import annotations

import json

import datasets as hf_datasets
import pyarrow as pa
import pytest

from primer.datasets import (
    MANIFEST,
    DatasetError,
    DatasetWriter,
    Producer,
    commit_dataset,
    open_dataset,
    read_manifest,
    write_dataset,
    write_shard,
)
from primer.storage import open_storage

PRODUCER = Producer("test_step", "abc123")


def records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"r{i}", "text": "x" * (i % 7), "n_chars": i % 7} for i in range(start, n)]


def test_write_read_round_trip_with_manifest(storage_uri):
    with DatasetWriter(storage_uri, PRODUCER, rows_per_shard=4) as w:
        w.write_many(records(10))
        w.drop("syntax_error", 3)
        w.drop("near_dup")
        w.add_tokens(123)
    m = read_manifest(storage_uri)
    assert m.rows == 10 and m.tokens == 123
    assert [(s.name, s.rows) for s in m.shards] == [
        ("part-00000.parquet", 4), ("part-00001.parquet", 4), ("part-00002.parquet", 2)]
    assert m.drop_counts == {"near_dup": 1, "syntax_error": 3}
    assert m.producer == PRODUCER and m.schema_version == 1 and m.created_at
    assert m.columns == {"id": "string", "text": "string", "n_chars": "int64"}
    ds = open_dataset(storage_uri)
    assert list(ds) == records(10) and len(ds) == 10
    assert ds.to_table(["id"]).column("id").to_pylist() == [f"r{i}" for i in range(10)]
    ds.verify(deep=True)


def test_manifest_is_written_last(storage_uri):
    store = open_storage(storage_uri)
    w = DatasetWriter(store, PRODUCER, rows_per_shard=2)
    w.write_many(records(5))
    assert [o.key for o in store.list()] == ["part-00000.parquet", "part-00001.parquet"]
    with pytest.raises(DatasetError, match="did not finish"):
        open_dataset(storage_uri)
    w.close()
    assert store.exists(MANIFEST) and len(open_dataset(storage_uri)) == 5


def test_failed_producer_leaves_no_dataset(storage_uri):
    with pytest.raises(RuntimeError):
        with DatasetWriter(storage_uri, PRODUCER, rows_per_shard=2) as w:
            w.write_many(records(5))
            raise RuntimeError("producer crashed")
    assert list(open_storage(storage_uri).list()) == []
    with pytest.raises(DatasetError, match="nothing is there"):
        open_dataset(storage_uri)


def test_parallel_shards_then_one_commit(storage_uri):
    """Work units write shards independently; the coordinator publishes them together."""
    shards = [write_shard(storage_uri, f"part-u{u}.parquet", records(3 * u + 3, 3 * u))
              for u in range(3)]
    write_shard(storage_uri, "part-orphan.parquet", records(2))  # e.g. from a dead unit
    m = commit_dataset(storage_uri, shards, PRODUCER, drop_counts={"too_long": 2})
    assert m.rows == 9
    assert sorted(o.key for o in open_storage(storage_uri).list()) == [
        MANIFEST, "part-u0.parquet", "part-u1.parquet", "part-u2.parquet"]
    assert [r["id"] for r in open_dataset(storage_uri)] == [f"r{i}" for i in range(9)]


def test_existing_dataset_needs_overwrite(storage_uri):
    write_dataset(storage_uri, records(5), PRODUCER, rows_per_shard=2)
    with pytest.raises(DatasetError, match="overwrite"):
        DatasetWriter(storage_uri, PRODUCER)
    write_dataset(storage_uri, records(1), PRODUCER, overwrite=True)
    assert list(open_dataset(storage_uri)) == records(1)
    assert [o.key for o in open_storage(storage_uri).list()] == [MANIFEST, "part-00000.parquet"]


def test_empty_dataset(storage_uri):
    schema = pa.schema([("id", pa.string()), ("score", pa.float64())])
    m = write_dataset(storage_uri, [], PRODUCER, schema=schema)
    assert m.rows == 0 and m.shards == [] and m.columns == {"id": "string", "score": "double"}
    ds = open_dataset(storage_uri)
    assert list(ds) == [] and ds.to_table().schema == schema


def test_loads_with_hugging_face_datasets(tmp_path):
    uri = str(tmp_path / "ds")
    write_dataset(uri, records(10), PRODUCER, rows_per_shard=3)
    loaded = hf_datasets.load_dataset("parquet", data_files=open_dataset(uri).data_files(),
                                      split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 10 and loaded[9]["id"] == "r9"


def test_data_files_are_s3_uris(s3_bucket):
    uri = f"s3://{s3_bucket}/ds"
    write_dataset(uri, records(3), PRODUCER)
    assert open_dataset(uri).data_files() == [f"s3://{s3_bucket}/ds/part-00000.parquet"]


# -- corrupt and partial datasets -----------------------------------------------------------------

def test_truncated_manifest(storage_uri):
    write_dataset(storage_uri, records(3), PRODUCER)
    store = open_storage(storage_uri)
    text = store.read_text(MANIFEST)
    store.write_text(MANIFEST, text[: len(text) // 2])
    with pytest.raises(DatasetError, match="not valid JSON.*truncated or corrupt"):
        open_dataset(storage_uri)


def test_manifest_with_missing_field_or_unknown_version(storage_uri):
    write_dataset(storage_uri, records(3), PRODUCER)
    store = open_storage(storage_uri)
    raw = json.loads(store.read_text(MANIFEST))
    store.write_text(MANIFEST, json.dumps({**raw, "schema_version": 99}))
    with pytest.raises(DatasetError, match="schema_version 99"):
        open_dataset(storage_uri)
    del raw["shards"]
    store.write_text(MANIFEST, json.dumps(raw))
    with pytest.raises(DatasetError, match="shards"):
        open_dataset(storage_uri)


def test_truncated_shard(storage_uri):
    write_dataset(storage_uri, records(50), PRODUCER)
    store = open_storage(storage_uri)
    data = store.read_bytes("part-00000.parquet")
    store.write_bytes("part-00000.parquet", data[:-100])
    with pytest.raises(DatasetError, match="part-00000.parquet is .* bytes but the manifest"):
        open_dataset(storage_uri)


def test_missing_shard(storage_uri):
    write_dataset(storage_uri, records(5), PRODUCER, rows_per_shard=2)
    open_storage(storage_uri).delete("part-00001.parquet")
    with pytest.raises(DatasetError, match="part-00001.parquet is named by the manifest"):
        open_dataset(storage_uri)


def test_replaced_shard_same_size_is_caught_by_deep_verify(storage_uri):
    write_dataset(storage_uri, records(5), PRODUCER)
    store = open_storage(storage_uri)
    data = bytearray(store.read_bytes("part-00000.parquet"))
    data[8] ^= 0xFF  # flip a byte of the first data page: same size, same footer
    store.write_bytes("part-00000.parquet", bytes(data))
    ds = open_dataset(storage_uri)
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        ds.verify(deep=True)


def test_garbage_shard_is_not_parquet(storage_uri):
    write_dataset(storage_uri, records(5), PRODUCER)
    store = open_storage(storage_uri)
    size = store.stat("part-00000.parquet").size
    store.write_bytes("part-00000.parquet", b"\0" * size)
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        list(open_dataset(storage_uri))


def test_commit_refuses_unwritten_shard(storage_uri):
    shard = write_shard(storage_uri, "part-a.parquet", records(2))
    open_storage(storage_uri).delete("part-a.parquet")
    with pytest.raises(DatasetError, match="never written"):
        commit_dataset(storage_uri, [shard], PRODUCER)


def test_bad_shard_name(storage_uri):
    with pytest.raises(DatasetError, match="plain file name"):
        write_shard(storage_uri, "../x.parquet", records(1))
