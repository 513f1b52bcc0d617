"""Packing: EOS-joined windows, weighted mixing, finetune masks, a seeded rank-free order."""

from __future__ import annotations

import numpy as np
import pytest

from model.packing import PackedDataset, Source, pack
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
    # one EOS after each file; the last one may fall into the dropped partial window
    n = len(stdlib_files())
    assert n - 1 <= int((everything == tok.eos_token_id).sum()) <= n
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
