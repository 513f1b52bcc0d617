"""The recipe's commands, mounted on ``primer`` through the ``primer.commands`` entry points
(``demo``, ``serve``) as the components' commands are: the core CLI does not know them."""

from __future__ import annotations

from typing import Annotated

import typer

from primer.cli import command_config
from primer.config import CoreConfig


def demo(
    ctx: typer.Context,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller everything (the test suite's "
                                        "setting): a few hundred standard-library files.")]
    = False,
    run: Annotated[str, typer.Option("--run", help="Run name: outputs go to "
                                     "<storage.root>/runs/<run>/; a rerun resumes.")] = "demo",
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Local worker processes (default: 2, or fewer cores).")]
    = None,
    teacher_url: Annotated[str | None, typer.Option(
        "--teacher-url", help="Teacher for textbooks and exercises: an OpenAI-compatible base "
        "URL or a local checkpoint folder. Default: the demo's own pretrained tiny model (a "
        "toy bootstrapped teacher; the report says so).")] = None,
    teacher_model: Annotated[str | None, typer.Option(
        "--teacher-model", help="Model name to request from --teacher-url.")] = None,
    ablation: Annotated[bool, typer.Option(
        "--ablation", help="Also train on the same token budget (a) unfiltered code, (b) "
        "filtered code, (c) filtered + synthetic, over seeds; report NLL and pass@1.")]
    = False,
) -> None:
    """The phi-1 recipe end to end on this machine's Python sources: curate → tokenizer →
    pretrain → textbooks + exercises → decontaminate → CodeTextbook → finetune → evaluate →
    report (HTML + Markdown). A rerun resumes.

    Extra arguments are config overrides, e.g. `primer demo --storage.root=/data/primer`.
    """
    from recipe import demo as recipe_demo

    config = command_config(ctx, CoreConfig)
    recipe_demo.run(config.storage.root, run, quick=quick, workers=workers, ablation=ablation,
             teacher_url=teacher_url, teacher_model=teacher_model)
