"""The ``primer`` command: core commands here, component commands found through entry points.

Components register a ``typer.Typer`` (a command group) or a plain function (one command,
which also accepts ``--section.key=value`` overrides) under the ``primer.commands``
entry-point group::

    [project.entry-points."primer.commands"]
    eval = "services.evaluation.cli:app"     # → primer eval score …
    train = "model.cli:train"                # → primer train --preset tiny …

so the core never imports them (the import-linter contract forbids it). A component whose
import fails is reported in one warning line and the rest of the CLI keeps working.

Commands that take config accept ``--section.key=value`` overrides as extra arguments and
load it with :func:`command_config`, which applies the global ``--config FILE``.
"""

from __future__ import annotations

import inspect
import json
import logging
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Annotated, TypeVar

import click
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

import primer
from primer.config import ConfigError, CoreConfig, config_hash, dump_config, load_config
from primer.log import setup_logging
from primer.storage import StorageError

ENTRY_POINT_GROUP = "primer.commands"
#: ``context_settings`` for a command that takes ``--section.key=value`` overrides (ctx.args).
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
#: Errors a user can fix from the message alone: shown in one red line, exit code 2.
KNOWN_ERRORS = (ConfigError, StorageError)

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("primer.cli")
err = Console(stderr=True, soft_wrap=True)


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@dataclass
class CliState:
    """The global options, kept on the root context for sub-commands (``ctx.find_root().obj``)."""

    config_path: Path | None = None
    log_level: str | None = None  # None: the config's log_level decides
    log_format: str = "text"


def command_config(ctx: typer.Context, model_cls: type[M] = CoreConfig,
                   overrides: Sequence[str] | None = None) -> M:
    """Load ``model_cls`` from ``--config``, the environment and the command's overrides.

    An explicit ``--log-level`` / ``-v`` wins over the config's ``log_level``.
    """
    state = ctx.find_root().obj or CliState()
    args = list(ctx.args if overrides is None else overrides)
    for arg in args:
        if arg.startswith("-") and "=" not in arg:
            raise click.UsageError(
                f"unknown option {arg!r}: overrides look like --section.key=value, and global "
                f"options go before the command (primer {arg} {ctx.info_name} …)", ctx)
    config = load_config(model_cls, state.config_path, overrides=args)
    level = state.log_level or getattr(config, "log_level", None)
    if level:
        setup_logging(level, state.log_format)
    log.debug("loaded %s", model_cls.__name__, extra={
        "config_file": str(state.config_path) if state.config_path else None,
        "overrides": args, "config_hash": config_hash(config)})
    return config


def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", exists=True, dir_okay=False, envvar="PRIMER_CONFIG",
        help="YAML config file (sections as keys). Env: PRIMER_CONFIG.")] = None,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", help="debug, info, warning or error (default: the config's).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Same as --log-level debug.")]
    = False,
    log_format: Annotated[LogFormat, typer.Option(
        "--log-format", help="text for people, json for log collectors.")] = LogFormat.text,
) -> None:
    """Primer: the phi-1 recipe as a system you can run — curate, synthesize, train, evaluate.

    Config: defaults < --config FILE < PRIMER_<SECTION>__<KEY> env < --section.key=value.
    """
    level = "debug" if verbose else log_level
    ctx.obj = CliState(config, level, log_format.value)
    setup_logging(level or "info", log_format.value)


def cmd_version() -> None:
    """Print the versions of primer, Python and torch."""
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    typer.echo(f"primer {primer.__version__}")
    typer.echo(f"python {platform.python_version()}")
    typer.echo(f"torch {torch_version}")


def cmd_doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check Python, torch, GPU, storage, Redis, helm and kubectl; exit 1 on any FAIL.

    Extra arguments are config overrides, e.g. `primer doctor --storage.root=s3://b/p`.
    """
    from primer import doctor

    checks = doctor.run_checks(command_config(ctx, CoreConfig))
    if as_json:
        typer.echo(json.dumps(doctor.as_json(checks), indent=2))
    else:
        Console().print(doctor.render(checks))
    raise typer.Exit(doctor.exit_code(checks))


def cmd_config_show(ctx: typer.Context) -> None:
    """Print the resolved core config as YAML, with its hash.

    Extra arguments are overrides, e.g. `primer config show --redis.url=redis://h:6379/0`.
    """
    config = command_config(ctx, CoreConfig)
    typer.echo(dump_config(config) + f"# config_hash: {config_hash(config)}")


def build_app(plugins: Iterable[EntryPoint] | None = None) -> typer.Typer:
    """The CLI: core commands plus every loadable ``primer.commands`` plug-in."""
    app = typer.Typer(name="primer", no_args_is_help=True, add_completion=False,
                      pretty_exceptions_show_locals=False)
    app.callback()(_root)
    app.command("version")(cmd_version)
    app.command("doctor", context_settings=OVERRIDES)(cmd_doctor)
    config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
    config_app.command("show", context_settings=OVERRIDES)(cmd_config_show)
    app.add_typer(config_app, name="config")
    builtin = {"version", "doctor", "config"}
    eps = entry_points(group=ENTRY_POINT_GROUP) if plugins is None else plugins
    for ep in sorted(eps, key=lambda e: e.name):
        _mount(app, ep, builtin)
    return app


def _mount(app: typer.Typer, ep: EntryPoint, taken: set[str]) -> None:
    """Mount one plug-in — a ``typer.Typer`` becomes a command group, a plain function a
    single command — or warn in one line why it cannot be."""
    problem = None
    if ep.name in taken:
        problem = f"the name {ep.name!r} is already taken"
    else:
        try:
            sub = ep.load()
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
        else:
            if not (isinstance(sub, typer.Typer) or inspect.isfunction(sub)):
                problem = f"expected a typer.Typer or a function, got {type(sub).__name__}"
    if problem:
        err.print(f"[yellow]warning:[/] skipping {ENTRY_POINT_GROUP} entry point "
                  f"{escape(ep.name)} = {escape(ep.value)}: {escape(problem)}")
        return
    taken.add(ep.name)
    if isinstance(sub, typer.Typer):
        app.add_typer(sub, name=ep.name)
    else:
        app.command(ep.name, context_settings=OVERRIDES)(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry: known errors become one red message and exit code 2."""
    try:
        build_app()(args=list(argv) if argv is not None else None, prog_name="primer")
    except KNOWN_ERRORS as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    except click.ClickException as e:  # raised inside a command, after parsing
        e.show()
        return e.exit_code
    return 0
