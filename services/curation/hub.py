"""``hf:NAME`` input: a Hugging Face dataset cut into work units by its own files and row groups.

The plan resolves the split's data files the way ``datasets`` does (a hub name with
``reader.hf_data_dir``, or a local dataset folder) and reads each Parquet file's footer; a unit
is a run of consecutive row groups of one file, about ``reader.hf_records_per_unit`` records,
read directly by pyarrow. So every record is read by exactly one unit and no unit streams past
another's records (the old plan started every unit at record 0 and skipped forward: quadratic).
A file in another format (JSON lines, CSV, ...) is one unit, streamed by ``datasets``.

``reader.hf_limit`` keeps the first N records in file order: the unit it falls in stops early
and no later unit is planned. It needs Parquet files, whose footers give the counts up front.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.curation.config import ReaderConfig
from services.curation.readers import InputError, check_columns, from_row, parquet_rows
from services.curation.steps import Record

FOOTER_THREADS = 16  # footers read at once when planning a whole split


def plan(name: str, cfg: ReaderConfig) -> list[dict[str, Any]]:
    """Units of ``hf:NAME``: JSON-serialisable dicts, in file then row order."""
    files, fmt = data_files(name, cfg)
    if cfg.hf_limit is not None and fmt != "parquet":
        raise InputError(f"hf:{name}: --reader.hf_limit needs Parquet files (their footers give "
                         f"the record counts up front); this split's files are {fmt}: drop "
                         "--reader.hf_limit to read them whole")
    if fmt != "parquet":
        return [{"kind": "hf", "name": name, "file": path, "format": fmt} for path in files]
    units: list[dict[str, Any]] = []
    left = cfg.hf_limit
    for path, sizes in zip(files, _footers(name, files, cfg), strict=True):
        first = 0
        for groups, rows in _runs(sizes, cfg.hf_records_per_unit):
            unit = {"kind": "hf", "name": name, "file": path, "row_groups": groups,
                    "first_row": first}
            first += rows
            if left is not None and rows >= left:
                return [*units, {**unit, "stop": left}]
            units.append(unit)
            if left is not None:
                left -= rows
    if not units:
        raise InputError(f"hf:{name}: the {cfg.hf_split!r} split holds no records")
    return units


def data_files(name: str, cfg: ReaderConfig) -> tuple[list[str], str]:
    """The split's files (local paths or ``hf://`` URLs, sorted) and their format."""
    import datasets

    where = f"hf:{name}" + (f" (data_dir {cfg.hf_data_dir})" if cfg.hf_data_dir else "")
    try:
        builder = datasets.load_dataset_builder(name, data_dir=cfg.hf_data_dir)
    except (OSError, ValueError, ConnectionError) as exc:
        raise InputError(f"{where}: cannot resolve the dataset's files: {exc}") from None
    splits = builder.config.data_files or {}
    files = sorted(str(f) for f in splits.get(cfg.hf_split, []))
    if not files:
        raise InputError(f"{where}: no data files in split {cfg.hf_split!r} (splits: "
                         f"{sorted(map(str, splits))}); set --reader.hf_split or "
                         "--reader.hf_data_dir")
    if builder.name == "parquet" and not all(f.endswith(".parquet") for f in files):
        raise InputError(f"{where}: Parquet split with other files: {files}")
    return files, builder.name


def _footers(name: str, files: list[str], cfg: ReaderConfig) -> Iterator[list[int]]:
    """Each file's row-group sizes, in order: all at once (a whole split, a footer per file
    over the network) or one by one (up to ``hf_limit``, usually few files)."""
    read = functools.partial(_row_group_sizes, name, text_column=cfg.text_column)
    if cfg.hf_limit is not None:
        return map(read, files)
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        return iter(list(pool.map(read, files)))


def _row_group_sizes(name: str, path: str, text_column: str) -> list[int]:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        check_columns(pf.schema_arrow.names, text_column, f"hf:{name}: {path}")
        meta = pf.metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _runs(sizes: list[int], per_unit: int) -> Iterator[tuple[list[int], int]]:
    """Consecutive row groups of about ``per_unit`` rows (a bigger group is a run alone);
    empty groups join the run before them, so every group is read once."""
    groups: list[int] = []
    rows = 0
    for i, n in enumerate(sizes):
        if groups and rows + n > per_unit:
            yield groups, rows
            groups, rows = [], 0
        groups.append(i)
        rows += n
    if rows:
        yield groups, rows


def read(part: dict[str, Any], cfg: ReaderConfig) -> Iterator[Record]:
    """The records of one unit, each with its file and row as ``source`` unless it has one."""
    for i, row in enumerate(_rows(part, cfg.text_column), part.get("first_row", 0)):
        yield from_row(row, cfg.text_column, f"{part['file']}#{i}")


def _rows(part: dict[str, Any], text_column: str) -> Iterator[dict[str, Any]]:
    """The one place rows leave the dataset: a unit's row groups, or its whole non-Parquet
    file (``stop``, when set, ends the unit early)."""
    where = f"hf:{part['name']}: {part['file']}"
    if "row_groups" not in part:
        import datasets

        ds = datasets.load_dataset(part["format"], data_files=[part["file"]], split="train",
                                   streaming=True)
        for row in ds:
            check_columns(list(row), text_column, where)
            yield row
        return
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(part["file"], "rb") as f:
        pf = pq.ParquetFile(f)
        yield from parquet_rows(pf, where, text_column, part["row_groups"], part.get("stop"))
