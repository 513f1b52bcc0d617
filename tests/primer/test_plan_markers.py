"""A door that ticks reads each finished unit's marker once per run, and lists the markers
once per tick (issue 13): counted on real storage (local disk, and the S3 server for the
operator), through a counting wrapper around the backend's reads and listings."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections import Counter
from types import SimpleNamespace

import kopf
import pytest

from primer import progress
from primer.executor import Job, WorkUnit, run_unit
from primer.executor.base import MARKERS, Markers
from primer.executor.plan import Step, reconcile
from primer.runs import CurationRun
from primer.storage import open_storage
from primer.storage.local import LocalStorage
from primer.storage.s3 import S3Storage
from services.generation import plan as generation_plan
from services.generation.config import GenerateConfig
from services.generation.plan import GenerationPlanner, GenerationTarget
from services.generation.run import select, work_uri

FAKE_BATCH = "tests.primer.test_plan_markers:fake_batch"


def fake_batch(start: int, count: int, valid: int) -> dict:
    """A batch unit's result (as ``generate_batch`` returns it) with ``valid`` distinct
    records and the rest refused; no teacher, no shard."""
    keys = [[f"{band}:{start:08x}{i:08x}" for band in range(8)] for i in range(valid)]
    return {"start": start, "count": count, "shard": None, "drops": {"refusal": count - valid},
            "usage": {"completion_tokens": 10 * valid, "requests": count},
            "indices": list(range(start, start + valid)), "tokens": [10] * valid, "keys": keys}


class Calls:
    """Every marker read and every listing of a ``_markers/`` folder, by storage URL."""

    def __init__(self) -> None:
        self.reads: Counter[str] = Counter()
        self.listings: Counter[str] = Counter()

    def marker_reads(self) -> int:
        return sum(n for url, n in self.reads.items() if f"/{MARKERS}/" in url)

    def marker_listings(self) -> int:
        return sum(n for url, n in self.listings.items() if url.rstrip("/").endswith(MARKERS))

    def clear(self) -> None:
        self.reads.clear()
        self.listings.clear()


@pytest.fixture
def calls(monkeypatch) -> Calls:
    counted = Calls()
    for backend in (LocalStorage, S3Storage):
        def open_read(self, key, offset=0, _real=backend.open_read):
            counted.reads[self.url(key)] += 1
            return _real(self, key, offset)

        def listing(self, prefix="", _real=backend.list):
            counted.listings[f"{self.uri}/{prefix}"] += 1
            return _real(self, prefix)

        monkeypatch.setattr(backend, "open_read", open_read)
        monkeypatch.setattr(backend, "list", listing)
    return counted


def target_at(output: str) -> GenerationTarget:
    config = GenerateConfig()
    config.generation.batch_size = 2
    return GenerationTarget(kind="textbooks", count=8, output=output, config=config)


def finish(step: Step, valid: int) -> None:
    """Run the step's units as fake batches (the real ``run_unit`` writes their markers)."""
    for unit in step.job.units:
        args = {"start": unit.args["start"], "count": unit.args["count"], "valid": valid}
        run_unit(WorkUnit(unit.id, FAKE_BATCH, args), step.job.state_uri, step.job.name)


def two_rounds_done(output: str) -> Step:
    """Rounds 0 (one valid record per batch) and 1 (none) finished; returns round 2."""
    plan, target = GenerationPlanner(), target_at(output)
    for round_, valid in ((0, 1), (1, 0)):
        step = plan.next(target)
        assert step.job.name == f"generate-textbooks-round-{round_}"
        finish(step, valid)
    step = plan.next(target)
    assert step.job.name == "generate-textbooks-round-2"
    return step


def test_a_second_tick_reads_no_finished_round_marker_again(tmp_path, calls, monkeypatch):
    out = str(tmp_path / "gen")
    round2 = two_rounds_done(out)
    finished = len(list(open_storage(work_uri(out)).list(MARKERS + "/")))
    assert finished == 9  # 5 batches in round 0, 4 in round 1
    plan, target, markers = GenerationPlanner(), target_at(out), Markers()

    calls.clear()
    first = reconcile(plan, target, None, lambda job: len(job.units), markers)
    assert (first.job, first.sent) == (round2.job.name, len(round2.job.units))
    progress.unit_stats(out, markers)
    assert calls.marker_reads() == finished  # each finished marker read once, not twice
    assert calls.marker_listings() == 1  # the planner's listing is the progress reader's

    calls.clear()
    again = reconcile(plan, target, first.job, lambda job: 0, markers)
    stats = progress.unit_stats(out, markers)
    assert (again.job, again.sent, again.done) == (first.job, 0, 0)
    assert calls.marker_reads() == 0 and calls.marker_listings() == 1
    assert stats["units_done"] == finished and stats["tokens_generated"] == 5 * 10

    # A unit of round 2 finishes: the next tick reads that marker, and only that one.
    finish(Step(Job(round2.job.name, round2.job.units[:1], round2.job.state_uri)), 1)
    calls.clear()
    third = reconcile(plan, target, first.job, lambda job: 0, markers)
    stats = progress.unit_stats(out, markers)
    assert third.done == 1 and stats["units_done"] == finished + 1
    assert calls.marker_reads() == 1 and calls.marker_listings() == 1

    # The selection over the finished rounds (the CPU of a tick) was made on the first tick.
    selections = []
    monkeypatch.setattr(generation_plan, "select",
                        lambda results, n: selections.extend([results] if results else [])
                        or select(results, n))
    reconcile(plan, target, first.job, lambda job: 0, markers)
    assert selections == []

    # Without a kept memo (the CLI, a restarted door) every finished marker is read again.
    calls.clear()
    reconcile(plan, target, first.job, lambda job: 0)
    assert calls.marker_reads() == finished and len(selections) == 2  # one per round


def test_a_tick_keeps_whole_markers_only_within_its_budget(tmp_path, calls, monkeypatch):
    """Batch markers that outgrow ``TICK_BYTES`` (issue 16: they hold every record's keys)
    are read again by the tick's next reader instead of piling up in the door's memory;
    the plan and the progress are the same."""
    out = str(tmp_path / "gen")
    round2 = two_rounds_done(out)
    plan, target = GenerationPlanner(), target_at(out)
    roomy = Markers()
    reconcile(plan, target, None, lambda job: 0, roomy)
    expected = progress.unit_stats(out, roomy)

    monkeypatch.setattr(Markers, "TICK_BYTES", 0)
    markers = Markers()
    calls.clear()
    tick = reconcile(plan, target, None, lambda job: 0, markers)
    assert progress.unit_stats(out, markers) == expected and tick.job == round2.job.name
    # Round 0's 5 markers for its selection, all 9 for rounds 0-1's, 9 for the progress.
    assert calls.marker_reads() == 5 + 9 + 9 and calls.marker_listings() == 1
    assert markers._read == {}


def test_markers_deleted_under_a_run_are_not_trusted_from_the_memo(tmp_path, calls):
    """A user deletes the output and the run starts over: the memo kept for the run must
    plan from the new markers, exactly as a planner with no memo does."""
    out = str(tmp_path / "gen")
    two_rounds_done(out)
    plan, target, markers = GenerationPlanner(), target_at(out), Markers()
    reconcile(plan, target, None, lambda job: len(job.units), markers)

    shutil.rmtree(out)
    tick = reconcile(plan, target, "generate-textbooks-round-2", lambda job: len(job.units),
                     markers)
    assert (tick.job, tick.done, tick.sent) == ("generate-textbooks-round-0", 0, 5)

    # Round 0 runs again and its batches now yield 2 records each: enough to commit (the
    # results of before, one record each, would have asked for round 1).
    finish(plan.next(target), 2)
    calls.clear()
    tick = reconcile(plan, target, tick.job, lambda job: len(job.units), markers)
    assert calls.marker_reads() == 5  # the new markers, read anew
    fresh = plan.next(target)  # no memo: every marker read from storage
    assert tick.job == fresh.job.name == "generate-textbooks-commit"
    assert fresh.job.units[0].args["stop"] == 10 and tick.sent == 1


def test_the_operator_tick_lists_markers_once_and_reads_finished_ones_once(
        s3_bucket, redis_url, calls, monkeypatch):
    from operators.queue_runs import reconcile_run

    monkeypatch.setenv("PRIMER_REDIS_URL", redis_url)
    monkeypatch.setenv("PRIMER_GENERATION_QUEUE", f"gen-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("PRIMER_OPERATOR_ENDPOINTS", "http://teacher:8000/v1")
    out = f"s3://{s3_bucket}/gen"
    two_rounds_done(out)
    spec = {"kind": "textbooks", "count": 8, "batchSize": 2, "output": out,
            "teacher": {"url": "http://teacher:8000/v1", "model": "m"}}
    memo, status, uid = kopf.Memo(), {}, uuid.uuid4().hex

    def tick() -> dict:
        patch = kopf.Patch()
        reconcile_run(spec=spec, name="gen", namespace="ns", uid=uid,
                      status=status, patch=patch, memo=memo,
                      resource=SimpleNamespace(plural="generationruns"),
                      logger=logging.getLogger("test"))
        status.update(patch["status"])
        return status

    calls.clear()
    assert tick()["job"] == "generate-textbooks-round-2"
    assert calls.marker_listings() == 1 and calls.marker_reads() == 9
    markers = memo["markers"]
    calls.clear()
    assert tick()["units"] == {"done": 0, "total": 6}
    assert calls.marker_listings() == 1 and calls.marker_reads() == 0
    assert status["tokens"] == 5 * 10  # the progress reader summed the markers it kept
    assert memo["markers"] is markers

    # The commit unit finishes: the run ends, and its markers leave the operator's memory.
    run_unit(WorkUnit("commit", FAKE_BATCH, {"start": 0, "count": 2, "valid": 2}),
             work_uri(out))
    assert tick()["phase"] == "Succeeded" and "markers" not in memo


def test_the_gateway_keeps_a_runs_markers_while_it_runs_and_drops_them_when_it_ends(
        redis_url, tmp_path):
    from services.gateway.app import create_app
    from tests.services.gateway.conftest import gateway_config, own_db, serve
    from tests.services.gateway.test_api import http

    config = gateway_config(own_db(redis_url, 11), tmp_path)  # passes driven by hand below
    app = create_app(config)
    store, reconciler = app.state.store, app.state.runs.reconciler
    with serve(app) as url:
        status, run, _ = http("POST", f"{url}/v1/runs", {
            "component": "generation", "kind": "textbooks", "count": 3})
        assert status == 201, run
        reconciler.pass_once()
        kept = reconciler._markers[run["id"]]
        reconciler.pass_once()
        assert reconciler._markers[run["id"]] is kept  # one per run, across passes
        # The commit unit finishes: the run ends, and its memo goes with it.
        run_unit(WorkUnit("commit", FAKE_BATCH, {"start": 0, "count": 3, "valid": 3}),
                 work_uri(run["output"]))
        reconciler.pass_once()
        assert store.get(run["id"])["phase"] == "Succeeded"
        assert run["id"] not in reconciler._markers


def test_a_finished_curation_stage_is_read_once_per_run(tmp_path, calls):
    """Curation's planner reads the plan's and the threshold's results to build later stages:
    with a kept memo, once per run."""
    from services.curation.plan import CurationPlanner
    from tests.services.curation import corpus

    src = corpus.build(tmp_path / "corpus")
    plan = CurationPlanner()
    config = plan.resolve(CurationRun(input=str(src), output=str(tmp_path / "out")))
    config.reader.files_per_unit = 20
    first = plan.next(config)
    assert first.stage == "plan"
    for unit in first.job.units:
        run_unit(unit, first.job.state_uri, first.job.name)
    markers = Markers()
    calls.clear()
    assert plan.next(config, markers).stage == "read"
    assert calls.marker_reads() == 1  # the plan's result: the input's partitions
    calls.clear()
    assert plan.next(config, markers).stage == "read"
    assert calls.marker_reads() == 0
