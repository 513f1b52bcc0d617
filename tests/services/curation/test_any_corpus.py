"""Any corpus of one file or more curates (issue 12): labels relative to the corpus, a
fallback to the annotator's own scores when no classifier can be trained, and counts that
add up (kept + dropped per reason = read)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from primer.datasets import open_dataset
from services.curation import calibrate
from services.curation.annotate import assign_labels, heuristic_score, relative_labels
from services.curation.classify import untrainable
from services.curation.config import AnnotateConfig
from tests.openai_server import OpenAIServer
from tests.services.curation import corpus

CURATE = importlib.metadata.EntryPoint(name="curate", value="services.curation.cli:curate",
                                       group="primer.commands")
FAST = ["--workers", "1", "--classify.n_estimators=30", "--classify.max_tokens=64"]


def _curate(*args: str) -> str:
    res = CliRunner().invoke(build_app(plugins=[CURATE]), ["curate", *args],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _report(out: Path) -> dict:
    return json.loads((out / "_report" / "report.json").read_text())


def _assert_counts_add_up(out: Path, n_files: int) -> dict:
    report, manifest = _report(out), open_dataset(str(out)).manifest
    assert report["files_seen"] == n_files
    assert manifest.rows + sum(manifest.drop_counts.values()) == n_files, \
        (manifest.rows, manifest.drop_counts)
    assert report["kept"] == manifest.rows == len(open_dataset(str(out)).to_table(["id"]))
    return report


@pytest.mark.slow
def test_a_repository_whose_annotations_are_all_one_class_curates_with_keep_top_1(tmp_path):
    """The issue's reproduction: 175 real files (stdlib modules, copies, junk) that the old
    heuristic called all educational; `--keep-top 1.0` exited 1 with `cannot train the
    classifier: … positive and 0 negative`."""
    repo = corpus.user_repo(tmp_path, 175, start="distutils/")
    out = tmp_path / "curated"
    _curate("--input", str(repo), "--output", str(out), "--annotator", "heuristic",
            "--keep-top", "1.0", *FAST)
    report = _assert_counts_add_up(out, 175)
    drops = report["drop_counts"]
    survivors = report["after_filters"] - drops["exact_dup"] - drops["near_dup"]
    assert drops["edu_score_below"] == 0 and report["kept"] == survivors > 80
    assert drops["exact_dup"] > 0 and sum(drops.values()) > drops["exact_dup"]


def _judge(body: dict) -> str:
    """A deterministic LLM judge: one point per textbook trait of the code it is shown."""
    code = body["messages"][-1]["content"]
    traits = ('"""' in code, "\n    # " in code or "\n# " in code, "def " in code,
              len(code) < 4000)
    return f"Score: {1 + sum(traits)}"


@pytest.fixture(scope="module")
def teacher():
    with OpenAIServer(_judge, fail_rate=0.05, faults=("500", "429"), seed=1) as server:
        yield server


def _annotator_args(annotator: str, server: OpenAIServer) -> list[str]:
    if annotator == "heuristic":
        return ["--annotator", "heuristic"]
    return ["--annotator", "teacher", f"--annotate.teacher.url={server.base_url}",
            f"--annotate.teacher.model={server.model}", "--annotate.teacher.backoff_base_s=0.01"]


@pytest.mark.parametrize("annotator", ["heuristic", "teacher"])
@pytest.mark.parametrize("n", [1, *(pytest.param(n, marks=pytest.mark.slow) for n in (5, 50, 500))])
def test_any_number_of_real_files_curates_with_each_annotator(n, annotator, teacher, tmp_path):
    repo = corpus.user_repo(tmp_path, n, start="json/")
    out = tmp_path / "curated"
    _curate("--input", str(repo), "--output", str(out), *_annotator_args(annotator, teacher),
            *FAST)
    report = _assert_counts_add_up(out, n)
    manifest = open_dataset(str(out)).manifest
    assert manifest.metadata["classifier"] == report["classifier"]
    assert report["annotations"]["annotator"].startswith(
        "heuristic" if annotator == "heuristic" else "teacher:")
    status = report["classifier"]["status"]
    assert status == ("fallback" if n < 50 else "trained"), report["classifier"]
    if status == "fallback":
        assert report["classifier"]["reason"].startswith("cannot train the classifier: ")
    scores = open_dataset(str(out)).to_table(["edu_score"]).column("edu_score").to_pylist()
    assert all(0 <= s <= 1 for s in scores) and min(scores, default=1) >= 0.5


@pytest.mark.slow
def test_a_judge_that_scores_every_file_the_same_falls_back_and_scores_the_rest(tmp_path):
    """One class in the sample: no classifier; the files outside the sample are scored by
    the judge itself, and with --keep-top 1.0 every survivor is kept."""
    repo = corpus.user_repo(tmp_path, 30, start="json/")
    out = tmp_path / "curated"
    with OpenAIServer(lambda body: "Score: 3") as server:
        _curate("--input", str(repo), "--output", str(out), "--keep-top", "1.0",
                "--annotate.sample_size=6", *_annotator_args("teacher", server), *FAST)
        asked = server.answered
    report = _assert_counts_add_up(out, 30)
    clf, ann = report["classifier"], report["annotations"]
    assert clf["status"] == "fallback" and "same score" in ann["label_rule"]
    survivors = report["kept"]
    assert ann["sampled"] == 6 and clf["annotator_scored"] == survivors - 6 > 0
    assert clf["unscored"] == 0 and asked == survivors
    assert report["drop_counts"]["edu_score_below"] == 0
    scores = open_dataset(str(out)).to_table(["edu_score"]).column("edu_score").to_pylist()
    assert set(scores) == {0.5}
    assert "fallback" in (out / "_report" / "report.md").read_text()


def test_a_corpus_of_one_junk_file_curates_to_an_empty_dataset(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "short.py").write_text("x = 1\n")
    out = tmp_path / "curated"
    output = _curate("--input", str(repo), "--output", str(out), *FAST)
    report = _assert_counts_add_up(out, 1)
    assert report["kept"] == 0 and report["drop_counts"]["too_short"] == 1
    assert report["classifier"] == {"status": "fallback", "reason": "cannot train the "
                                    "classifier: 0 annotations, fewer than 8",
                                    "edu_score": "the heuristic annotator's own score",
                                    "annotator_scored": 0, "unscored": 0}
    assert "fallback" in output


# -- labels, trainability, calibration ------------------------------------------------------

def test_relative_labels_take_the_top_fraction_and_keep_ties_together():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert relative_labels(scores, 0.25) == ([0, 0, 0, 0, 0, 0, 1, 1], 0.7)
    # a judge's 1..5 scale: ties share a label, the cut as near the fraction as they allow
    five = [0.0] * 5 + [0.5] * 10 + [0.75] * 3 + [1.0] * 2
    labels, cut = relative_labels(five, 0.25)
    assert cut == 0.75 and sum(labels) == 5
    labels, cut = relative_labels(five, 0.9)
    assert cut == 0.5 and sum(labels) == 15  # never everyone: the lowest score stays 0
    assert relative_labels([0.5] * 4, 0.25) == ([0, 0, 0, 0], None)
    assert relative_labels([], 0.25) == ([], None)


def test_labels_follow_the_rule_and_fall_back_to_the_annotators_own_cut():
    def annotations(scores):
        return [{"label": -1, "score": s, "annotator": "t"} for s in scores]

    ann = annotations([0.2, 0.4, 0.6, 0.8])
    facts = assign_labels(ann, AnnotateConfig(positive_fraction=0.5))
    assert [a["label"] for a in ann] == [0, 0, 1, 1] and facts["positive"] == 2
    assert facts["annotator_positive"] == 2 and "top 0.5" in facts["label_rule"]
    ann = annotations([0.75] * 3)
    facts = assign_labels(ann, AnnotateConfig())
    assert [a["label"] for a in ann] == [1, 1, 1] and "same score" in facts["label_rule"]
    ann = annotations([0.2, 0.4, 0.6, 0.8])
    facts = assign_labels(ann, AnnotateConfig(positive_fraction=None, positive_score=0.3))
    assert [a["label"] for a in ann] == [0, 1, 1, 1] and facts["label_rule"] == "score >= 0.3"


def test_untrainable_says_what_is_missing():
    assert untrainable([1, 0] * 4, 0.25) is None
    assert untrainable([1, 0] * 3, 0.25) == "6 annotations, fewer than 8"
    assert untrainable([1] * 117, 0.25) == \
        "117 positive and 0 negative annotations, fewer than 2 of each label"
    assert "cannot hold out 0.9" in untrainable([1, 0] * 5, 0.9)


@pytest.mark.slow
def test_the_heuristic_calls_about_a_quarter_of_real_code_educational():
    """The documented calibration (annotate.py): ~25% of the standard library's modules
    outside tests reach the default positive_score; measured on every third one."""
    rate, scored = calibrate.positive_rate(calibrate.stdlib_modules()[::3])
    assert scored > 150 and 0.15 <= rate <= 0.35, (rate, scored)
    assert heuristic_score('"""Add two numbers."""\n\n\ndef add(first, second):\n'
                           '    """Return their sum."""\n    # plain addition\n'
                           '    return first + second\n') > 0.8
