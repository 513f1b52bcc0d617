"""``primer runs``: submit and watch runs through the gateway (either of its modes).

    export PRIMER_GATEWAY_URL=http://primer-gateway PRIMER_GATEWAY_TOKEN=…   # token: if on
    primer runs submit generation kind=textbooks count=1000 batch_size=32 \
        teacher.url=http://primer-teacher/v1        # an endpoint the gateway allows
    primer runs submit curation input=s3://primer/raw --classify.n_estimators=50
    primer runs submit evaluation checkpoint=s3://primer/models/phi benchmarks=[humaneval]
    primer runs list --phase Running
    primer runs get run-0123456789ab --wait      # exit 1 if it failed (3: --timeout passed)

``key=value`` sets a field of the run spec (:mod:`primer.runs`; values parsed as YAML:
``count=10`` is a number, ``teacher.url=…`` a nested field); ``--section.key=value`` sets the
component's config, as in local mode, limited to the run kind's allow-list
(``services/gateway/policy.py``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer
import yaml

from primer.cli import OVERRIDES
from primer.runs import nested

app = typer.Typer(help="Submit and watch runs through the gateway.",
                  no_args_is_help=True)

Gateway = Annotated[str, typer.Option(
    "--gateway", envvar="PRIMER_GATEWAY_URL",
    help="Gateway base URL, e.g. http://primer-gateway. Env: PRIMER_GATEWAY_URL.")]


class GatewayError(Exception):
    pass


def call(gateway: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request; a 4xx/5xx becomes :class:`GatewayError` carrying the gateway's message."""
    headers = {"Accept": "application/json"}
    if token := os.environ.get("PRIMER_GATEWAY_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(gateway.rstrip("/") + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error")
        except ValueError:
            message = None
        raise GatewayError(f"HTTP {exc.code}: {message or exc.reason}") from None
    except urllib.error.URLError as exc:
        raise GatewayError(f"cannot reach the gateway at {gateway}: {exc.reason}") from None


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(2)


def parse_spec(component: str, args: list[str]) -> dict[str, Any]:
    """``key=value`` → spec fields, ``--a.b=value`` → ``config`` (values parsed as YAML)."""
    fields: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for arg in args:
        key, sep, raw = arg.removeprefix("--").partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{arg!r}: use key=value or --section.key=value")
        value = yaml.safe_load(raw) if raw.strip() else raw
        (config if arg.startswith("--") else fields)[key] = value
    spec: dict[str, Any] = {"component": component, **nested(fields)}
    if config:
        spec["config"] = config
    return spec


@app.command("submit", context_settings=OVERRIDES)
def submit(ctx: typer.Context,
           component: Annotated[str, typer.Argument(help="curation, generation or evaluation.")],
           gateway: Gateway) -> None:
    """Submit a run; prints it (phase Pending) as JSON."""
    try:
        _echo(call(gateway, "POST", "/v1/runs", parse_spec(component, list(ctx.args))))
    except GatewayError as exc:
        _fail(exc)


@app.command("list")
def list_runs(gateway: Gateway,
              component: Annotated[str | None, typer.Option(help="Only this component.")] = None,
              phase: Annotated[str | None, typer.Option(help="Only this phase.")] = None,
              limit: Annotated[int, typer.Option(min=1, max=500)] = 50) -> None:
    """List runs, newest first: id, component, phase, units done of the current step."""
    query = {k: v for k, v in {"component": component, "phase": phase, "limit": limit}.items()
             if v is not None}
    try:
        runs = call(gateway, "GET", "/v1/runs?" + urllib.parse.urlencode(query))["runs"]
    except GatewayError as exc:
        _fail(exc)
    for run in runs:
        waiting = "".join(f"  ({c['reason']}: queue {run['queue']})"
                          for c in run.get("conditions") or [])
        typer.echo(f"{run['id']}  {run['component']:<10}  {run['phase']:<9}  "
                   f"{run['progress']['units_done']}/{run['progress']['units_total']} units  "
                   f"{run['created_at']}{waiting}")


@app.command("get")
def get(run_id: Annotated[str, typer.Argument(help="The run's id (run-…).")], gateway: Gateway,
        wait: Annotated[bool, typer.Option("--wait", help="Poll until it ends; exit 1 if it "
                                           "failed.")] = False,
        interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 2.0,
        timeout: Annotated[float | None, typer.Option(
            help="With --wait: give up after this many seconds (exit 3).")] = None) -> None:
    """Print one run as JSON. While waiting, says on stderr why a run is not moving (e.g. no
    worker consumes its queue)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    path = f"/v1/runs/{urllib.parse.quote(run_id)}"
    try:
        run = call(gateway, "GET", path)
        said: list[str] = []
        while wait and run["phase"] not in ("Succeeded", "Failed"):
            said = _say_conditions(run, said)
            if deadline is not None and time.monotonic() >= deadline:
                _echo(run)
                typer.secho(f"{run_id} is still {run['phase']} after {timeout:g} s",
                            fg="yellow", err=True)
                raise typer.Exit(3)
            time.sleep(interval)
            run = call(gateway, "GET", path)
    except GatewayError as exc:
        _fail(exc)
    _echo(run)
    if wait and run["phase"] == "Failed":
        raise typer.Exit(1)


def _say_conditions(run: dict[str, Any], said: list[str]) -> list[str]:
    """Print each condition of ``run`` once (and once when they all clear)."""
    now = [c["message"] for c in run.get("conditions") or []]
    for message in now:
        if message not in said:
            typer.secho(f"waiting: {message}", fg="yellow", err=True)
    if said and not now:
        typer.secho(f"{run['id']}: moving again", err=True)
    return now
