"""Near-duplicate detection: MinHash over word 5-gram shingles, banded (LSH).

Each text gets ``bands`` keys; two texts sharing any key are near duplicates (for 8 bands of
8 rows, texts with Jaccard similarity 0.77 collide half of the time, 0.9 almost always).
Keys are short strings (``"<band>:<16 hex digits>"``), so a work unit can hand its rows' keys
to the commit step, which removes near duplicates across units without reading the shards.
The commit keeps them in a :class:`KeySet`: 8 bytes a key, whatever the number of records.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

_PRIME = np.uint64(4294967311)  # > 2**32
_WORD = re.compile(r"\w+")
_BAND = re.compile(r"(0|[1-9][0-9]*):")
_HEX = re.compile(r"[0-9a-f]*")
SHINGLE = 5


def _perms(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)  # fixed: keys must agree across processes and runs
    return (rng.integers(1, 2**31, n, dtype=np.uint64),
            rng.integers(0, 2**31, n, dtype=np.uint64))


def band_keys(text: str, bands: int = 8, rows: int = 8) -> list[str]:
    words = _WORD.findall(text.lower())
    grams = {" ".join(words[i:i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))}
    x = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))
    a, b = _perms(bands * rows)
    sig = ((np.outer(x, a) + b) % _PRIME).min(axis=0)  # a < 2**31, x < 2**32: no overflow
    return [f"{i}:" + hashlib.blake2b(sig[i * rows:(i + 1) * rows].tobytes(),
                                      digest_size=8).hexdigest() for i in range(bands)]


class NearDupIndex:
    """Remembers the band keys of kept texts; ``add`` says whether a text is new."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def add(self, keys: Iterable[str]) -> bool:
        keys = list(keys)
        if any(k in self._seen for k in keys):
            return False
        self._seen.update(keys)
        return True


class KeyFormatError(ValueError):
    """A key that is not ``"<band>:<16 lowercase hex digits>"``."""


class KeySet:
    """The band keys of kept texts as 64-bit integers, one sorted set per band: what
    :class:`NearDupIndex` decides, in 8 bytes a key instead of a Python string in a set.

    A key ``"<band>:<hex>"`` maps to (band, int) one to one (no leading zeros, 16 lowercase
    digits), so two keys are equal exactly when their integers are. Each band's set is a few
    sorted numpy runs merged like the digits of a binary counter: adding is amortised
    O(log n) a key, a lookup is one binary search per run.
    """

    def __init__(self) -> None:
        self._bands: dict[str, int] = {}  # "3:" -> 3, for the heads seen
        self._runs: dict[int, list[np.ndarray]] = {}

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for runs in self._runs.values() for run in runs)

    def add_first(self, records: Sequence[Sequence[str]], limit: int) -> tuple[list[int], int]:
        """Keep records in order, each one whose keys are in neither the set nor an earlier
        kept record's, until ``limit`` are kept; add the kept records' keys. Returns the
        kept positions and how many records were looked at (the rest come after the limit).
        """
        lengths = [len(keys) for keys in records]
        flat = [k for keys in records for k in keys]
        bands, values = self._parse(flat)
        owner = np.repeat(np.arange(len(records)), lengths)
        seen_before = np.zeros(len(records), dtype=bool)
        for band in np.unique(bands).tolist():
            mine = bands == band
            seen_before[owner[mine][self._contains(band, values[mine])]] = True
        kept: list[int] = []
        looked = 0
        here: set[str] = set()  # keys of the records kept from this call
        for pos, keys in enumerate(records):
            if len(kept) == limit:
                break
            looked += 1
            if seen_before[pos] or any(k in here for k in keys):
                continue
            here.update(keys)
            kept.append(pos)
        if kept:
            take = np.isin(owner, kept)
            for band in np.unique(bands[take]).tolist():
                self._add(band, values[take & (bands == band)])
        return kept, looked

    def _parse(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        bands = np.empty(len(keys), dtype=np.int64)
        for i, k in enumerate(keys):
            if not isinstance(k, str):
                raise KeyFormatError(f"near-dup key {k!r} is not '<band>:<16 hex digits>'")
            head = k[:-16]
            band = self._bands.get(head)
            if band is None:
                if not (len(k) > 16 and _BAND.fullmatch(head)):
                    raise KeyFormatError(f"near-dup key {k!r} is not '<band>:<16 hex digits>'")
                band = self._bands[head] = int(head[:-1])
            bands[i] = band
        digits = "".join(k[-16:] for k in keys)
        if not _HEX.fullmatch(digits):
            bad = next(k for k in keys if not _HEX.fullmatch(k[-16:]))
            raise KeyFormatError(f"near-dup key {bad!r} is not '<band>:<16 hex digits>'")
        values = np.frombuffer(bytes.fromhex(digits), dtype=">u8").astype(np.uint64)
        return bands, values

    def _contains(self, band: int, values: np.ndarray) -> np.ndarray:
        found = np.zeros(len(values), dtype=bool)
        for run in self._runs.get(band, []):
            at = np.minimum(np.searchsorted(run, values), len(run) - 1)
            found |= run[at] == values
        return found

    def _add(self, band: int, values: np.ndarray) -> None:
        runs = self._runs.setdefault(band, [])
        run = np.unique(values)
        while runs and len(runs[-1]) <= 2 * len(run):  # runs shrink geometrically
            run = np.union1d(runs.pop(), run)
        runs.append(run)
