"""Benchmarks load with the documented sizes, ids and prompt formats."""

from __future__ import annotations

import gzip
import json

import pytest

from primer.benchmarks import (
    PACKAGED_MBPP,
    BenchmarkConfig,
    BenchmarkError,
    default_mbpp_path,
    load_benchmark,
    parse_benchmarks,
)


def test_humaneval_has_164_problems_with_runnable_programs():
    he = load_benchmark("humaneval")
    assert len(he) == 164
    p = he.get("HumanEval/0")
    assert p.prompt.startswith("from typing import List") and p.entry_point
    program = p.program(p.reference)
    assert program.startswith(p.prompt) and program.rstrip().endswith(f"check({p.entry_point})")


def test_mbpp_test_split_is_task_ids_11_to_510_in_the_harness_prompt_format():
    mbpp = load_benchmark("mbpp")
    ids = [int(t.split("/")[1]) for t in mbpp.problems]
    assert ids == list(range(11, 511))
    p = mbpp.get(11)  # ints are accepted, as other tools write them
    assert p is mbpp.get("MBPP/11")
    assert p.prompt == ('"""\nWrite a python function to remove first and last occurrence of a '
                        'given character from the string.\nassert remove_Occ("hello","l") == '
                        '"heo"\n"""\n')
    assert p.test.count("assert ") == 3


def test_prompt_format_and_split_are_configurable():
    cfg = BenchmarkConfig(mbpp_prompt="# {text}\n", mbpp_split="validation")
    mbpp = load_benchmark("mbpp", cfg)
    assert len(mbpp) == 90 and mbpp.get(511).prompt.startswith("# ")
    assert len(load_benchmark("mbpp", BenchmarkConfig(mbpp_variant="sanitized",
                                                      mbpp_split="all"))) == 427


def test_mbpp_path_from_the_environment_and_bad_lines_are_named(tmp_path, monkeypatch):
    row = {"task_id": 12, "text": "t", "code": "def f():\n    return 1",
           "test_list": ["assert f() == 1"] * 3, "test_setup_code": "",
           "challenge_test_list": []}
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("PRIMER_MBPP_PATH", str(path))
    assert list(load_benchmark("mbpp").problems) == ["MBPP/12"]
    path.write_text(json.dumps(row) + "\n{oops\n")
    with pytest.raises(BenchmarkError, match=r"mbpp.jsonl:2: not valid JSON"):
        load_benchmark("mbpp")


def test_unknown_names_and_task_ids_are_clear_errors():
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        parse_benchmarks("humaneval,apps")
    assert parse_benchmarks(" HumanEval , mbpp") == ["humaneval", "mbpp"]
    with pytest.raises(BenchmarkError, match="unknown task_id 'HumanEval/999'"):
        load_benchmark("humaneval").get("HumanEval/999")


def test_mbpp_ships_with_primer_and_loads_offline(monkeypatch):
    # A user's clone has no sibling data folder and may have no network: the packaged copy.
    monkeypatch.delenv("PRIMER_MBPP_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert default_mbpp_path("full") == PACKAGED_MBPP / "mbpp.jsonl.gz"
    full = load_benchmark("mbpp", BenchmarkConfig(mbpp_split="all"))
    sanitized = load_benchmark("mbpp", BenchmarkConfig(mbpp_variant="sanitized",
                                                       mbpp_split="all"))
    assert (len(full), len(sanitized)) == (974, 427)
    assert "CC BY 4.0" in (PACKAGED_MBPP / "README.md").read_text()


def test_a_damaged_packaged_copy_is_refused_by_its_sha256(tmp_path, monkeypatch):
    data = gzip.decompress((PACKAGED_MBPP / "mbpp.jsonl.gz").read_bytes())
    damaged = tmp_path / "mbpp.jsonl.gz"
    damaged.write_bytes(gzip.compress(data.replace(b"remove_Occ", b"remove_OCC", 1)))
    monkeypatch.setenv("PRIMER_MBPP_PATH", str(tmp_path))
    with pytest.raises(BenchmarkError, match=r"mbpp.jsonl.gz: sha256 [0-9a-f]{64} is not "):
        load_benchmark("mbpp")


@pytest.mark.slow
def test_the_hub_is_read_only_when_asked_for_by_name(monkeypatch):
    monkeypatch.delenv("PRIMER_MBPP_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_benchmark("mbpp")  # the default never touches the network
    with pytest.raises(Exception, match="(?i)offline|hub|connect"):
        load_benchmark("mbpp", BenchmarkConfig(mbpp_path="hf:google-research-datasets/mbpp"))
