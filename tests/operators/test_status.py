"""How a run ends in its status: one plain message, a Failed condition, the rest in the
traceback (pure: a kopf patch in, the status it would write out)."""

from __future__ import annotations

import kopf

from operators.evaluation import job_failure
from operators.status import finish, set_condition
from primer.errors import MESSAGE_LIMIT
from tests.operators.test_crds import validator
from tests.plain import assert_plain


def test_a_long_coloured_message_is_one_line_and_kept_whole_in_the_traceback():
    patch = kopf.Patch()
    message = "\x1b[31mOOMKilled\x1b[0m in pod tr1-worker-0\n" + "dmesg: " + "x" * 2000
    finish(patch, "Failed", message, reason="PyTorchJobFailed")
    status = patch["status"]
    assert status["message"] == "OOMKilled in pod tr1-worker-0"
    assert status["traceback"].endswith("x" * 2000) and "dmesg" in status["traceback"]
    assert_plain(status["traceback"])
    (failed,) = status["conditions"]
    assert failed["type"] == "Failed" and failed["status"] == "True"
    assert failed["reason"] == "PyTorchJobFailed" and failed["message"] == status["message"]
    run = {"apiVersion": "primer.dev/v1alpha1", "kind": "TrainingRun",
           "metadata": {"name": "tr1"}, "spec": {"data": "s3://bkt/d", "output": "s3://bkt/o"},
           "status": dict(status)}
    validator("TrainingRun").validate(run)

    patch = kopf.Patch()
    finish(patch, "Failed", "y" * 1000)
    assert len(patch["status"]["message"]) == MESSAGE_LIMIT
    assert patch["status"]["traceback"] == "y" * 1000  # nothing is lost to the cut


def test_the_failed_condition_joins_the_conditions_already_there():
    patch = kopf.Patch()
    mirrored = [{"type": "Created", "status": "True"},
                {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed",
                 "message": "pod failed", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    patch.status["conditions"] = mirrored  # what the TrainingRun timer copies from its job
    finish(patch, "Failed", "pod failed", reason="PyTorchJobFailed")
    created, failed = patch["status"]["conditions"]
    assert created == {"type": "Created", "status": "True"}
    assert failed["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # not a new transition
    assert "traceback" not in patch["status"]  # a short message needs none

    # from the status read, when this patch sets none; a succeeded run gets no Failed
    waiting = [{"type": "Waiting", "status": "True", "reason": "NoConsumer", "message": "m"}]
    patch = kopf.Patch()
    finish(patch, "Failed", "boom", reason="UnitFailed", status={"conditions": waiting})
    assert [c["type"] for c in patch["status"]["conditions"]] == ["Waiting", "Failed"]
    patch = kopf.Patch()
    finish(patch, "Succeeded", "done: rows 3")
    assert "conditions" not in patch["status"] and patch["status"]["phase"] == "Succeeded"
    changed = set_condition(waiting, "Waiting", "False", "Consumed", "a worker took it")
    assert changed[0]["status"] == "False" and changed[0]["lastTransitionTime"]


def test_a_failed_evaluation_job_says_what_kubernetes_said():
    job = {"status": {"conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}}
    assert job_failure(job) == ("BackoffLimitExceeded", "evaluation Job failed: "
                                "BackoffLimitExceeded: Job has reached the specified backoff "
                                "limit")
    assert job_failure({"status": {}}) == ("JobFailed", "evaluation Job failed")
