"""Exact and near-duplicate detection, staged so it scales out.

1. Per shard, in parallel (:func:`signatures`): a normalized-text hash (exact) and a MinHash
   signature (near), cut into LSH band hashes. Text is simplified exactly like datatrove's
   default ``simplify_text`` (lowercase; runs of Unicode digits, with one optional decimal
   part, → ``0``; ASCII and common Unicode punctuation and C0/C1 control characters → space;
   diacritics stripped), split on whitespace, and shingled into word ``ngram``-grams. A file
   with fewer than ``ngram`` words has no shingle and no signature, so it is never a near
   duplicate (the exact stage still catches copies of it). Two hash families
   (``DedupConfig.compat``):

   * ``primer`` (default): each shingle is a polynomial hash of its words' xxh64 hashes (each
     word is hashed once, not once per n-gram); the ``bands × rows`` permutations are
     multiply-add-shift hashes (a 2-universal family) keeping 32 bits.
   * ``datatrove``: each shingle is the xxh64 of its space-joined words; the permutations are
     ``(a·x + b) mod 2^64 mod (2^61 - 1)`` with ``a``, ``b`` drawn like datatrove's
     ``MinhashConfig(seed)``, keeping 64 bits: bit-identical signatures to datatrove's.

   Both are done for all shingles at once in numpy.
2. Per bucket key, in parallel (:func:`bucket_edges`, one unit for the exact hash and one per
   band): sort that column of every shard and link neighbours that are equal; a unit holds
   one uint64 column and its sort order (16 bytes per file: ~160 MB for ten million files).
   Then once (:func:`components`): the connected components of all the edges
   (``scipy.sparse.csgraph``) are the duplicate clusters; edges are few (about one per
   duplicate and band). A band hash of 0 (:data:`NO_SIGNATURE`) means "no signature" and
   never links.
3. Per shard, in parallel: drop every member of a cluster but the first (lowest global
   index) — reason ``exact_dup`` when its normalized text equals the kept one's, else
   ``near_dup``.

With 14 bands of 8 rows, files with Jaccard similarity s collide with probability
1 - (1 - s^8)^14: 0.5 at s≈0.72, 0.92 at s=0.8 (same as datatrove's defaults). Pairs near
that threshold are flagged by chance, so two hash families (or two seeds of one family)
agree on only ~82% of the removed files of a code corpus (bench/curation.py); only the same
family and seed gives the same set.
"""

from __future__ import annotations

import re
import string
import unicodedata

import numpy as np
import xxhash

from services.curation.config import DedupConfig

# digits in any script (``re``'s ``\d`` is Unicode Nd), with one optional decimal part
_DIGITS = re.compile(r"\d+(?:[.,\u060c\u066b\u2396\u2397\u2398]\d+)?")
# ASCII punctuation, C0 controls but tab/newline, DEL and C1 controls, and the Unicode
# quotes, dashes, brackets and CJK/full-width marks datatrove's normalization blanks too
_PUNCT_CHARS = (
    string.punctuation
    + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
    + "\u00ab\u00b4\u00bb\u2013\u2014\u2019\u201c\u201d\u201e\u2026\u2236\u2501\u25ba"
    + "\u3001\u3002\u3008\u3009\u300a\u300b\u300c\u300d\u3010\u3011"
    + "\uff01\uff05\uff08\uff09\uff0c\uff0e\uff11\uff1a\uff1b\uff1f\uff5e")
_PUNCT = str.maketrans(_PUNCT_CHARS, " " * len(_PUNCT_CHARS))
_MERSENNE61 = np.uint64((1 << 61) - 1)
NO_SIGNATURE = 0  # band hash of a file without shingles; never links two files


def simplify(text: str) -> str:
    text = _DIGITS.sub("0", text.lower()).translate(_PUNCT)
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")
    return text


def words(text: str) -> list[bytes]:
    """The UTF-8 words of the simplified text, split on (Unicode) whitespace."""
    text = simplify(text)
    if text.isascii():  # controls are blanked already: bytes.split() == str.split()
        return text.encode("ascii").split()
    return [w.encode("utf-8", "surrogatepass") for w in text.split()]


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
        if cfg.compat == "datatrove":  # the parameter draw of datatrove's MinhashConfig(seed)
            gen = np.random.RandomState(cfg.seed)
            self.a = gen.randint(1, _MERSENNE61, dtype=np.uint64, size=n)
            self.b = gen.randint(0, _MERSENNE61, dtype=np.uint64, size=n)
            return
        rng = np.random.default_rng(cfg.seed)
        self.a = (rng.integers(0, 1 << 63, n, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self.b = rng.integers(0, 1 << 63, n, dtype=np.uint64)
        self.word_mult = (rng.integers(0, 1 << 63, cfg.ngram, dtype=np.uint64)
                          << np.uint64(1)) | np.uint64(1)

    def shingles(self, text: str) -> np.ndarray:
        """Distinct uint64 hashes of the word n-grams (none below ``ngram`` words)."""
        ws = words(text)
        k = self.cfg.ngram
        m = len(ws) - k + 1
        if m <= 0:
            return np.zeros(0, np.uint64)
        if self.cfg.compat == "datatrove":
            joined = b" ".join(ws)
            lens = np.fromiter(map(len, ws), np.int64, len(ws))
            starts = np.concatenate(([0], np.cumsum(lens + 1)[:-1]))
            ends = starts[k - 1:] + lens[k - 1:]
            grams = map(joined.__getitem__, map(slice, starts[:m].tolist(), ends.tolist()))
            return np.unique(np.fromiter(map(xxhash.xxh64_intdigest, grams), np.uint64, m))
        h = np.fromiter(map(xxhash.xxh64_intdigest, ws), np.uint64, len(ws))
        with np.errstate(over="ignore"):
            out = h[:m] * self.word_mult[0]
            for j in range(1, k):
                out = (out ^ (out >> np.uint64(29))) + h[j:j + m] * self.word_mult[j]
        return np.unique(out)

    def signature(self, shingles: np.ndarray) -> np.ndarray | None:
        """``bands × rows`` minimums (uint32; uint64 for compat=datatrove), None without
        shingles."""
        if len(shingles) == 0:
            return None
        n = self.cfg.bands * self.cfg.rows
        sig = np.full(n, np.iinfo(np.uint64).max, np.uint64)
        compat = self.cfg.compat == "datatrove"
        with np.errstate(over="ignore"):
            for start in range(0, len(shingles), 4096):  # bounded memory on huge files
                y = shingles[start:start + 4096, None] * self.a + self.b  # mod 2^64
                if compat:  # y mod (2^61 - 1): fold the top 3 bits, subtract once
                    y = (y & _MERSENNE61) + (y >> np.uint64(61))
                    y -= _MERSENNE61 * (y >= _MERSENNE61)
                np.minimum(sig, y.min(axis=0), out=sig)
        return sig if compat else (sig >> np.uint64(32)).astype(np.uint32)

    def band_hashes(self, sig: np.ndarray | None) -> np.ndarray:
        if sig is None:
            return np.full(self.cfg.bands, NO_SIGNATURE, np.uint64)
        rows = sig.reshape(self.cfg.bands, self.cfg.rows)
        return np.array([xxhash.xxh3_64_intdigest(r.tobytes()) or 1 for r in rows], np.uint64)

    def bands_of(self, text: str) -> np.ndarray:
        return self.band_hashes(self.signature(self.shingles(text)))


def bucket_keys(cfg: DedupConfig) -> list[str]:
    """The columns duplicates are found by, one bucket unit each: ``exact`` and/or one
    ``bNN`` per LSH band."""
    return (["exact"] if cfg.exact else []) + \
        ([f"b{j:02d}" for j in range(cfg.bands)] if cfg.near else [])


def bucket_edges(key: np.ndarray, is_band: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of files (global indices) with equal ``key``: each file linked to the previous
    one of its bucket in sorted order, enough for the connected components."""
    order = np.argsort(key, kind="stable")
    same = key[order[1:]] == key[order[:-1]]
    if is_band:
        same &= key[order[1:]] != NO_SIGNATURE
    return order[1:][same], order[:-1][same]


def components(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Cluster label (the lowest member index) of each of ``n`` files linked by the edges."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(first, comp, np.arange(n))
    return first[comp]


def cluster(bands: np.ndarray, exact: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """Cluster label (the lowest member index) of every file, in one process (the pipeline
    runs the same two steps as bucket units and one cluster unit).

    ``bands``: (n_files, n_bands) uint64 in global order; ``exact``: (n_files,) uint64.
    """
    columns = {"exact": exact, **{f"b{j:02d}": bands[:, j] for j in range(bands.shape[1])}}
    edges = [bucket_edges(columns[k], k != "exact") for k in bucket_keys(cfg)
             if k in columns]
    src = np.concatenate([e[0] for e in edges]) if edges else np.zeros(0, np.int64)
    dst = np.concatenate([e[1] for e in edges]) if edges else np.zeros(0, np.int64)
    return components(src, dst, len(exact))


def removal_reasons(labels: np.ndarray, exact: np.ndarray) -> list[str | None]:
    """None for each cluster's kept file; ``exact_dup`` / ``near_dup`` for the others."""
    out: list[str | None] = []
    for i, root in enumerate(labels.tolist()):
        if root == i:
            out.append(None)
        else:
            out.append("exact_dup" if exact[i] == exact[root] else "near_dup")
    return out
