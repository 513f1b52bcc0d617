"""Planted benchmark solutions (renamed) are flagged and pruned; unrelated code is kept."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from primer.benchmarks import load_benchmark
from primer.cli import build_app
from primer.datasets import (
    Producer,
    ShardInfo,
    commit_dataset,
    open_dataset,
    write_dataset,
    write_shard,
)
from primer.executor import LocalExecutor
from primer.summary import read_summary
from services.curation.decontaminate import (
    ContaminationIndex,
    DecontaminateCommandConfig,
    DecontaminationConfig,
    TokenAlphabet,
    ast_similarity,
    ast_tokens,
    code_units,
    decontaminate,
    length_window,
)

APP = build_app(plugins=[EntryPoint("decontaminate",
                                    "services.curation.decontaminate:decontaminate_command",
                                    "primer.commands")])

UNRELATED = [
    "def parse_config(path):\n    with open(path) as f:\n        data = json.load(f)\n"
    "    for key, value in data.items():\n        if key.startswith('_'):\n            continue\n"
    "        print(key, value)\n    return data\n",
    "# Chapter 3: loops\nA for loop repeats a block for each item of a sequence. Here we sum "
    "squares:\n```python\ndef sum_squares(n):\n    total = 0\n    for i in range(n):\n"
    "        total += i * i\n    return total\n```\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n"
    "        self.items.append(x)\n    def pop(self):\n        return self.items.pop()\n",
]


def renamed(code: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        code = code.replace(old, new)
    return code


def planted() -> list[str]:
    he = load_benchmark("humaneval").get("HumanEval/0")
    mbpp11 = load_benchmark("mbpp").get(11)
    mbpp22 = load_benchmark("mbpp").get(22)
    return [
        # the reference, identifiers renamed, docstring replaced: only the AST test sees it
        "from typing import List\n\ndef near(xs: List[float], eps: float) -> bool:\n"
        "    '''Any two closer than eps?'''\n"
        + renamed(he.reference, {"numbers": "xs", "threshold": "eps", "idx": "i",
                                 "elem": "v", "distance": "gap"}),
        # inside a textbook, renamed, in a fenced block
        "The first repeated item, with a set:\n```python\n"
        + renamed(mbpp22.reference, {"find_first_duplicate": "first_repeat", "nums": "xs",
                                     "num_set": "seen", "no_duplicate": "missing"})
        + "\n```\n",
        f"Exercise. {mbpp11.description} Use slicing.",  # the statement: the 13-gram test
    ]


def test_ast_tokens_ignore_names_and_docstrings_but_not_structure():
    a = ast_tokens(__import__("ast").parse("def f(x):\n    '''doc'''\n    return x + 1\n"))
    b = ast_tokens(__import__("ast").parse("def g(y):\n    return y + 1\n"))
    c = ast_tokens(__import__("ast").parse("def g(y):\n    return y - 1\n"))
    assert a == b and a != c
    assert ast_similarity("kitten", "sitting", 0.5) == 1 - 3 / 7
    assert ast_similarity("kitten", "sitting", 0.8) is None
    assert ast_similarity(list(range(100)), [*range(99), -1], 0.95) == 0.99
    assert ast_similarity(list(range(100)), list(range(90)), 0.95) is None


def levenshtein(a, b) -> int:
    """The textbook dynamic programme: the oracle the compiled distance must agree with."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_compiled_similarity_and_length_index_agree_with_the_plain_definition():
    # Real AST sequences: every benchmark reference against lightly edited copies of others.
    seqs = [u for p in list(load_benchmark("humaneval").problems.values())[:16]
            for u in code_units(p.solution_text) if len(u) >= 24]
    alphabet = TokenAlphabet()
    edited = [s[:len(s) // 2] + ["Pass"] + s[len(s) // 2 + 1:] for s in seqs[::3]]
    checked = hits = 0
    for tau in (0.95, 0.8):
        for a in seqs[:12] + edited:
            for b in seqs:
                longest = max(len(a), len(b))
                plain = 1 - levenshtein(a, b) / longest
                want = plain if plain >= tau else None
                got = ast_similarity(alphabet.encode(a), alphabet.encode(b), tau)
                assert got == want or abs(got - want) < 1e-12, (tau, a[:5], b[:5])
                lo, hi = length_window(len(a), tau)
                if want is not None:  # the index's window never hides a real match
                    assert lo <= len(b) <= hi
                    hits += 1
                checked += 1
    assert checked > 500 and hits > len(seqs)


def test_index_flags_planted_solutions_and_not_unrelated_code():
    problems = [*load_benchmark("humaneval").problems.values(),
                *load_benchmark("mbpp").problems.values()]
    index = ContaminationIndex(problems, DecontaminationConfig(methods=["ngram", "ast"]))
    found = index.match(planted() + UNRELATED)
    assert [m.method for m in found[0]] == ["ast"] and found[0][0].task_id == "HumanEval/0"
    assert found[0][0].score >= 0.95
    assert {(m.method, m.task_id) for m in found[1]} == {("ast", "MBPP/22")}
    assert ("ngram", "MBPP/11") in {(m.method, m.task_id) for m in found[2]}
    assert found[3:] == [[], [], []]


@pytest.mark.slow
def test_embedding_test_with_minilm():
    he = load_benchmark("humaneval")
    problems = [he.get(f"HumanEval/{i}") for i in range(8)]
    index = ContaminationIndex(problems, DecontaminationConfig(methods=["embedding"]))
    found = index.match([problems[3].solution_text, *UNRELATED])
    assert [(m.method, m.task_id) for m in found[0]] == [("embedding", "HumanEval/3")]
    assert found[0][0].score > 0.99 and found[1:] == [[], [], []]


def test_cli_filter_mode_writes_the_pruned_dataset_with_reason_counts(tmp_path):
    rows = [{"id": f"p{i}", "text": t} for i, t in enumerate(planted())]
    rows += [{"id": f"u{i}", "text": t} for i, t in enumerate(UNRELATED)]
    write_dataset(str(tmp_path / "in"), rows, Producer("test"))
    result = CliRunner().invoke(APP, [
        "decontaminate", "--input", str(tmp_path / "in"), "--against", "humaneval,mbpp",
        "--tau", "0.9", "--output", str(tmp_path / "out"),
        "--decontaminate.methods=[ngram,ast]"])
    assert result.exit_code == 0, result.output
    out = open_dataset(str(tmp_path / "out"))
    assert [r["id"] for r in out] == ["u0", "u1", "u2"]
    manifest = out.manifest
    assert manifest.drop_counts == {"contaminated_ast": 2, "contaminated_ngram": 1}
    assert manifest.metadata["tau"] == 0.9
    report = [json.loads(x) for x in
              (tmp_path / "out/_decontamination.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report] == ["p0", "p1", "p2"]
    assert all(m["score"] > 0 for r in report for m in r["matches"])
    assert "3 of 6 rows match" in result.output


@pytest.mark.slow
def test_units_split_rows_and_give_the_findings_of_one_pass(tmp_path):
    # Two shards, three rows a unit: five units; kept rows, counts and report equal the
    # single-unit run, with rows numbered across the whole dataset.
    rows = [{"id": f"p{i}", "text": t} for i, t in enumerate(planted())]
    rows += [{"id": f"u{i}", "text": t} for i, t in enumerate(UNRELATED)]
    rows += [{"id": f"x{i}", "text": f"x = {i}\n"} for i in range(3)]
    src = tmp_path / "in"
    shards = [write_shard(str(src), "part-00000.parquet", rows[:4]),
              write_shard(str(src), "part-00001.parquet", rows[4:])]
    commit_dataset(str(src), [ShardInfo(**s.__dict__) for s in shards], Producer("test"))

    def run(rows_per_unit: int, out: str) -> dict:
        cfg = DecontaminateCommandConfig.model_validate(
            {"decontaminate": {"methods": ["ngram", "ast"], "tau": 0.9,
                               "rows_per_unit": rows_per_unit}})
        return decontaminate(str(src), ["humaneval", "mbpp"], cfg, str(tmp_path / out),
                             executor=LocalExecutor(workers=2))

    split, whole = run(3, "split"), run(100, "whole")
    assert (split["units"], whole["units"]) == (4, 2)
    assert split["drop_counts"] == whole["drop_counts"] == {"contaminated_ast": 2,
                                                             "contaminated_ngram": 1}
    assert [m["row"] for m in split["matches"]] == [0, 1, 2]
    assert split["matches"] == whole["matches"]
    ids = [[r["id"] for r in open_dataset(str(tmp_path / d))] for d in ("split", "whole")]
    assert ids[0] == ids[1] == ["u0", "u1", "u2", "x0", "x1", "x2"]
    summary = read_summary(str(tmp_path / "split"))  # what the demo report reads
    assert (summary.stage, summary.rows, summary.facts["checked"]) == ("decontaminate", 6, 9)
    assert summary.drop_counts == split["drop_counts"]
    assert sum(summary.facts["tasks"].values()) == sum(len(m["matches"])
                                                       for m in split["matches"])
    # a rerun skips every finished unit and publishes the same dataset
    again = run(3, "split")
    assert again["matches"] == split["matches"]
