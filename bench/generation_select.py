"""Peak memory and time of generation's commit selection over N records' batch markers:
this tree's ``select`` (batches streamed in stream order, near-dup keys as 64-bit integers)
against the one it replaced (every marker's result in one list, every kept key a Python
string in one set; ``git show 7b34e82:services/generation/run.py``).

For each size, batch markers are written to local disk as ``run_unit`` writes them, in the
default batch size; each record's keys come from the real key function (``band_keys``) on a
short synthetic text, and a share of the records are near duplicates (one word changed) of
a record of an earlier batch. Each selection runs in a fresh process: its peak RSS
(``ru_maxrss``), that peak above the RSS after imports, and seconds; the two selections
must agree (same rows, drops, surplus, tokens). The target: the new peak grows with the
records by the kept keys' table only (10 bytes a slot, at most half full; the summary's
``kept_keys_mib`` is their 8 bytes each), 1M records well under 1 GiB.

    .venv/bin/python bench/generation_select.py --save       # 100k and 1M (about 10 minutes)
    .venv/bin/python bench/generation_select.py --records 20000   # quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "7b34e82"
DUPLICATES = 0.05
"""Share of records that are near duplicates of an earlier batch's record."""
WORDS = [f"w{i}" for i in range(2000)]

# One selection in a fresh process; prints its measurements as JSON.
_SELECT = """
import hashlib, importlib.util, json, resource, sys, time
args = json.loads(sys.argv[1])
from primer.executor import marker_result
from primer.storage import open_storage
from services.generation import run as new
from services.generation.config import GenerateConfig
old = None
if args["impl"] == "old":
    spec = importlib.util.spec_from_file_location("old_generation_run", args["old"])
    old = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
config = GenerateConfig()
config.generation.batch_size = args["batch"]
units = new.units_for("textbooks", args["out"], config, 0, args["stop"])
state = open_storage(new.work_uri(args["out"]))
start_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
began = time.perf_counter()
if old is not None:  # what the old commit_unit did
    sel = old.select([marker_result(state, u.id) for u in units], args["count"])
else:
    sel = new.select(new._results(state, units, args["stop"]), args["count"])
seconds = time.perf_counter() - began
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = ([(r["start"], list(p)) for r, p in sel.rows] if old is not None
        else [(c.start, c.positions.tolist()) for c in sel.rows])
digest = hashlib.sha256(json.dumps([rows, sorted(sel.drops.items()), sel.kept, sel.surplus,
                                    sel.specs, sel.tokens]).encode()).hexdigest()
print(json.dumps({"seconds": round(seconds, 2), "peak_mib": round(peak_kib / 1024, 1),
                  "above_start_mib": round((peak_kib - start_kib) / 1024, 1),
                  "kept": sel.kept, "near_dup": sel.drops.get("near_dup", 0),
                  "surplus": sel.surplus, "selection_sha256": digest}))
"""


def text_of(index: int) -> str:
    """Record ``index``'s synthetic text: 40 words, fixed by its index."""
    rng = random.Random(index)
    return f"lesson {index}: " + " ".join(rng.choices(WORDS, k=40))


def write_markers(out: Path, records: int, batch: int) -> dict:
    """Batch markers for ``records`` records (every spec valid), as ``run_unit`` writes
    them; returns how many specs they cover and the markers' bytes."""
    from services.generation.neardup import band_keys
    from services.generation.run import UNIT_FN

    markers = out / "_work" / "_markers"
    markers.mkdir(parents=True)
    rng = random.Random(0)
    size = 0
    for start in range(0, records, batch):
        count = min(batch, records - start)
        keys = []
        for i in range(start, start + count):
            text = text_of(i)
            if start and rng.random() < DUPLICATES:  # one word changed from an earlier one
                text = text_of(rng.randrange(start)).rsplit(" ", 1)[0] + " changed"
            keys.append(band_keys(text))
        result = {"start": start, "count": batch, "shard": None, "drops": {},
                  "usage": {"prompt_tokens": 50 * count, "completion_tokens": 400 * count,
                            "requests": count},
                  "indices": list(range(start, start + count)), "tokens": [400] * count,
                  "keys": keys}
        unit = f"textbooks-{start:09d}"
        marker = json.dumps({"job": "bench", "unit": unit, "fn": UNIT_FN, "result": result,
                             "host": "bench", "pid": 0, "duration_s": 1.0,
                             "finished_at": "2026-01-01T00:00:00+00:00"}, indent=1)
        (markers / f"{unit}.json").write_text(marker)
        size += len(marker)
    stop = -(-records // batch) * batch
    return {"stop": stop, "marker_mib": round(size / 2**20, 1)}


def old_select(tmp: Path) -> Path | None:
    """The old ``run.py`` (its ``select``) in a file of its own; None without git history."""
    try:
        old = subprocess.run(["git", "show", f"{OLD_COMMIT}:services/generation/run.py"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = tmp / "old_generation_run.py"
    path.write_text(old)
    return path


def run_select(impl: str, out: Path, old: Path | None, stop: int, count: int,
               batch: int) -> dict:
    args = {"impl": impl, "out": str(out), "old": str(old), "stop": stop, "count": count,
            "batch": batch}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", _SELECT, json.dumps(args)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} selection failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    from services.generation.config import GenerationSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--batch", type=int, default=GenerationSettings().batch_size)
    ap.add_argument("--no-old", action="store_true", help="only this tree's selection")
    ap.add_argument("--save", action="store_true",
                    help="write bench/results/generation_select.json")
    ap.add_argument("--json", help="also write the report to this file")
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="primer-bench-select-") as tmp_dir:
        tmp = Path(tmp_dir)
        old = None if args.no_old else old_select(tmp)
        for records in args.records:
            out = tmp / f"gen-{records}"
            began = time.perf_counter()
            data = write_markers(out, records, args.batch)
            count = int(records * (1 - 2 * DUPLICATES))  # reached, with a surplus
            print(f"{records:,} records: {data['marker_mib']} MiB of markers in "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
            for impl in ["new"] + (["old"] if old else []):
                result = run_select(impl, out, old, data["stop"], count, args.batch)
                rows.append({"impl": impl, "records": records, "count": count, **data,
                             **result})
                print(json.dumps(rows[-1]), flush=True)

    def get(impl: str, records: int, field: str):
        return next((r[field] for r in rows if r["impl"] == impl and r["records"] == records),
                    None)

    sizes = args.records
    summary = {
        "new_peak_mib": [get("new", n, "peak_mib") for n in sizes],
        "old_peak_mib": [get("old", n, "peak_mib") for n in sizes],
        "new_above_start_mib": [get("new", n, "above_start_mib") for n in sizes],
        "old_above_start_mib": [get("old", n, "above_start_mib") for n in sizes],
        "kept_keys_mib": [round(get("new", n, "kept") * 8 * 8 / 2**20, 1) for n in sizes],
        "old_over_new_peak": [_ratio(get("old", n, "peak_mib"), get("new", n, "peak_mib"))
                              for n in sizes],
        "old_over_new_seconds": [_ratio(get("old", n, "seconds"), get("new", n, "seconds"))
                                 for n in sizes],
        "same_selection": all(get("old", n, "selection_sha256") in
                              (None, get("new", n, "selection_sha256")) for n in sizes),
        "target": "new peak grows with the records by the kept keys' table only (10 bytes "
                  "a slot, at most half full: 20-40 bytes a key; kept_keys_mib is their raw "
                  "8 bytes); 1M records well under 1 GiB; same selection as the old",
    }
    report = {"machine": f"{platform.node()}: {os.cpu_count()} cores (shared with other "
                         "work: times are noisy)",
              "date": datetime.date.today().isoformat(), "batch_size": args.batch,
              "command": " ".join(["bench/generation_select.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
              "runs": rows, "summary": summary}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.save:
        path = REPO / "bench" / "results" / "generation_select.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return report


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a / b, 2)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
