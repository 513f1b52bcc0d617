"""Peak memory and time of `primer pack` at N and 2N tokens: this tree's packing (work units,
an index permutation) against the one it replaced (every token concatenated, mixed and
permuted in the coordinator; ``git show 7b34e82:model/packing.py``), run from a temporary copy.

A synthetic text dataset (code-like lines drawn from a fixed pool) is written for each size
with a BPE trained once on a sample; each pack runs in a fresh process with a local pool of
``--workers``. Reported per run: the coordinator's peak RSS (``VmHWM``) and its growth over
the RSS after imports, the largest peak RSS of its worker processes (polled from /proc), wall
time, windows. The target: the coordinator under 1 GiB and flat when the tokens double.

    .venv/bin/python bench/packing.py --save          # 10M and 20M tokens (about 8 minutes)
    .venv/bin/python bench/packing.py --tokens 25000000 --no-old  # 25M and 50M, new only
    .venv/bin/python bench/packing.py --tokens 1000000    # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "7b34e82"
SEQ_LEN = 2048
VOCAB = 4096
TOKENS_PER_SHARD = 2_500_000

# Runs one pack in a fresh process; a thread polls the peak RSS of every process below it
# (the pool's workers) while the coordinator works. Linux /proc only.
_PACK = """
import json, os, sys, threading, time
from model.packing import Source, pack
import model.tokenizer, transformers  # noqa: F401 - imported before the baseline
assert model.packing.__file__.startswith(os.getcwd()), model.packing.__file__

def kib(pid, field):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

def descendants(root):
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat").read()
                parent[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found

peaks, done = {}, threading.Event()
def poll():
    while not done.is_set():
        for pid in descendants(os.getpid()):
            peaks[pid] = max(peaks.get(pid, 0), kib(pid, "VmHWM:"))
        time.sleep(0.2)

args = json.loads(sys.argv[1])
base = kib("self", "VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
threading.Thread(target=poll, daemon=True).start()
start = time.perf_counter()
meta = pack([Source(args["source"])], args["out"], tokenizer=args["tokenizer"],
            seq_len=args["seq_len"], workers=args["workers"])
seconds = time.perf_counter() - start
done.set()
peak = kib("self", "VmHWM:")
print(json.dumps({"seconds": round(seconds, 1), "windows": meta["windows"],
                  "coordinator_peak_mib": round(peak / 1024, 1),
                  "coordinator_above_start_mib": round((peak - base) / 1024, 1),
                  "workers_peak_mib": round(max(peaks.values(), default=0) / 1024, 1)}))
"""


def code_lines() -> list[str]:
    return [f"    value_{i % 997} = compute_{i % 89}(item_{i % 613}, {i % 17})  # step {i}\n"
            for i in range(5000)]


def synthetic_text(out: str, tokens: int, tok, seed: int = 0) -> dict:
    """Documents of code-like lines until about ``tokens`` tokens (estimated from a sample)."""
    from primer.datasets import Producer, write_dataset

    rng = np.random.default_rng(seed)
    pool = code_lines()
    sample = "".join(pool[:500])
    per_line = len(tok(sample, add_special_tokens=False).input_ids) / 500
    lines = int(tokens / per_line)
    lengths = rng.integers(20, 400, size=lines // 20 + 1)
    picks = rng.integers(0, len(pool), size=int(lengths.sum()))

    def docs():
        at = 0
        for n in lengths:
            if at >= lines:
                return
            yield {"text": "".join(pool[j] for j in picks[at:at + n])}
            at += int(n)

    # at least two input shards, so both packs tokenize in the pool, not in the coordinator
    per_shard = min(TOKENS_PER_SHARD, tokens // 2)
    docs_per_shard = max(1, int(per_shard / (per_line * lengths.mean())))
    manifest = write_dataset(out, docs(), Producer("bench-packing"),
                             rows_per_shard=docs_per_shard)
    return {"documents": manifest.rows, "shards": len(manifest.shards)}


def old_tree(tmp: Path) -> Path | None:
    """A copy of this tree's ``model`` package with the old ``packing.py``; None without git
    history (then compare with the issue's numbers: 50M tokens: 502 MiB; 200M: 1,648 MiB)."""
    try:
        old = subprocess.run(["git", "show", f"{OLD_COMMIT}:model/packing.py"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    root = tmp / "old"
    shutil.copytree(REPO / "model", root / "model")
    (root / "model" / "packing.py").write_text(old)
    return root


def run_pack(root: Path, source: str, out: str, tokenizer: str, workers: int) -> dict:
    """One pack in a fresh process whose ``model`` package comes from ``root`` (its cwd,
    first on ``sys.path`` with ``-c``) and everything else from this tree."""
    args = {"source": source, "out": out, "tokenizer": tokenizer, "seq_len": SEQ_LEN,
            "workers": workers}
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-c", _PACK, json.dumps(args)], cwd=root, env=env,
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=10_000_000, help="N (2N runs too)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-old", action="store_true", help="only this tree's packing")
    ap.add_argument("--save", action="store_true", help="write bench/results/packing.json")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from model.tokenizer import save_tokenizer, train_bpe

    rows = []
    with tempfile.TemporaryDirectory(prefix="primer-bench-pack-") as tmp_dir:
        tmp = Path(tmp_dir)
        pool = code_lines()
        tok = train_bpe(("".join(pool[i:i + 50]) for i in range(0, 5000, 50)), VOCAB)
        save_tokenizer(tok, str(tmp / "tokenizer"))
        old = None if args.no_old else old_tree(tmp)
        for tokens in (args.tokens, 2 * args.tokens):
            source = str(tmp / f"text-{tokens}")
            data = synthetic_text(source, tokens, tok)
            impls = [("new", REPO)] + ([("old", old)] if old else [])
            for name, root in impls:
                out = str(tmp / f"{name}-{tokens}")
                print(f"{name} packing at {tokens:,} tokens ({data['shards']} shards) …",
                      flush=True)
                result = run_pack(root, source, out, str(tmp / "tokenizer"), args.workers)
                rows.append({"impl": name, "tokens": tokens, **data, **result})
                print(json.dumps(rows[-1]), flush=True)
                shutil.rmtree(out)
            shutil.rmtree(source)

    def get(impl: str, tokens: int, field: str):
        return next((r[field] for r in rows if r["impl"] == impl and r["tokens"] == tokens),
                    None)

    n, n2 = args.tokens, 2 * args.tokens
    summary = {
        "new_coordinator_peak_mib": [get("new", n, "coordinator_peak_mib"),
                                     get("new", n2, "coordinator_peak_mib")],
        "new_coordinator_growth_mib_when_tokens_double": round(
            get("new", n2, "coordinator_above_start_mib")
            - get("new", n, "coordinator_above_start_mib"), 1),
        "old_coordinator_peak_mib": [get("old", n, "coordinator_peak_mib"),
                                     get("old", n2, "coordinator_peak_mib")],
        "target": "coordinator peak < 1024 MiB and flat when the tokens double",
    }
    report = {"machine": f"{platform.node()}: {os.cpu_count()} cores (shared with other "
                         "work: times are noisy)",
              "date": time.strftime("%Y-%m-%d"), "seq_len": SEQ_LEN, "workers": args.workers,
              "command": " ".join(["bench/packing.py", *sys.argv[1:]]),
              "runs": rows, "summary": summary}
    print(json.dumps(summary, indent=2))
    saved = [REPO / "bench" / "results" / "packing.json"] if args.save else []
    for path in saved + ([args.json] if args.json else []):
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
