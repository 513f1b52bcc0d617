"""Decontamination benchmark: rows/s and peak memory of the work units, against the pure-Python
banded edit distance they replaced (the peer: the same index compared row by row with every
reference, as Primer did before), with equal findings required.

    .venv/bin/python bench/decontaminate.py                  # 4,096 rows, τ 0.95 and 0.8
    .venv/bin/python bench/decontaminate.py --rows 512 --workers 1 2   # quick look

Rows are real Python files of this machine (the interpreter's standard library), cut to 8,000
characters as training files are. ``unit_peak_rss_mib`` is the largest resident set of a worker
process running one 4,096-row unit with every test on (n-gram, AST, MiniLM embeddings);
``rows_per_s`` is per worker count. On a 2-core machine 2 → 4 workers cannot scale; the unit
split is what lets them scale where the cores exist.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from primer.benchmarks import BenchmarkConfig
from primer.datasets import Producer, write_dataset
from primer.executor import LocalExecutor
from services.curation.decontaminate import (
    ContaminationIndex,
    DecontaminateCommandConfig,
    code_units,
    decontaminate,
    load_problems,
)


def corpus(n: int) -> list[dict]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    rows = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")[:8000]
        except (UnicodeDecodeError, OSError):
            continue
        rows.append({"id": str(path), "text": text})
        if len(rows) == n:
            break
    return rows


def plain_levenshtein_within(a, b, k):
    """The replaced implementation: a pure-Python banded dynamic programme."""
    la, lb = len(a), len(b)
    if abs(la - lb) > k:
        return None
    inf = k + 1
    prev = [j if j <= k else inf for j in range(lb + 1)]
    for i in range(1, la + 1):
        cur = [inf] * (lb + 1)
        cur[0] = i if i <= k else inf
        best = cur[0]
        for j in range(max(1, i - k), min(lb, i + k) + 1):
            v = min(prev[j - 1] + (a[i - 1] != b[j - 1]), prev[j] + 1, cur[j - 1] + 1)
            cur[j] = v
            best = min(best, v)
        if best > k:
            return None
        prev = cur
    return prev[lb] if prev[lb] <= k else None


def peer_ast_matches(rows: list[dict], tau: float) -> tuple[float, set]:
    """Seconds and (row, task) AST matches of the old all-pairs pure-Python comparison."""
    problems = load_problems(["humaneval", "mbpp"], BenchmarkConfig())
    refs = [(p.task_id, u) for p in problems for u in code_units(p.solution_text)
            if len(u) >= 24]
    found = set()
    start = time.perf_counter()
    for i, row in enumerate(rows):
        for units in code_units(row["text"]):
            if len(units) < 24:
                continue
            for tid, ref in refs:
                longest = max(len(units), len(ref))
                if plain_levenshtein_within(units, ref, int((1 - tau) * longest + 1e-9)) \
                        is not None:
                    found.add((i, tid))
    return time.perf_counter() - start, found


def primer_ast_matches(rows: list[dict], tau: float) -> tuple[float, set]:
    cfg = DecontaminateCommandConfig.model_validate(
        {"decontaminate": {"methods": ["ast"], "tau": tau}})
    index = ContaminationIndex(load_problems(["humaneval", "mbpp"], BenchmarkConfig()),
                               cfg.decontaminate)
    start = time.perf_counter()
    matches = index.match([r["text"] for r in rows])
    return time.perf_counter() - start, {(i, m.task_id) for i, ms in enumerate(matches)
                                         for m in ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--peer-rows", type=int, default=256, help="rows for the slow peer")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "decontaminate.json"))
    args = ap.parse_args()
    rows = corpus(args.rows)
    result: dict = {"rows": len(rows), "ast": {}, "units": {}}
    for tau in (0.95, 0.8):
        sample = rows[:args.peer_rows]
        peer_s, peer = peer_ast_matches(sample, tau)
        ours_s, ours = primer_ast_matches(sample, tau)
        result["ast"][str(tau)] = {
            "rows": len(sample), "peer_ms_per_row": round(1000 * peer_s / len(sample), 2),
            "primer_ms_per_row": round(1000 * ours_s / len(sample), 3),
            "speedup": round(peer_s / ours_s, 1), "same_findings": peer == ours,
            "matches": len(ours)}
        print(f"AST τ={tau}: {result['ast'][str(tau)]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(f"{tmp}/in", rows, Producer("bench"))
        for workers in args.workers:
            cfg = DecontaminateCommandConfig.model_validate(
                {"decontaminate": {"rows_per_unit": max(1, len(rows) // (2 * workers))}})
            start = time.perf_counter()
            out = decontaminate(f"{tmp}/in", ["humaneval", "mbpp"], cfg, f"{tmp}/out{workers}",
                                executor=LocalExecutor(workers=workers))
            wall = time.perf_counter() - start
            result["units"][str(workers)] = {"units": out["units"], "seconds": round(wall, 1),
                                             "rows_per_s": round(len(rows) / wall, 1),
                                             "flagged": out["flagged"]}
            print(f"{workers} workers: {result['units'][str(workers)]}", flush=True)
        cfg = DecontaminateCommandConfig.model_validate({"decontaminate": {"rows_per_unit": 4096}})
        # one worker runs the unit in this process: its peak RSS (VmHWM, reset first; Linux)
        # is that of a worker process holding the index, MiniLM and one 4,096-row unit
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        decontaminate(f"{tmp}/in", ["humaneval", "mbpp"], cfg, f"{tmp}/one",
                      executor=LocalExecutor(workers=1))
        status = Path("/proc/self/status").read_text().splitlines()
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
        result["unit_peak_rss_mib"] = round(peak, 1)
        print(f"peak RSS of a worker (4,096-row unit, all tests): {peak:.0f} MiB")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
