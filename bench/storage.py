"""Streaming throughput of ``primer.storage`` against the raw ``minio`` client.

Both stream the same object up and down through the same S3 server (SeaweedFS on loopback,
started here) in the same run, alternating, several rounds; the median (and the best round)
of each is reported with the ratio primer / raw (target: >= 0.95).

    .venv/bin/python bench/storage.py                # 512 MiB, 5 rounds
    .venv/bin/python bench/storage.py --mib 64 --rounds 2 --json out.json

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=512, help="object size in MiB")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
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
