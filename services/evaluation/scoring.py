"""Run samples against a benchmark's tests in the sandbox; per-sample results and pass@k."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from primer.benchmarks import Benchmark
from primer.sandbox import SandboxConfig, check_layers, run_stream
from primer.sandbox.config import LAYERS
from primer.storage import open_storage
from primer.summary import StageSummary, write_summary
from services.evaluation.samples import SamplesError, dump_row

log = logging.getLogger("primer.eval")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def score(benchmark: Benchmark, samples: Iterable[dict[str, Any]], output: str,
          sandbox: SandboxConfig | None = None, workers: int = 0,
          ks: tuple[int, ...] = (1, 10, 100), source: str = "samples") -> dict[str, Any]:
    """Score ``samples``; write ``results.jsonl`` and ``summary.json`` under ``output``.

    ``samples`` is iterated twice (a list, or a :class:`SamplesFile` that streams): first to
    check every task_id, so a sample for an unknown one is an error naming its line before
    anything runs; then to run them, a bounded number at a time, each result row written as
    it ends. A sample the sandbox cannot even start (say, text that is not valid Unicode)
    fails alone. Problems with no sample count as unsolved (n is taken from the attempted
    ones). Raises :class:`SandboxUnavailable` when a required isolation layer is missing.
    """
    for s in samples:
        try:
            benchmark.get(s["task_id"])
        except ValueError as e:
            raise SamplesError(f"{source}:{s.get('_line', '?')}: {e}") from None
    sandbox = sandbox or SandboxConfig()
    layers = check_layers(sandbox)
    in_flight: dict[int, tuple[str, str]] = {}

    def programs() -> Iterator[str]:
        for i, s in enumerate(samples):
            problem = benchmark.get(s["task_id"])
            in_flight[i] = (problem.task_id, s["completion"])
            yield problem.program(s["completion"])

    log.info("scoring samples on %s", benchmark.name)
    per_task: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with open_storage(output).open_write("results.jsonl") as out:
        for i, r in run_stream(programs(), sandbox, workers):
            task_id, completion = in_flight.pop(i)
            out.write(dump_row({
                "task_id": task_id, "sample": i, "completion": completion, "passed": r.passed,
                "result": r.summary, "status": r.status, "duration_s": r.duration_s,
                "exit_code": r.exit_code, "isolation": list(r.layers),
                "degraded": list(r.missing)}))
            per_task[task_id][0] += 1
            per_task[task_id][1] += int(r.passed)
    summary = summarize(benchmark, per_task, ks)
    summary["sandbox"] = {"layers": list(layers),
                          "degraded": [x for x in LAYERS if x not in layers]}
    open_storage(output).write_text("summary.json", json.dumps(summary, indent=2) + "\n")
    write_summary(output, stage_summary(f"eval/{benchmark.name}", summary))
    return summary


def stage_summary(stage: str, summary: dict[str, Any]) -> StageSummary:
    """The typed summary of a scoring (or NLL) run: its numbers without the per-task rows."""
    return StageSummary(stage=stage, producer="services.evaluation",
                        rows=summary.get("n_problems"),
                        facts={k: v for k, v in summary.items() if k != "per_task"})


def summarize(benchmark: Benchmark, per_task: dict[str, list[int]],
              ks: tuple[int, ...]) -> dict[str, Any]:
    """pass@k over every problem of the benchmark, for each k no larger than the smallest n."""
    counts = [per_task.get(tid, [0, 0]) for tid in benchmark.problems]
    attempted = [n for n, _ in counts if n]
    n_min = min(attempted) if attempted else 0
    summary: dict[str, Any] = {
        "benchmark": benchmark.name, "n_problems": len(benchmark),
        "n_attempted": len(attempted), "n_samples": sum(n for n, _ in counts),
        "n_passed": sum(c for _, c in counts)}
    for k in sorted(set(ks)):
        if n_min and k <= n_min:
            scores = [pass_at_k(n, c, k) if n else 0.0 for n, c in counts]
            summary[f"pass@{k}"] = float(np.mean(scores))
    summary["per_task"] = {tid: {"n": n, "passed": c}
                           for tid, (n, c) in zip(benchmark.problems, counts, strict=True)}
    return summary
