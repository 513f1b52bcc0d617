"""Near-duplicate detection: MinHash over word 5-gram shingles, banded (LSH).

Each text gets ``bands`` keys; two texts sharing any key are near duplicates (for 8 bands of
8 rows, texts with Jaccard similarity 0.77 collide half of the time, 0.9 almost always).
Keys are short hex strings, so a work unit can hand its rows' keys to the commit step, which
removes near duplicates across units without reading the shards.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable

import numpy as np

_PRIME = np.uint64(4294967311)  # > 2**32
_WORD = re.compile(r"\w+")
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
