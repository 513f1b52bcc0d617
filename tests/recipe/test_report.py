"""The demo report on partial inputs (every figure missing, or some), the ablation's verdict per
pair of arms, and the browser check itself: a broken image must not count as rendered."""

from __future__ import annotations

import base64
import io
import json
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

from primer.datasets import Producer, commit_dataset
from primer.summary import StageSummary, write_summary
from recipe import demo, report
from tests.browser import open_page

FIGURES = ("funnel.png", "edu_score_hist.png", "validity.png", "loss.png")


def facts(**extra) -> dict:
    return {"quick": True, "plan": asdict(demo.QUICK), "workers": 2, "models": ["base"],
            "paper": demo.PAPER, "toy_note": demo.TOY_TEACHER_NOTE, "ablation": False,
            "seconds_this_invocation": 1.0, "stages": [], "stage_times": {},
            "teacher": {"kind": "toy"}, **extra}


def figures(blocks) -> list[str]:
    return [content[0] for kind, content in blocks if kind == "img"]


def missing(blocks) -> list[str]:
    return [content for kind, content in blocks if kind == "missing"]


def test_a_run_with_no_outputs_yet_reports_every_figure_as_missing(tmp_path):
    blocks, imgs = report.build(tmp_path, facts(ablation=True, ablation_arms={
        "unfiltered": ["unfiltered-seed0"], "filtered": ["filtered-seed0"]}))
    assert figures(blocks) == [] and imgs == {}
    said = " ".join(missing(blocks))
    for needle in ("No funnel chart", "No score histogram", "No validity chart",
                   "No loss chart", "No ablation chart"):
        assert needle in said, needle
    path = report.write(tmp_path, facts())
    assert "class='missing'" in path.read_text()
    assert "*No loss chart" in (tmp_path / "report" / "report.md").read_text()


def test_partial_inputs_draw_what_they_can(tmp_path):
    # A curation report without histogram or classifier (a fallback run), a training run cut
    # off mid-line, a generation manifest whose every record was dropped.
    write_summary(str(tmp_path / "curated"), StageSummary(
        stage="curate", producer="services.curation", rows=4,
        drop_counts={"too_short": 1, "exact_dup": 2, "edu_score_below": 3},
        facts={"after_filters": 9, "dedup": {"exact_dup": 2},
               "classifier": {"fallback": "one class in the annotations: annotator scores used"},
               "annotations": {"annotator": "heuristic", "annotated": 7, "positive": 7}}))
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 7.5}\n{"step": 2, "loss": 7.1}\n{"step": 3, "lo')
    commit_dataset(str(tmp_path / "exercises"), [], Producer("generate", "x"),
                   drop_counts={"syntax_error": 5, "tests_failed": 2},
                   metadata={"count": 2, "specs": 8})
    blocks, imgs = report.build(tmp_path, facts())
    assert figures(blocks) == ["funnel.png", "validity.png", "loss.png"]
    assert all(imgs[name].startswith(b"\x89PNG") for name in figures(blocks))
    said = " ".join(missing(blocks))
    assert "No score histogram" in said and "No funnel chart" not in said
    text = " ".join(str(c) for _, c in blocks)
    assert "No classifier was trained (fallback: one class" in text
    assert "continued (CodeTextbook), finetune (exercises)" in text  # not in the loss chart
    funnel = next(c for k, c in blocks if k == "table" and c[0] == ["step", "files"])
    assert funnel[1] == [["after junk filters", "9"], ["after exact + near dedup", "7"],
                         ["kept (educational value)", "4"]]


def test_each_pair_of_arms_is_judged_against_two_seed_standard_deviations():
    rows = [{"arm": a, "nll_seeds": s, "nll_mean": sum(s) / len(s),
             "nll_std": statistics.stdev(s) if len(s) > 1 else 0.0}
            for a, s in (("unfiltered", [3.0, 3.2]), ("filtered", [2.5, 2.7]),
                         ("filtered+synthetic", [2.6, 2.8]), ("one-seed", [2.0]))]
    pairs = {(c["a"], c["b"]): c for c in report.compare_arms(rows)}
    assert len(pairs) == 6
    far = pairs[("unfiltered", "filtered")]  # Δ −0.5, spread 0.1414: beyond 2 sd
    assert abs(far["diff"] + 0.5) < 1e-9 and abs(far["spread"] - 0.02 ** 0.5) < 1e-9
    assert far["beyond_2sd"] is True
    assert pairs[("filtered", "filtered+synthetic")]["beyond_2sd"] is False  # Δ 0.1 < 0.28
    assert pairs[("unfiltered", "one-seed")]["beyond_2sd"] is None


def test_the_ablation_section_states_a_verdict_per_pair(tmp_path):
    for arm, values in (("unfiltered", [3.0, 3.2]), ("filtered", [2.5, 2.7])):
        for seed, v in enumerate(values):
            out = tmp_path / "ablation" / "eval" / f"{arm}-seed{seed}" / "nll" / "humaneval"
            write_summary(str(out), StageSummary(stage="nll/humaneval", producer="test",
                                                 rows=164, facts={"nll_per_token": v}))
    blocks, imgs = report.build(tmp_path, facts(ablation=True, ablation_arms={
        arm: [f"{arm}-seed0", f"{arm}-seed1"] for arm in ("unfiltered", "filtered")}))
    assert "ablation.png" in figures(blocks)
    verdicts = next(c for k, c in blocks if k == "table" and c[0][0] == "arms")[1]
    assert verdicts == [["unfiltered → filtered", "-0.5", "0.1414", "yes: filtered is lower"]]


def png(colour, size=(300, 160)) -> str:
    im = Image.new("RGB", size, "white")
    for x in range(size[0]):  # a gradient bar: a drawing with many colours
        for y in range(40, 120):
            im.putpixel((x, y), (x % 256, colour, 255 - x % 256))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
def test_the_browser_check_counts_only_images_it_decoded_and_painted(tmp_path: Path):
    page = tmp_path / "page.html"
    page.write_text(f"<!doctype html><html><body><h1>t</h1>"
                    f"<img alt='good' src='data:image/png;base64,{png(90)}'>"
                    f"<img alt='corrupt' src='data:image/png;base64,iVBORw0KGgoAAAA'>"
                    f"<img alt='beside the page' src='figure.png'>"
                    f"<div style='height:3000px'></div>"
                    f"<img alt='far down' src='data:image/png;base64,{png(200)}'>"
                    f"</body></html>")
    Image.new("RGB", (300, 160), "red").save(tmp_path / "figure.png")  # not self-contained
    shown = open_page(page, tmp_path / "shot.png")
    assert [f.alt for f in shown.figures] == ["good", "corrupt", "beside the page", "far down"]
    assert [f.alt for f in shown.rendered] == ["good", "far down"]
    assert shown.height > 3000 and Image.open(shown.screenshot).height == shown.height


def test_the_report_reads_stage_summaries_not_component_files(tmp_path):
    """Decontamination and evaluation numbers come from their _summary.json; a component's
    own files (a decontamination .jsonl, an eval summary.json) alone show nothing, and a
    corrupt summary is reported missing, not a crash."""
    clean = tmp_path / "curated-clean"
    commit_dataset(str(clean), [], Producer("decontaminate", "x"),
                   drop_counts={"ngram": 2, "ast": 1})
    (clean / "_decontamination.jsonl").write_text(
        json.dumps({"matches": [{"task_id": "HumanEval/9"}]}) + "\n")
    eval_out = tmp_path / "eval" / "base" / "humaneval"
    eval_out.mkdir(parents=True)
    (eval_out / "summary.json").write_text(json.dumps({"pass@1": 0.5, "n_problems": 2}))
    (tmp_path / "eval" / "base" / "mbpp").mkdir()
    (tmp_path / "eval" / "base" / "mbpp" / "_summary.json").write_text("{not json")
    g = report.gather(tmp_path, facts())
    assert "curated" not in g["decontamination"] and g["eval"]["base"]["humaneval"] is None
    assert g["eval"]["base"]["mbpp"] is None

    write_summary(str(clean), StageSummary(
        stage="decontaminate", producer="test", rows=5, drop_counts={"ngram": 2, "ast": 1},
        facts={"checked": 8, "tau": 0.95, "tasks": {"HumanEval/9": 2, "MBPP/11": 1}}))
    write_summary(str(eval_out), StageSummary(
        stage="eval/humaneval", producer="test", rows=2,
        facts={"pass@1": 0.5, "n_passed": 1, "n_problems": 2}))
    g = report.gather(tmp_path, facts())
    assert g["decontamination"]["curated"] == {
        "checked": 8, "flagged": 3, "reasons": {"ngram": 2, "ast": 1}, "tau": 0.95,
        "tasks": [("HumanEval/9", 2), ("MBPP/11", 1)]}
    assert g["eval"]["base"]["humaneval"]["pass@1"] == 0.5
