"""Peak memory of curation's corpus-wide units (one dedup bucket, the cluster unit, the
sample choice) as the corpus grows: what the chart's curation worker memory must hold.

Synthetic filtered shards (random band hashes, 1 % planted duplicates) are written to a
local folder; each unit runs in a fresh process whose peak RSS (``ru_maxrss``) is reported,
with the process's RSS before the unit subtracted. Per-shard units (read, annotate, score,
select) hold one shard and do not grow with the corpus.

    .venv/bin/python bench/curation_memory.py --files 1000000 2000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SHARD_ROWS = 100_000
# Linux: writing 5 to clear_refs resets the peak RSS (VmHWM), so the unit's own peak is
# measured, not the imports'.
_UNIT = """
import json, sys
from services.curation import pipeline
def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
base = kib("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
fn, calls = sys.argv[1], json.loads(sys.argv[2])
for kwargs in calls:
    getattr(pipeline, fn)(**kwargs)
peak = kib("VmHWM:")
print(json.dumps({"peak_mib": round(peak / 1024, 1),
                  "above_start_mib": round((peak - base) / 1024, 1)}))
"""


def corpus(out: Path, files: int, bands: int) -> int:
    rng = np.random.default_rng(0)
    n_shards = -(-files // SHARD_ROWS)
    for i in range(n_shards):
        n = min(SHARD_ROWS, files - i * SHARD_ROWS)
        cols = {"id": pa.array([f"f{i}-{r}" for r in range(n)]),
                "exact": pa.array(rng.integers(1, 2**63, n, dtype=np.uint64))}
        for j in range(bands):
            band = rng.integers(1, 2**63, n, dtype=np.uint64)
            band[: n // 100] = band[0]  # planted near duplicates
            cols[f"b{j:02d}"] = pa.array(band)
        path = out / "_work" / "filtered" / f"part-{i:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
    return n_shards


def unit(fn: str, *more: dict, **kwargs) -> dict:
    """Peak RSS of one unit in a fresh process (then of ``more`` units after it, whose peak is
    not wanted: one process for all of them saves an interpreter start each)."""
    res = subprocess.run([sys.executable, "-c", _UNIT, fn, json.dumps([kwargs, *more])],
                         cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--save", action="store_true", help="write bench/results/")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    from services.curation.config import CurationConfig

    config = CurationConfig().model_dump(mode="json")
    rows = []
    for files in args.files:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            n = corpus(out, files, CurationConfig().dedup.bands)
            shared = {"config": config, "out": str(out), "n_shards": n}
            row = {"files": files, "shards": n}
            for key in ("exact", "b00"):
                row[f"bucket_{key}"] = unit("bucket_unit", **shared, key=key)
            pipeline_keys = ["exact"] + [f"b{j:02d}" for j in range(1, 14)]
            # the cluster unit reads every bucket
            unit("bucket_unit", *({**shared, "key": key} for key in pipeline_keys[2:]),
                 **shared, key=pipeline_keys[1])
            row["cluster"] = unit("cluster_unit", **shared)
            row["choose"] = unit("choose_unit", **shared)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": f"{__import__('os').cpu_count()} cores", "rows": rows,
              "bytes_per_file_cluster": [
                  r["cluster"]["above_start_mib"] * 2**20 / r["files"] for r in rows]}
    if len(rows) > 1:  # the slope between the smallest and largest corpus
        a, b = rows[0], rows[-1]
        result["marginal_bytes_per_file"] = {
            unit: round((b[unit]["above_start_mib"] - a[unit]["above_start_mib"]) * 2**20
                        / (b["files"] - a["files"]), 1)
            for unit in ("bucket_exact", "bucket_b00", "cluster", "choose")}
    print(json.dumps(result, indent=1))
    saved = [REPO / "bench" / "results" / "curation_memory.json"] if args.save else []
    for path in saved + ([args.json] if args.json else []):
        path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
