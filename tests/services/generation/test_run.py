"""End to end against the real test server: faults, invalid answers, kill -9 of a worker."""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import os
import signal
import time
import uuid

import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from primer.datasets import open_dataset
from primer.executor import CeleryExecutor, LocalExecutor, completed_ids, read_marker
from primer.sandbox import SandboxConfig, run_many
from primer.storage import open_storage
from services.generation.config import GenerationSettings
from services.generation.prompts import request
from services.generation.run import GenerationError, generate, work_uri
from services.generation.taxonomy import spec_at
from tests.primer.test_executor import celery_workers
from tests.services.generation.conftest import config_for
from tests.services.generation.teacher_responder import outcome

PLUGIN = importlib.metadata.EntryPoint(name="generate", value="services.generation.cli:app",
                                       group="primer.commands")


def rows_of(uri: str) -> list[dict]:
    return sorted(open_dataset(uri), key=lambda r: r["id"])


def without_teacher(rows: list[dict]) -> list[dict]:
    """Records minus ``teacher`` (it names the endpoint, which differs between servers)."""
    return [{k: v for k, v in r.items() if k != "teacher"} for r in rows]


def teacher_outcome(kind: str, record_id: str) -> str:
    """What the fake teacher meant its answer for this record to be (valid or junk)."""
    req = request(spec_at(kind, 0, int(record_id.rsplit("-", 1)[1])), GenerationSettings())
    return outcome({"messages": req.messages, "seed": req.seed})


@pytest.mark.integration
def test_textbooks_with_30pct_faults_yield_exactly_n_and_match_a_clean_run(
        faulty_teacher, clean_teacher, tmp_path):
    n = 40
    out = str(tmp_path / "books")
    manifest = generate("textbooks", n, out, config_for(faulty_teacher), LocalExecutor(1))
    assert sum(faulty_teacher.injected.values()) >= 10  # the faults really happened
    rows = rows_of(out)
    assert manifest.rows == len(rows) == n
    assert len({r["id"] for r in rows}) == n and len({r["text"] for r in rows}) == n
    # No junk got in; of the answers that are all the same text, only the first is kept.
    verdicts = [teacher_outcome("textbooks", r["id"]) for r in rows]
    assert set(verdicts) <= {"valid", "duplicate"} and verdicts.count("duplicate") == 1
    assert set(rows[0]) == {"id", "text", "topic", "audience", "style", "teacher",
                            "prompt_hash"}
    # Every invalid answer the fake teacher gave is dropped and counted, under its reason.
    assert manifest.drop_counts["refusal"] > 0 and manifest.drop_counts["code_syntax_error"] > 0
    assert manifest.drop_counts["near_dup"] > 0
    assert "teacher_error" not in manifest.drop_counts  # retries absorbed every fault
    assert sum(manifest.drop_counts.values()) + n + manifest.metadata["surplus_valid"] \
        == manifest.metadata["specs"]
    assert manifest.tokens > 0 and manifest.producer.step == "generate-textbooks"

    # The same run against a teacher that never fails publishes the very same records.
    clean = str(tmp_path / "clean")
    generate("textbooks", n, clean, config_for(clean_teacher, concurrency=4), LocalExecutor(1))
    assert without_teacher(rows) == without_teacher(rows_of(clean))

    # A rerun of the finished run sends nothing and returns the same manifest.
    asked = faulty_teacher.requests
    again = generate("textbooks", n, out, config_for(faulty_teacher), LocalExecutor(1))
    assert again == manifest and faulty_teacher.requests == asked


@pytest.mark.integration
def test_exercises_cli_drops_invalid_answers_and_every_record_passes_its_asserts(
        faulty_teacher, tmp_path):
    out = str(tmp_path / "ex")
    result = CliRunner().invoke(build_app(plugins=[PLUGIN]), [
        "generate", "exercises", "--count", "30", "--teacher-url", faulty_teacher.base_url,
        "--teacher-model", "test-teacher", "--output", out, "--concurrency", "8",
        "--generation.batch_size=16", "--generation.sandbox_workers=2",
        "--teacher.timeout_s=1", "--teacher.backoff_base_s=0.01", "--teacher.backoff_max_s=0.2",
        "--teacher.price_input_per_1k=1", "--teacher.price_output_per_1k=2", "--workers=1"])
    assert result.exit_code == 0, result.output
    assert "estimated cost: at most $" in result.output and "tok/s" in result.output
    assert "wrote 30 exercises" in result.output
    manifest = open_dataset(out).manifest
    rows = rows_of(out)
    assert len(rows) == 30 and len({r["id"] for r in rows}) == 30
    for reason in ("malformed_json", "syntax_error", "tests_failed"):
        assert manifest.drop_counts[reason] > 0, manifest.drop_counts
    row = rows[0]
    assert row["prompt"].startswith(f"def {row['function_name']}(") and '"""' in row["prompt"]
    assert row["concept"] and row["teacher"].startswith("test-teacher@")
    programs = [r["solution"] + "\n" + "\n".join(r["tests"]) for r in rows]
    assert all(r.passed for r in run_many(programs, SandboxConfig(timeout_s=5), workers=2))
    # The fake teacher's own verdict agrees: none of its junk answers made it in.
    assert {teacher_outcome("exercises", r["id"]) for r in rows} == {"valid"}


@pytest.mark.integration
def test_kill_9_of_a_worker_mid_batch_changes_nothing(redis_url, clean_teacher, tmp_path):
    from tests.openai_server import OpenAIServer
    from tests.services.generation.teacher_responder import responder

    n = 24
    reference = str(tmp_path / "reference")
    generate("exercises", n, reference, config_for(clean_teacher, batch_size=8),
             LocalExecutor(1))

    queue = f"gen-kill-{uuid.uuid4().hex[:8]}"
    out = str(tmp_path / "out")
    with OpenAIServer(responder, fail_rate=0.3, slow_s=2.0, seed=3, latency_s=0.25) as slow, \
            concurrent.futures.ThreadPoolExecutor(1) as waiter:
        config = config_for(slow, batch_size=8, concurrency=2)
        running = waiter.submit(generate, "exercises", n, out, config,
                                CeleryExecutor(redis_url, queue=queue, timeout=90))
        # One worker takes a batch; it is killed once it has some answers and no batch done.
        with celery_workers(redis_url, queue, tmp_path / "logs-1", n=1) as (victim,):
            deadline = time.monotonic() + 60
            while slow.answered < 3:
                assert time.monotonic() < deadline and not running.done(), "no batch started"
                time.sleep(0.05)
            assert not completed_ids(open_storage(work_uri(out)))
            os.killpg(victim.pid, signal.SIGKILL)
        # A fresh worker gets the batch again after the visibility timeout, and the rest.
        with celery_workers(redis_url, queue, tmp_path / "logs-2", n=1):
            manifest = running.result(timeout=120)

    assert manifest.rows == n
    assert without_teacher(rows_of(out)) == without_teacher(rows_of(reference))
    state = open_storage(work_uri(out))
    markers = [read_marker(state, u) for u in completed_ids(state)]
    # The redelivered batch took what the killed worker had already got from the cache.
    assert sum(m["result"]["usage"]["cached"] for m in markers if m["unit"] != "commit") > 0


@pytest.mark.integration
def test_a_reconciler_driving_the_planner_publishes_the_dataset(clean_teacher, s3_bucket):
    """What the operator and the gateway do: on each tick, reconcile() sends the planner's
    next step once (here run by a local executor standing in for the workers) until the
    commit unit has published exactly N records on S3."""
    from primer.executor import Job
    from primer.executor.plan import planner, reconcile
    from primer.runs import GenerationRun

    out = f"s3://{s3_bucket}/gen"
    spec = GenerationRun(kind="textbooks", count=12, output=out, batchSize=8,
                         teacher={"url": clean_teacher.base_url, "model": "test-teacher"})
    plan = planner("generation")
    target = plan.resolve(spec)
    sent: list[Job] = []
    tick, job = None, None
    for _ in range(10):
        tick = reconcile(plan, target, job, lambda j: sent.append(j) or len(j.units))
        if tick.phase != "Running":
            break
        assert tick.job != job or tick.sent == 0  # a step is sent once
        job = tick.job
        LocalExecutor(1).run(sent[-1], progress=False)
    assert tick.phase == "Succeeded", tick
    assert [j.name for j in sent] == ["generate-textbooks-round-0", "generate-textbooks-commit"]
    manifest = open_dataset(out).manifest
    assert tick.result["rows"] == manifest.rows == 12
    assert len({r["id"] for r in open_dataset(out)}) == 12


def test_a_teacher_that_never_gives_a_valid_answer(tmp_path):
    """By default the run fails and says why; with allow_fewer it publishes what there is
    (here nothing) and the manifest says how many were asked for and how many were valid."""
    from tests.openai_server import OpenAIServer

    with OpenAIServer(lambda body: "I'm sorry, but I can't help with that.") as server:
        config = config_for(server, batch_size=4)
        config.generation.max_specs_factor = 2
        with pytest.raises(GenerationError, match="only 0 of 3 valid records"):
            generate("textbooks", 3, str(tmp_path / "strict"), config, LocalExecutor(1))
        config.generation.allow_fewer = True
        manifest = generate("textbooks", 3, str(tmp_path / "lenient"), config,
                            LocalExecutor(1))
    assert manifest.rows == 0 and manifest.metadata["valid"] == 0
    assert manifest.metadata["count"] == 3 and manifest.drop_counts["refusal"] > 0
