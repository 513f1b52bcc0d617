"""Exact and near-duplicate detection, staged so it scales out.

1. Per shard, in parallel (:func:`signatures`): a normalized-text hash (exact) and a MinHash
   signature (near), cut into LSH band hashes. Text is simplified like datatrove's
   ``simplify_text`` (lowercase, digits → 0, punctuation → space, whitespace collapsed), split
   into words, and shingled into word ``ngram``-grams. Each shingle is a polynomial hash of
   its words' xxh64 hashes, so each word is hashed once, not once per n-gram. The
   ``bands × rows`` permutations are multiply-add-shift hashes (a 2-universal family), done
   for all shingles at once in numpy.
2. Once, over every shard's band hashes (:func:`cluster`): for each band, sort the hashes and
   link neighbours that are equal; the connected components of that sparse graph
   (``scipy.sparse.csgraph``) are the duplicate clusters. It holds ``bands`` uint64 per file
   (112 bytes at the defaults): ~150 MB for a million files, all work vectorized.
3. Per shard, in parallel: drop every member of a cluster but the first (lowest global
   index) — reason ``exact_dup`` when its normalized text equals the kept one's, else
   ``near_dup``.

With 14 bands of 8 rows, files with Jaccard similarity s collide with probability
1 - (1 - s^8)^14: 0.5 at s≈0.72, 0.92 at s=0.8 (same as datatrove's defaults).
"""

from __future__ import annotations

import re
import string
import unicodedata

import numpy as np
import xxhash

from services.curation.config import DedupConfig

_DIGITS = re.compile(r"\d+(?:[.,]\d+)?")
_PUNCT = str.maketrans(string.punctuation, " " * len(string.punctuation))
_MASK64 = (1 << 64) - 1


def simplify(text: str) -> str:
    text = _DIGITS.sub("0", text.lower()).translate(_PUNCT)
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")
    return text


def exact_key(text: str) -> int:
    """Hash of the text with line endings, trailing whitespace and blank lines normalized."""
    lines = (line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n")
             .expandtabs(4).split("\n"))
    joined = "\n".join(line for line in lines if line)
    return xxhash.xxh3_64_intdigest(joined.encode("utf-8", "surrogatepass"))


class MinHasher:
    """MinHash signatures and LSH band hashes with one fixed set of parameters."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        n = cfg.bands * cfg.rows
        rng = np.random.default_rng(cfg.seed)
        self.a = (rng.integers(0, 1 << 63, n, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 1 << 63, n, dtype=np.uint64)
        self.word_mult = (rng.integers(0, 1 << 63, cfg.ngram, dtype=np.uint64)
                          << np.uint64(1)) | np.uint64(1)

    def shingles(self, text: str) -> np.ndarray:
        words = simplify(text).encode("utf-8", "surrogatepass").split()
        k = self.cfg.ngram
        if not words:
            return np.zeros(0, np.uint64)
        h = np.fromiter(map(xxhash.xxh64_intdigest, words), np.uint64, len(words))
        if len(h) < k:  # a short file is one shingle of all its words
            return np.array([xxhash.xxh64_intdigest(b" ".join(words))], np.uint64)
        m = len(h) - k + 1
        with np.errstate(over="ignore"):
            out = h[:m] * self.word_mult[0]
            for j in range(1, k):
                out = (out ^ (out >> np.uint64(29))) + h[j:j + m] * self.word_mult[j]
        return np.unique(out)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """``bands × rows`` uint32 minimums (all-ones for a file without words)."""
        n = self.cfg.bands * self.cfg.rows
        if len(shingles) == 0:
            return np.full(n, 0xFFFFFFFF, np.uint32)
        sig = np.full(n, np.iinfo(np.uint64).max, np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(shingles), 4096):  # bounded memory on huge files
                chunk = shingles[start:start + 4096, None]
                np.minimum(sig, (chunk * self.a + self.b).min(axis=0), out=sig)
        return (sig >> np.uint64(32)).astype(np.uint32)

    def band_hashes(self, sig: np.ndarray) -> np.ndarray:
        rows = sig.reshape(self.cfg.bands, self.cfg.rows)
        return np.array([xxhash.xxh3_64_intdigest(r.tobytes()) for r in rows], np.uint64)

    def bands_of(self, text: str) -> np.ndarray:
        return self.band_hashes(self.signature(self.shingles(text)))


def cluster(bands: np.ndarray, exact: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """Cluster label (the lowest member index) of every file.

    ``bands``: (n_files, n_bands) uint64 in global order; ``exact``: (n_files,) uint64.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(exact)
    if n == 0:
        return np.zeros(0, np.int64)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    keys = ([exact] if cfg.exact else []) + \
        ([bands[:, j] for j in range(bands.shape[1])] if cfg.near else [])
    for key in keys:
        order = np.argsort(key, kind="stable")
        same = key[order[1:]] == key[order[:-1]]
        src.append(order[1:][same])
        dst.append(order[:-1][same])
    s = np.concatenate(src) if src else np.zeros(0, np.int64)
    d = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(s), np.int8), (s, d)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    return first[comp]


def removal_reasons(labels: np.ndarray, exact: np.ndarray) -> list[str | None]:
    """None for each cluster's kept file; ``exact_dup`` / ``near_dup`` for the others."""
    out: list[str | None] = []
    for i, root in enumerate(labels.tolist()):
        if root == i:
            out.append(None)
        else:
            out.append("exact_dup" if exact[i] == exact[root] else "near_dup")
    return out
