"""Readers: turn an input URI into *partitions* (one per work unit) and a partition into records.

Inputs:

- a local directory: every ``*.py`` below it, recursively, in sorted order, cut into
  partitions of ``reader.files_per_unit`` files;
- a dataset at any storage URI: a Primer dataset (``_manifest.json``), or a prefix / file of
  ``*.parquet``, ``*.jsonl`` or ``*.jsonl.gz``; one partition per file, code in
  ``reader.text_column``;
- ``hf:NAME``: a Hugging Face dataset on the hub or in a local folder, e.g.
  ``hf:bigcode/the-stack-dedup`` with ``--reader.hf_data_dir=data/python
  --reader.text_column=content``. The Stack is gated: accept its terms on the Hub and set
  ``HF_TOKEN``; each record carries its licence (``max_stars_repo_licenses``), all
  permissive. Its Python subset holds ~40M files (~60B tokens before the paper's filter).
  Cut by the dataset's own files and Parquet row groups, each record read by one unit and
  nothing downloaded up front (see :mod:`services.curation.hub`);
- empty: the default, this interpreter's standard library and site-packages.

A record that cannot become text is still yielded, with ``_reject`` set to its reason
(``unreadable``, ``binary``, ``undecodable``, ``too_large``), so the filters count it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from primer.datasets import MANIFEST, open_dataset
from primer.storage import StorageError, open_storage
from services.curation.config import ReaderConfig
from services.curation.steps import Record

_DATA_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz")


class InputError(ValueError):
    """The input cannot be read as any supported kind; the message says what was tried."""


def record_id(text: str) -> str:
    """Stable content hash: the same text has the same id on every machine."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def make_record(text: str, source: str, lang: str = "python") -> Record:
    return {"id": record_id(text), "text": text, "source": source, "lang": lang,
            "n_chars": len(text)}


def rejected(source: str, reason: str) -> Record:
    return {"id": hashlib.sha256(source.encode()).hexdigest()[:20], "text": None,
            "source": source, "lang": "python", "n_chars": 0, "_reject": reason}


def default_roots() -> list[str]:
    """This interpreter's Python sources: real code present on every machine."""
    paths = sysconfig.get_paths()
    return [p for p in dict.fromkeys([paths["stdlib"], paths["purelib"]]) if os.path.isdir(p)]


def list_py_files(roots: list[str]) -> list[str]:
    out = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            out.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(out)


def plan(input_uri: str, cfg: ReaderConfig) -> list[dict[str, Any]]:
    """Partitions of the input: JSON-serialisable dicts, each the args of one read unit."""
    if input_uri.startswith("hf:"):
        if not input_uri[3:]:
            raise InputError("hf: needs a dataset name, e.g. hf:bigcode/the-stack-dedup")
        from services.curation import hub  # imports datasets: only for hf: inputs

        return hub.plan(input_uri[3:], cfg)
    if not input_uri or ("://" not in input_uri and os.path.isdir(input_uri)
                         and not os.path.exists(os.path.join(input_uri, MANIFEST))
                         and not _data_files_local(input_uri)):
        roots = default_roots() if not input_uri else [input_uri]
        files = list_py_files(roots)
        if cfg.limit:
            files = files[:cfg.limit]
        if not files:
            raise InputError(f"{input_uri or roots}: no *.py files found")
        n = cfg.files_per_unit
        return [{"kind": "files", "files": files[i:i + n]} for i in range(0, len(files), n)]
    dataset = _dataset(input_uri)
    if dataset is not None:  # a Primer dataset: its shards, read through its checks
        return [{"kind": "shard", "dataset": dataset.uri, "shard": s.name}
                for s in dataset.manifest.shards]
    return [{"kind": "data", "uri": uri} for uri in _data_files(input_uri)]


def _dataset(uri: str):
    """The committed Primer dataset at ``uri``, or None when there is none."""
    if "://" not in uri and os.path.isfile(uri):
        return None
    try:
        store = open_storage(uri)
        return open_dataset(store) if store.exists(MANIFEST) else None
    except StorageError as exc:
        raise InputError(f"{uri}: cannot list the input: {exc}") from None


def _data_files_local(path: str) -> bool:
    return any(f.endswith(_DATA_SUFFIXES) for _, _, fs in os.walk(path) for f in fs)


def _data_files(uri: str) -> list[str]:
    if "://" not in uri and os.path.isfile(uri):
        if not uri.endswith(_DATA_SUFFIXES):
            raise InputError(f"{uri}: a file input must be .parquet, .jsonl or .jsonl.gz")
        return [uri]
    try:
        store = open_storage(uri)
        files = [store.url(o.key) for o in store.list() if o.key.endswith(_DATA_SUFFIXES)
                 and not o.key.split("/")[-1].startswith(("_", "."))]
    except StorageError as exc:
        raise InputError(f"{uri}: cannot list the input: {exc}") from None
    if not files:
        raise InputError(f"{uri}: not a directory of *.py files, a dataset, or a prefix holding "
                         "*.parquet / *.jsonl / *.jsonl.gz files (for a Hugging Face dataset "
                         "use hf:NAME)")
    return files


def read_partition(part: dict[str, Any], cfg: ReaderConfig) -> Iterator[Record]:
    kind = part["kind"]
    if kind == "files":
        return read_files(part["files"], cfg.max_bytes)
    if kind == "data":
        return read_data_file(part["uri"], cfg.text_column)
    if kind == "shard":
        return read_shard(part["dataset"], part["shard"], cfg.text_column)
    if kind == "hf":
        from services.curation import hub

        return hub.read(part, cfg)
    raise InputError(f"unknown partition kind {kind!r}")


def read_files(files: list[str], max_bytes: int) -> Iterator[Record]:
    """Local files; huge ones are not read at all, unreadable ones are reported, not raised."""
    for path in files:
        try:
            if os.path.getsize(path) > max_bytes:
                yield rejected(path, "too_large")
                continue
            raw = Path(path).read_bytes()
        except OSError:
            yield rejected(path, "unreadable")
            continue
        yield decode(raw, path)


def decode(raw: bytes, source: str) -> Record:
    if b"\0" in raw:
        return rejected(source, "binary")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return rejected(source, "undecodable")
    return make_record(text.removeprefix("\ufeff"), source)


def _split(uri: str) -> tuple[Any, str]:
    """(storage, key) for a file URI or path."""
    if "://" not in uri:
        return open_storage(os.path.dirname(os.path.abspath(uri))), os.path.basename(uri)
    head, _, key = uri.rpartition("/")
    return open_storage(head), key


def read_data_file(uri: str, text_column: str) -> Iterator[Record]:
    store, key = _split(uri)
    if key.endswith(".parquet"):
        with store.open_read(key) as f:
            for i, row in enumerate(parquet_rows(pq.ParquetFile(f), uri, text_column)):
                yield from_row(row, text_column, f"{uri}#{i}")
        return
    with store.open_read(key) as f:
        stream = gzip.open(f) if key.endswith(".gz") else f  # noqa: SIM115 (closed with f)
        for n, line in enumerate(io.TextIOWrapper(stream, "utf-8", errors="replace"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield rejected(f"{uri}:{n}", "undecodable")
                continue
            if not isinstance(row, dict) or text_column not in row:
                raise InputError(f"{uri}:{n}: expected a JSON object with {text_column!r}; set "
                                 "--reader.text_column")
            yield from_row(row, text_column, f"{uri}:{n}")


def read_shard(dataset_uri: str, shard: str, text_column: str) -> Iterator[Record]:
    """One shard of a Primer dataset, through the dataset's checks (inside it, the manifest's
    size, rows and columns, a bounded decoded size): a dataset is read one way everywhere."""
    dataset = open_dataset(dataset_uri, check_sizes=False)
    declared = dataset.manifest.columns  # a manifest without columns: the shard's own
    if declared:
        check_columns(list(declared), text_column, dataset.uri)
    where = dataset.store.url(shard)
    wanted = [c for c in (text_column, "source", "lang") if c in declared] if declared else None
    rows = (row for batch in dataset.shard_batches(shard, wanted, batch_size=1024)
            for row in batch.to_pylist())
    for i, row in enumerate(rows):
        yield from_row(row, text_column, f"{where}#{i}")


def check_columns(names: list[str], text_column: str, where: str) -> None:
    if text_column not in names:
        raise InputError(f"{where}: no column {text_column!r} (columns: {names}); set "
                         "--reader.text_column")


def parquet_rows(pf: pq.ParquetFile, where: str, text_column: str,
                 row_groups: list[int] | None = None, stop: int | None = None,
                 ) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file (or of some of its row groups), in batches: the code column and
    ``source`` / ``lang`` where present; at most ``stop`` rows."""
    names = pf.schema_arrow.names
    check_columns(names, text_column, where)
    cols = [c for c in (text_column, "source", "lang") if c in names]
    left = stop
    for batch in pf.iter_batches(batch_size=1024, row_groups=row_groups, columns=cols):
        rows = batch.to_pylist()
        if left is not None:
            rows, left = rows[:left], left - min(left, len(rows))
        yield from rows
        if left == 0:
            return


def from_row(row: dict[str, Any], text_column: str, where: str) -> Record:
    text = row.get(text_column)
    if isinstance(text, bytes):
        return decode(text, row.get("source") or where)
    if not isinstance(text, str):
        return rejected(where, "undecodable")
    if "\0" in text:
        return rejected(row.get("source") or where, "binary")
    return make_record(text, row.get("source") or where, row.get("lang") or "python")
