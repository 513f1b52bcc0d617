"""``primer curate``: raw code → an educational, deduplicated corpus.

    primer curate                                     # this interpreter's stdlib + site-packages
    primer curate --input ./src --output ./primer-data/runs/c1/curated --keep-top 0.2
    primer curate --input hf:bigcode/the-stack-dedup --reader.hf_data_dir=data/python \\
        --reader.text_column=content --reader.hf_limit=100000 --annotator teacher \\
        --annotate.teacher.url=http://vllm:8000/v1 \\
        --annotate.teacher.model=Qwen/Qwen2.5-7B-Instruct \\
        --output s3://bucket/runs/c2/curated --executor celery   # workers: see README

Rerunning the same command resumes: finished work units are skipped. Any field of
:class:`CurationConfig` can be set with ``--section.key=value``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from primer.cli import command_config
from services.curation.config import CurationConfig


def curate(
    ctx: typer.Context,
    input: Annotated[str | None, typer.Option(
        "--input", help="Directory of *.py, dataset / Parquet / JSONL URI, or hf:NAME. "
        "Default: this interpreter's stdlib and site-packages.")] = None,
    output: Annotated[str | None, typer.Option(
        "--output", help="Output dataset URI (default <storage.root>/runs/curate/curated).")]
    = None,
    annotator: Annotated[str | None, typer.Option(
        "--annotator", help="heuristic (offline) or teacher (LLM judge).")] = None,
    keep_top: Annotated[float | None, typer.Option(
        "--keep-top", help="Keep this fraction of files with the highest edu_score.")] = None,
    min_score: Annotated[float | None, typer.Option(
        "--min-score", help="Keep files with edu_score >= X (default 0.5).")] = None,
    executor: Annotated[str | None, typer.Option(
        "--executor", help="local (process pool) or celery (workers over redis.url).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1,
                                                help="Local worker processes.")] = None,
    write_dropped: Annotated[bool, typer.Option(
        "--write-dropped", help="Also write dropped records with their reason to "
        "<output>/_dropped.")] = False,
) -> None:
    """Curate code: read → filter → dedup → annotate → classify → keep. Resumable.

    Extra arguments are config overrides, e.g. --dedup.bands=20 --classify.encoder=/path.
    """
    from services.curation import pipeline

    if keep_top is not None and min_score is not None:
        raise typer.BadParameter("give --keep-top or --min-score, not both")
    cfg = command_config(ctx, CurationConfig)
    flags = {"input": input, "output": output, "executor": executor, "workers": workers}
    for key, value in flags.items():
        if value is not None:
            setattr(cfg, key, value)
    if write_dropped:
        cfg.write_dropped = True
    if annotator is not None:
        cfg.annotate.annotator = annotator
    if keep_top is not None:
        cfg.classify.min_score = None
        cfg.classify.keep_top = keep_top
    if min_score is not None:
        cfg.classify.keep_top = None
        cfg.classify.min_score = min_score
    console = Console()
    report = pipeline.run(cfg, on_stage=lambda s: console.print(f"[bold]stage[/] {s}"))
    console.print(summary(report))


def summary(report: dict) -> Table:
    table = Table(title=f"curated → {report['dataset']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("files seen", str(report["files_seen"]))
    table.add_row("kept", str(report["kept"]))
    for reason, n in report["drop_counts"].items():
        if n:
            table.add_row(f"dropped: {reason}", str(n))
    m = report.get("classifier") or {}
    if m.get("status") == "fallback":
        table.add_row("classifier", f"fallback: {m['reason']}; edu_score is {m['edu_score']}")
    elif m:
        table.add_row("classifier F1 (chance)", f"{m['f1']:.3f} ({m['chance_f1']:.3f})")
    table.add_row("threshold", f"{report['threshold']:.4f}")
    table.add_row("kept chars / est. tokens",
                  f"{report['kept_chars']:,} / {report['estimated_tokens']:,}")
    table.add_row("report", f"{report['dataset']}/_report/report.md")
    return table
