"""Packing: EOS-joined windows, weighted mixing, finetune masks, a seeded rank-free order;
the same bytes on 1 or 4 workers, and a failed pack that resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.packing import PackedDataset, Source, mix_order, pack
from model.tokenizer import load_tokenizer
from primer.datasets import DatasetError, Producer, read_manifest, write_dataset

from .conftest import SEQ, stdlib_files


def test_pack_joins_documents_with_eos_and_stores_its_tokenizer(packed, text_dataset):
    manifest = read_manifest(packed)
    meta = manifest.metadata
    data = PackedDataset(packed)
    tok = load_tokenizer(f"{packed}/tokenizer")
    assert meta["seq_len"] == SEQ and meta["dtype"] == "<u2" and len(tok) == 512
    assert manifest.tokens == len(data) * SEQ
    everything = np.concatenate([data.get(i)[0] for i in range(len(data))])
    # every file and its EOS, less the remainder (under one window) of each input shard
    files = stdlib_files()
    total = sum(len(tok(p.read_text(), add_special_tokens=False).input_ids) + 1 for p in files)
    shards = len(read_manifest(text_dataset).shards)
    assert shards > 1 and 0 < meta["dropped_tokens"] < shards * SEQ
    assert manifest.tokens + meta["dropped_tokens"] == total
    # one EOS after each file; a shard's last one may fall into its dropped remainder
    assert len(files) - shards <= int((everything == tok.eos_token_id).sum()) <= len(files)
    corpus = "".join(p.read_text() for p in stdlib_files())
    for i in range(5):  # every window is a verbatim stretch of the corpus
        window = data.get(i)[0]
        piece = max(np.split(window, np.flatnonzero(window == tok.eos_token_id)), key=len)
        text = tok.decode(piece[piece != tok.eos_token_id])
        assert len(text) > 20 and text[1:-1] in corpus


def test_order_is_a_function_of_the_sample_index(packed):
    a, b = PackedDataset(packed), PackedDataset(packed)
    n = len(a)
    order = [a.locate(i) for i in range(n)]
    assert len(set(order)) == n  # one epoch visits every window exactly once
    assert [b.locate(i) for i in reversed(range(n))] == order[::-1]  # random access agrees
    assert [a.locate(n + i) for i in range(n)] != order  # the next epoch is reshuffled
    assert PackedDataset(packed, seed=7).locate(0) != a.locate(0) or \
        PackedDataset(packed, seed=7).locate(1) != a.locate(1)


def test_mix_by_weight_and_finetune_mask(tmp_path, text_dataset, packed):
    small = str(tmp_path / "small")
    write_dataset(small, ({"text": f"x_{i} = {i}\n" * 20} for i in range(60)), Producer("t"))
    out = str(tmp_path / "mix")
    meta = pack([Source(text_dataset, 1.0), Source.parse(f"{small}@3")], out,
                tokenizer=f"{packed}/tokenizer", seq_len=SEQ, workers=1)
    used = [s["windows_used"] for s in meta["sources"]]
    assert abs(used[1] / sum(used) - 0.75) < 0.01  # weight 3 of 4, upsampled by repetition
    assert meta["sources"][1]["windows_used"] > meta["sources"][1]["windows_available"]

    ex = str(tmp_path / "ex")
    write_dataset(ex, ({"prompt": f"def add_{i}(x):\n", "completion": f"    return x + {i}\n"}
                       for i in range(80)), Producer("t"))
    pack([Source(ex)], str(tmp_path / "ft"), tokenizer=f"{packed}/tokenizer", seq_len=SEQ,
         finetune=True, workers=1)
    data = PackedDataset(str(tmp_path / "ft"))
    tokens, mask = data.batch(0, 4)
    tok = load_tokenizer(f"{packed}/tokenizer")
    solution = tok.decode(tokens[0][mask[0] == 1])
    assert "return x +" in solution and "def add_" not in solution
    assert "def add_" in tok.decode(tokens[0][mask[0] == 0])


def test_missing_column_and_missing_dataset_fail_clearly(tmp_path, text_dataset, packed):
    with pytest.raises(DatasetError, match=r"has no column\(s\) \['body'\]"):
        pack([Source(text_dataset)], str(tmp_path / "o"), tokenizer=f"{packed}/tokenizer",
             text_column="body")
    with pytest.raises(DatasetError, match="not a complete dataset"):
        pack([Source(str(tmp_path / "nope"))], str(tmp_path / "o"), tokenizer="train")
    with pytest.raises(ValueError, match="must be positive"):
        Source.parse("s3://b/x@0")


def test_mix_order_takes_each_source_by_weight_from_the_counts_alone():
    order, used = mix_order([10], [1.0], seed=3)
    assert sorted(order.tolist()) == list(range(10)) and used == [10]  # alone: each once
    order, used = mix_order([30, 6, 4], [1.0, 2.0, 1.0], seed=3)
    assert used == [10, 20, 10]  # round(w/Σw × 40): source 1 is repeated, source 0 subsampled
    source = np.searchsorted([30, 36, 40], order, side="right")
    assert np.bincount(source).tolist() == used
    assert set(order[source == 1].tolist()) == set(range(30, 36))  # all 6, most of them twice
    assert len(set(order[source == 0].tolist())) == 10  # 10 distinct windows of 30
    again, _ = mix_order([30, 6, 4], [1.0, 2.0, 1.0], seed=3)
    assert np.array_equal(order, again)
    assert not np.array_equal(order, mix_order([30, 6, 4], [1.0, 2.0, 1.0], seed=4)[0])


def _files(uri: str) -> dict[str, bytes]:
    root = Path(uri)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "_manifest.json"}


def test_one_and_four_workers_write_byte_identical_shards(tmp_path, text_dataset, packed):
    small = str(tmp_path / "small")
    write_dataset(small, ({"text": f"x_{i} = {i}\n" * 20} for i in range(60)), Producer("t"),
                  rows_per_shard=20)
    sources = [Source(text_dataset), Source(small, 2.0)]
    outs = []
    for workers in (1, 4):
        outs.append(str(tmp_path / f"w{workers}"))
        pack(sources, outs[-1], tokenizer=f"{packed}/tokenizer", seq_len=SEQ, workers=workers,
             windows_per_shard=50)
    one, four = _files(outs[0]), _files(outs[1])
    assert len([n for n in one if n.startswith("tokens-")]) > 3  # several output shards
    assert one == four
    a, b = read_manifest(outs[0]), read_manifest(outs[1])
    assert a.shards == b.shards and a.metadata == b.metadata
    assert not (Path(outs[0]) / "_work").exists()  # the work files go once committed


def test_a_failed_pack_resumes_without_redoing_finished_units(tmp_path, text_dataset, packed,
                                                             monkeypatch):
    import model.pack_units as units

    calls: list[str] = []
    real_tokenize, real_write = units.tokenize_shard, units.write_shard

    def tokenize(**kw):
        calls.append(f"tok {kw['unit']}")
        return real_tokenize(**kw)

    def write(**kw):
        calls.append(f"write {kw['index']}")
        if kw["index"] == 2 and "fail" in calls:
            raise OSError("disk full")
        return real_write(**kw)

    monkeypatch.setattr(units, "tokenize_shard", tokenize)
    monkeypatch.setattr(units, "write_shard", write)
    args = dict(tokenizer=f"{packed}/tokenizer", seq_len=SEQ, workers=1, windows_per_shard=200)
    out = str(tmp_path / "p")
    calls.append("fail")
    with pytest.raises(RuntimeError, match=r"shard-00002: OSError: disk full \(rerun"):
        pack([Source(text_dataset)], out, **args)
    assert not Path(out, "_manifest.json").exists()
    tokenized = [c for c in calls if c.startswith("tok")]
    assert len(tokenized) == len(read_manifest(text_dataset).shards)
    calls.clear()
    pack([Source(text_dataset)], out, **args)
    assert not any(c.startswith("tok") for c in calls)  # every input shard was kept
    assert "write 0" not in calls and "write 2" in calls  # shards 0, 1 were kept too
    fresh = str(tmp_path / "fresh")
    pack([Source(text_dataset)], fresh, **args)
    assert _files(out) == _files(fresh)


@pytest.mark.integration
def test_celery_workers_pack_the_same_bytes(tmp_path, text_dataset, packed, redis_url):
    import uuid

    from primer.executor import CeleryExecutor
    from tests.primer.test_executor import celery_workers

    args = dict(tokenizer=f"{packed}/tokenizer", seq_len=SEQ, windows_per_shard=300)
    local, remote = str(tmp_path / "local"), str(tmp_path / "celery")
    pack([Source(text_dataset)], local, workers=2, **args)
    queue = f"primer-pack-{uuid.uuid4().hex[:8]}"
    with celery_workers(redis_url, queue, tmp_path / "logs", n=2):
        pack([Source(text_dataset)], remote, executor=CeleryExecutor(
            redis_url, queue=queue, timeout=300), **args)
    assert _files(local) == _files(remote)
    assert read_manifest(local).shards == read_manifest(remote).shards
    logs = "".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    # both kinds of unit ran in the workers (Celery logs each task's result)
    assert "'dropped_tokens'" in logs and "'sha256'" in logs, logs[-3000:]


def test_tokenize_units_read_shards_through_the_datasets_checks(packed, tmp_path):
    """A shard without the manifest's ``text`` column is refused by its unit with the
    dataset's message, as by every reader of a dataset (issue 14), not read as something."""
    from primer.datasets import commit_dataset, write_shard

    uri = str(tmp_path / "bad")
    shard = write_shard(uri, "part-00000.parquet", [{"id": "r0", "code": "x = 1\n" * 50}])
    commit_dataset(uri, [shard], Producer("test"), columns={"id": "string", "text": "string"})
    with pytest.raises(Exception, match="does not match the manifest's columns: it has no "
                       "column 'text'"):
        pack([Source(uri)], str(tmp_path / "o"), tokenizer=f"{packed}/tokenizer", seq_len=SEQ,
             workers=1)
