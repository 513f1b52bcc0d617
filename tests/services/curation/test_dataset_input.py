"""Curating a Primer dataset reads each shard through the dataset's checks (issue 14): a
shard linked from outside the dataset, one whose columns are not the manifest's, or one that
decodes to far more than it holds is refused with the dataset's message, never read."""

from __future__ import annotations

import pyarrow as pa
import pytest

from primer.datasets import DatasetError, Producer, commit_dataset, write_dataset, write_shard
from services.curation.config import ReaderConfig
from services.curation.readers import plan, read_partition
from tests.primer.test_datasets import link_from_outside

PRODUCER = Producer("test", "abc")
CODE = [{"text": f"def f{i}(x):\n    return x + {i}\n", "source": f"f{i}.py"} for i in range(6)]


def read_all(uri: str) -> list:
    cfg = ReaderConfig()
    parts = plan(uri, cfg)
    assert {p["kind"] for p in parts} == {"shard"}
    return [r for p in parts for r in read_partition(p, cfg)]


def test_a_datasets_shards_are_units_and_read_whole(tmp_path):
    uri = str(tmp_path / "ds")
    write_dataset(uri, CODE, PRODUCER, rows_per_shard=2)
    assert len(plan(uri, ReaderConfig())) == 3
    assert [r["source"] for r in read_all(uri)] == [c["source"] for c in CODE]


def test_a_shard_linked_from_outside_is_refused(tmp_path):
    uri = tmp_path / "ds"
    write_dataset(str(uri), CODE, PRODUCER, rows_per_shard=2)
    cfg = ReaderConfig()
    parts = plan(str(uri), cfg)  # planned while the dataset was sound
    link_from_outside(uri / "part-00001.parquet", tmp_path / "secret.parquet")
    with pytest.raises(DatasetError, match="outside the"):
        list(read_partition(parts[1], cfg))


def test_a_shard_without_the_manifests_columns_is_refused(tmp_path):
    uri = str(tmp_path / "ds")
    shard = write_shard(uri, "part-00000.parquet", [{"text": 1, "code": "x = 1"}])
    commit_dataset(uri, [shard], PRODUCER, columns={"text": "string"})
    with pytest.raises(DatasetError, match="does not match the manifest's columns"):
        read_all(uri)


def test_a_decompression_bomb_is_refused(tmp_path):
    uri = str(tmp_path / "ds")
    table = pa.table({"text": pa.array([f"{i:08d}" + "a" * 32760 for i in range(4096)])})
    shard = write_shard(uri, "part-00000.parquet", table)
    commit_dataset(uri, [shard], PRODUCER)
    with pytest.raises(DatasetError, match="more than a shard may decode to"):
        read_all(uri)
