"""``primer eval``: score samples, or generate then score.

    primer eval score --benchmark humaneval --samples samples.jsonl --output out/
    primer eval run --model runs/x/export --benchmark humaneval,mbpp --output out/
    primer eval run --model my-model --benchmark mbpp --output out/ \\
        --generation.api_base=http://vllm:8000/v1 --generation.n_samples=20 \\
        --generation.temperature=0.8
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from primer.benchmarks import BenchmarkError, parse_benchmarks
from primer.cli import OVERRIDES, command_config
from primer.sandbox import SandboxUnavailable, check_layers
from services.evaluation.backends import make_backend
from services.evaluation.config import EvalConfig
from services.evaluation.run import evaluate, load
from services.evaluation.samples import SamplesError, SamplesFile
from services.evaluation.scoring import score

app = typer.Typer(help="Evaluate on HumanEval and MBPP (pass@k, sandboxed).",
                  no_args_is_help=True)

Benchmarks = Annotated[str, typer.Option("--benchmark", "-b",
                                         help="humaneval, mbpp or both: humaneval,mbpp.")]
Output = Annotated[str, typer.Option("--output", "-o", help="Output folder (any storage URI).")]


def _headline(summary: dict) -> str:
    ks = {k: v for k, v in summary.items() if k.startswith("pass@")}
    return (f"{summary['benchmark']}: " + ", ".join(f"{k} {v:.4f}" for k, v in ks.items())
            + f"  ({summary['n_passed']}/{summary['n_samples']} samples passed, "
              f"{summary['n_problems']} problems)")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


@app.command("score", context_settings=OVERRIDES)
def score_command(ctx: typer.Context, benchmark: Benchmarks,
                  samples: Annotated[str, typer.Option(help="Samples JSONL (task_id, "
                                                            "completion).")],
                  output: Output) -> None:
    """Run samples against the benchmark's tests in the sandbox; write results and pass@k."""
    config = command_config(ctx, EvalConfig)
    try:
        names = parse_benchmarks(benchmark)
        if len(names) != 1:
            raise BenchmarkError("score takes one benchmark per samples file")
        bench = load(names[0], config)
        rows = SamplesFile(samples, config.max_samples, config.max_sample_bytes)
        summary = score(bench, rows, output, config.sandbox, config.workers, tuple(config.ks),
                        source=samples)
    except (BenchmarkError, SamplesError, SandboxUnavailable) as e:
        _fail(e)
    typer.echo(_headline(summary))


@app.command("run", context_settings=OVERRIDES)
def run_command(ctx: typer.Context,
                model: Annotated[str, typer.Option(help="Checkpoint folder, or the served "
                                                        "model name with an api_base.")],
                benchmark: Benchmarks, output: Output) -> None:
    """Generate completions with a model, then score them: <output>/<benchmark>/…"""
    config = command_config(ctx, EvalConfig)
    try:
        names = parse_benchmarks(benchmark)
        benches = [load(n, config) for n in names]
        check_layers(config.sandbox)  # refuse before generating anything
        backend = make_backend(model, config.generation)
    except (BenchmarkError, FileNotFoundError, SandboxUnavailable) as e:
        _fail(e)
    report = {}
    for bench in benches:  # the model is loaded once for every benchmark
        report[bench.name] = evaluate(backend, bench, f"{output.rstrip('/')}/{bench.name}",
                                      config)
        typer.echo(_headline(report[bench.name]))
    typer.echo(json.dumps(report, indent=2))


@app.command("nll", context_settings=OVERRIDES)
def nll_command(ctx: typer.Context,
                model: Annotated[str, typer.Option(help="Checkpoint folder "
                                                        "(save_pretrained output).")],
                benchmark: Benchmarks, output: Output) -> None:
    """NLL of the canonical solutions given their prompts: <output>/<benchmark>/nll.json"""
    from services.evaluation.nll import reference_nll

    config = command_config(ctx, EvalConfig)
    try:
        benches = [load(n, config) for n in parse_benchmarks(benchmark)]
    except BenchmarkError as e:
        _fail(e)
    if not os.path.isdir(model):
        _fail(FileNotFoundError(f"{model}: not a checkpoint folder (save_pretrained output)"))
    for bench in benches:
        summary = reference_nll(model, bench, f"{output.rstrip('/')}/{bench.name}",
                                device=config.generation.device)
        typer.echo(f"{bench.name}: mean NLL {summary['nll_per_token']:.4f} nats/token over "
                   f"{summary['tokens']} reference tokens ({summary['n_problems']} problems)")
