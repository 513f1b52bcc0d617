"""What one tick of an asynchronous door costs while a generation run is in a late round.

The operator (every ``POLL_SECONDS``) and the gateway (every 2 s) tick each run: plan the
next step (:func:`primer.executor.plan.reconcile`) and read the progress
(:func:`primer.progress.unit_stats`). This builds a run on local storage with ``--units``
batch units in finished rounds (fake markers shaped as ``generate_batch`` writes them:
128 specs per batch, 8 MinHash keys per valid record) and the next round sent, then ticks it
as the operator does, counting marker reads and listings and timing each tick.

Run it on the tree to measure; to compare with the code before the memo, run the same file
with ``PYTHONPATH`` pointing at an older checkout (it uses that tree's API)::

    .venv/bin/python bench/tick.py --units 2000
    .venv/bin/python bench/tick.py --units 2000 --memory     # what the memo keeps
    git archive 7b34e82 | tar -x -C /tmp/before && \\
        PYTHONPATH=/tmp/before .venv/bin/python bench/tick.py --units 2000
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: it wins

from primer import progress
from primer.executor.base import MARKERS, marker_key
from primer.executor.plan import Done, reconcile
from primer.storage import open_storage
from primer.storage.local import LocalStorage
from services.generation.config import GenerateConfig
from services.generation.plan import GenerationPlanner, GenerationTarget

try:
    from primer.executor.base import Markers
except ImportError:  # the code before the memo
    Markers = None

BATCH = 128


class Counted:
    """Marker reads and listings that cover ``_markers/``, by wrapping the local backend."""

    def __init__(self) -> None:
        self.reads, self.listings = Counter(), Counter()
        real_read, real_list = LocalStorage.open_read, LocalStorage.list

        def open_read(store, key, offset=0):
            self.reads[f"/{MARKERS}/" in f"/{key}"] += 1
            return real_read(store, key, offset)

        def listing(store, prefix=""):
            # A listing of the whole work folder lists the markers too.
            self.listings[prefix.rstrip("/") in ("", MARKERS)] += 1
            return real_list(store, prefix)

        LocalStorage.open_read, LocalStorage.list = open_read, listing


def fake_result(start: int, valid: int) -> dict:
    keys = [[f"{band}:{start:08x}{i:08x}" for band in range(8)]  # band_keys' format
            for i in range(valid)]
    return {"start": start, "count": BATCH, "shard": {"name": f"part-{start:09d}.parquet",
                                                      "rows": valid, "bytes": 1, "sha256": ""},
            "drops": {"refusal": BATCH - valid},
            "usage": {"completion_tokens": 300 * valid, "requests": BATCH, "latency_s": 1.0},
            "indices": list(range(start, start + valid)), "tokens": [300] * valid,
            "keys": keys}


def build(out: str, units: int) -> tuple[GenerationTarget, int, int]:
    """A run whose rounds 0 (half the specs valid) and 1 (a tenth) have finished, about
    ``units`` batches in all; returns (target, finished units, rounds)."""
    config = GenerateConfig()
    config.generation.batch_size = BATCH
    # Round 0 is 60 % of the units; round 1 asks for the rest at round 0's yield.
    count = int(units * 0.6 * BATCH / config.generation.overgenerate)
    target = GenerationTarget(kind="textbooks", count=count, output=out, config=config)
    state = open_storage(out.rstrip("/") + "/_work")
    plan, finished = GenerationPlanner(), 0
    for round_, share in enumerate((2, 10)):
        step = plan.next(target)
        assert step.job.name.endswith(f"round-{round_}"), step.job.name
        for unit in step.job.units:
            start = unit.args["start"]
            state.write_text(marker_key(unit.id), json.dumps({
                "job": step.job.name, "unit": unit.id, "fn": unit.fn,
                "result": fake_result(start, BATCH // share), "host": "bench", "pid": 1,
                "duration_s": 12.5, "finished_at": datetime.datetime.now(
                    datetime.UTC).isoformat()}, indent=1))
        finished += len(step.job.units)
    return target, finished, 2


def tick(plan, target, out: str, sent: str | None, memo):
    """One operator tick, as ``operators/queue_runs.reconcile_run`` does it."""
    send = lambda job: len(job.units)  # noqa: E731 (the queue is not what is measured)
    if Markers is None:
        result = reconcile(plan, target, sent, send)
        progress.unit_stats(out, memo)
    else:
        result = reconcile(plan, target, sent, send, memo)
        progress.unit_stats(out, memo)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory", action="store_true", help="also trace what the memo keeps "
                        "between ticks (tracemalloc: slower ticks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/gen"
        target, finished, rounds = build(out, args.units)
        plan, counted = GenerationPlanner(), Counted()
        if args.memory:
            gc.collect()
            tracemalloc.start()
        memo = {} if Markers is None else Markers()
        sent, rows = None, []
        for i in range(args.ticks):
            counted.reads.clear()
            counted.listings.clear()
            start = time.perf_counter()
            result = tick(plan, target, out, sent, memo)
            seconds = time.perf_counter() - start
            assert not isinstance(result, Done) and result.phase == "Running", result
            sent = result.job
            rows.append({"tick": i + 1, "seconds": round(seconds, 3),
                         "marker_reads": counted.reads[True],
                         "marker_listings": counted.listings[True]})
            print(f"tick {i + 1}: {seconds:.3f} s, {counted.reads[True]} marker reads, "
                  f"{counted.listings[True]} listings of _markers/ ({result.job})")
        if args.memory:
            gc.collect()
            kept, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    later = rows[1:] or rows
    summary = {"code": "memo" if Markers is not None else "before", "finished_units": finished,
               "finished_rounds": rounds, "first_tick": rows[0],
               "later_ticks": {"median_seconds": statistics.median(r["seconds"] for r in later),
                               "marker_reads": max(r["marker_reads"] for r in later),
                               "marker_listings": max(r["marker_listings"] for r in later)}}
    if args.memory:
        summary["memory_mib"] = {"kept_between_ticks": round(kept / 2**20, 1),
                                 "peak_in_a_tick": round(peak / 2**20, 1)}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({**summary, "ticks": rows}, indent=1))


if __name__ == "__main__":
    main()
