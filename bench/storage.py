"""Streaming throughput of ``primer.storage`` against the raw ``minio`` client.

Both stream the same object up and down through the same S3 server (SeaweedFS on loopback,
started here) in the same run, alternating, several rounds; the median (and the best round)
of each is reported with the ratio primer / raw (target: >= 0.95).

    .venv/bin/python bench/storage.py                # 512 MiB, 5 rounds
    .venv/bin/python bench/storage.py --mib 64 --rounds 2 --json out.json
    .venv/bin/python bench/storage.py --single-write --mib 2048   # one write() of 2 GiB

The raw client gets its best case: the object's length is known up front, so it uploads
parts on parallel threads; primer's writer never knows the length (it is a stream).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from primer.storage import open_storage
from primer.storage.s3 import PART_SIZE
from tests.servers import s3_server

CHUNK = 1 << 20  # what an application writes / reads at a time


class Source:
    """A readable stream of ``size`` bytes made from one random block (no 512 MiB buffer)."""

    def __init__(self, size: int, block: bytes):
        self.left, self.block, self.pos = size, block, 0

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(self.block) - self.pos)
            out += self.block[self.pos:self.pos + take]
            self.pos = (self.pos + take) % len(self.block)
        self.left -= n
        return bytes(out)


def raw_upload(client, bucket: str, key: str, size: int, block: bytes) -> None:
    client.put_object(bucket, key, Source(size, block), size, part_size=PART_SIZE)


def raw_download(client, bucket: str, key: str) -> int:
    resp = client.get_object(bucket, key)
    try:
        return sum(len(c) for c in resp.stream(CHUNK))
    finally:
        resp.close()
        resp.release_conn()


def primer_upload(store, key: str, size: int, block: bytes) -> None:
    src = Source(size, block)
    with store.open_write(key) as f:
        while chunk := src.read(CHUNK):
            f.write(chunk)


def primer_download(store, key: str) -> int:
    n = 0
    with store.open_read(key) as f:
        while chunk := f.read(CHUNK):
            n += len(chunk)
    return n


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def single_write(store, mib: int, kind: type, chunk: int | None = None) -> dict:
    """One ``write()`` of the whole object (what ``write_bytes`` of a checkpoint does), or the
    same data in ``chunk``-byte writes for reference: its time, and the process's RSS above the
    data while it runs (sampled every 20 ms)."""
    data = kind(os.urandom(mib << 20))
    base = rss_bytes()
    peak, done = base, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with store.open_write("single.bin") as f:
        if chunk:
            view = memoryview(data)
            for i in range(0, len(view), chunk):
                f.write(view[i:i + chunk])
        else:
            f.write(data)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    assert store.stat("single.bin").size == len(data)
    store.delete("single.bin")
    del data
    return {"kind": kind.__name__ + (f" in {chunk >> 20} MiB writes" if chunk else ""),
            "seconds": round(seconds, 2),
            "MiB_per_s": round(mib / seconds, 1),
            "rss_above_data_mib": round((peak - base) / 2**20, 1),
            "rss_above_data_parts": round((peak - base) / PART_SIZE, 2)}


def main_single(args) -> None:
    results = []
    with s3_server() as server:
        os.environ.update(server.env())
        server.client().make_bucket("bench")
        store = open_storage("s3://bench/primer")
        for kind, chunk in ((bytes, None), (bytearray, None), (bytes, CHUNK)):
            r = single_write(store, args.mib, kind, chunk)
            results.append(r)
            print(f"single write() of {args.mib} MiB {r['kind']:22}: {r['seconds']:6.2f} s "
                  f"({r['MiB_per_s']} MiB/s), RSS above the data {r['rss_above_data_mib']} "
                  f"MiB = {r['rss_above_data_parts']} parts")
    if args.json:
        result = {"single_write": {"object_mib": args.mib, "part_mib": PART_SIZE >> 20,
                                   "server": "SeaweedFS weed server -s3 on loopback",
                                   "runs": results}}
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**old, **result}, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=512, help="object size in MiB")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--single-write", action="store_true",
                    help="time one write() of the whole object (bytes, then bytearray) and "
                         "the RSS it needs beyond the data; --json merges into the file")
    args = ap.parse_args()
    if args.single_write:
        return main_single(args)
    size = args.mib << 20
    block = os.urandom(PART_SIZE + 12345)  # odd length: parts never repeat byte-for-byte

    with s3_server() as server:
        os.environ.update(server.env())
        client = server.client()
        client.make_bucket("bench")
        store = open_storage("s3://bench/primer")
        times: dict[str, list[float]] = {k: [] for k in
                                         ("raw_up", "primer_up", "raw_down", "primer_down")}
        for r in range(args.rounds):
            # Alternate which goes first so neither always meets a warmer server.
            order = ["raw", "primer"] if r % 2 == 0 else ["primer", "raw"]
            for who in order:
                if who == "raw":
                    times["raw_up"].append(timed(raw_upload, client, "bench", "raw.bin",
                                                 size, block))
                    t0 = time.perf_counter()
                    assert raw_download(client, "bench", "raw.bin") == size
                    times["raw_down"].append(time.perf_counter() - t0)
                    client.remove_object("bench", "raw.bin")
                else:
                    times["primer_up"].append(timed(primer_upload, store, "obj.bin", size,
                                                    block))
                    t0 = time.perf_counter()
                    assert primer_download(store, "obj.bin") == size
                    times["primer_down"].append(time.perf_counter() - t0)
                    store.delete("obj.bin")

    mib_s = {k: args.mib / statistics.median(v) for k, v in times.items()}
    best = {k: args.mib / min(v) for k, v in times.items()}  # least disturbed round
    result = {
        "object_mib": args.mib, "rounds": args.rounds, "part_mib": PART_SIZE >> 20,
        "server": "SeaweedFS weed server -s3 on loopback",
        "MiB_per_s": {k: round(v, 1) for k, v in mib_s.items()},
        "ratio_upload": round(mib_s["primer_up"] / mib_s["raw_up"], 3),
        "ratio_download": round(mib_s["primer_down"] / mib_s["raw_down"], 3),
        "best_MiB_per_s": {k: round(v, 1) for k, v in best.items()},
        "best_ratio_upload": round(best["primer_up"] / best["raw_up"], 3),
        "best_ratio_download": round(best["primer_down"] / best["raw_down"], 3),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }
    print(f"upload   raw {mib_s['raw_up']:8.1f} MiB/s   primer {mib_s['primer_up']:8.1f} MiB/s"
          f"   ratio {result['ratio_upload']:.3f}")
    print(f"download raw {mib_s['raw_down']:8.1f} MiB/s   primer {mib_s['primer_down']:8.1f} "
          f"MiB/s   ratio {result['ratio_download']:.3f}")
    print(f"best rounds: upload ratio {result['best_ratio_upload']:.3f}, download ratio "
          f"{result['best_ratio_download']:.3f}")
    print(f"peak RSS of this process: {result['max_rss_mib']} MiB for a {args.mib} MiB object")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
