"""`primer demo --quick` through the real console script: every stage's output, the report's
contents, and a rerun that resumes instead of starting over."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from primer.datasets import open_dataset, read_manifest

PRIMER = str(Path(sys.executable).parent / "primer")


def run_demo(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PRIMER, "demo", "--quick", "--workers", "2",
                           f"--storage.root={root}", *extra], capture_output=True, text=True,
                          timeout=420)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    first = run_demo(root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return root, root / "runs" / "demo", first


def test_every_stage_writes_its_dataset_or_checkpoint(demo):
    _, run, _ = demo
    src = read_manifest(str(run / "sources"))
    assert src.producer.step == "read_sources"
    assert src.rows + sum(src.drop_counts.values()) == 240  # every file is kept or counted
    rows = list(open_dataset(run / "sources"))
    assert all(r["lang"] == "python" and r["n_chars"] == len(r["text"]) for r in rows)

    cur = read_manifest(str(run / "curated"))
    assert cur.producer.step == "curate" and 0 < cur.rows < src.rows
    assert "edu_score_below" in cur.drop_counts
    assert (run / "curated" / "_report" / "report.json").exists()
    assert read_manifest(str(run / "pack-code")).metadata["seq_len"] == 128
    assert (run / "pack-code" / "tokenizer" / "tokenizer.json").exists()
    assert (run / "pretrain" / "checkpoints" / "step-30" / "COMMITTED").exists()
    assert (run / "base" / "checkpoints" / "step-10" / "COMMITTED").exists()
    for model in ("pretrain", "base"):
        assert (run / "models" / model / "model.safetensors").exists()
    for kind in ("textbooks", "exercises"):  # the toy teacher: allowed to produce fewer
        m = read_manifest(str(run / kind))
        assert m.metadata["count"] == 2 and m.rows <= 2
        assert m.rows + sum(m.drop_counts.values()) >= m.metadata["specs"] - m.metadata[
            "surplus_valid"]
    clean = read_manifest(str(run / "curated-clean"))
    assert clean.producer.step == "decontaminate"
    assert clean.rows + sum(clean.drop_counts.values()) == cur.rows
    for bench in ("humaneval", "mbpp"):
        summary = json.loads((run / "eval" / "base" / bench / "summary.json").read_text())
        assert summary["n_problems"] == 10 and "pass@1" in summary
    nll = json.loads((run / "eval" / "base" / "nll" / "humaneval" / "nll.json").read_text())
    assert nll["n_problems"] == 20 and 0 < nll["nll_per_token"] < 20
    losses = [json.loads(x)["loss"] for x in (run / "pretrain" / "metrics.jsonl").open()]
    assert len(losses) == 30 and losses[-1] < losses[0]


def test_the_report_says_what_happened(demo):
    _, run, first = demo
    html = (run / "report" / "report.html").read_text()
    md = (run / "report" / "report.md").read_text()
    assert str(run / "report" / "report.html") in first.stdout.replace("\n", "")
    assert html.count("data:image/png;base64,") >= 2  # histogram + losses, embedded
    assert "src='report" not in html and "href=" not in html  # self-contained
    for text in (md, html):
        for needle in ("Curation funnel", "edu_score_below", "Synthetic data: validity",
                       "Decontamination against HumanEval and MBPP", "Training loss",
                       "HumanEval pass@1", "50.6%", "55.5%", "29.0%", "45.0%",
                       "first 10 HumanEval problems", "toy", "--teacher-url",
                       "primer curate", "primer train", "primer eval run"):
            assert needle in text, needle
    assert "toy-quality" in first.stdout.replace("\n", " ")
    ex = read_manifest(str(run / "exercises"))
    if ex.rows == 0:
        assert "Finetuning skipped" in md
    for reason in read_manifest(str(run / "textbooks")).drop_counts:
        assert reason in md


def test_a_rerun_resumes_every_stage(demo):
    root, run, _ = demo
    before = (run / "pretrain" / "metrics.jsonl").read_text()
    second = run_demo(root)
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout.replace("\n", " ")
    for stage in ("sources", "curate", "tokenizer", "pretrain", "textbooks", "exercises",
                  "decontam", "codetextbook", "eval"):
        assert f"stage {stage} (done before: resumed)" in out, stage
    assert "$ primer" not in out  # no component command ran again
    assert (run / "pretrain" / "metrics.jsonl").read_text() == before
