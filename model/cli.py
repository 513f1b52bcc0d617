"""``primer pack | train | finetune | export``: the model component's commands.

Registered through the ``primer.commands`` entry-point group; any extra
``--section.key=value`` argument overrides the preset's config. ``primer train`` is a group:
``primer train --preset tiny …`` trains here (its default command, ``run``), and
``primer train submit|status|logs|delete`` manage the same training as a PyTorchJob on a
cluster (built by ``primer.k8s``, shared with the chart and the operator).
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from primer.cli import OVERRIDES
from primer.k8s.cli import jobs_app

OVERRIDE_HELP = "Further --section.key=value arguments override the preset."


def _config(ctx: typer.Context, preset: str, finetuning: bool, flags: dict):
    from model.presets import make_config
    from primer.cli import CliState

    state = ctx.find_root().obj or CliState()
    for arg in ctx.args:
        if arg.startswith("-") and "=" not in arg:
            raise typer.BadParameter(f"unknown option {arg!r}: overrides look like "
                                     "--section.key=value")
    overrides = list(ctx.args) + [f"--{k}={v}" for k, v in flags.items() if v is not None]
    return make_config(preset, overrides, finetuning=finetuning,
                       config_file=str(state.config_path) if state.config_path else None)


def _run(cfg) -> None:
    from model.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()


def train(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="phi1, phi1_small or tiny.")] = "tiny",
    data: Annotated[str | None, typer.Option(help="Packed or text dataset URI (text is "
                                             "packed into OUTPUT/data first).")] = None,
    output: Annotated[str | None, typer.Option(help="Run URI (path or s3://).")] = None,
    steps: Annotated[int | None, typer.Option(help="Length of the run and its LR schedule.")]
    = None,
    stop_at: Annotated[int | None, typer.Option(help="Stop after this step; same schedule.")]
    = None,
    resume: Annotated[str | None, typer.Option(help="'auto' or a checkpoint URI.")] = None,
) -> None:
    """Pretrain a phi model in this process (several: torchrun -m model.train …)."""
    _run(_config(ctx, preset, False, {"data.path": data, "output": output,
                                      "train.steps": steps, "train.stop_at": stop_at,
                                      "checkpoint.resume": resume}))


def finetune(
    ctx: typer.Context,
    init: Annotated[str, typer.Option(help="Checkpoint (or run) URI to start from.")],
    preset: Annotated[str, typer.Option(help="The preset the checkpoint was trained with.")]
    = "tiny",
    data: Annotated[str | None, typer.Option(help="Exercises (prompt/completion columns) or "
                                             "a finetune pack.")] = None,
    output: Annotated[str | None, typer.Option(help="Run URI.")] = None,
    steps: Annotated[int | None, typer.Option(help="Length of the run and its LR schedule.")]
    = None,
    stop_at: Annotated[int | None, typer.Option(help="Stop after this step; same schedule.")]
    = None,
    resume: Annotated[str | None, typer.Option(help="'auto' or a checkpoint URI.")] = None,
) -> None:
    """Finetune on exercises (lr 1e-4, warmup 50, wd 0.01; loss on solution tokens)."""
    _run(_config(ctx, preset, True, {"data.path": data, "output": output, "train.steps": steps,
                                     "train.stop_at": stop_at, "checkpoint.resume": resume,
                                     "train.init_from": init}))


def pack(
    sources: Annotated[list[str], typer.Argument(help="Text datasets, each URI or URI@WEIGHT.")],
    output: Annotated[str, typer.Option(help="Where the packed dataset goes.")],
    tokenizer: Annotated[str, typer.Option(help="HF name/path, or 'train' (offline BPE).")]
    = "Salesforce/codegen-350M-mono",
    seq_len: Annotated[int, typer.Option(help="Window length in tokens.")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed of the mix and its order.")] = 1234,
    executor: Annotated[str, typer.Option(help="local (process pool) or celery (the "
                                          "curation workers, over PRIMER_REDIS_URL).")]
    = "local",
    workers: Annotated[int, typer.Option(min=1, help="Local processes (--executor local).")]
    = 2,
    finetune: Annotated[bool, typer.Option(help="prompt/completion records; loss mask.")]
    = False,
    text_column: Annotated[str, typer.Option(help="Column with the documents.")] = "text",
    prompt_column: Annotated[str, typer.Option(help="Finetuning: the prompt's column.")]
    = "prompt",
    completion_column: Annotated[str, typer.Option(help="Finetuning: the solution's column.")]
    = "completion",
    vocab: Annotated[int, typer.Option(help="Vocabulary of a trained BPE.")] = 4096,
) -> None:
    """Tokenize datasets as work units, mix them by weight and pack fixed-length windows.

    A rerun of the same command resumes: units that finished are skipped."""
    from model.packing import Source, make_executor
    from model.packing import pack as run_pack

    try:  # local: pack() sizes the pool to the units
        runner = None if executor == "local" else make_executor(executor, workers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--executor") from None
    meta = run_pack([Source.parse(s) for s in sources], output, tokenizer=tokenizer,
                    seq_len=seq_len, seed=seed, workers=workers, finetune=finetune,
                    text_column=text_column, prompt_column=prompt_column,
                    completion_column=completion_column, tokenizer_vocab=vocab,
                    executor=runner)
    typer.echo(f"packed {meta['windows']} windows of {meta['seq_len']} tokens into {output}")


def export(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint URI (step folder or run).")],
    out_dir: Annotated[str, typer.Argument(help="Local folder for the HF model.")],
) -> None:
    """Export a checkpoint as a save_pretrained folder (AutoModelForCausalLM-loadable)."""
    from model.export import export as run_export

    typer.echo(f"exported to {run_export(checkpoint, out_dir)}")


class _RunByDefault(TyperGroup):
    """A group whose first argument, when it names no sub-command, goes to ``run``: so
    ``primer train --preset tiny`` trains and ``primer train submit …`` submits."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)


train_app = typer.Typer(cls=_RunByDefault, no_args_is_help=False, help=(
    "Train a phi model: here (the default, `run`), or on Kubernetes as a PyTorchJob "
    "(`submit`, `status`, `logs`, `delete`)."))
train_app.command("run", context_settings=OVERRIDES)(train)
train_app.registered_commands += jobs_app.registered_commands
