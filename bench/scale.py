"""Each stage at 1×, 4× and 16× its base input on this machine: units, wall and unit seconds,
and the peak RSS of the coordinator and of the unit processes, per job; then the ratios 16×/1×
that say whether a stage stays within memory (RSS ≤ 1.3×) and time (≤ linear) as it grows.

    .venv/bin/python bench/scale.py --save            # 1×, 4×, 16× of every stage
    .venv/bin/python bench/scale.py --stages packing --sizes 1 4
    .venv/bin/python bench/scale.py --toy             # 1× and 2× of tiny bases (tests)

Stages and their base input (1×): curation of real Python files of this machine (read, filter,
signature, dedup, annotate, score, select), ``primer pack`` of synthetic code-like text,
decontamination of standard-library files against HumanEval and MBPP (n-gram, AST, MiniLM),
and generation of textbooks (batches, then the commit) against the test teacher
(``tests/openai_server.py``, answers at once). The unit size is fixed, so the units grow with
the input. Each (stage, size) runs in a fresh process on a ``LocalExecutor`` of
``--workers`` processes; every job it runs is measured: the coordinator's peak RSS (``VmHWM``,
reset before the job) and the largest peak RSS of the pool's processes (polled from /proc),
wall seconds, and the seconds the units report in their markers. ``docs/scale.md`` turns the
per-unit rates into what a paper-scale run needs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from primer.executor import LocalExecutor, read_marker  # noqa: E402
from primer.storage import open_storage  # noqa: E402

# base input at 1× and the unit size (fixed, so units grow with the input)
BASES = {"curation": 100, "packing": 250_000, "decontamination": 32, "generation": 32}
TOY_BASES = {"curation": 60, "packing": 40_000, "decontamination": 4, "generation": 4}
FILES_PER_UNIT = 50
TOKENS_PER_SHARD = 100_000
ROWS_PER_UNIT = 4  # rows of 8,000 characters; bench/decontaminate.py measures a 4,096-row unit
BATCH = 16
INPUT = {"curation": "files", "packing": "tokens", "decontamination": "rows",
         "generation": "textbooks"}


# -- measuring (Linux /proc) -------------------------------------------------------------------

def kib(pid: int | str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [c for c, p in parent.items() if p == pid]
        found += kids
        todo += kids
    return found


class ChildPeak:
    """The largest peak RSS (``VmHWM``) of any process below this one while the block runs.
    Pool processes live only as long as a job's pool, so each job's are its own."""

    def __init__(self, every_s: float = 0.05):
        self.every_s, self.peak_kib, self._done = every_s, 0, threading.Event()

    def _poll(self) -> None:
        while True:
            for pid in descendants(os.getpid()):
                self.peak_kib = max(self.peak_kib, kib(pid, "VmHWM:"))
            if self._done.wait(self.every_s):
                return

    def __enter__(self) -> ChildPeak:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


class MeasuredExecutor(LocalExecutor):
    """A ``LocalExecutor`` that records, per job: units, wall seconds, the seconds its units
    report in their markers, and the peak RSS of the coordinator and of the unit processes."""

    def __init__(self, workers: int):
        super().__init__(workers)
        self.jobs: list[dict] = []

    def run(self, job, *, progress: bool = True):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets this process's VmHWM: the job's own peak is measured
        start = time.perf_counter()
        with ChildPeak() as children:
            result = super().run(job, progress=False)
        seconds = time.perf_counter() - start
        state = open_storage(job.state_uri)
        unit_s = sum((read_marker(state, u) or {}).get("duration_s", 0.0) for u in result.done)
        self.jobs.append({"job": job.name, "units": len(job.units),
                          "seconds": round(seconds, 2), "unit_seconds": round(unit_s, 2),
                          "coordinator_peak_mib": round(kib("self", "VmHWM:") / 1024, 1),
                          "unit_peak_mib": round(children.peak_kib / 1024, 1)})
        return result


# -- the stages: each runs ``n`` of its input on ``executor`` in ``tmp`` -----------------------

def curation(n: int, tmp: Path, executor: MeasuredExecutor) -> dict:
    from services.curation import pipeline
    from services.curation.config import CurationConfig

    # The input is a folder of exactly n of this machine's Python files: the plan unit then
    # lists the input, not every Python file on the machine (34k here, whatever n is).
    from services.curation.readers import default_roots, list_py_files

    files = list_py_files(default_roots())[:n]
    for f in files:
        copy = tmp / "input" / f.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, copy)
    cfg = CurationConfig(input=str(tmp / "input"), output=str(tmp / "curated"),
                         workers=executor.workers)
    cfg.reader.files_per_unit = FILES_PER_UNIT
    cfg.annotate.sample_size = 40  # a fixed sample at any scale (the paper's: ~100k files)
    cfg.classify.max_tokens, cfg.classify.n_estimators = 64, 50
    report = pipeline.run(cfg, executor=executor, progress=False)
    return {"files": report["files_seen"], "kept": report["kept"]}


def packing(n: int, tmp: Path, executor: MeasuredExecutor) -> dict:
    import numpy as np

    from model.packing import Source, pack
    from model.tokenizer import save_tokenizer, train_bpe
    from primer.datasets import Producer, write_dataset

    lines = [f"    value_{i % 997} = compute_{i % 89}(item_{i % 613}, {i % 17})  # step {i}\n"
             for i in range(5000)]
    tok = train_bpe(("".join(lines[i:i + 50]) for i in range(0, 5000, 50)), 4096)
    save_tokenizer(tok, str(tmp / "tokenizer"))
    per_line = len(tok("".join(lines[:500]), add_special_tokens=False).input_ids) / 500
    rng = np.random.default_rng(0)
    total, docs_lines = int(n / per_line), 200

    def docs():
        for at in range(0, total, docs_lines):
            picks = rng.integers(0, len(lines), size=min(docs_lines, total - at))
            yield {"text": "".join(lines[j] for j in picks)}

    write_dataset(str(tmp / "text"), docs(), Producer("bench-scale"),
                  rows_per_shard=max(1, int(TOKENS_PER_SHARD / (per_line * docs_lines))))
    meta = pack([Source(str(tmp / "text"))], str(tmp / "packed"), tokenizer=str(tmp /
                "tokenizer"), seq_len=2048, executor=executor)
    return {"windows": meta["windows"]}


def decontamination(n: int, tmp: Path, executor: MeasuredExecutor) -> dict:
    import sysconfig

    from primer.datasets import Producer, write_dataset
    from services.curation.decontaminate import DecontaminateCommandConfig, decontaminate

    rows = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            rows.append({"id": str(path), "text": path.read_text(encoding="utf-8")[:8000]})
        except (UnicodeDecodeError, OSError):
            continue
        if len(rows) == n:
            break
    assert len(rows) == n, f"only {len(rows)} standard-library files for {n} rows"
    write_dataset(str(tmp / "in"), rows, Producer("bench-scale"), rows_per_shard=ROWS_PER_UNIT)
    cfg = DecontaminateCommandConfig.model_validate(
        {"decontaminate": {"rows_per_unit": ROWS_PER_UNIT}})
    out = decontaminate(str(tmp / "in"), ["humaneval", "mbpp"], cfg, str(tmp / "out"),
                        executor=executor)
    return {"rows": n, "flagged": out["flagged"]}


def generation(n: int, tmp: Path, executor: MeasuredExecutor) -> dict:
    from services.generation.config import GenerateConfig
    from services.generation.run import generate
    from tests.openai_server import OpenAIServer
    from tests.services.generation.teacher_responder import responder

    with OpenAIServer(responder) as server:
        config = GenerateConfig()
        config.teacher.url, config.teacher.model = server.base_url, "test-teacher"
        config.teacher.max_concurrency = BATCH
        config.generation.batch_size = BATCH
        manifest = generate("textbooks", n, str(tmp / "textbooks"), config, executor)
    return {"records": manifest.rows}


STAGES = {"curation": curation, "packing": packing, "decontamination": decontamination,
          "generation": generation}


def run_one(stage: str, n: int, workers: int) -> dict:
    """One stage at input ``n`` in this process; what it printed last is its result."""
    executor = MeasuredExecutor(workers)
    with tempfile.TemporaryDirectory(prefix=f"primer-scale-{stage}-") as tmp:
        start = time.perf_counter()
        out = STAGES[stage](n, Path(tmp), executor)
        seconds = time.perf_counter() - start
    return {"input": n, "output": out, "seconds": round(seconds, 2), "jobs": executor.jobs}


def measure(stage: str, n: int, workers: int) -> dict:
    """``run_one`` in a fresh process, so no stage or size inherits another's peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    load = os.getloadavg()
    res = subprocess.run([sys.executable, __file__, "--one", stage, str(n),
                          f"--workers={workers}"], cwd=REPO, env=env, capture_output=True,
                         text=True)
    if res.returncode:
        raise RuntimeError(f"{stage} at {n}: {res.stderr[-3000:]}")
    return {**json.loads(res.stdout.strip().splitlines()[-1]),
            "load_average": [round(x, 2) for x in (*load, *os.getloadavg())]}


# -- the table -----------------------------------------------------------------------------------

def by_job(run: dict) -> dict[str, dict]:
    """A run's jobs merged by name, rounds of a generation run as one ("round-*")."""
    merged: dict[str, dict] = {}
    for job in run["jobs"]:
        name = job["job"].rsplit("-round-", 1)[0] + "-round-*" if "-round-" in job["job"] \
            else job["job"]
        m = merged.setdefault(name, {"units": 0, "seconds": 0.0, "unit_seconds": 0.0,
                                     "coordinator_peak_mib": 0.0, "unit_peak_mib": 0.0})
        for key in ("units", "seconds", "unit_seconds"):
            m[key] = round(m[key] + job[key], 2)
        for key in ("coordinator_peak_mib", "unit_peak_mib"):
            m[key] = max(m[key], job[key])
    return merged


def summarise(stage: str, sizes: list[int], runs: list[dict]) -> dict:
    """Per job of the stage: its numbers at every size and the ratios largest/smallest."""
    jobs: dict[str, list[dict]] = {}
    for size, run in zip(sizes, runs, strict=True):
        for name, job in by_job(run).items():
            jobs.setdefault(name, []).append({"size": size, **job})
    growth = sizes[-1] / sizes[0]
    out = {}
    for name, rows in jobs.items():
        first, last = rows[0], rows[-1]

        def ratio(key: str, first=first, last=last) -> float:
            return round(last[key] / first[key], 2) if first[key] else 0.0
        rss = max(ratio("coordinator_peak_mib"), ratio("unit_peak_mib"))
        out[f"{stage}/{name}"] = {
            "runs": rows, "input_growth": growth,
            "coordinator_rss_ratio": ratio("coordinator_peak_mib"),
            "unit_rss_ratio": ratio("unit_peak_mib"), "rss_ratio": rss,
            "time_ratio": ratio("seconds"), "units_ratio": ratio("units"),
            "rss_within_1_3": rss <= 1.3, "time_at_most_linear": ratio("seconds") <= growth}
    # the stage's jobs, not the preparation of its input (writing it, training a tokenizer)
    whole = [{"size": s, "units": sum(j["units"] for j in r["jobs"]),
              "seconds": round(sum(j["seconds"] for j in r["jobs"]), 2),
              "coordinator_peak_mib": max(j["coordinator_peak_mib"] for j in r["jobs"]),
              "unit_peak_mib": max(j["unit_peak_mib"] for j in r["jobs"])}
             for s, r in zip(sizes, runs, strict=True)]
    out[stage] = {"runs": whole, "input_growth": growth,
                  "rss_ratio": round(max(whole[-1][k] / whole[0][k] for k in
                                         ("coordinator_peak_mib", "unit_peak_mib")), 2),
                  "time_ratio": round(whole[-1]["seconds"] / whole[0]["seconds"], 2)}
    out[stage]["rss_within_1_3"] = out[stage]["rss_ratio"] <= 1.3
    out[stage]["time_at_most_linear"] = out[stage]["time_ratio"] <= growth
    return out


# -- paper scale -----------------------------------------------------------------------------

# each stage's input at the phi-1 paper's scale (issue 16), and where the number comes from
PAPER = {"curation": (40_000_000, "~40M Python files (the paper's ~35B tokens)"),
         "packing": (7_180_000_000, "6B filtered + 1B textbook + 0.18B exercise tokens"),
         "decontamination": (6_860_000, "the filtered code: 40M files × 6B / 35B tokens"),
         "generation": (1_000_000, "1B textbook tokens at ~1,000 tokens a textbook "
                                   "(assumed)")}
WORKERS = (16, 64, 256)


def project(small: dict, big: dict, n_paper: int) -> dict[str, dict]:
    """Per job: its units and unit-seconds at ``n_paper`` input. A job whose units grew with
    the input keeps its measured unit size (more units); one that did not (a corpus-wide unit)
    keeps its count. Unit-seconds follow the line through the smallest and largest runs,
    ``a + b·n`` (``b`` ≥ 0): work that did not grow with the input (a fixed annotation
    sample, the classifier trained on it) stays fixed. Peak RSS is the largest run's when it
    stayed within 1.3× of the smallest's, else extrapolated on the same kind of line."""
    scale, span = n_paper / big["input"], big["input"] - small["input"]
    jobs_small, out = by_job(small), {}
    for name, j in by_job(big).items():
        s = jobs_small.get(name, j)
        grows = j["units"] > s["units"]
        units = math.ceil(j["units"] * scale) if grows else j["units"]
        per_input = max(0.0, (j["unit_seconds"] - s["unit_seconds"]) / span)
        fixed = max(0.0, j["unit_seconds"] - per_input * big["input"])
        unit_s = fixed + per_input * n_paper

        def peak(key: str, j=j, s=s) -> float:
            if not s[key] or j[key] / s[key] <= 1.3:
                return j[key]
            slope = (j[key] - s[key]) / span
            return j[key] + slope * (n_paper - big["input"])
        out[name] = {"units": units, "scale": scale, "measured_units": j["units"],
                     "fixed_s": fixed, "s_per_input": per_input,
                     "measured_unit_seconds": j["unit_seconds"], "unit_seconds": unit_s,
                     "worker_hours": unit_s / 3600, "unit_peak_mib": peak("unit_peak_mib"),
                     "coordinator_peak_mib": peak("coordinator_peak_mib"),
                     "wall_hours": {n: math.ceil(units / n) * (unit_s / units) / 3600
                                    for n in WORKERS}}
    return out


def measured_table(result: dict) -> str:
    """Markdown: per stage and job, units, seconds and peak RSS at every size, the ratios of
    the largest to the smallest, and the load average around each run."""
    rows = ["| stage / job | units | seconds | coordinator MiB | unit process MiB | RSS ratio "
            "| time ratio (input ×) | within 1.3× RSS, ≤ linear time |", "|" + "---|" * 8]
    for name, st in result["stages"].items():
        runs = st["runs"]

        def col(key: str, runs=runs) -> str:
            return " → ".join(f"{r[key]:g}" for r in runs)
        verdict = ("yes" if st["rss_within_1_3"] else "**RSS > 1.3×**") + ", " + (
            "yes" if st["time_at_most_linear"] else "**time > linear**")
        bold = "**" if "/" not in name else ""
        rows.append(f"| {bold}{name}{bold} | {col('units')} | {col('seconds')} | "
                    f"{col('coordinator_peak_mib')} | {col('unit_peak_mib')} | "
                    f"{st['rss_ratio']} | {st['time_ratio']} ({st['input_growth']:g}) | "
                    f"{verdict} |")
    loads = [f"{stage} {r['input']:,}: {r['load_average'][0]:.1f} → {r['load_average'][3]:.1f}"
             for stage, runs in result["raw"].items() for r in runs]
    return "\n".join(rows) + "\n\nLoad average (1 min) before → after each run: " + \
        "; ".join(loads) + "."


def paper_table(result: dict) -> str:
    """Markdown: per stage and per job, what a paper-scale run needs (from ``result``)."""
    head = ("| stage / job | paper input (per job: unit-seconds a + b × input) | units "
            "| memory per worker (MiB) | coordinator (MiB) | worker-hours | "
            + " | ".join(f"wall h on {n}" for n in WORKERS) + " |")
    rows = [head, "|" + "---|" * (6 + len(WORKERS))]
    for stage, runs in result["raw"].items():
        n_paper, what = PAPER[stage]
        jobs = project(runs[0], runs[-1], n_paper)
        total = {"units": sum(j["units"] for j in jobs.values()),
                 "mem": max(j["unit_peak_mib"] for j in jobs.values()),
                 "coord": max(j["coordinator_peak_mib"] for j in jobs.values()),
                 "wh": sum(j["worker_hours"] for j in jobs.values())}
        walls = [sum(j["wall_hours"][n] for j in jobs.values()) for n in WORKERS]
        rows.append(f"| **{stage}** | {n_paper:,} ({what}) | {total['units']:,} | "
                    f"{total['mem']:,.0f} | {total['coord']:,.0f} | {total['wh']:,.1f} | "
                    + " | ".join(f"{w:,.2f}" for w in walls) + " |")
        for name, j in jobs.items():
            rows.append(f"| {stage}/{name} | {j['fixed_s']:,.1f} s + {j['s_per_input']:.3g} s "
                        f"× {n_paper:,} | "
                        f"{j['units']:,} | {j['unit_peak_mib']:,.0f} | "
                        f"{j['coordinator_peak_mib']:,.0f} | {j['worker_hours']:,.2f} | "
                        + " | ".join(f"{j['wall_hours'][n]:,.2f}" for n in WORKERS) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--toy", action="store_true", help="tiny bases at 1× and 2× (tests)")
    ap.add_argument("--save", action="store_true", help="write bench/results/scale.json")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--one", nargs=2, metavar=("STAGE", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--table", type=Path, metavar="JSON", help="print the paper-scale table "
                    "from a saved result (e.g. bench/results/scale.json) and exit")
    args = ap.parse_args()
    if args.table:
        result = json.loads(args.table.read_text())
        print(measured_table(result) + "\n\n" + paper_table(result))
        return
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.workers)))
        return
    bases, sizes = (TOY_BASES, [1, 2]) if args.toy else (BASES, args.sizes)
    result = {"machine": f"{os.cpu_count()} cores, shared with other work (times are noisy; "
                         "load_average: 1/5/15-min before and after each run)",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": " ".join(["bench/scale.py", *sys.argv[1:]]), "workers": args.workers,
              "sizes": sizes, "bases": {s: {"n": bases[s], "of": INPUT[s]} for s in args.stages},
              "unit_size": {"curation": f"{FILES_PER_UNIT} files per read unit",
                            "packing": f"{TOKENS_PER_SHARD} tokens per input shard",
                            "decontamination": f"{ROWS_PER_UNIT} rows per unit",
                            "generation": f"{BATCH} specs per batch"},
              "stages": {}, "raw": {}}
    for stage in args.stages:
        runs = []
        for size in sizes:
            print(f"{stage} at {size}× ({bases[stage] * size} {INPUT[stage]}) …", flush=True)
            runs.append(measure(stage, bases[stage] * size, args.workers))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "jobs"}), flush=True)
        result["raw"][stage] = runs
        result["stages"].update(summarise(stage, sizes, runs))
        write(result, args)  # after every stage: a long run keeps what it measured
    for name, s in result["stages"].items():
        print(f"{name:40s} RSS ×{s['rss_ratio']:<5} time ×{s['time_ratio']:<6} "
              f"(input ×{s['input_growth']:g})"
              f"{'' if s['rss_within_1_3'] else '  RSS > 1.3×'}"
              f"{'' if s['time_at_most_linear'] else '  time > linear'}")
    write(result, args)


def write(result: dict, args: argparse.Namespace) -> None:
    saved = [REPO / "bench" / "results" / "scale.json"] if args.save else []
    for path in saved + ([args.json] if args.json else []):
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
