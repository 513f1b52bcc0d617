"""Every door builds a run's units through its component's planner: the first step the CLI
runs, the operator sends and the gateway sends are the planner's units, argument for argument
(a door that built its own — say with another sandbox timeout — fails here).

Nothing runs: the CLI's executor and the async doors' queue are replaced by recorders at the
one point where units leave the door. Markers are read from a real S3 server.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import kopf
import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from primer.executor import Job
from primer.executor.plan import planner
from primer.runs import CurationRun, GenerationRun

TEACHER = "http://teacher.test:8000/v1"


class Sent(Exception):
    """Raised by a recorder once the first step has left the door."""


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    bucket = "doors"
    if not s3_server.client().bucket_exists(bucket):
        s3_server.client().make_bucket(bucket)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return f"s3://{bucket}"


def by_cli(argv: list[str], monkeypatch) -> list[dict[str, Any]]:
    """The units of the first job ``primer <argv> --executor celery`` hands its executor."""
    jobs: list[Job] = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, job: Job, *, progress: bool = True):
            jobs.append(job)
            raise Sent

    monkeypatch.setattr("primer.executor.CeleryExecutor", Recorder)
    with pytest.raises(Sent):
        CliRunner().invoke(build_app(), [*argv, "--executor", "celery"],
                           catch_exceptions=False)
    return [u.to_dict() for u in jobs[0].units]


def by_operator(plural: str, spec: dict[str, Any], monkeypatch) -> list[dict[str, Any]]:
    """The units the operator's first reconcile of a new resource sends to the queue."""
    from operators import queue_runs

    monkeypatch.setenv("PRIMER_OPERATOR_ENDPOINTS", TEACHER)  # the one it may name
    jobs: list[Job] = []
    monkeypatch.setattr(queue_runs.queue, "enqueue",
                        lambda job, *args: jobs.append(job) or len(job.units))
    queue_runs.reconcile_run(
        spec=spec, name="r1", namespace="ns", uid="0123456789", status={},
        patch=kopf.Patch(), resource=types.SimpleNamespace(plural=plural), memo=kopf.Memo(),
        logger=logging.getLogger("test"))
    return [u.to_dict() for u in jobs[0].units]


def by_gateway(body: dict[str, Any], redis_url: str, tmp_path, monkeypatch,
               **settings: Any) -> tuple[str, list[dict[str, Any]]]:
    """(the run's output, the units) of the first pass of an embedded gateway over ``body``."""
    from services.gateway.app import create_app
    from tests.services.gateway.conftest import gateway_config, own_db, serve
    from tests.services.gateway.test_api import http

    jobs: list[Job] = []
    monkeypatch.setattr("services.gateway.embedded.enqueue",
                        lambda job, *args: jobs.append(job) or len(job.units))
    app = create_app(gateway_config(own_db(redis_url, 10), tmp_path, endpoints=(TEACHER,),
                                    **settings))  # passes driven by hand
    with serve(app) as url:
        status, run, _ = http("POST", f"{url}/v1/runs", body)
        assert status == 201, run
        app.state.runs.reconciler.pass_once()
    return run["output"], [u.to_dict() for u in jobs[0].units]


def by_planner(kind: str, spec) -> list[dict[str, Any]]:
    plan = planner(kind)
    return [u.to_dict() for u in plan.next(plan.resolve(spec)).job.units]


def test_a_generation_run_gets_the_same_units_from_every_door(s3_env, redis_url, tmp_path,
                                                              monkeypatch):
    output = f"{s3_env}/gen"
    spec = GenerationRun(kind="exercises", count=10, output=output, batch_size=4,
                         teacher={"url": TEACHER, "model": "m"})
    expected = by_planner("generation", spec)
    # ceil(10 × 1.25) = 13 specs, in batches of 4
    assert [u["id"] for u in expected] == [f"exercises-{s:09d}" for s in (0, 4, 8, 12)]
    assert expected[0]["args"]["sandbox"]["timeout_s"] == 5.0  # the generation section's
    cli = by_cli(["generate", "exercises", "--count", "10", "--output", output,
                  "--teacher-url", TEACHER, "--teacher-model", "m",
                  "--generation.batch_size=4"], monkeypatch)
    operator = by_operator("generationruns", spec.model_dump(by_alias=True, exclude_none=True),
                           monkeypatch)
    assert cli == expected
    assert operator == expected
    # The gateway picks the output (runs/<id>/…): the planner's units for that output.
    body = {"component": "generation", **spec.model_dump(by_alias=True, exclude_none=True)}
    body["output"] = "gen"
    out, gateway = by_gateway(body, redis_url, tmp_path, monkeypatch, storage_root=s3_env)
    assert gateway == by_planner("generation", spec.model_copy(update={"output": out}))
    assert gateway[0]["args"]["sandbox"]["timeout_s"] == 5.0


def test_a_curation_run_gets_the_same_units_from_every_door(s3_env, redis_url, tmp_path,
                                                            monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def f(x):\n    return x + 1\n")
    output = f"{s3_env}/cur"
    spec = CurationRun(input=str(src), output=output, keep_top=0.3,
                       config={"dedup.bands": 10, "annotate.sample_size": 50})
    expected = by_planner("curation", spec)
    assert [u["id"] for u in expected] == ["plan"]
    assert expected[0]["args"]["config"]["dedup"]["bands"] == 10
    cli = by_cli(["curate", "--input", str(src), "--output", output, "--keep-top", "0.3",
                  "--dedup.bands=10", "--annotate.sample_size=50"], monkeypatch)
    operator = by_operator("curationruns", spec.model_dump(by_alias=True, exclude_none=True),
                           monkeypatch)
    assert cli == expected
    assert operator == expected
    body = {"component": "curation", **spec.model_dump(by_alias=True, exclude_none=True)}
    body["output"] = "cur"
    out, gateway = by_gateway(body, redis_url, tmp_path, monkeypatch, storage_root=s3_env,
                              input_roots=(str(src),))
    assert gateway == by_planner("curation", spec.model_copy(update={"output": out}))
