"""Near-duplicate detection: MinHash over word 5-gram shingles, banded (LSH).

Each text gets ``bands`` keys; two texts sharing any key are near duplicates (for 8 bands of
8 rows, texts with Jaccard similarity 0.77 collide half of the time, 0.9 almost always).
Keys are short strings (``"<band>:<16 hex digits>"``), so a work unit can hand its rows' keys
to the commit step, which removes near duplicates across units without reading the shards.
The commit keeps them in a :class:`KeySet`: (band, 64-bit) pairs in a numpy hash table.
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
_FEW = 48  # keys left to probe for which a Python loop costs less than numpy's calls
_CHUNK = 1 << 16  # keys moved at a time when the table grows
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: spreads any keys' bits
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

    def __init__(self, key: object) -> None:
        super().__init__(f"near-dup key {key!r} is not '<band>:<16 hex digits>'")
        self.key = key


class KeySet:
    """The band keys of kept texts as (band, 64-bit integer) pairs in one open-addressing
    hash table of numpy arrays (10 bytes a slot, at most half full): what
    :class:`NearDupIndex` decides, without a Python string and set entry per key.

    A key ``"<band>:<hex>"`` maps to (band, int) one to one (no leading zeros, 16 lowercase
    digits), so two keys are equal exactly when their pairs are. Lookups and inserts probe
    linearly, a whole batch of keys per numpy operation.
    """

    def __init__(self) -> None:
        self._bands: dict[str, int] = {}
        """Each band's head (``"3:"``) → its number (from 1: 0 marks an empty slot)."""
        self._band = np.zeros(1 << 12, dtype=np.uint16)
        self._value = np.zeros(1 << 12, dtype=np.uint64)
        self._used = 0

    def add_first(self, records: Sequence[Sequence[str]], limit: int) -> tuple[list[int], int]:
        """Keep records in order, each one whose keys are in neither the set nor an earlier
        kept record's, until ``limit`` are kept; add the kept records' keys. Returns the
        kept positions and how many records were looked at (the rest come after the limit).
        """
        lengths = list(map(len, records))
        bands, values = self._parse(records, sum(lengths))
        owner = np.repeat(np.arange(len(records)), lengths)
        seen_before = np.zeros(len(records), dtype=bool)
        seen_before[owner[self._contains(bands, values)]] = True
        # Records sharing a key with another of this call depend on which of them came
        # first: only those are decided one by one. A record's fate does not depend on
        # later ones, so the kept are the first ``limit`` of those kept without a limit.
        order = np.lexsort((values, bands))
        same = np.flatnonzero((bands[order][1:] == bands[order][:-1])
                              & (values[order][1:] == values[order][:-1]))
        sharing = np.zeros(len(records), dtype=bool)
        sharing[owner[order[same]]] = sharing[owner[order[same + 1]]] = True
        new = ~seen_before
        new[sharing] = False
        new[self._first_in_order(records, np.flatnonzero(sharing & ~seen_before))] = True
        kept = np.flatnonzero(new)[:max(limit, 0)].tolist()
        if limit <= 0:
            looked = 0
        elif len(kept) == limit:
            looked = kept[-1] + 1  # the records after it are past the limit
        else:
            looked = len(records)
        if kept:
            mine = np.zeros(len(records), dtype=bool)
            mine[kept] = True
            take = mine[owner]
            self._insert(bands[take], values[take])
        return kept, looked

    @staticmethod
    def _first_in_order(records: Sequence[Sequence[str]], candidates: np.ndarray) -> list[int]:
        """Of ``candidates`` (positions, in order), those sharing no key with an earlier
        one kept."""
        kept: list[int] = []
        here: set[str] = set()  # keys of the records kept so far
        for pos in candidates.tolist():
            keys = records[pos]
            if not any(k in here for k in keys):
                here.update(keys)
                kept.append(pos)
        return kept

    def _parse(self, records: Sequence[Sequence[str]], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each key's band number and 64-bit value."""
        try:
            text = "".join(map("".join, records)).encode("ascii")
        except (TypeError, UnicodeEncodeError):
            text = b""  # the general path below says which key is wrong
        if len(text) == 18 * n:  # "<one-digit band>:<16 digits>" each, as band_keys writes
            chars = np.frombuffer(text, dtype=np.uint8).reshape(n, 18)
            digits = chars[:, 2:]
            if ((chars[:, 0] >= 48) & (chars[:, 0] <= 57) & (chars[:, 1] == 58)).all() and (
                    ((digits >= 48) & (digits <= 57)) | ((digits >= 97) & (digits <= 102))).all():
                heads = chars[:, :2].copy().view("S2").ravel()
                codes = np.zeros(256, dtype=np.int64)  # first byte -> band number
                for head in np.unique(heads).tolist():
                    codes[head[0]] = self._band_of(head.decode())
                values = np.frombuffer(bytes.fromhex(digits.tobytes().decode()), dtype=">u8")
                return codes[chars[:, 0]], values.astype(np.uint64)
        keys = [k for keys in records for k in keys]
        try:
            bands = np.fromiter(map(self._band_of, [k[:-16] for k in keys]), dtype=np.int64,
                                count=len(keys))
            digits = "".join(k[-16:] for k in keys)
        except TypeError:  # not a string
            raise KeyFormatError(next(k for k in keys if not isinstance(k, str))) from None
        except KeyFormatError as exc:  # a bad head: say which key
            raise KeyFormatError(next(k for k in keys if k[:-16] == exc.key)) from None
        if not _HEX.fullmatch(digits):
            raise KeyFormatError(next(k for k in keys if not _HEX.fullmatch(k[-16:])))
        values = np.frombuffer(bytes.fromhex(digits), dtype=">u8").astype(np.uint64)
        return bands, values

    def _band_of(self, head: str) -> int:
        """The number of the band ``head`` (``"3:"``) names; raises with the head if bad."""
        band = self._bands.get(head)
        if band is None:
            if not _BAND.fullmatch(head):
                raise KeyFormatError(head)
            if len(self._bands) == np.iinfo(np.uint16).max:
                raise ValueError(f"more than {len(self._bands)} bands of near-dup keys")
            band = self._bands[head] = len(self._bands) + 1
        return band

    def _home(self, bands: np.ndarray, values: np.ndarray) -> np.ndarray:
        mixed = (values ^ (bands.astype(np.uint64) * _GOLDEN)) * _GOLDEN  # wraps mod 2**64
        return (mixed >> np.uint64(65 - self._value.size.bit_length())).astype(np.int64)

    def _contains(self, bands: np.ndarray, values: np.ndarray) -> np.ndarray:
        found = np.zeros(len(values), dtype=bool)
        todo, slot, last = np.arange(len(values)), self._home(bands, values), self._value.size - 1
        while todo.size > _FEW:
            there = self._band[slot]
            hit = (there == bands[todo]) & (self._value[slot] == values[todo])
            found[todo[hit]] = True
            on = ~hit & (there != 0)  # an empty slot ends the probe: not in the set
            todo, slot = todo[on], (slot[on] + 1) & last
        for i, at in zip(todo.tolist(), slot.tolist(), strict=True):  # the last few, in turn
            while self._band[at] and not (self._band[at] == bands[i]
                                          and self._value[at] == values[i]):
                at = (at + 1) & last
            found[i] = self._band[at] != 0
        return found

    def _insert(self, bands: np.ndarray, values: np.ndarray) -> None:
        if 2 * (self._used + len(values)) > self._value.size:
            self._grow(self._used + len(values))
        todo, slot, last = np.arange(len(values)), self._home(bands, values), self._value.size - 1
        while todo.size > _FEW:
            free = np.flatnonzero(self._band[slot] == 0)
            _, first = np.unique(slot[free], return_index=True)  # one key a free slot
            won = free[first]
            self._band[slot[won]] = bands[todo[won]]
            self._value[slot[won]] = values[todo[won]]
            on = np.ones(todo.size, dtype=bool)
            on[won] = False
            todo, slot = todo[on], (slot[on] + 1) & last
        for i, at in zip(todo.tolist(), slot.tolist(), strict=True):  # the last few, in turn
            while self._band[at]:
                at = (at + 1) & last
            self._band[at], self._value[at] = bands[i], values[i]
        self._used += len(values)

    def _grow(self, need: int) -> None:
        size = self._value.size
        while 2 * need > size:
            size *= 2
        full = self._band != 0
        bands, values = self._band[full], self._value[full]
        del full
        self._band = self._value = np.zeros(0)  # the old table goes before the new comes
        self._band = np.zeros(size, dtype=np.uint16)
        self._value = np.zeros(size, dtype=np.uint64)
        self._used = 0
        for lo in range(0, len(values), _CHUNK):  # its temporaries stay small
            self._insert(bands[lo:lo + _CHUNK], values[lo:lo + _CHUNK])
