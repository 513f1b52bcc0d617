"""What the TrainingRun timer reads and decides: the latest committed checkpoint, and which
checkpoint gets an EvaluationRun (pure functions; a local folder stands in for S3)."""

from __future__ import annotations

from operators.training import evaluation_run_for, latest_checkpoint, steps_to_evaluate
from primer.runs import TrainingRun
from tests.operators.test_crds import validator


def test_latest_checkpoint_needs_the_committed_marker(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert latest_checkpoint(str(tmp_path)) is None
    (ckpts / "step-2000").mkdir(parents=True)
    (ckpts / "latest").write_text("step-2000\n")
    assert latest_checkpoint(str(tmp_path)) is None  # torn: no COMMITTED yet
    (ckpts / "step-2000" / "COMMITTED").write_text("{}")
    assert latest_checkpoint(str(tmp_path)) == 2000


def test_evaluate_every_creates_one_valid_evaluationrun_per_new_checkpoint():
    assert steps_to_evaluate(4000, 2000, [2000]) == [4000]
    assert steps_to_evaluate(4000, 2000, [2000, 4000]) == []
    assert steps_to_evaluate(3000, 2000, []) == []
    spec = TrainingRun(data="s3://bkt/d", output="s3://bkt/runs/r1", evaluateEvery=2000)
    run = evaluation_run_for(spec, "r1", "primer", 4000)
    assert not list(validator("EvaluationRun").iter_errors(run))
    assert run["spec"]["checkpoint"] == "s3://bkt/runs/r1/checkpoints/step-4000"
