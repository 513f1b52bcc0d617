"""Curation benchmark: near-dedup throughput and agreement vs datatrove's MinHash pipeline,
then whole-curation files/s and peak memory. Both on real Python files of this machine.

    pip install datatrove                       # the peer (benchmark only)
    .venv/bin/python bench/curation.py          # 20k files, 2 workers
    .venv/bin/python bench/curation.py --files 5000 --curate-files 1000   # quick look

Same corpus, same parameters (5-gram word shingles, 14 bands × 8 rows), same number of
workers, both reading the same JSONL shards. datatrove runs its three stages (signatures →
buckets → cluster); Primer runs its two (signatures per shard in a process pool → one
vectorized clustering). datatrove's word tokenizers need spaCy or NLTK for every language;
it is given a plain ``str.split`` tokenizer instead (its fastest possible choice, and the
same split Primer uses). Agreement is the Jaccard
index of the two sets of removed files: ``agreement_jaccard_same_keep_rule`` applies one
keep rule (lowest index survives, Primer's) to datatrove's own duplicate pairs, so it
measures agreement on what is a duplicate; ``agreement_jaccard_raw`` also counts that
datatrove keeps an arbitrary member (its union-find root) where Primer keeps the first.

Primer runs once per hash family (``--compat``, ``DedupConfig.compat``). LSH flags pairs near
its threshold by chance, so on real code two families — or datatrove with two seeds — agree
on only ~0.82 of the removed files; ``compat=datatrove`` computes datatrove's exact
signatures (same normalization, n-gram hash, permutations and seed) and agrees ~1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.curation import readers
from services.curation.config import CurationConfig, DedupConfig
from services.curation.dedup import MinHasher, cluster, exact_key, removal_reasons


def corpus(n: int) -> list[str]:
    texts = []
    for path in readers.list_py_files(readers.default_roots()):
        rec = next(readers.read_files([path], 1 << 20))
        if rec.get("text") and rec["text"].strip():
            texts.append(rec["text"])
        if len(texts) >= n:
            break
    return texts


def write_jsonl(texts: list[str], folder: Path, shards: int) -> list[int]:
    folder.mkdir(parents=True)
    sizes = []
    per = -(-len(texts) // shards)
    for s in range(shards):
        chunk = texts[s * per:(s + 1) * per]
        sizes.append(len(chunk))
        with open(folder / f"{s:05d}.jsonl", "w") as f:
            for i, t in enumerate(chunk):
                f.write(json.dumps({"text": t, "id": f"{s}-{i}"}) + "\n")
    return sizes


def _sign(path: str, compat: str = "primer") -> tuple[np.ndarray, np.ndarray]:
    hasher = MinHasher(DedupConfig(compat=compat))
    bands, exact = [], []
    for rec in readers.read_data_file(path, "text"):
        bands.append(hasher.bands_of(rec["text"]))
        exact.append(exact_key(rec["text"]))
    return np.stack(bands), np.asarray(exact, np.uint64)


def primer_dedup(folder: Path, workers: int, compat: str) -> tuple[float, set[int]]:
    t0 = time.perf_counter()
    files = sorted(str(p) for p in folder.glob("*.jsonl"))
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_sign, files, [compat] * len(files)))
    bands = np.concatenate([p[0] for p in parts])
    exact = np.concatenate([p[1] for p in parts])
    cfg = DedupConfig(exact=False)  # near-dup only, like the peer
    reasons = removal_reasons(cluster(bands, exact, cfg), exact)
    return time.perf_counter() - t0, {i for i, r in enumerate(reasons) if r}


def _accepts_str() -> bool:
    import xxhash

    try:
        xxhash.xxh64_intdigest("a")
    except TypeError:
        return False
    return True


def datatrove_dedup(folder: Path, work: Path, workers: int, sizes: list[int]
                    ) -> tuple[float, set[int]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.utils.word_tokenizers import WordTokenizer

    class SplitTokenizer(WordTokenizer):
        """str.split: what Primer does after the same text simplification."""

        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            raise NotImplementedError

    import datatrove.utils.hashes.xxhash as dt_xxhash
    import xxhash

    if not _accepts_str():  # xxhash >= 4 takes bytes only; datatrove 0.10 passes str
        dt_xxhash.xxhash64 = lambda text: xxhash.xxh64_intdigest(text.encode())
        dt_xxhash.xxhash32 = lambda text: xxhash.xxh32_intdigest(text.encode())
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    tasks = len(sizes)
    t0 = time.perf_counter()
    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(folder), text_key="text", id_key="id"),
        MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg,
                              language=SplitTokenizer())],
        tasks=tasks, workers=workers, logging_dir=str(work / "l1")).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(
        input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)],
        tasks=cfg.num_buckets, workers=workers, logging_dir=str(work / "l2")).run()
    LocalPipelineExecutor(pipeline=[MinhashDedupCluster(
        input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=cfg)],
        tasks=1, workers=1, logging_dir=str(work / "l3")).run()
    elapsed = time.perf_counter() - t0
    offsets = np.cumsum([0] + sizes)
    # datatrove's own detected duplicate pairs, clustered with Primer's keep rule (lowest
    # index kept): agreement on *what is a duplicate*, apart from which copy survives
    edges = []
    for f in sorted((work / "buckets").glob("*.dups")):
        for f1, d1, f2, d2 in struct.iter_unpack("<4I", f.read_bytes()):
            if f1 != 0xFFFFFFFF:
                edges.append((int(offsets[f1]) + d1, int(offsets[f2]) + d2))
    n = int(offsets[-1])
    canonical = _lowest_kept(n, edges)
    removed = set()
    for rank in range(tasks):
        f = work / "remove" / f"{rank:06d}.remove"
        if f.exists():
            data = f.read_bytes()
            removed |= {int(offsets[rank]) + d for (d,) in struct.iter_unpack("<I", data)}
    return elapsed, removed, canonical


def _lowest_kept(n: int, edges: list[tuple[int, int]]) -> set[int]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not edges:
        return set()
    a = np.array(edges)
    graph = coo_matrix((np.ones(len(a)), (a[:, 0], a[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1, n)
    np.minimum.at(first, comp, np.arange(n))
    return {i for i in range(n) if first[comp[i]] != i}


def whole_curation(n: int, work: Path, workers: int) -> dict:
    cfg = CurationConfig(output=str(work / "curated"), workers=workers)
    cfg.reader.limit = n
    cfg.reader.files_per_unit = max(50, n // (4 * workers))
    cfg.classify.keep_top = 0.2
    t0 = time.perf_counter()
    from services.curation import pipeline

    report = pipeline.run(cfg, progress=False)
    elapsed = time.perf_counter() - t0
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"files": report["files_seen"], "seconds": round(elapsed, 1),
            "files_per_s": round(report["files_seen"] / elapsed, 1), "kept": report["kept"],
            "peak_rss_mib": round(peak_kib / 1024, 1), "classifier": report["classifier"],
            "drop_counts": {k: v for k, v in report["drop_counts"].items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--curate-files", type=int, default=3000,
                    help="files for the whole-curation run (embedding is the slow part)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--compat", nargs="+", choices=["datatrove", "primer"],
                    default=["datatrove", "primer"],
                    help="Primer hash families to run (DedupConfig.compat); datatrove gives "
                    "the same signatures as the peer, primer is the default family")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    texts = corpus(args.files)
    print(f"corpus: {len(texts)} real Python files, {sum(map(len, texts)):,} chars")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sizes = write_jsonl(texts, tmp_path / "in", shards=max(2, args.workers * 2))
        dt_s, dt_removed, dt_canonical = datatrove_dedup(tmp_path / "in", tmp_path / "dt",
                                                         args.workers,
                                           sizes)
        result = {"files": len(texts), "workers": args.workers,
                  "datatrove_files_per_s": round(len(texts) / dt_s, 1),
                  "removed_datatrove": len(dt_removed)}
        for compat in args.compat:
            ours_s, ours_removed = primer_dedup(tmp_path / "in", args.workers, compat)
            union = dt_removed | ours_removed
            jaccard = len(dt_removed & ours_removed) / len(union) if union else 1.0
            union_c = dt_canonical | ours_removed
            jaccard_c = len(dt_canonical & ours_removed) / len(union_c) if union_c else 1.0
            result[f"primer_compat_{compat}"] = {
                "primer_files_per_s": round(len(texts) / ours_s, 1),
                "speedup": round(dt_s / ours_s, 2),
                "removed_primer": len(ours_removed),
                "agreement_jaccard_same_keep_rule": round(jaccard_c, 4),
                "agreement_jaccard_raw": round(jaccard, 4)}
        print(json.dumps(result, indent=1))
        if args.curate_files:
            result["whole_curation"] = whole_curation(args.curate_files, tmp_path / "cur",
                                                      args.workers)
            print(json.dumps(result["whole_curation"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
