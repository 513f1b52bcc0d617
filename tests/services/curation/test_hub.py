"""``hf:`` input cut by the dataset's own files and row groups (issue 16): each record read by
exactly one unit. Local dataset folders, read by ``datasets`` offline as it reads the hub."""

from __future__ import annotations

import importlib.metadata
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from primer.datasets import open_dataset
from services.curation import hub, readers
from services.curation.config import ReaderConfig
from tests.services.curation import corpus

CURATE = importlib.metadata.EntryPoint(name="curate", value="services.curation.cli:curate",
                                       group="primer.commands")
FILES, GROUPS, ROWS = 10, 10, 20  # N = 2,000 records, 100 row groups
N = FILES * GROUPS * ROWS


def _text(f: int, g: int, r: int) -> str:
    return f"def f_{f}_{g}_{r}():\n    return {f * GROUPS * ROWS + g * ROWS + r}\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A hub-style folder: ``data/python/train-*.parquet``, several row groups each, and a
    second language beside it that ``hf_data_dir`` leaves out."""
    root = tmp_path_factory.mktemp("hf")
    for lang, n_files in (("python", FILES), ("java", 2)):
        (root / "data" / lang).mkdir(parents=True)
        for f in range(n_files):
            texts = [_text(f, g, r) for g in range(GROUPS) for r in range(ROWS)]
            pq.write_table(pa.table({"content": texts, "lang": [lang] * len(texts)}),
                           root / "data" / lang / f"train-{f:05d}-of-{n_files:05d}.parquet",
                           row_group_size=ROWS)
    return root


def _read_all(parts: list[dict], cfg: ReaderConfig, monkeypatch) -> tuple[list[str], list[int]]:
    """Every unit's texts, and how many rows each unit pulled out of the dataset (counted by
    wrapping the one function through which rows leave it)."""
    pulled: list[int] = []
    rows_of = hub._rows

    def counting(part, text_column):
        pulled.append(0)
        for row in rows_of(part, text_column):
            pulled[-1] += 1
            yield row

    monkeypatch.setattr(hub, "_rows", counting)
    texts = [r["text"] for p in parts for r in readers.read_partition(p, cfg)]
    return texts, pulled


def test_a_wrapped_hf_iterator_reads_exactly_n_records_across_100_units(dataset, monkeypatch):
    """The issue's criterion. The old plan started each of its 100 units at record 0 and
    skipped forward: unit k pulled 20 (k + 1) rows, ~N²/2 / 20 = 101,000 in all."""
    cfg = ReaderConfig(text_column="content", hf_data_dir="data/python", hf_records_per_unit=ROWS)
    parts = readers.plan(f"hf:{dataset}", cfg)
    assert len(parts) == 100
    texts, pulled = _read_all(parts, cfg, monkeypatch)
    assert sum(pulled) == N and pulled == [ROWS] * 100
    expected = [_text(f, g, r) for f in range(FILES) for g in range(GROUPS) for r in range(ROWS)]
    assert texts == expected and set(Counter(texts).values()) == {1}


@pytest.mark.parametrize("limit", [1, 1234, N - 1, N, N + 5])
def test_hf_limit_reads_the_first_records_and_stops_the_last_unit_early(dataset, limit,
                                                                         monkeypatch):
    cfg = ReaderConfig(text_column="content", hf_data_dir="data/python", hf_limit=limit,
                       hf_records_per_unit=ROWS)
    parts = readers.plan(f"hf:{dataset}", cfg)
    kept = min(limit, N)
    assert len(parts) == -(-kept // ROWS)
    assert [p.get("stop") for p in parts[:-1]] == [None] * (len(parts) - 1)
    assert parts[-1].get("stop") == (kept % ROWS or ROWS if limit <= N else None)
    texts, pulled = _read_all(parts, cfg, monkeypatch)
    assert sum(pulled) == kept == len(set(texts))
    assert texts == [_text(f, g, r) for f in range(FILES) for g in range(GROUPS)
                     for r in range(ROWS)][:kept]


def test_units_are_runs_of_whole_row_groups_of_one_file_with_plain_json_args(dataset):
    cfg = ReaderConfig(text_column="content", hf_data_dir="data/python",
                       hf_records_per_unit=3 * ROWS + 1)
    parts = readers.plan(f"hf:{dataset}", cfg)
    assert parts == json.loads(json.dumps(parts)) == readers.plan(f"hf:{dataset}", cfg)
    first = [p for p in parts if p["file"].endswith("train-00000-of-00010.parquet")]
    assert [(p["row_groups"], p["first_row"]) for p in first] == \
        [([0, 1, 2], 0), ([3, 4, 5], 60), ([6, 7, 8], 120), ([9], 180)]
    assert len(parts) == 4 * FILES and all("/data/python/" in p["file"] for p in parts)
    recs = list(readers.read_partition(first[1], cfg))
    assert recs[0]["source"].endswith("train-00000-of-00010.parquet#60")
    assert {r["lang"] for r in recs} == {"python"}
    # a row group bigger than a unit is a unit alone; empty groups join the run before them
    assert list(hub._runs([5, 0, 30, 5, 5, 0, 5], 10)) == \
        [([0, 1], 5), ([2], 30), ([3, 4, 5], 10), ([6], 5)]


def test_files_of_another_format_are_one_unit_each(tmp_path, monkeypatch):
    root = tmp_path / "jsonl"
    root.mkdir()
    for f in range(3):
        (root / f"part-{f}.jsonl").write_text(
            "".join(json.dumps({"text": _text(f, 0, r)}) + "\n" for r in range(4)))
    parts = readers.plan(f"hf:{root}", ReaderConfig())
    assert [(Path(p["file"]).name, p["format"]) for p in parts] == \
        [(f"part-{f}.jsonl", "json") for f in range(3)]
    texts, pulled = _read_all(parts, ReaderConfig(), monkeypatch)
    assert pulled == [4, 4, 4] and texts == [_text(f, 0, r) for f in range(3) for r in range(4)]
    with pytest.raises(readers.InputError, match=r"hf:.*jsonl: --reader.hf_limit needs Parquet"):
        readers.plan(f"hf:{root}", ReaderConfig(hf_limit=5))
    with pytest.raises(readers.InputError, match=r"part-0.jsonl: no column 'content'.*"
                       r"--reader.text_column"):
        list(readers.read_partition(parts[0], ReaderConfig(text_column="content")))


def test_bad_hf_inputs_name_the_dataset_and_what_to_set(dataset, tmp_path):
    with pytest.raises(readers.InputError, match="hf: needs a dataset name"):
        readers.plan("hf:", ReaderConfig())
    with pytest.raises(readers.InputError, match=rf"hf:{dataset} \(data_dir data/python\): no "
                       r"data files in split 'test' \(splits: \['train'\]\); set "
                       r"--reader.hf_split"):
        readers.plan(f"hf:{dataset}", ReaderConfig(hf_data_dir="data/python", hf_split="test"))
    with pytest.raises(readers.InputError, match=rf"hf:{dataset}: .*train-00000-of-00010.parquet:"
                       r" no column 'text' \(columns: \['content', 'lang'\]\); set "
                       "--reader.text_column"):
        readers.plan(f"hf:{dataset}", ReaderConfig(hf_data_dir="data/python"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(readers.InputError, match=r"hf:.*empty: cannot resolve the dataset's "
                       "files"):
        readers.plan(f"hf:{tmp_path / 'empty'}", ReaderConfig())


def test_primer_curate_reads_a_hf_dataset_in_units_end_to_end(tmp_path):
    repo = corpus.user_repo(tmp_path, 30, start="json/")
    files = sorted(repo.iterdir())
    root = tmp_path / "ds"
    root.mkdir()
    for f in range(3):
        chunk = files[10 * f:10 * f + 10]
        pq.write_table(pa.table({"content": [p.read_bytes() for p in chunk],
                                 "source": [p.name for p in chunk]}),
                       root / f"train-{f}.parquet", row_group_size=5)
    out = tmp_path / "curated"
    res = CliRunner().invoke(build_app(plugins=[CURATE]), [
        "curate", "--input", f"hf:{root}", "--output", str(out), "--workers", "1",
        "--reader.text_column=content", "--reader.hf_records_per_unit=5",
        "--classify.n_estimators=30", "--classify.max_tokens=64"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "_report" / "report.json").read_text())
    manifest = open_dataset(str(out)).manifest
    assert report["files_seen"] == 30 == manifest.rows + sum(manifest.drop_counts.values())
    assert len(list((out / "_work" / "filtered").glob("*.parquet"))) == 6
    sources = open_dataset(str(out)).to_table(["source"]).column("source").to_pylist()
    assert sources and set(sources) <= {p.name for p in files}
