"""The dataset format on local disk and S3: manifest last, loadable by HF datasets, clear
errors for partial or corrupt datasets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets as hf_datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from primer.datasets import (
    MANIFEST,
    DatasetError,
    DatasetWriter,
    Producer,
    ShardInfo,
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


# -- datasets from someone else (issue 14) ----------------------------------------------------

def link_from_outside(shard: Path, outside: Path) -> None:
    """Replace ``shard`` by a symbolic link to a copy of it at ``outside``: the same bytes,
    so only the link gives it away."""
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)


def test_a_shard_linked_to_a_file_outside_the_dataset_is_refused(tmp_path):
    uri = tmp_path / "ds"
    write_dataset(str(uri), records(5), PRODUCER)
    shard = uri / "part-00000.parquet"
    outside = tmp_path / "secret.parquet"
    link_from_outside(shard, outside)
    with pytest.raises(DatasetError, match="symbolic link to .*secret.parquet, outside the"):
        open_dataset(str(uri))
    # a link that stays inside the dataset is fine
    shard.unlink()
    (uri / "store").mkdir()
    outside.rename(uri / "store" / "kept.parquet")
    shard.symlink_to(uri / "store" / "kept.parquet")
    assert list(open_dataset(str(uri))) == records(5)


def test_a_manifest_linked_from_outside_is_refused(tmp_path):
    write_dataset(str(tmp_path / "a"), records(2), PRODUCER)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / MANIFEST).symlink_to(tmp_path / "a" / MANIFEST)
    with pytest.raises(DatasetError, match="outside the dataset"):
        read_manifest(str(tmp_path / "b"))


def test_manifest_shard_names_must_stay_in_the_dataset(tmp_path):
    uri = str(tmp_path / "ds")
    write_dataset(uri, records(2), PRODUCER)
    store = open_storage(uri)
    raw = json.loads(store.read_text(MANIFEST))
    raw["shards"][0]["name"] = "sub/../../x.parquet"
    store.write_text(MANIFEST, json.dumps(raw))
    with pytest.raises(DatasetError, match="plain file names"):
        open_dataset(uri)


def test_a_shard_without_the_manifests_columns_is_refused(storage_uri):
    """The reproduction: to_table(columns=["text"]) returned rows of a shard with no text."""
    shard = write_shard(storage_uri, "part-00000.parquet",
                        [{"id": f"r{i}", "code": "x"} for i in range(3)])
    commit_dataset(storage_uri, [shard], PRODUCER, columns={"id": "string", "text": "string"})
    with pytest.raises(DatasetError, match="does not match the manifest's columns: it has no "
                       "column 'text'; an extra column 'code'"):
        open_dataset(storage_uri).to_table(columns=["text"])


def test_a_shard_whose_column_types_differ_is_refused(storage_uri):
    good = write_shard(storage_uri, "part-a.parquet", records(3))
    bad = write_shard(storage_uri, "part-b.parquet",
                      [{**r, "n_chars": str(r["n_chars"])} for r in records(3)])
    commit_dataset(storage_uri, [good, bad], PRODUCER)
    ds = open_dataset(storage_uri)
    with pytest.raises(DatasetError, match=r"part-b.parquet does not match.*'n_chars' is "
                       "string, not int64"):
        list(ds)
    with pytest.raises(DatasetError, match="has no column 'nope'"):
        ds.to_table(columns=["nope"])


def test_a_small_shard_that_decompresses_to_128_mib_is_not_read(tmp_path):
    uri = str(tmp_path / "ds")
    # 128 MiB of one letter, each row told apart (so no dictionary: plain, compressed pages)
    table = pa.table({"text": pa.array([f"{i:08d}" + "a" * 32760 for i in range(4096)])})
    shard = write_shard(uri, "part-00000.parquet", table)
    commit_dataset(uri, [shard], PRODUCER)
    del table
    assert shard.bytes < 64 << 10
    with pytest.raises(DatasetError, match=r"declares 13\d+ bytes.*more than a shard may "
                       r"decode to \(1000 times its \d+ bytes on disk"):
        open_dataset(uri).to_table(columns=["text"])


def test_a_dictionary_bomb_is_stopped_while_it_is_read(tmp_path):
    """Dictionary + RLE pages declare a few KB in the footer but decode to 200 MB: the
    batches are counted as they come."""
    uri = str(tmp_path / "ds")
    rows = 2_000_000
    table = pa.table({"text": pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(rows, dtype=np.int32)), pa.array(["b" * 100]))})
    with open_storage(uri).open_write("part-00000.parquet") as out:
        pq.write_table(table, out, compression="zstd", store_schema=False)
    data = open_storage(uri).read_bytes("part-00000.parquet")
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    assert meta.row_group(0).total_byte_size < 1 << 20  # the footer does not tell
    info = ShardInfo("part-00000.parquet", rows, len(data), hashlib.sha256(data).hexdigest())
    commit_dataset(uri, [info], PRODUCER)
    seen = []
    with pytest.raises(DatasetError, match="decodes to .* bytes of data, more than a shard"):
        for batch in open_dataset(uri).iter_batches():
            seen.append(batch.num_rows)
    assert 0 < sum(seen) < rows


def test_the_decoded_size_cap_is_configurable(tmp_path, monkeypatch):
    uri = str(tmp_path / "ds")
    write_dataset(uri, records(50), PRODUCER)
    assert len(open_dataset(uri).to_table()) == 50
    with pytest.raises(DatasetError, match="PRIMER_MAX_SHARD_BYTES=100"):
        open_dataset(uri, max_shard_bytes=100).to_table()
    monkeypatch.setenv("PRIMER_MAX_SHARD_BYTES", "100")
    with pytest.raises(DatasetError, match="PRIMER_MAX_SHARD_BYTES=100"):
        list(open_dataset(uri))
    monkeypatch.setenv("PRIMER_MAX_SHARD_BYTES", "lots")
    with pytest.raises(DatasetError, match="PRIMER_MAX_SHARD_BYTES='lots' must be a number"):
        open_dataset(uri)


def test_one_shard_is_read_with_every_check(tmp_path):
    """A work unit reads its shard through ``shard_batches`` (curation's readers, packing's
    tokenize units): the same refusals as reading the whole dataset, without statting every
    other shard first."""
    uri = tmp_path / "ds"
    write_dataset(str(uri), records(6), PRODUCER, rows_per_shard=3)
    ds = open_dataset(str(uri), check_sizes=False)
    assert [r for b in ds.shard_batches("part-00001.parquet") for r in b.to_pylist()] == \
        records(6, start=3)
    with pytest.raises(DatasetError, match="no shard 'part-00009.parquet'"):
        list(ds.shard_batches("part-00009.parquet"))
    link_from_outside(uri / "part-00000.parquet", tmp_path / "secret.parquet")
    with pytest.raises(DatasetError, match="outside the"):
        list(open_dataset(str(uri), check_sizes=False).shard_batches("part-00000.parquet"))
