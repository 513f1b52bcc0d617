"""The demo's report: one self-contained HTML file (PNG plots embedded as base64) plus Markdown.

Everything is read back from what the stages wrote, through core formats only: dataset
manifests, the :class:`~primer.summary.StageSummary` each component writes next to its output
(``_summary.json``: curation, decontamination, evaluation and NLL), ``metrics.jsonl`` of
training runs, and the demo's own diversity JSON files. No component's private files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from primer.datasets import DatasetError, read_manifest
from primer.storage import StorageError
from primer.summary import StageSummary, read_summary


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _manifest(path: Path):
    try:
        return read_manifest(str(path))
    except (DatasetError, OSError):
        return None


def _summary(output: Path) -> StageSummary | None:
    """The stage summary a component wrote next to ``output`` (None: none yet, or unreadable:
    the report then says that part is missing rather than failing)."""
    try:
        return read_summary(str(output))
    except StorageError:  # (a SummaryError is one)
        return None


def _facts(output: Path) -> dict[str, Any] | None:
    summary = _summary(output)
    return summary.facts if summary else None


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:  # a run killed mid-write leaves a partial last line: the rest still plots
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) \
                and isinstance(row.get("loss"), (int, float)) and math.isfinite(row["loss"]):
            rows.append(row)
    by_step = {r["step"]: r for r in rows}  # a resumed run may repeat steps: keep the last
    return [by_step[s] for s in sorted(by_step)]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return "—" if v is None else str(v)


# -- plots ----------------------------------------------------------------------------------
# Each takes plain numbers (what ``gather`` read) and returns PNG bytes; ``build`` decides
# whether there is anything to draw and says so in text when there is not.

PALETTE = ["#2a7ab0", "#e67e22", "#8e44ad", "#16a085", "#c0392b", "#7f8c8d", "#d4ac0d",
           "#2c3e50", "#e84393", "#6ab04c"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def _label_bars(ax, bars, values) -> None:
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(f"{v:,}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)


def plot_funnel(steps: list[tuple[str, int]], drops: dict[str, int]) -> bytes:
    """Files left after each curation step (left) and files dropped per reason code (right)."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * max(len(steps), len(drops), 4)
                                                     + 1.2), width_ratios=[1.1, 1])
    names, counts = [n for n, _ in steps][::-1], [c for _, c in steps][::-1]
    _label_bars(left, left.barh(names, counts, color="#2a7ab0"), counts)
    left.set_xlabel("files")
    left.set_title("files left after each step", fontsize=10)
    left.set_xlim(0, max(counts, default=1) * 1.18 or 1)
    if drops:
        reasons = sorted(drops, key=lambda r: (drops[r], r))
        _label_bars(right, right.barh(reasons, [drops[r] for r in reasons], color="#c0392b"),
                    [drops[r] for r in reasons])
        right.set_xlim(0, max(drops.values()) * 1.18 or 1)
    else:
        right.text(0.5, 0.5, "no file dropped", ha="center", va="center",
                   transform=right.transAxes)
        right.set_yticks([])
    right.set_xlabel("files")
    right.set_title("dropped, per reason code", fontsize=10)
    return _png(fig)


def plot_validity(kinds: dict[str, dict[str, Any]]) -> bytes:
    """One stacked bar per kind of synthetic data: valid records, then each reason for drops."""
    plt = _plt()
    reasons = sorted({r for v in kinds.values() for r in v["drops"]})
    colour = {r: PALETTE[1 + i % (len(PALETTE) - 1)] for i, r in enumerate(reasons)}
    fig, ax = plt.subplots(figsize=(8, 0.8 * len(kinds) + 1.8))
    names = list(kinds)
    left = [0] * len(names)
    for label, counts, c in [("valid", [kinds[k]["valid"] for k in names], "#27ae60")] + [
            (r, [kinds[k]["drops"].get(r, 0) for k in names], colour[r]) for r in reasons]:
        ax.barh(names, counts, left=left, color=c, label=label, edgecolor="white")
        left = [a + b for a, b in zip(left, counts, strict=True)]
    for i, k in enumerate(names):
        v = kinds[k]["validity"]
        ax.annotate("validity —" if v is None else f"validity {100 * v:.0f}%",
                    (left[i], i), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8)
    ax.set_xlim(0, max(left, default=1) * 1.3 or 1)
    ax.invert_yaxis()
    ax.set_xlabel("records generated, by outcome (valid, or the reason it was dropped)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35),
              ncol=min(4, len(reasons) + 1), frameon=False)
    return _png(fig)


def plot_hist(hist_all: list[int], hist_kept: list[int], threshold: float | None,
              xlabel: str = "educational score (classifier)") -> bytes:
    plt = _plt()
    n = len(hist_all)
    edges = [i / n for i in range(n)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(edges, hist_all, width=1 / n, align="edge", color="#c8c8c8",
           label="deduplicated files")
    if len(hist_kept) == n:
        ax.bar(edges, hist_kept, width=1 / n, align="edge", color="#2a7ab0", label="kept")
    if threshold is not None:
        ax.axvline(threshold, color="#c0392b", ls="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("files")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_losses(curves: dict[str, list[dict[str, Any]]]) -> bytes:
    """Every training run's loss, laid end to end (pretrain → continued → finetune)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    offset = 0
    for i, (name, rows) in enumerate(curves.items()):
        if not rows:
            continue
        xs = [offset + r["step"] for r in rows]
        ax.plot(xs, [r["loss"] for r in rows], label=name, lw=1.2, color=PALETTE[i])
        if offset:
            ax.axvline(offset, color="#999", lw=0.6, ls=":")
        offset = xs[-1]
    ax.set_xlabel("optimizer step (runs laid end to end)")
    ax.set_ylabel("training loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_ablation(rows: list[dict[str, Any]]) -> bytes:
    """NLL per arm: mean with ± one sample standard deviation over seeds, each seed a dot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["arm"] for r in rows]
    means = [r["nll_mean"] for r in rows]
    errs = [r["nll_std"] for r in rows]
    ax.bar(names, means, yerr=errs, capsize=6, color=["#999", "#2a7ab0", "#27ae60"][:len(rows)])
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["nll_seeds"]), r["nll_seeds"], color="k", s=12, zorder=3)
    lo = min((min(r["nll_seeds"]) for r in rows if r["nll_seeds"]), default=0)
    hi = max((max(r["nll_seeds"]) for r in rows if r["nll_seeds"]), default=1)
    pad = max(0.05, hi - lo)
    ax.set_ylim(max(0, lo - pad), hi + pad / 2)
    ax.set_ylabel("NLL of canonical HumanEval\nsolutions (nats/token)")
    return _png(fig)


# -- gathering ------------------------------------------------------------------------------

def gather(run: Path, facts: dict[str, Any]) -> dict[str, Any]:
    g: dict[str, Any] = {}
    src = _manifest(run / "sources")
    curated = _summary(run / "curated")
    cur = ({**curated.facts, "kept": curated.rows, "drop_counts": curated.drop_counts}
           if curated else {})
    g["sources"] = {"files": src.metadata.get("files") if src else None,
                    "rows": src.rows if src else None,
                    "drops": dict(src.drop_counts) if src else {},
                    "roots": src.metadata.get("roots") if src else []}
    g["curation"] = cur
    gen = {}
    for kind in ("textbooks", "exercises"):
        m = _manifest(run / kind)
        if m is None:
            continue
        asked = m.metadata.get("count")
        specs = m.metadata.get("specs") or 0
        gen[kind] = {"asked": asked, "valid": m.rows, "specs": specs,
                     "validity": m.rows / specs if specs else None,
                     "drops": dict(m.drop_counts), "tokens": m.tokens,
                     "teacher": m.metadata.get("teacher"),
                     "usage": m.metadata.get("usage", {}),
                     "diversity": _json(run / f"{kind}-diversity.json")}
    g["generation"] = gen
    dec = {}
    for name in ("sources", "curated", "textbooks", "exercises"):
        clean = run / f"{name}-clean"
        d = _summary(clean)
        if d is None:
            continue
        dec[name] = {"checked": d.facts.get("checked"), "flagged": sum(d.drop_counts.values()),
                     "reasons": d.drop_counts, "tau": d.facts.get("tau"),
                     "tasks": list((d.facts.get("tasks") or {}).items())}
    g["decontamination"] = dec
    g["losses"] = {"pretrain (code)": _metrics(run / "pretrain"),
                   "continued (CodeTextbook)": _metrics(run / "base"),
                   "finetune (exercises)": _metrics(run / "finetune")}
    evals = {}
    for model in facts.get("models", []):
        e = run / "eval" / model
        evals[model] = {b: _facts(e / b) for b in ("humaneval", "mbpp")}
        evals[model]["nll"] = _facts(e / "nll" / "humaneval")
    g["eval"] = evals
    if facts.get("ablation"):
        rows = []
        for arm, runs in (facts.get("ablation_arms") or {}).items():
            nll, he, mb = [], [], []
            for r in runs:
                e = run / "ablation" / "eval" / r
                n = _facts(e / "nll" / "humaneval")
                if n:
                    nll.append(n["nll_per_token"])
                s = _facts(e / "humaneval")
                if s:
                    he.append(s.get("pass@1", 0.0))
                s = _facts(e / "mbpp")
                if s:
                    mb.append(s.get("pass@1", 0.0))
            rows.append({"arm": arm, "seeds": len(runs), "nll_seeds": nll,
                         "nll_mean": statistics.fmean(nll) if nll else math.nan,
                         "nll_std": statistics.stdev(nll) if len(nll) > 1 else 0.0,
                         "he_mean": statistics.fmean(he) if he else None,
                         "he_std": statistics.stdev(he) if len(he) > 1 else 0.0,
                         "mbpp_mean": statistics.fmean(mb) if mb else None,
                         "mbpp_std": statistics.stdev(mb) if len(mb) > 1 else 0.0})
        g["ablation"] = rows
        g["ablation_pairs"] = compare_arms(rows)
    return g


def compare_arms(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pair of arms: is the difference of mean NLL beyond two standard deviations of the
    seed spread? The spread is the pooled per-seed standard deviation of the two arms,
    sqrt((s_a² + s_b²) / 2); with fewer than two seeds in an arm there is no spread to judge by.
    """
    out = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if len(a["nll_seeds"]) < 2 or len(b["nll_seeds"]) < 2:
                out.append({"a": a["arm"], "b": b["arm"], "diff": None, "spread": None,
                            "beyond_2sd": None})
                continue
            diff = b["nll_mean"] - a["nll_mean"]
            spread = math.sqrt((a["nll_std"] ** 2 + b["nll_std"] ** 2) / 2)
            out.append({"a": a["arm"], "b": b["arm"], "diff": diff, "spread": spread,
                        "beyond_2sd": abs(diff) > 2 * spread})
    return out


# -- rendering --------------------------------------------------------------------------------

def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def funnel_steps(src: dict[str, Any], cur: dict[str, Any]) -> list[tuple[str, int]]:
    """(step, files left) for every step whose count was recorded, in pipeline order."""
    dedup = cur.get("dedup")
    after_filters = cur.get("after_filters")
    after_dedup = (after_filters - sum(v for v in dedup.values() if isinstance(v, int))
                   if isinstance(after_filters, int) and isinstance(dedup, dict) else None)
    steps = [("Python files listed", src.get("files")), ("read", src.get("rows")),
             ("after junk filters", after_filters), ("after exact + near dedup", after_dedup),
             ("kept (educational value)", cur.get("kept"))]
    return [(n, c) for n, c in steps if isinstance(c, int)]


def score_source(cur: dict[str, Any]) -> str:
    """What produced the scores: the classifier, or (its fallback) the annotator itself."""
    clf = cur.get("classifier")
    if isinstance(clf, dict) and clf.get("f1") is not None:
        return "classifier"
    return "annotator" if cur.get("annotations") else "classifier"


def curation_summary(cur: dict[str, Any]) -> str:
    ann = cur.get("annotations") if isinstance(cur.get("annotations"), dict) else {}
    clf = cur.get("classifier") if isinstance(cur.get("classifier"), dict) else {}
    text = (f"Annotator {ann.get('annotator', '—')}: {_fmt(ann.get('annotated'))} files "
            f"labelled, {_fmt(ann.get('positive'))} educational. ")
    if clf.get("f1") is not None:
        text += (f"Classifier (MiniLM embeddings + random forest) on held-out annotations: "
                 f"F1 {_fmt(clf.get('f1'))} (chance {_fmt(clf.get('chance_f1'))}), accuracy "
                 f"{_fmt(clf.get('accuracy'))} (majority {_fmt(clf.get('chance_accuracy'))}). ")
    else:  # the curation fell back (e.g. one-class labels): say what it recorded instead
        said = "; ".join(f"{k}: {v}" for k, v in clf.items() if isinstance(v, (str, int, float)))
        text += "No classifier was trained" + (f" ({said}). " if said else ". ")
    text += f"Keep rule: {cur.get('rule', '—')}"
    if isinstance(cur.get("kept_chars"), int):
        text += (f"; kept {cur['kept_chars']:,} characters (~"
                 f"{cur.get('estimated_tokens') or 0:,} codegen tokens)")
    return text + "."


MODEL_LABELS = {"pretrain": "tiny, pretrained on filtered code",
                "base": "tiny-base: + continued on CodeTextbook (phi-1-base analogue)",
                "finetuned": "tiny: + finetuned on exercises (phi-1 analogue)"}


def build(run: Path, facts: dict[str, Any]) -> tuple[list[tuple[str, Any]], dict[str, bytes]]:
    """The report as a list of blocks: ("h2", text), ("p", text), ("table", (head, rows,
    raw columns)), ("img", (file name, caption)), ("warn", text), ("missing", text: a figure
    that could not be drawn, and why). Shared by the HTML and Markdown renderers."""
    g = gather(run, facts)
    plan = facts["plan"]
    B: list[tuple[str, Any]] = []
    imgs: dict[str, bytes] = {}
    mode = "--quick (the test suite's setting)" if facts["quick"] else "full"
    if facts.get("plan_changes"):
        mode += " with these sizes changed: " + ", ".join(
            f"{k}={v}" for k, v in facts["plan_changes"].items())
    B.append(("p", f"Run folder: {run}. Mode: {mode}. Worker processes: {facts['workers']}. "
                   f"Model: the `tiny` phi preset (2 layers, 128 wide, context 256), "
                   f"byte-level BPE of {plan['vocab']} tokens trained on the curated code, "
                   f"{plan['seq_len']}-token windows, 16 sequences a step."))
    teacher = facts.get("teacher") or {}
    if teacher.get("kind") == "toy":
        B.append(("warn", facts["toy_note"]))
    else:
        B.append(("p", f"Teacher: {teacher.get('url')} (model {teacher.get('model')})."))

    # stages
    B.append(("h2", "Stages"))
    times = facts.get("stage_times", {})
    rows = []
    for s in facts["stages"]:
        secs = s["seconds"] if s["status"] == "ran" else times.get(s["name"], {}).get("seconds")
        rows.append([s["name"], s["status"], _fmt(secs), s.get("note") or "",
                     "<br>".join(html.escape(c) for c in s["commands"]) or "—"])
    B.append(("table", (["stage", "status", "seconds (when run)", "result", "commands"], rows,
                        {4})))
    B.append(("p", f"This invocation took {facts['seconds_this_invocation']} s. Stages marked "
                   "resumed were finished by an earlier invocation and skipped; their seconds "
                   "are from that run."))

    # curation
    B.append(("h2", "Curation funnel"))
    src, cur = g["sources"], g["curation"]
    steps = funnel_steps(src, cur)
    merged = Counter({r: n for r, n in src["drops"].items() if n}) + Counter(
        {r: n for r, n in (cur.get("drop_counts") or {}).items() if isinstance(n, int) and n})
    if steps:
        imgs["funnel.png"] = plot_funnel(steps, dict(merged))
        B.append(("img", ("funnel.png", "Curation funnel: files left after each step, and "
                                        "files dropped per reason code")))
    else:
        B.append(("missing", "No funnel chart: neither the sources manifest nor the "
                             "curation report could be read."))
    B.append(("table", (["step", "files"], [[n, _fmt(c)] for n, c in steps] or
                        [["(nothing recorded)", "—"]], set())))
    if cur:
        B.append(("p", "Dropped files, per reason code:"))
        reasons = [[r, str(n)] for r, n in sorted(merged.items())]
        B.append(("table", (["reason", "files"], reasons or [["(none)", "0"]], set())))
        B.append(("p", curation_summary(cur)))
    else:
        B.append(("missing", "No curation summary (curated/_summary.json): the curate "
                             "stage has not finished."))
    hist = cur.get("hist_all")
    if isinstance(hist, list) and sum(x for x in hist if isinstance(x, int)) > 0:
        imgs["edu_score_hist.png"] = plot_hist(hist, cur.get("hist_kept") or [],
                                               _number(cur.get("threshold")),
                                               f"educational score ({score_source(cur)})")
        B.append(("img", ("edu_score_hist.png", "Educational scores of the deduplicated files "
                                                "and of those kept")))
    else:
        B.append(("missing", "No score histogram: the curation report holds no scores."))

    # generation
    B.append(("h2", "Synthetic data: validity and diversity"))
    gen = g["generation"]
    drawn = {k: v for k, v in gen.items() if v["valid"] or v["drops"]}
    if drawn:
        imgs["validity.png"] = plot_validity(drawn)
        B.append(("img", ("validity.png", "Synthetic records per outcome: valid, or dropped "
                                          "with its reason code")))
    else:
        B.append(("missing", "No validity chart: no textbooks or exercises were generated "
                  + ("(the generation stages have not run)." if not gen else
                     "(no record was produced or dropped).")))
    rows = []
    for kind, v in gen.items():
        drops = ", ".join(f"{r} {n}" for r, n in sorted(v["drops"].items())) or "none"
        rows.append([kind, _fmt(v["asked"]), _fmt(v["specs"]), _fmt(v["valid"]),
                     _pct(v["validity"]), drops, _fmt(v["teacher"])])
    B.append(("table", (["kind", "asked for", "prompts sent", "valid", "validity",
                         "dropped (reason count)", "teacher"], rows, set())))
    for kind, v in gen.items():
        d = v.get("diversity")
        if d:
            keys = [k for k in ("distinct_1", "distinct_2", "distinct_3", "distinct_4",
                                "topics_used", "topic_coverage", "audiences_used",
                                "styles_used", "distinct_function_names") if k in d]
            B.append(("p", f"{kind} diversity: " + ", ".join(f"{k} {d[k]}" for k in keys)))
        else:
            B.append(("p", f"{kind} diversity: no valid records to measure."))

    # decontamination
    B.append(("h2", "Decontamination against HumanEval and MBPP"))
    rows = []
    for name, v in g["decontamination"].items():
        reasons = ", ".join(f"{r} {n}" for r, n in v["reasons"].items()) or "none"
        tasks = ", ".join(f"{t} ({n})" for t, n in v["tasks"]) or "—"
        rows.append([name, str(v["checked"]), str(v["flagged"]), reasons, tasks])
    for kind, v in g["generation"].items():
        if v["valid"] == 0 and kind not in g["decontamination"]:
            rows.append([kind, "0", "0", "nothing to check (no valid records)", "—"])
    B.append(("table", (["dataset", "rows checked", "pruned", "by test", "benchmark tasks "
                         "matched (matches)"], rows, set())))
    B.append(("p", "Tests: word 13-gram overlap with a problem's prompt + solution; AST "
                   "match rate τ (normalised edit distance of name-normalised AST tokens, "
                   "τ = 0.95); embedding cosine ≥ 0.9 (MiniLM) where listed in the commands. "
                   "Pruned rows never reach training."))
    if facts.get("codetextbook"):
        B.append(("p", f"CodeTextbook: {facts['codetextbook']}."))

    # losses
    B.append(("h2", "Training loss"))
    if any(g["losses"].values()):
        imgs["loss.png"] = plot_losses(g["losses"])
        B.append(("img", ("loss.png", "Training loss of pretraining, continued pretraining "
                                      "and finetuning")))
        missing = [n for n, r in g["losses"].items() if not r]
        if missing:
            B.append(("p", f"Not in the chart (no metrics.jsonl yet): {', '.join(missing)}."))
    else:
        B.append(("missing", "No loss chart: no training run has written metrics yet."))
    rows = [[n, str(len(r)), _fmt(r[0]["loss"]) if r else "—", _fmt(r[-1]["loss"]) if r else "—"]
            for n, r in g["losses"].items()]
    B.append(("table", (["run", "steps", "first loss", "last loss"], rows, set())))
    ft = next((s for s in facts["stages"] if s["name"] == "finetune"), None)
    if ft and ft["status"] == "skipped":
        B.append(("warn", f"Finetuning {ft['note'] or 'was skipped'}"))

    # evaluation
    B.append(("h2", "Evaluation (pass@1, greedy)"))
    lim = plan["eval_limit"]
    subset = (f"the first {lim} HumanEval problems (HumanEval/0…{lim - 1}) and the first "
              f"{lim} of the MBPP test split (task_id 11…{10 + lim})") if lim else \
        "all 164 HumanEval problems and the 500 MBPP test problems (task_id 11–510)"
    B.append(("p", f"Subset: {subset}; {plan['eval_new_tokens']} new tokens per completion; "
                   "every program runs in the sandbox. NLL: mean negative log-likelihood per "
                   "token of the canonical HumanEval solutions given their prompts"
                   + (f" (first {plan['nll_limit']} problems)" if plan["nll_limit"] else
                      " (all 164)") + "; lower is better."))
    rows = []
    for model, e in g["eval"].items():
        he, mb, nll = e.get("humaneval") or {}, e.get("mbpp") or {}, e.get("nll") or {}
        rows.append([MODEL_LABELS.get(model, model),
                     f"{_pct(he.get('pass@1'))} ({he.get('n_passed', '?')}/"
                     f"{he.get('n_problems', '?')})",
                     f"{_pct(mb.get('pass@1'))} ({mb.get('n_passed', '?')}/"
                     f"{mb.get('n_problems', '?')})", _fmt(nll.get("nll_per_token"))])
    for name, he, mb in facts["paper"]:
        rows.append([name, _pct(he), _pct(mb), "—"])
    B.append(("table", (["model", "HumanEval pass@1", "MBPP pass@1",
                         "NLL canonical HumanEval"], rows, set())))
    B.append(("p", "The paper's rows are for scale: 1.3B / 350M parameters, ~7B tokens, a "
                   "GPT-3.5/GPT-4 teacher. The demo's model has about a million parameters "
                   "and sees well under a million tokens: 0% pass@1 is the expected result "
                   "here; the NLL column and the ablation are where data quality shows."))

    # ablation
    if facts.get("ablation"):
        B.append(("h2", "Ablation: the same token budget on each data mix"))
        steps = plan["ablation_steps"]
        B.append(("p", f"Each arm trains the tiny model from scratch for {steps} steps × 16 × "
                       f"{plan['seq_len']} = {steps * 16 * plan['seq_len']:,} tokens, seeds "
                       f"{', '.join(map(str, plan['ablation_seeds']))} (seed of the weights "
                       f"and of the data order). (a) unfiltered: every file read, only "
                       f"decontaminated; (b) unfiltered-subset: a random subset of those "
                       f"files with as much text as the filtered code, the control for (c), "
                       f"since both then repeat their data equally; (c) filtered: the "
                       f"curated code; (d) {facts.get('ablation_synthetic', '')}. The "
                       f"tokens column is the size of each arm's packed data: an arm whose "
                       f"data is smaller than its budget sees it more than once. NLL over "
                       f"all 164 canonical "
                       f"HumanEval solutions; "
                       + (f"pass@1 on {plan.get('ablation_eval_limit') or 'all'} problems per "
                          f"benchmark. " if plan.get("ablation_pass_at_1", True) else
                          "pass@1 not measured in this run (0% at this scale). ")
                       + "Mean ± sample standard deviation over seeds."))
        rows = []
        sizes = facts.get("ablation_pack_tokens") or {}
        for r in g.get("ablation", []):
            size = sizes.get(r["arm"])
            rows.append([r["arm"], f"{size:,}" if isinstance(size, int) else "–", str(r["seeds"]),
                         f"{_fmt(r['nll_mean'])} ± {_fmt(r['nll_std'])}",
                         ", ".join(f"{x:.4f}" for x in r["nll_seeds"]),
                         f"{_pct(r['he_mean'])} ± {_pct(r['he_std'])}",
                         f"{_pct(r['mbpp_mean'])} ± {_pct(r['mbpp_std'])}"])
        B.append(("table", (["arm", "tokens", "seeds", "NLL mean ± std", "NLL per seed",
                             "HumanEval pass@1", "MBPP pass@1"], rows, set())))
        if g.get("ablation") and all(r["nll_seeds"] for r in g["ablation"]):
            imgs["ablation.png"] = plot_ablation(g["ablation"])
            B.append(("img", ("ablation.png", "NLL per arm: mean ± one standard deviation "
                                              "over seeds (error bars); dots are seeds")))
        else:
            B.append(("missing", "No ablation chart: some arm has no NLL result yet."))
        rows = []
        for c in g.get("ablation_pairs", []):
            if c["beyond_2sd"] is None:
                verdict = "cannot tell: fewer than two seeds"
            elif c["beyond_2sd"]:
                verdict = f"yes: {c['b']} is {'lower' if c['diff'] < 0 else 'higher'}"
            else:
                verdict = "no: within the seed spread"
            rows.append([f"{c['a']} → {c['b']}", _fmt(c["diff"]), _fmt(c["spread"]), verdict])
        if rows:
            B.append(("p", "Per pair of arms: the difference of mean NLL (second minus first), "
                           "the seed spread (pooled standard deviation over seeds, "
                           "√((s₁² + s₂²)/2)), and whether the difference is beyond two of "
                           "those standard deviations."))
            B.append(("table", (["arms", "Δ NLL", "seed spread", "beyond 2 sd?"], rows,
                                set())))
        B.append(("p", "All arms share one tokenizer (trained on the filtered code) and one "
                       "token budget, so the comparison is fair in tokens; at this scale the "
                       "spread between seeds can be as large as the effect."))
    return B, imgs


def render_html(title: str, blocks, imgs: dict[str, bytes]) -> str:
    css = ("body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;"
           "padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0}"
           "td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top;font-size:13px}"
           "th{background:#f3f3f3}.warn{background:#fff4d6;border-left:4px solid #e0a800;"
           "padding:.6em 1em}.missing{color:#777;font-style:italic}code{font-size:12px}"
           "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:13px}")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    for kind, content in blocks:
        if kind == "h2":
            out.append(f"<h2>{html.escape(content)}</h2>")
        elif kind == "p":
            out.append(f"<p>{html.escape(content)}</p>")
        elif kind == "warn":
            out.append(f"<p class='warn'>{html.escape(content)}</p>")
        elif kind == "missing":
            out.append(f"<p class='missing'>{html.escape(content)}</p>")
        elif kind == "img":
            name, caption = content
            b64 = base64.b64encode(imgs[name]).decode()
            out.append(f"<figure><img alt='{html.escape(caption, quote=True)}' "
                       f"src='data:image/png;base64,{b64}'><figcaption>"
                       f"{html.escape(caption)}</figcaption></figure>")
        elif kind == "table":
            head, rows, raw = content
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                       + "</tr>")
            for row in rows:
                cells = [c if i in raw else html.escape(c) for i, c in enumerate(row)]
                if raw:
                    cells = [f"<code>{c}</code>" if i in raw else c for i, c in enumerate(cells)]
                out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(title: str, blocks) -> str:
    out = [f"# {title}", ""]
    for kind, content in blocks:
        if kind == "h2":
            out += [f"## {content}", ""]
        elif kind == "p":
            out += [content, ""]
        elif kind == "warn":
            out += [f"> **Note:** {content}", ""]
        elif kind == "missing":
            out += [f"*{content}*", ""]
        elif kind == "img":
            name, caption = content
            out += [f"![{caption}]({name})", ""]
        elif kind == "table":
            head, rows, raw = content
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            for row in rows:
                cells = [html.unescape(c).replace("<br>", "; ").replace("|", "\\|")
                         if i in raw else c.replace("|", "\\|") for i, c in enumerate(row)]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def write(run: Path, facts: dict[str, Any]) -> Path:
    """Write ``<run>/report/report.html`` (self-contained) and ``report.md`` (+ its PNGs)."""
    title = f"Primer demo report — run {run.name}"
    blocks, imgs = build(run, facts)
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in imgs.items():
        (out / name).write_bytes(data)
    (out / "report.md").write_text(render_markdown(title, blocks))
    (out / "facts.json").write_text(json.dumps(facts, indent=1, default=str))
    path = out / "report.html"
    path.write_text(render_html(title, blocks, imgs))
    return path
