"""The dataset format: Parquet shards plus a ``_manifest.json`` written last.

A dataset is a storage prefix (any URI ``open_storage`` accepts)::

    <uri>/part-00000.parquet
    <uri>/part-00001.parquet
    <uri>/_manifest.json        # written last: names every complete shard

A shard exists for readers only once the manifest names it, so a producer that dies leaves
no half-dataset behind: readers of a prefix without a manifest get a clear error, never a
silent partial read. Each shard's size, row count and sha256 are in the manifest and are
checked on open (size, Parquet footer) and, with ``verify(deep=True)``, byte for byte.

A dataset may come from someone else, so reading one trusts nothing in it: a shard (or the
manifest) that is a symbolic link leading out of the dataset's folder is refused; each
shard's columns must be the manifest's; and a shard may decode to at most
``PRIMER_MAX_SHARD_BYTES`` (default 4 GiB) and, past 64 MiB, to at most
``PRIMER_MAX_SHARD_EXPANSION`` (default 1000) times its size on disk, so a small file that
decompresses to gigabytes (a Parquet "zip bomb") is stopped with an error, not read.

Parallel producers write shards on their own (:func:`write_shard`, one or more per work
unit) and one coordinator publishes them with :func:`commit_dataset`. A single process can
use :class:`DatasetWriter`, which does both.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from primer.storage import ObjectNotFoundError, Storage, StorageError, open_storage
from primer.storage.local import LocalStorage

SCHEMA_VERSION = 1
MANIFEST = "_manifest.json"
ROWS_PER_SHARD = 50_000
MAX_SHARD_BYTES = 4 << 30  # decoded bytes per shard (PRIMER_MAX_SHARD_BYTES)
MAX_EXPANSION = 1000.0  # decoded / on-disk bytes (PRIMER_MAX_SHARD_EXPANSION) ...
EXPANSION_FLOOR = 64 << 20  # ... for shards decoding to more than this
_SHARD_NAME = re.compile(r"^[A-Za-z0-9._-]+\.parquet$")
_PLAIN_NAME = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._-]+$")


class DatasetError(StorageError):
    """A dataset is missing, incomplete or corrupt; the message says which and where."""


@dataclass(frozen=True)
class ShardInfo:
    """One published shard: file name (relative to the dataset), rows, bytes and sha256."""

    name: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Producer:
    """The step that made a dataset and the hash of its config (see ``primer.config``)."""

    step: str
    config_hash: str = ""


@dataclass
class Manifest:
    """What ``_manifest.json`` holds; ``rows`` and ``tokens`` are totals over the shards."""

    rows: int
    shards: list[ShardInfo]
    producer: Producer
    created_at: str
    drop_counts: dict[str, int] = field(default_factory=dict)
    tokens: int | None = None
    columns: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: the manifest is not valid JSON ({exc}); it is "
                               "truncated or corrupt — rerun the step that produced it") from None
        if not isinstance(raw, dict):
            raise DatasetError(f"{where}: the manifest is not a JSON object")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DatasetError(f"{where}: manifest schema_version {version!r} is not supported "
                               f"(this Primer reads version {SCHEMA_VERSION})")
        names = [s.get("name") for s in raw.get("shards") or [] if isinstance(s, dict)]
        bad = [n for n in names if not isinstance(n, str) or not _PLAIN_NAME.match(n)]
        if bad:
            raise DatasetError(f"{where}: shard names must be plain file names inside the "
                               f"dataset, not {bad[0]!r}")
        try:
            return cls(
                rows=int(raw["rows"]),
                shards=[ShardInfo(**s) for s in raw["shards"]],
                producer=Producer(**raw["producer"]),
                created_at=str(raw["created_at"]),
                drop_counts={str(k): int(v) for k, v in raw.get("drop_counts", {}).items()},
                tokens=raw.get("tokens"),
                columns=dict(raw.get("columns", {})),
                metadata=dict(raw.get("metadata", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: the manifest is missing or has a malformed field "
                               f"({type(exc).__name__}: {exc})") from None


# -- writing ------------------------------------------------------------------------------------

class _HashingWriter(io.RawIOBase):
    """Passes bytes through to a storage stream, counting and hashing them."""

    def __init__(self, out):
        self._out, self.sha, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.size += len(b)
        self._out.write(b)
        return len(b)


def _as_table(rows: Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch,
              schema: pa.Schema | None) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows if schema is None else rows.cast(schema)
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows]) if schema is None else \
            pa.Table.from_batches([rows]).cast(schema)
    return pa.Table.from_pylist(list(rows), schema=schema)


def write_shard(uri: str | Storage, name: str,
                rows: Iterable[Mapping[str, Any]] | pa.Table | pa.RecordBatch,
                schema: pa.Schema | None = None) -> ShardInfo:
    """Write one shard atomically; it becomes part of the dataset only once committed."""
    if not _SHARD_NAME.match(name):
        raise DatasetError(f"shard name {name!r} must be a plain file name ending in .parquet")
    store = uri if isinstance(uri, Storage) else open_storage(uri)
    table = _as_table(rows, schema)
    with store.open_write(name) as out:
        hashing = _HashingWriter(out)
        pq.write_table(table, hashing, compression="zstd")
    return ShardInfo(name, table.num_rows, hashing.size, hashing.sha.hexdigest())


def commit_dataset(uri: str | Storage, shards: list[ShardInfo], producer: Producer,
                   drop_counts: Mapping[str, int] | None = None, tokens: int | None = None,
                   metadata: Mapping[str, Any] | None = None,
                   columns: Mapping[str, str] | None = None) -> Manifest:
    """Publish ``shards`` as the dataset at ``uri`` by writing its manifest, last.

    Shards under the prefix that the manifest does not name (left by an earlier, replaced
    version or a dead producer) are deleted afterwards.
    """
    store = uri if isinstance(uri, Storage) else open_storage(uri)
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise DatasetError(f"{store.uri}: duplicate shard names in commit: {sorted(names)}")
    for shard in shards:  # every shard must be fully written before it is published
        try:
            size = store.stat(shard.name).size
        except ObjectNotFoundError:
            raise DatasetError(f"{store.url(shard.name)}: cannot commit a shard that "
                               "was never written") from None
        if size != shard.bytes:
            raise DatasetError(f"{store.url(shard.name)} is {size} bytes, expected "
                               f"{shard.bytes}: it changed after it was written")
    if columns is None and shards:
        with store.open_read(shards[0].name) as f:
            columns = {f.name: str(f.type) for f in pq.read_schema(f)}
    manifest = Manifest(
        rows=sum(s.rows for s in shards), shards=sorted(shards, key=lambda s: s.name),
        producer=producer, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        drop_counts=dict(sorted(Counter(drop_counts or {}).items())), tokens=tokens,
        columns=dict(columns or {}), metadata=dict(metadata or {}))
    store.write_text(MANIFEST, manifest.to_json())
    keep = set(names) | {MANIFEST}
    for obj in store.list():
        if obj.key.endswith(".parquet") and "/" not in obj.key and obj.key not in keep:
            store.delete(obj.key)
    return manifest


class DatasetWriter:
    """Write a dataset from one process: rows in, shards of ``rows_per_shard``, manifest last.

    >>> with DatasetWriter(uri, Producer("filter", cfg_hash)) as w:
    ...     w.write({"id": "a", "text": "..."})
    ...     w.drop("syntax_error")
    """

    def __init__(self, uri: str | Storage, producer: Producer, *,
                 rows_per_shard: int = ROWS_PER_SHARD, schema: pa.Schema | None = None,
                 overwrite: bool = False, shard_prefix: str = "part"):
        self.store = uri if isinstance(uri, Storage) else open_storage(uri)
        if self.store.exists(MANIFEST):
            if not overwrite:
                raise DatasetError(f"{self.store.uri} already holds a dataset; pass "
                                   "overwrite=True to replace it")
            self.store.delete(MANIFEST)  # from here on readers see an incomplete dataset
        self.producer, self.schema = producer, schema
        self.rows_per_shard, self.shard_prefix = rows_per_shard, shard_prefix
        self.drop_counts: Counter[str] = Counter()
        self.tokens: int | None = None
        self.metadata: dict[str, Any] = {}
        self.shards: list[ShardInfo] = []
        self._buffer: list[Mapping[str, Any]] = []
        self.manifest: Manifest | None = None

    def write(self, record: Mapping[str, Any]) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self.rows_per_shard:
            self._flush()

    def write_many(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` records dropped for ``reason`` (a stable reason code)."""
        self.drop_counts[reason] += n

    def add_tokens(self, n: int) -> None:
        self.tokens = (self.tokens or 0) + n

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"{self.shard_prefix}-{len(self.shards):05d}.parquet"
        self.shards.append(write_shard(self.store, name, self._buffer, self.schema))
        self._buffer = []

    def close(self) -> Manifest:
        if self.manifest is None:
            self._flush()
            columns = None if self.shards else \
                {f.name: str(f.type) for f in (self.schema or pa.schema([]))}
            self.manifest = commit_dataset(self.store, self.shards, self.producer,
                                           self.drop_counts, self.tokens, self.metadata,
                                           columns)
        return self.manifest

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # no manifest: the written shards are unreachable; remove them
            for shard in self.shards:
                self.store.delete(shard.name)


def write_dataset(uri: str | Storage, records: Iterable[Mapping[str, Any]], producer: Producer,
                  **kwargs: Any) -> Manifest:
    """Write ``records`` as a complete dataset in one call."""
    with DatasetWriter(uri, producer, **kwargs) as writer:
        writer.write_many(records)
    return writer.close()


# -- reading ------------------------------------------------------------------------------------

def _inside(store: Storage, key: str) -> None:
    """Refuse a local object reached through a symbolic link that leaves the dataset (S3 has
    no links). Links inside the folder are fine."""
    if not isinstance(store, LocalStorage):
        return
    root = os.path.realpath(store.root)
    real = os.path.realpath(store.url(key))
    if os.path.commonpath([root, real]) != root:
        raise DatasetError(f"{store.url(key)} is a symbolic link to {real}, outside the "
                           f"dataset {root}: refusing to read it")


def read_manifest(uri: str | Storage) -> Manifest:
    store = uri if isinstance(uri, Storage) else open_storage(uri)
    _inside(store, MANIFEST)
    try:
        text = store.read_text(MANIFEST)
    except ObjectNotFoundError:
        found = [o.key for o in store.list() if o.key.endswith(".parquet")]
        detail = (f"{len(found)} shard file(s) exist but no manifest names them: the producer "
                  "did not finish (still running, or it died); rerun it") if found else \
            "nothing is there: check the URI"
        raise DatasetError(f"{store.uri} is not a complete dataset: {detail}") from None
    return Manifest.from_json(text, store.url(MANIFEST))


class Dataset:
    """A committed dataset: its manifest and streaming access to its rows.

    ``max_shard_bytes`` and ``max_expansion`` bound what one shard may decode to (defaults:
    ``PRIMER_MAX_SHARD_BYTES``, ``PRIMER_MAX_SHARD_EXPANSION``, see the module docstring).
    ``check_sizes=False`` leaves each shard's size to be checked when it is read (a work unit
    that reads one shard of thousands).
    """

    def __init__(self, uri: str | Storage, *, max_shard_bytes: int | None = None,
                 max_expansion: float | None = None, check_sizes: bool = True):
        self.store = uri if isinstance(uri, Storage) else open_storage(uri)
        self.uri = self.store.uri
        self.max_shard_bytes = max_shard_bytes or int(
            _env_number("PRIMER_MAX_SHARD_BYTES", MAX_SHARD_BYTES))
        self.max_expansion = max_expansion or _env_number("PRIMER_MAX_SHARD_EXPANSION",
                                                          MAX_EXPANSION)
        self.manifest = read_manifest(self.store)
        self._sized = check_sizes
        for shard in self.manifest.shards if check_sizes else ():
            self._check_size(shard)

    def __len__(self) -> int:
        return self.manifest.rows

    def _check_size(self, shard: ShardInfo) -> None:
        _inside(self.store, shard.name)
        try:
            size = self.store.stat(shard.name).size
        except ObjectNotFoundError:
            raise DatasetError(f"{self.store.url(shard.name)} is named by the manifest but "
                               "missing: the dataset is corrupt") from None
        if size != shard.bytes:
            raise DatasetError(f"{self.store.url(shard.name)} is {size} bytes but the manifest "
                               f"says {shard.bytes}: truncated or replaced")

    def _parquet(self, shard: ShardInfo) -> pq.ParquetFile:
        """The shard opened, its row count, columns and declared decoded size checked."""
        _inside(self.store, shard.name)
        f = self.store.open_read(shard.name)
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            f.close()
            raise DatasetError(f"{self.store.url(shard.name)} is not a readable Parquet file: "
                               f"{exc}") from None
        try:
            if pf.metadata.num_rows != shard.rows:
                raise DatasetError(f"{self.store.url(shard.name)} has {pf.metadata.num_rows} "
                                   f"rows but the manifest says {shard.rows}")
            self._check_columns(shard, pf.schema_arrow)
            meta = pf.metadata
            self._check_decoded(shard, sum(meta.row_group(i).total_byte_size
                                           for i in range(meta.num_row_groups)), "declares")
        except DatasetError:
            f.close()
            raise
        return pf

    def _check_columns(self, shard: ShardInfo, schema: pa.Schema) -> None:
        """The shard's columns must be the manifest's (a column of nulls fits any type)."""
        want = self.manifest.columns
        if not want:
            return
        have = {f.name: str(f.type) for f in schema}
        problems = [f"no column {c!r}" for c in want if c not in have]
        problems += [f"an extra column {c!r}" for c in have if c not in want]
        problems += [f"{c!r} is {have[c]}, not {want[c]}" for c in want
                     if c in have and have[c] != want[c] and "null" not in (have[c], want[c])]
        if problems:
            raise DatasetError(f"{self.store.url(shard.name)} does not match the manifest's "
                               f"columns: it has {'; '.join(problems)}")

    def _check_decoded(self, shard: ShardInfo, decoded: int, how: str) -> None:
        """Refuse a shard that decodes to more than the limits allow."""
        if decoded > self.max_shard_bytes:
            limit = f"PRIMER_MAX_SHARD_BYTES={self.max_shard_bytes}"
        elif decoded > EXPANSION_FLOOR and decoded > self.max_expansion * shard.bytes:
            limit = (f"{self.max_expansion:g} times its {shard.bytes} bytes on disk, "
                     "PRIMER_MAX_SHARD_EXPANSION")
        else:
            return
        raise DatasetError(f"{self.store.url(shard.name)} {how} {decoded} bytes of data, "
                           f"more than a shard may decode to ({limit}): a decompression "
                           "bomb or a shard too large; refusing to read it")

    def iter_batches(self, columns: list[str] | None = None,
                     batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """Stream record batches, shard by shard, in manifest order."""
        self._check_wanted(columns)
        for shard in self.manifest.shards:
            yield from self._batches(shard, columns, batch_size)

    def shard_batches(self, name: str, columns: list[str] | None = None,
                      batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """Stream one shard's record batches (a work unit's share of the dataset), with every
        check :meth:`iter_batches` makes: the shard must be the manifest's, inside the
        dataset, of its size, columns and rows, and decode within the limits."""
        self._check_wanted(columns)
        shard = next((s for s in self.manifest.shards if s.name == name), None)
        if shard is None:
            raise DatasetError(f"{self.uri} has no shard {name!r} in its manifest")
        yield from self._batches(shard, columns, batch_size)

    def _check_wanted(self, columns: list[str] | None) -> None:
        if columns is not None and self.manifest.columns:
            unknown = [c for c in columns if c not in self.manifest.columns]
            if unknown:
                raise DatasetError(f"{self.uri} has no column {unknown[0]!r} (its columns: "
                                   f"{', '.join(self.manifest.columns)})")

    def _batches(self, shard: ShardInfo, columns: list[str] | None,
                 batch_size: int) -> Iterator[pa.RecordBatch]:
        if not self._sized:
            self._check_size(shard)
        pf = self._parquet(shard)
        decoded = 0
        try:
            # the footer can understate what a page decodes to (dictionary / RLE runs), so
            # the batches themselves are counted too
            for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                decoded += batch.nbytes
                self._check_decoded(shard, decoded, "decodes to")
                yield batch
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{self.store.url(shard.name)}: corrupt data: {exc}") from None
        finally:
            pf.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.iter_batches():
            yield from batch.to_pylist()

    def to_table(self, columns: list[str] | None = None) -> pa.Table:
        batches = list(self.iter_batches(columns))
        if batches:
            return pa.Table.from_batches(batches)
        wanted = columns or list(self.manifest.columns)
        return pa.schema([(c, _arrow_type(self.manifest.columns.get(c, "string")))
                          for c in wanted]).empty_table()

    def data_files(self) -> list[str]:
        """The shard URIs, for ``datasets.load_dataset("parquet", data_files=...)``.

        Local datasets give plain paths; ``s3://`` ones need ``s3fs`` and
        ``storage_options`` for the endpoint, as with any fsspec URL.
        """
        return [self.store.url(s.name) for s in self.manifest.shards]

    def verify(self, deep: bool = False) -> None:
        """Check every shard's size and footer; with ``deep``, its sha256 too."""
        for shard in self.manifest.shards:
            self._check_size(shard)
            self._parquet(shard).close()
            if deep:
                sha = hashlib.sha256()
                with self.store.open_read(shard.name) as f:
                    while block := f.read(8 << 20):
                        sha.update(block)
                if sha.hexdigest() != shard.sha256:
                    raise DatasetError(f"{self.store.url(shard.name)}: sha256 mismatch; the "
                                       "shard was modified after it was published")


def _arrow_type(name: str) -> pa.DataType:
    try:
        return pa.type_for_alias(name)
    except ValueError:  # nested types have no alias; an empty column of strings stands in
        return pa.string()


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DatasetError(f"{name}={raw!r} must be a number") from None
    if value <= 0:
        raise DatasetError(f"{name}={raw!r} must be positive")
    return value


def open_dataset(uri: str | Storage, **limits: Any) -> Dataset:
    """Open a committed dataset; raises :class:`DatasetError` when it is missing or corrupt.
    ``limits``: ``max_shard_bytes``, ``max_expansion``, ``check_sizes`` (see :class:`Dataset`)."""
    return Dataset(uri, **limits)
