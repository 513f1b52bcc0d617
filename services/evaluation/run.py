"""One benchmark evaluated with one model: generate completions, then score them.

The same steps whoever runs them: ``primer eval run`` (every benchmark in one process, the
model loaded once) and the planner's units (one benchmark per unit, on an evaluation worker).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from primer.benchmarks import Benchmark, load_benchmark
from primer.sandbox import check_layers
from primer.storage import open_storage
from services.evaluation.backends import Backend, generate_samples, make_backend
from services.evaluation.config import EvalConfig
from services.evaluation.samples import write_jsonl
from services.evaluation.scoring import score


def load(name: str, config: EvalConfig) -> Benchmark:
    """The benchmark, cut to its first ``config.limit`` problems when a limit is set."""
    bench = load_benchmark(name, config.benchmarks)
    if config.limit is not None:
        bench = Benchmark(bench.name, dict(list(bench.problems.items())[:config.limit]))
    return bench


def evaluate(backend: Backend, bench: Benchmark, output: str, config: EvalConfig
             ) -> dict[str, Any]:
    """``<output>/samples.jsonl``, ``results.jsonl`` and ``summary.json``; the summary without
    its per-task rows."""
    samples = generate_samples(backend, bench, config.generation.n_samples)
    write_jsonl(f"{output.rstrip('/')}/samples.jsonl", samples)
    summary = score(bench, samples, output, config.sandbox, config.workers, tuple(config.ks))
    return {k: v for k, v in summary.items() if k != "per_task"}


def local_model(uri: str, directory: str) -> str:
    """An exported model folder as a local path: ``uri`` itself when it is one here, else its
    objects streamed into ``directory``."""
    if os.path.isdir(uri):
        return uri
    store = open_storage(uri)
    if not store.exists("config.json"):
        raise FileNotFoundError(
            f"{store.uri}: no config.json; an evaluation loads an exported model folder "
            "(`primer export CHECKPOINT DIR`, then upload DIR)")
    return str(store.download(Path(directory)))


def evaluate_unit(model: str, benchmark: str, output: str, config: dict[str, Any]
                  ) -> dict[str, Any]:
    """A planner's unit (:mod:`services.evaluation.plan`): one benchmark, on a worker."""
    cfg = EvalConfig.model_validate(config)
    check_layers(cfg.sandbox)  # refuse before fetching a model or generating anything
    bench = load(benchmark, cfg)
    with tempfile.TemporaryDirectory(prefix="primer-model-") as tmp:
        # an API backend names a served model; otherwise the model is an export to fetch
        path = model if cfg.generation.api_base else local_model(model, tmp)
        return evaluate(make_backend(path, cfg.generation), bench, output, cfg)
