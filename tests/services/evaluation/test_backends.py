"""Completion backends: a tiny random phi model in-process, and an OpenAI-compatible server."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from primer.benchmarks import Benchmark, load_benchmark
from primer.cli import build_app
from primer.summary import read_summary
from primer.teacher import ResponseCache, TeacherError, TextRequest
from services.evaluation.backends import (
    OpenAIBackend,
    TransformersBackend,
    generate_samples,
    truncate_at_stop,
)
from services.evaluation.config import GenerationConfig
from tests.services.evaluation.openai_server import OpenAIServer
from tests.services.evaluation.tiny_model import save_tiny_model

APP = build_app(plugins=[EntryPoint("eval", "services.evaluation.cli:app", "primer.commands")])


def test_truncate_at_the_earliest_stop():
    assert truncate_at_stop("    return x\n#c\ndef g", ["\ndef ", "\n#"]) == "    return x"
    assert truncate_at_stop("abc", ["\n"]) == "abc"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-phi")))


@pytest.mark.slow
def test_transformers_backend_greedy_sampled_and_stops(tiny_model):
    he = load_benchmark("humaneval")
    prompts = [p.prompt for p in list(he.problems.values())[:3]]
    greedy = TransformersBackend(tiny_model, GenerationConfig(max_new_tokens=12, batch_size=2))
    a = greedy.complete(prompts, ["\n#"], n=1)
    assert [len(x) for x in a] == [1, 1, 1] and a == greedy.complete(prompts, ["\n#"], n=1)
    sampled = TransformersBackend(tiny_model, GenerationConfig(
        max_new_tokens=12, batch_size=2, temperature=1.0, top_p=1.0))
    b = sampled.complete(prompts, ["\n#"], n=4)
    assert [len(x) for x in b] == [4, 4, 4] and len({*b[0], *b[1], *b[2]}) > 1
    # a stop that the random model emits all the time: everything after it is cut
    cut = greedy.complete(prompts, ["a", "e", "i", "o", "u", " "], n=1)
    assert all(not any(c in s for c in "aeiou ") for x in cut for s in x)


@pytest.mark.slow
def test_eval_run_generates_then_scores(tiny_model, tmp_path):
    result = CliRunner().invoke(APP, [
        "eval", "run", "--model", tiny_model, "--benchmark", "humaneval", "--output",
        str(tmp_path / "out"), "--generation.max_new_tokens=4", "--generation.batch_size=32",
        "--workers=2"])
    assert result.exit_code == 0, result.output
    samples = (tmp_path / "out/humaneval/samples.jsonl").read_text().splitlines()
    assert len(samples) == 164 and set(json.loads(samples[0])) == {"task_id", "completion"}
    summary = json.loads((tmp_path / "out/humaneval/summary.json").read_text())
    assert summary["n_samples"] == 164 and summary["pass@1"] == 0.0  # random weights


def test_openai_backend_retries_429_and_500_and_returns_n_samples():
    he = load_benchmark("humaneval")
    bench = Benchmark("humaneval", dict(list(he.problems.items())[:5]))
    with OpenAIServer() as server:
        server.fail = [500, 429]
        backend = OpenAIBackend("tiny", GenerationConfig(
            api_base=server.url, concurrency=2, retries=3, temperature=0.8, n_samples=3))
        samples = generate_samples(backend, bench, n=3)
    assert len(samples) == 15 and all(s["completion"] == "    return 1" for s in samples)
    assert len(server.requests) == 7  # 5 prompts + 2 retried failures
    assert {r["path"] for r in server.requests} == {"/v1/completions"}
    assert all(r["n"] == 3 and r["temperature"] == 0.8 and r["stop"] for r in server.requests)


def test_openai_backend_gives_up_after_its_retries():
    with OpenAIServer() as server:
        server.fail = [500] * 5
        backend = OpenAIBackend("tiny", GenerationConfig(api_base=server.url, retries=1))
        with pytest.raises(TeacherError, match="gave up after 2 attempts; last error: HTTP 500"):
            backend.complete(["x"], ["\n"], 1)
    assert len(server.requests) == 2


def test_openai_backend_is_the_teacher_client_with_its_cache(tmp_path):
    """The API backend is primer.teacher's client, not an HTTP client of its own: with a cache
    a rerun asks the endpoint nothing, and the cache holds the teacher's entries."""
    he = load_benchmark("humaneval")
    bench = Benchmark("humaneval", dict(list(he.problems.items())[:4]))
    with OpenAIServer() as server:
        config = GenerationConfig(api_base=server.url, temperature=0.8, n_samples=2,
                                  cache_uri=str(tmp_path / "cache"))
        first = generate_samples(OpenAIBackend("tiny", config), bench, n=2)
        assert len(server.requests) == 4
        again = generate_samples(OpenAIBackend("tiny", config), bench, n=2)
        assert len(server.requests) == 4  # all four answered from the cache
    assert again == first and {s["completion"] for s in first} == {"    return 1"}
    request = TextRequest(bench.problems["HumanEval/0"].prompt, 0.8, 384, 1234, 0.95,
                          tuple(bench.problems["HumanEval/0"].stop)[:4], 2)
    entry = ResponseCache(str(tmp_path / "cache")).get(request.key("tiny"))
    assert entry is not None and entry["choices"] == ["    return 1\n# index 0",
                                                       "    return 1\n# index 1"]


@pytest.mark.slow
def test_eval_run_with_a_limit_and_reference_nll(tiny_model, tmp_path):
    """--limit keeps the first N problems (the demo's quick subset); `eval nll` writes the
    per-token NLL of the reference solutions; a missing model folder is a clear error."""
    out = tmp_path / "out"
    result = CliRunner().invoke(APP, [
        "eval", "run", "--model", tiny_model, "--benchmark", "mbpp", "--output", str(out),
        "--generation.max_new_tokens=4", "--limit=3", "--workers=2"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "mbpp/summary.json").read_text())
    assert summary["n_problems"] == 3 and sorted(summary["per_task"]) == [
        "MBPP/11", "MBPP/12", "MBPP/13"]

    result = CliRunner().invoke(APP, ["eval", "nll", "--model", tiny_model, "--benchmark",
                                      "humaneval", "--output", str(out), "--limit=4"])
    assert result.exit_code == 0, result.output
    nll = json.loads((out / "humaneval/nll.json").read_text())
    assert nll["n_problems"] == 4 and len(nll["per_task"]) == 4
    assert nll["tokens"] > 0 and 0 < nll["nll_per_token"] < 20
    typed = read_summary(str(out / "humaneval"))  # what the demo report reads
    assert (typed.stage, typed.rows, typed.facts["nll_per_token"]) == (
        "nll/humaneval", 4, nll["nll_per_token"]) and "per_task" not in typed.facts
    run_summary = read_summary(str(out / "mbpp"))
    assert (run_summary.stage, run_summary.rows) == ("eval/mbpp", 3)
    assert run_summary.facts["pass@1"] == summary["pass@1"]
    missing = CliRunner().invoke(APP, ["eval", "nll", "--model", str(tmp_path / "nope"),
                                       "--benchmark", "humaneval", "--output", str(out)])
    assert missing.exit_code == 2 and "not a checkpoint folder" in missing.output
