"""The curation report, built from the units' counters (never from logs).

Written to ``<output>/_report/``: ``report.json`` (everything), ``report.md`` (a table per
reason, classifier metrics, kept characters and estimated tokens) and
``edu_score_hist.png`` (edu_score of every deduplicated record, the kept part highlighted,
the threshold as a line). Where the classifier could not be trained, ``classifier`` says
``"status": "fallback"`` and why, here and in the dataset's manifest.
"""

from __future__ import annotations

import io
import json
from typing import Any

from primer.datasets import Manifest
from primer.storage import open_storage
from primer.summary import StageSummary, write_summary
from services.curation.filters import all_reasons


def histogram_png(hist_all: list[int], hist_kept: list[int], threshold: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(hist_all)
    edges = [i / n for i in range(n)]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(edges, hist_all, width=1 / n, align="edge", color="#c8c8c8", label="all (deduplicated)")
    ax.bar(edges, hist_kept, width=1 / n, align="edge", color="#2a7ab0", label="kept")
    ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("edu_score")
    ax.set_ylabel("files")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def stage_summary(manifest: Manifest, facts: dict[str, Any],
                  drop_counts: dict[str, int]) -> StageSummary:
    """What the report shows of a curation: the committed dataset's counts, and the funnel,
    annotation, classifier and score-histogram facts of the run."""
    keep = ("input", "files_seen", "after_filters", "dedup", "annotations", "classifier",
            "threshold", "rule", "kept_chars", "estimated_tokens", "hist_all", "hist_kept")
    return StageSummary(stage="curate", producer="services.curation", rows=manifest.rows,
                        tokens=manifest.tokens, drop_counts=drop_counts,
                        facts=json.loads(json.dumps({k: facts.get(k) for k in keep},
                                                    default=str)))


def write_report(out: str, manifest: Manifest, facts: dict[str, Any]) -> dict[str, Any]:
    store = open_storage(f"{out}/_report")
    counts = {r: manifest.drop_counts.get(r, 0) for r in all_reasons()}
    counts.update(manifest.drop_counts)  # any reason not in the fixed list too
    report = {**facts, "kept": manifest.rows, "drop_counts": counts,
              "dataset": out, "shards": len(manifest.shards)}
    store.write_text("report.json", json.dumps(report, indent=2, sort_keys=True, default=str))
    write_summary(out, stage_summary(manifest, facts, counts))
    store.write_bytes("edu_score_hist.png", histogram_png(facts["hist_all"], facts["hist_kept"],
                                                          facts["threshold"]))
    m = facts.get("classifier") or {}
    lines = ["# Curation report", "", f"- input: {facts['input']}",
             f"- files seen: {facts['files_seen']}", f"- kept: {manifest.rows}",
             f"- kept characters: {facts['kept_chars']:,}",
             f"- estimated tokens: {facts['estimated_tokens']:,}",
             f"- keep rule: {facts['rule']} (threshold {facts['threshold']:.4f})", "",
             "| reason | dropped |", "|---|---:|"]
    lines += [f"| {r} | {n} |" for r, n in counts.items()]
    a = facts.get("annotations") or {}
    if a:
        lines += ["", "## Annotations", "",
                  f"{a.get('annotated', 0)} of {a['sampled']} sampled files annotated by "
                  f"{a['annotator']}; labels: {a['label_rule']}: {a['positive']} educational "
                  f"(the annotator's own cut, score >= {a['positive_score']:g}: "
                  f"{a['annotator_positive']})"]
    if m.get("status") == "fallback":
        lines += ["", "## Classifier: fallback", "",
                  f"{m['reason']}. edu_score is {m['edu_score']}: the sample's annotations, "
                  f"and {m['annotator_scored']} more files scored by the annotator "
                  f"({m['unscored']} it could not score count as 0)."]
    elif m:
        lines += ["", "## Classifier (held-out annotations)", "",
                  f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
                  f"F1 {m['f1']:.3f} (chance F1 {m['chance_f1']:.3f}), accuracy "
                  f"{m['accuracy']:.3f} (majority {m['chance_accuracy']:.3f}); "
                  f"{m['n_train']} train / {m['n_test']} test; encoder {m['encoder']}"]
    lines += ["", "![edu_score histogram](edu_score_hist.png)", ""]
    store.write_text("report.md", "\n".join(lines))
    return report
