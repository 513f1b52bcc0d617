"""`primer demo --quick` through the real console script: every stage's output, the report's
contents and figures as a browser shows them, a rerun that resumes instead of starting over,
and a failing stage explained in a few lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from primer.datasets import open_dataset, read_manifest
from primer.summary import read_summary, write_summary
from recipe import demo as demo_module
from recipe import report
from tests.browser import open_page

# the demo's stages are real training runs: minutes on 2 cores; the first test also runs the
# module's demo, under the subprocess's own hang guard (900 s), so the test's limit is above it
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1000)]

PRIMER = str(Path(sys.executable).parent / "primer")


def run_demo(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PRIMER, "demo", "--quick", "--workers", "2",
                           f"--storage.root={root}", *extra], capture_output=True, text=True,
                          timeout=900)  # a hang guard, not a speed target (bench/demo.sh)


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
    curated = read_summary(str(run / "curated"))
    assert curated.producer == "services.curation" and curated.rows == cur.rows
    assert curated.drop_counts["edu_score_below"] == cur.drop_counts["edu_score_below"]
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
    assert read_summary(str(run / "curated-clean")).facts["checked"] == cur.rows
    for bench in ("humaneval", "mbpp"):
        summary = read_summary(str(run / "eval" / "base" / bench))
        assert summary.rows == 10 and "pass@1" in summary.facts
    nll = read_summary(str(run / "eval" / "base" / "nll" / "humaneval"))
    assert nll.rows == 20 and 0 < nll.facts["nll_per_token"] < 20
    losses = [json.loads(x)["loss"] for x in (run / "pretrain" / "metrics.jsonl").open()]
    assert len(losses) == 30 and losses[-1] < losses[0]


def test_the_report_says_what_happened(demo):
    _, run, first = demo
    html = (run / "report" / "report.html").read_text()
    md = (run / "report" / "report.md").read_text()
    assert str(run / "report" / "report.html") in first.stdout.replace("\n", "")
    assert html.count("data:image/png;base64,") >= 4  # funnel, histogram, validity, loss
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


def test_the_report_shows_its_figures_in_a_browser(demo, tmp_path):
    _, run, _ = demo
    page = open_page(run / "report" / "report.html", tmp_path / "quick.png")
    shown = [f.alt for f in page.rendered]
    assert len(shown) >= 3, page.figures
    for caption in ("Curation funnel", "Educational scores", "Training loss"):
        assert any(alt.startswith(caption) for alt in shown), (caption, page.figures)


def _report_inputs(run: Path, into: Path) -> Path:
    """The files the report reads from a run, without shards, checkpoints or weights."""
    return Path(shutil.copytree(run, into, ignore=shutil.ignore_patterns(
        "*.parquet", "*.safetensors", "checkpoints", "state", "report", "pack-*", "models")))


def test_a_full_demo_report_with_the_ablation_shows_five_figures(demo, tmp_path):
    # The full plan's report over this run's real stage outputs, plus the ablation's NLL
    # results in the format `primer eval nll` wrote for this run's model.
    _, run, _ = demo
    copy = _report_inputs(run, tmp_path / "run")
    nll = read_summary(str(run / "eval" / "base" / "nll" / "humaneval"))
    arms = {}
    for i, arm in enumerate(("unfiltered", "filtered", "filtered-synthetic")):
        arms[arm.replace("-", "+")] = []
        for seed in (0, 1, 2):
            out = copy / "ablation" / "eval" / f"{arm}-seed{seed}" / "nll" / "humaneval"
            value = nll.facts["nll_per_token"] + 0.3 * i + 0.01 * seed
            write_summary(str(out), nll.model_copy(
                update={"facts": {**nll.facts, "nll_per_token": value}}))
            arms[arm.replace("-", "+")].append(f"{arm}-seed{seed}")
    facts = json.loads((run / "report" / "facts.json").read_text())
    facts.update(quick=False, plan=asdict(demo_module.FULL), ablation=True,
                 ablation_arms=arms, ablation_synthetic="filtered code + textbooks")
    page = open_page(report.write(copy, facts), tmp_path / "full.png")
    shown = [f.alt for f in page.rendered]
    assert len(shown) >= 5 and any(a.startswith("NLL per arm") for a in shown), page.figures
    md = (copy / "report" / "report.md").read_text()
    assert "| unfiltered → filtered | 0.3 |" in md and "yes: filtered is higher" in md


def test_a_failing_stage_prints_the_error_and_its_log_not_a_traceback(tmp_path):
    # A sources dataset whose manifest is corrupt: the demo resumes past it and `primer
    # curate` fails reading it, deep inside the curation (a 40-line boxed traceback before).
    sources = tmp_path / "runs" / "demo" / "sources"
    sources.mkdir(parents=True)
    (sources / "_manifest.json").write_text('{"rows": 3, "shards": [')
    failed = run_demo(tmp_path)
    assert failed.returncode == 1
    out = failed.stdout + failed.stderr
    log = tmp_path / "runs" / "demo" / "logs" / "curate.log"
    error = out[out.index("error:"):]
    assert "stage curate failed" in error and "exited 1" in error
    assert "InputError:" in error and "the manifest is not valid JSON" in error
    assert f"full log: {log}" in error.replace("\n", "")
    assert not set("╭╰│") & set(out) and "Traceback" not in out
    assert len(error.splitlines()) <= 12, error
    assert "Traceback (most recent call last)" in log.read_text()  # the frames stay in the log
