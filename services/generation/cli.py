"""``primer generate``: synthetic textbooks and exercises from a teacher LLM.

    primer generate textbooks --count 1000 --teacher-url http://vllm:8000/v1 \\
        --teacher-model Qwen/Qwen2.5-7B-Instruct --output ./primer-data/runs/r1/textbooks
    primer generate exercises --count 500 ... --executor celery   # workers: see below
    primer generate textbooks --count 10 ... --dry-run            # sample prompts, no requests
    primer generate report --dataset ./primer-data/runs/r1/textbooks

Celery workers (scale them until the teacher is saturated; the queue length is what the
autoscaler reads)::

    PRIMER_REDIS_URL=redis://redis:6379/0 celery -A primer.executor.celery_app worker -Q primer

Overrides: ``--teacher.price_input_per_1k=0.0005``, ``--generation.batch_size=64``, … .
"""

from __future__ import annotations

import json
import math
import time
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from primer.cli import OVERRIDES, command_config
from primer.datasets import DatasetError
from primer.executor import Executor, LocalExecutor
from primer.executor.plan import RunFailed
from primer.teacher import Teacher
from services.generation.config import GenerateConfig
from services.generation.prompts import messages
from services.generation.run import GenerationError, Progress, generate
from services.generation.taxonomy import specs

app = typer.Typer(help="Synthetic textbooks and exercises from a teacher LLM.",
                  no_args_is_help=True)


class ExecutorKind(StrEnum):
    local = "local"
    celery = "celery"


Count = Annotated[int, typer.Option(min=1, help="Valid records to produce.")]
Url = Annotated[str | None, typer.Option("--teacher-url", help="OpenAI-compatible base URL "
                                         "(e.g. http://vllm:8000/v1) or checkpoint path.")]
Model = Annotated[str | None, typer.Option("--teacher-model", help="Model name to request.")]
Output = Annotated[str, typer.Option("--output", "-o", help="Dataset URI (path or s3://…).")]
Concurrency = Annotated[int | None, typer.Option(help="Requests in flight per worker.")]
Exec = Annotated[ExecutorKind, typer.Option("--executor", help="local: process pool here; "
                                            "celery: workers over Redis (PRIMER_REDIS_URL).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print sample prompts and the plan; "
                                      "send no request.")]


def _config(ctx: typer.Context, url: str | None, model: str | None,
            concurrency: int | None) -> GenerateConfig:
    config = command_config(ctx, GenerateConfig)
    if url is not None:
        config.teacher.url = url
    if model is not None:
        config.teacher.model = model
    if concurrency is not None:
        config.teacher.max_concurrency = concurrency
    return config


def _plan(kind: str, count: int, config: GenerateConfig, console: Console) -> None:
    gen = config.generation
    sample = [messages(s) for s in specs(kind, gen.seed, 0, 3)]
    n_requests = math.ceil(count * gen.overgenerate)
    max_tokens = gen.max_tokens_textbook if kind == "textbooks" else gen.max_tokens_exercise
    prompt_tokens = max(sum(len(m["content"]) for m in s) for s in sample) // 4 + 8
    console.print(f"[bold]{kind}[/]: {count} valid records, first round {n_requests} requests "
                  f"to {Teacher(config.teacher).name} (batches of {gen.batch_size}, "
                  f"{config.teacher.max_concurrency} in flight per worker)")
    cost = Teacher(config.teacher).estimate_cost(n_requests, prompt_tokens, max_tokens)
    if cost is not None:
        console.print(f"estimated cost: at most ${cost:,.2f} for the first round "
                      f"(~{prompt_tokens} prompt + {max_tokens} completion tokens a request)")


def _dry_run(kind: str, config: GenerateConfig, console: Console) -> None:
    for spec in specs(kind, config.generation.seed, 0, 3):
        console.rule(f"spec {spec.index}: {spec.concept.name} ({spec.concept.level})")
        for message in messages(spec):
            console.print(f"[bold]{message['role']}:[/] {message['content']}", markup=True,
                          highlight=False)


def _executor(kind: ExecutorKind, config: GenerateConfig) -> Executor:
    if kind is ExecutorKind.celery:
        from primer.executor import CeleryExecutor

        return CeleryExecutor(config.redis.url, component="generation")
    return LocalExecutor(workers=config.workers or None)


def _run(ctx: typer.Context, kind: str, count: int, url: str | None, model: str | None,
         output: str, concurrency: int | None, executor: ExecutorKind, dry_run: bool) -> None:
    config = _config(ctx, url, model, concurrency)
    console = Console(soft_wrap=True)
    _plan(kind, count, config, console)
    if dry_run:
        _dry_run(kind, config, console)
        return
    bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
              TextColumn("{task.fields[rate]} tok/s"), TextColumn("units {task.fields[units]}"),
              TimeRemainingColumn(), console=console, transient=False)
    task = bar.add_task(kind, total=count, rate="-", units="0/0")
    start = time.monotonic()

    def on_progress(p: Progress) -> None:
        rate = p.tokens / max(time.monotonic() - start, 1e-9)
        bar.update(task, completed=min(p.valid, p.target), rate=f"{rate:,.0f}",
                   units=f"{p.units_done}/{p.units_total}")

    try:
        with bar:
            manifest = generate(kind, count, output, config, _executor(executor, config),
                                on_progress)
    except (GenerationError, DatasetError, RunFailed) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    drops = ", ".join(f"{k} {v}" for k, v in sorted(manifest.drop_counts.items())) or "none"
    console.print(f"wrote {manifest.rows} {kind} ({manifest.tokens} tokens, "
                  f"{len(manifest.shards)} shards) to {output}; dropped: {drops}")


@app.command("textbooks", context_settings=OVERRIDES)
def textbooks(ctx: typer.Context, count: Count, output: Output, teacher_url: Url = None,
              teacher_model: Model = None, concurrency: Concurrency = None,
              executor: Exec = ExecutorKind.local, dry_run: DryRun = False) -> None:
    """Textbook sections: topic × audience × style × length."""
    _run(ctx, "textbooks", count, teacher_url, teacher_model, output, concurrency, executor,
         dry_run)


@app.command("exercises", context_settings=OVERRIDES)
def exercises(ctx: typer.Context, count: Count, output: Output, teacher_url: Url = None,
              teacher_model: Model = None, concurrency: Concurrency = None,
              executor: Exec = ExecutorKind.local, dry_run: DryRun = False) -> None:
    """Function exercises (signature + docstring → solution, checked by its asserts)."""
    _run(ctx, "exercises", count, teacher_url, teacher_model, output, concurrency, executor,
         dry_run)


@app.command("report")
def report(dataset: Annotated[str, typer.Option(help="Dataset URI.")],
           sample: Annotated[int, typer.Option(help="Records embedded.")] = 1000,
           embeddings: Annotated[bool, typer.Option(help="Compute embedding similarity.")]
           = True) -> None:
    """Diversity report: distinct n-grams, nearest-neighbour similarity, coverage."""
    from services.generation.report import diversity_report

    try:
        typer.echo(json.dumps(diversity_report(dataset, sample, embeddings=embeddings),
                              indent=2))
    except DatasetError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
