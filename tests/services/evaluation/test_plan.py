"""The evaluation planner: one unit per benchmark, found by run kind like the others; its
units write what ``primer eval run`` writes for the same config."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from primer.executor import LocalExecutor
from primer.executor.plan import Done, Step, drive, planner
from primer.runs import EvaluationRun
from services.evaluation.config import EvalConfig
from services.evaluation.plan import EvaluationTarget
from services.evaluation.run import local_model
from tests.services.evaluation.tiny_model import save_tiny_model

APP = build_app(plugins=[EntryPoint("eval", "services.evaluation.cli:app", "primer.commands")])


def test_a_spec_is_one_unit_per_benchmark_with_the_resolved_config(monkeypatch, local_s3):
    monkeypatch.setenv("PRIMER_GENERATION__MAX_NEW_TOKENS", "24")  # a worker's config layer
    plan = planner("evaluation")
    target = plan.resolve(EvaluationRun(checkpoint="s3://bkt/models/phi", output="s3://bkt/out",
                                        samples=5))
    assert target.config.generation.n_samples == 5
    assert target.config.generation.max_new_tokens == 24
    assert target.config.sandbox == EvalConfig().sandbox  # the worker's defaults, not a run's
    step = plan.next(target)
    assert isinstance(step, Step) and (step.job.name, step.stage) == ("evaluate", "evaluate")
    assert step.job.state_uri == "s3://bkt/out/_work"
    units = {u.id: u for u in step.job.units}
    assert sorted(units) == ["evaluate-humaneval", "evaluate-mbpp"]
    args = units["evaluate-mbpp"].args
    assert (args["model"], args["benchmark"], args["output"]) == (
        "s3://bkt/models/phi", "mbpp", "s3://bkt/out/mbpp")
    assert EvalConfig.model_validate(args["config"]) == target.config


@pytest.fixture
def local_s3(monkeypatch, tmp_path):
    """A target on s3:// is only planned here (no unit runs): its markers are listed on a
    local stand-in, so planning needs no S3 server."""
    import services.evaluation.plan as plan_module

    real = plan_module.open_storage
    monkeypatch.setattr(plan_module, "open_storage", lambda uri: real(
        str(tmp_path / "s3" / uri.removeprefix("s3://")) if uri.startswith("s3://") else uri))


@pytest.mark.slow
def test_units_write_what_eval_run_writes_and_a_finished_run_runs_nothing(tmp_path):
    model = str(save_tiny_model(tmp_path / "model"))
    config = EvalConfig.model_validate({"limit": 3, "workers": 2,
                                        "generation": {"max_new_tokens": 6}})
    target = EvaluationTarget(model=model, benchmarks=["humaneval", "mbpp"],
                              output=str(tmp_path / "planned"), config=config)
    plan = planner("evaluation")
    result = drive(plan, target, LocalExecutor(2), progress=False)
    assert sorted(result) == ["humaneval", "mbpp"]
    assert result["mbpp"]["n_problems"] == 3 and "per_task" not in result["mbpp"]

    cli = CliRunner().invoke(APP, [
        "eval", "run", "--model", model, "--benchmark", "humaneval,mbpp", "--output",
        str(tmp_path / "cli"), "--generation.max_new_tokens=6", "--limit=3", "--workers=2"])
    assert cli.exit_code == 0, cli.output
    for bench in ("humaneval", "mbpp"):
        planned, direct = tmp_path / "planned" / bench, tmp_path / "cli" / bench
        assert (planned / "samples.jsonl").read_bytes() == (direct / "samples.jsonl").read_bytes()
        assert json.loads((planned / "summary.json").read_text())["pass@1"] == \
            json.loads((direct / "summary.json").read_text())["pass@1"]
        assert result[bench]["n_samples"] == 3
    again = plan.next(target)
    assert isinstance(again, Done) and again.result == result


def test_a_folder_that_is_not_an_exported_model_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trainer.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="no config.json; an evaluation loads an "
                                                "exported model folder"):
        local_model(f"file://{tmp_path / 'run'}", str(tmp_path / "dl"))
    assert not Path(tmp_path / "dl").exists()
