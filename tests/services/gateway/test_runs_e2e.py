"""Runs through the gateway in embedded mode: its reconciler plans them and real Celery workers
run the units; watched with ``primer runs``."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from primer.datasets import open_dataset
from primer.errors import MESSAGE_LIMIT
from primer.executor import LocalExecutor
from primer.executor.plan import drive, planner
from primer.runs import GenerationRun
from primer.storage import open_storage
from services.gateway.app import create_app
from tests.openai_server import OpenAIServer
from tests.plain import assert_plain
from tests.primer.test_executor import celery_workers
from tests.services.evaluation.tiny_model import save_tiny_model
from tests.services.gateway.conftest import gateway_config, own_db, serve
from tests.services.gateway.test_api import http, metric
from tests.services.generation.teacher_responder import responder

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNS = EntryPoint(name="runs", value="services.gateway.cli:app", group="primer.commands")
FAST_RETRIES = ("--teacher.timeout_s=2", "--teacher.backoff_base_s=0.01",
                "--teacher.backoff_max_s=0.2")


def cli(*args: str):
    return CliRunner().invoke(build_app([RUNS]), list(args))


def small_corpus(path: Path) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))
    path.mkdir()
    for f in files[:30]:
        shutil.copy(f, path / f"{f.parent.name}_{f.name}")
    return path


def printed(output: str) -> dict:
    """The JSON object ``primer runs`` printed (the in-process gateway's log lines may land
    in the same captured stdout)."""
    lines = output.splitlines()
    return json.loads("\n".join(lines[lines.index("{"):lines.index("}") + 1]))


def markers(output: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in Path(output).rglob("_markers/*.json")]


def rows(uri: str) -> list[dict]:
    return sorted(open_dataset(uri), key=lambda r: r["id"])


def test_a_generation_run_is_planned_by_the_gateway_and_run_by_the_workers(redis_url,
                                                                          tmp_path):
    own = own_db(redis_url, 12)
    with OpenAIServer(responder) as teacher:
        config = gateway_config(own, tmp_path, reconcile_seconds=0.2,
                                endpoints=(teacher.base_url,))
        with celery_workers(own, config.queues["generation"], tmp_path / "logs", n=2),\
                serve(create_app(config)) as url:
            sent = cli("runs", "submit", "generation", "kind=textbooks", "count=12",
                       "batch_size=4", f"teacher.url={teacher.base_url}",
                       "teacher.model=test-teacher", *FAST_RETRIES, "--gateway", url)
            assert sent.exit_code == 0, sent.output
            run_id = printed(sent.output)["id"]
            done = cli("runs", "get", run_id, "--wait", "--interval", "0.3", "--gateway", url)
            assert done.exit_code == 0, done.output
            listed = cli("runs", "list", "--gateway", url)
            text = http("GET", f"{url}/metrics")[1]
        # the same spec driven by the planner in this process, with a local executor
        spec = GenerationRun(kind="textbooks", count=12, batchSize=4,
                             output=str(tmp_path / "local"),
                             teacher={"url": teacher.base_url, "model": "test-teacher"},
                             config={"teacher.timeout_s": 2, "teacher.backoff_base_s": 0.01,
                                     "teacher.backoff_max_s": 0.2})
        plan = planner("generation")
        drive(plan, plan.resolve(spec), LocalExecutor(1), progress=False)

    run = printed(done.output)
    assert run["phase"] == "Succeeded" and run["started_at"] and run["finished_at"], run
    assert run["job"] is None and run["error"] is None
    out = run["output"]
    assert out == f"{config.storage_root}/runs/{run_id}/generation"
    assert run["outputs"]["rows"] == 12 and run["outputs"]["manifest"].endswith(
        "_manifest.json")
    published = rows(out)
    assert len({r["id"] for r in published}) == 12
    assert published == rows(str(tmp_path / "local"))  # the same units, whoever drives them
    # every unit ran on a worker: none in this process (where the gateway runs)
    written = markers(out)
    assert len(written) == run["stats"]["units_done"] == run["progress"]["units_done"] >= 4
    assert os.getpid() not in {m["pid"] for m in written}
    assert {m["unit"] for m in written} >= {"commit"}
    assert run["stats"]["tokens_generated"] > 0
    assert f"{run_id}  generation  Succeeded" in listed.output
    assert metric(text, "primer_runs", component="generation", phase="Succeeded") == 1
    assert metric(text, "primer_queue_length", queue=config.queues["generation"]) == 0


def test_a_unit_that_raises_fails_the_run_with_one_line_and_a_plain_traceback(redis_url,
                                                                            tmp_path):
    """The issue's reproduction: with a worker on the right queue the run failed and its
    ``error`` was a terminal-sized traceback with the cause on its last line."""
    own = own_db(redis_url, 12)
    config = gateway_config(own, tmp_path, reconcile_seconds=0.2)
    (tmp_path / "inputs").mkdir()
    broken = tmp_path / "inputs" / "broken.jsonl"  # rows without the text column
    broken.write_text("".join(json.dumps({"content": f"x = {i}"}) + "\n" for i in range(3)))
    with celery_workers(own, config.queues["curation"], tmp_path / "logs", n=1), \
            serve(create_app(config)) as url:
        sent = cli("runs", "submit", "curation", f"input={broken}", "--gateway", url)
        assert sent.exit_code == 0, sent.output
        run_id = printed(sent.output)["id"]
        failed = cli("runs", "get", run_id, "--wait", "--interval", "0.3", "--gateway", url)
        assert failed.exit_code == 1, failed.output
        run = http("GET", f"{url}/v1/runs/{run_id}")[1]  # the API's JSON, as the issue read it
    assert run["phase"] == "Failed" and run["job"] == "curate-read"
    error = run["error"]
    assert error.startswith(f"InputError: {broken}:1: expected a JSON object with 'text'")
    assert error.endswith("of step curate-read; 1 unit(s) failed)")
    assert "\n" not in error and len(error) <= MESSAGE_LIMIT
    trace = run["traceback"]
    assert_plain(trace, "the run's traceback")
    assert trace.startswith("Traceback (most recent call last)")
    assert "in read_data_file" in trace  # the function that raised, in plain text
    assert trace.rstrip().splitlines()[-1].startswith("services.curation.readers.InputError: ")


@pytest.mark.slow  # nine curation steps, each a round trip through the queue (~80 s here)
def test_a_curation_run_succeeds_and_a_broken_one_fails(redis_url, tmp_path):
    own = own_db(redis_url, 12)
    config = gateway_config(own, tmp_path, reconcile_seconds=0.2)
    queue = config.queues["curation"]
    (tmp_path / "inputs").mkdir()
    corpus = small_corpus(tmp_path / "inputs" / "code")
    with celery_workers(own, queue, tmp_path / "logs", n=2), serve(create_app(config)) as url:
        # JSONL records without the text column: the read unit fails → Failed (a run may not
        # name an encoder path, so a broken input is the way to break a unit from outside)
        broken = tmp_path / "inputs" / "broken.jsonl"
        broken.write_text("".join(json.dumps({"content": f"x = {i}"}) + "\n" for i in range(3)))
        bad = cli("runs", "submit", "curation", f"input={broken}", "--gateway", url,
                  "--classify.n_estimators=10")
        assert bad.exit_code == 0, bad.output
        bad_id = printed(bad.output)["id"]
        good = cli("runs", "submit", "curation", f"input={corpus}", "--gateway", url,
                   "--classify.n_estimators=10", "--annotate.positive_score=0.8")
        good_id = printed(good.output)["id"]

        failed = cli("runs", "get", bad_id, "--wait", "--interval", "0.3", "--gateway", url)
        assert failed.exit_code == 1, failed.output
        run = printed(failed.output)
        assert run["phase"] == "Failed" and "expected a JSON object with 'text'" in run["error"]
        assert run["job"] == "curate-read" and run["finished_at"]

        done = cli("runs", "get", good_id, "--wait", "--interval", "0.3", "--gateway", url)
        assert done.exit_code == 0, done.output
        run = printed(done.output)
        assert run["phase"] == "Succeeded" and run["started_at"] and run["finished_at"]
        assert run["outputs"]["rows"] > 0 and run["outputs"]["manifest"].endswith(
            "_manifest.json")
        assert Path(run["output"], "_manifest.json").is_file()
        written = markers(run["output"])
        stages = {p.parent.parent.name for p in Path(run["output"]).rglob("_markers/*.json")}
        assert stages >= {"read", "dedup", "annotate", "score", "select", "commit"}, stages
        assert len(written) == run["stats"]["units_done"]
        assert os.getpid() not in {m["pid"] for m in written}

        listed = cli("runs", "list", "--component", "curation", "--gateway", url)
        assert f"{good_id}  curation    Succeeded" in listed.output
        assert f"{bad_id}  curation    Failed" in listed.output

        text = http("GET", f"{url}/metrics")[1]
        assert metric(text, "primer_queue_length", queue=queue) == 0
        # the broken run's failing unit left a failure record that the metrics count
        assert metric(text, "primer_units_failed", component="curation") >= 1
        assert metric(text, "primer_runs", component="curation", phase="Succeeded") == 1
        assert metric(text, "primer_units_done", component="curation") >= 6
        missing = cli("runs", "get", "run-ffffffffffff", "--gateway", url)
        assert missing.exit_code == 2 and "HTTP 404" in missing.output


def test_an_evaluation_run_is_planned_by_the_gateway_and_scored_by_a_worker(
        redis_url, s3_bucket, tmp_path, monkeypatch):
    """Embedded mode: one unit per benchmark on an evaluation worker, which fetches the
    exported model from S3, generates and scores in its sandbox; the run's outputs are the
    summaries."""
    own = own_db(redis_url, 12)
    # the gateway's config layers (as the chart's env would set them): a quick evaluation
    monkeypatch.setenv("PRIMER__LIMIT", "3")
    monkeypatch.setenv("PRIMER_GENERATION__MAX_NEW_TOKENS", "6")
    uploaded = open_storage(f"s3://{s3_bucket}/models/tiny")
    for f in save_tiny_model(tmp_path / "tiny").iterdir():
        uploaded.write_bytes(f.name, f.read_bytes())
    config = gateway_config(own, tmp_path, reconcile_seconds=0.2,
                            input_roots=(f"s3://{s3_bucket}/models",),
                            storage_root=f"s3://{s3_bucket}/data")
    with celery_workers(own, config.queues["evaluation"], tmp_path / "logs", n=1), \
            serve(create_app(config)) as url:
        status, sent, _ = http("POST", f"{url}/v1/runs", {
            "component": "evaluation", "checkpoint": f"s3://{s3_bucket}/models/tiny",
            "benchmarks": ["humaneval", "mbpp"]})
        assert status == 201, sent
        done = cli("runs", "get", sent["id"], "--wait", "--interval", "0.3", "--gateway", url)
        assert done.exit_code == 0, done.output
    run = printed(done.output)
    assert run["phase"] == "Succeeded" and run["error"] is None, run
    summaries = run["outputs"]["summaries"]
    assert sorted(summaries) == ["humaneval", "mbpp"]
    assert all(s["n_problems"] == 3 and s["n_samples"] == 3 for s in summaries.values())
    assert all(s["sandbox"]["layers"] for s in summaries.values()), summaries
    # the field a cluster-mode gateway shows from the EvaluationRun's status, too
    assert run["outputs"]["passAt1"] == {b: s["pass@1"] for b, s in summaries.items()}
    out = open_storage(run["output"])
    assert out.exists("mbpp/samples.jsonl") and out.exists("humaneval/results.jsonl")
    units = [json.loads(out.read_text(o.key)) for o in out.list("_work/_markers/")]
    assert sorted(m["unit"] for m in units) == ["evaluate-humaneval", "evaluate-mbpp"]
    assert os.getpid() not in {m["pid"] for m in units}  # a worker ran them, not the gateway
