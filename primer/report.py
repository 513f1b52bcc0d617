"""The demo's report: one self-contained HTML file (PNG plots embedded as base64) plus Markdown.

Everything is read back from what the stages wrote, through core formats only: dataset
manifests, the curation's ``_report/report.json``, ``metrics.jsonl`` of training runs,
``summary.json`` of evaluations, ``nll.json`` and the decontamination ``.jsonl`` reports.
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


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows}  # a resumed run may repeat steps: keep the last
    return [by_step[s] for s in sorted(by_step)]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return "—" if v is None else str(v)


# -- plots ----------------------------------------------------------------------------------

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


def plot_hist(hist_all: list[int], hist_kept: list[int], threshold: float) -> bytes:
    plt = _plt()
    n = len(hist_all)
    edges = [i / n for i in range(n)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(edges, hist_all, width=1 / n, align="edge", color="#c8c8c8",
           label="deduplicated files")
    ax.bar(edges, hist_kept, width=1 / n, align="edge", color="#2a7ab0", label="kept")
    ax.axvline(threshold, color="#c0392b", ls="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("educational score (classifier)")
    ax.set_ylabel("files")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_losses(curves: dict[str, list[dict[str, Any]]]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    offset = 0
    for name, rows in curves.items():
        if not rows:
            continue
        xs = [offset + r["step"] for r in rows]
        ax.plot(xs, [r["loss"] for r in rows], label=name, lw=1.2)
        offset = xs[-1]
    ax.set_xlabel("optimizer step (stages laid end to end)")
    ax.set_ylabel("training loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_ablation(rows: list[dict[str, Any]]) -> bytes:
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
    ax.set_ylim(max(0, lo - 0.3), hi + 0.2)
    ax.set_ylabel("NLL of canonical HumanEval\nsolutions (nats/token)")
    return _png(fig)


# -- gathering ------------------------------------------------------------------------------

def gather(run: Path, facts: dict[str, Any]) -> dict[str, Any]:
    g: dict[str, Any] = {}
    src = _manifest(run / "sources")
    cur = _json(run / "curated" / "_report" / "report.json") or {}
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
        m = _manifest(clean)
        if m is None:
            continue
        matches: Counter[str] = Counter()
        report = clean / "_decontamination.jsonl"
        if report.exists():
            for line in report.read_text().splitlines():
                if line.strip():
                    for hit in json.loads(line).get("matches", []):
                        matches[hit["task_id"]] += 1
        flagged = sum(m.drop_counts.values())
        dec[name] = {"checked": m.rows + flagged, "flagged": flagged,
                     "reasons": dict(m.drop_counts), "tau": m.metadata.get("tau"),
                     "tasks": matches.most_common(8)}
    g["decontamination"] = dec
    g["losses"] = {"pretrain (code)": _metrics(run / "pretrain"),
                   "continued (CodeTextbook)": _metrics(run / "base"),
                   "finetune (exercises)": _metrics(run / "finetune")}
    evals = {}
    for model in facts.get("models", []):
        e = run / "eval" / model
        evals[model] = {b: _json(e / b / "summary.json") for b in ("humaneval", "mbpp")}
        evals[model]["nll"] = _json(e / "nll" / "humaneval" / "nll.json")
    g["eval"] = evals
    if facts.get("ablation"):
        rows = []
        for arm, runs in (facts.get("ablation_arms") or {}).items():
            nll, he, mb = [], [], []
            for r in runs:
                e = run / "ablation" / "eval" / r
                n = _json(e / "nll" / "humaneval" / "nll.json")
                if n:
                    nll.append(n["nll_per_token"])
                s = _json(e / "humaneval" / "summary.json")
                if s:
                    he.append(s.get("pass@1", 0.0))
                s = _json(e / "mbpp" / "summary.json")
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
    return g


# -- rendering --------------------------------------------------------------------------------

MODEL_LABELS = {"pretrain": "tiny, pretrained on filtered code",
                "base": "tiny-base: + continued on CodeTextbook (phi-1-base analogue)",
                "finetuned": "tiny: + finetuned on exercises (phi-1 analogue)"}


def build(run: Path, facts: dict[str, Any]) -> tuple[list[tuple[str, Any]], dict[str, bytes]]:
    """The report as a list of blocks: ("h2", text), ("p", text), ("table", (head, rows)),
    ("img", name), ("warn", text). Shared by the HTML and Markdown renderers."""
    g = gather(run, facts)
    plan = facts["plan"]
    B: list[tuple[str, Any]] = []
    imgs: dict[str, bytes] = {}
    mode = "--quick (the test suite's setting)" if facts["quick"] else "full"
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
    funnel = [["Python files listed", _fmt(src["files"])],
              ["read into the sources dataset", _fmt(src["rows"])]]
    if cur:
        drops = cur.get("drop_counts", {})
        dedup = sum((cur.get("dedup") or {}).values())
        funnel += [["after junk filters", _fmt(cur.get("after_filters"))],
                   ["after exact + near dedup", _fmt((cur.get("after_filters") or 0) - dedup)],
                   ["kept by the educational-value classifier", _fmt(cur.get("kept"))]]
        B.append(("table", (["step", "files"], funnel, set())))
        merged = Counter(src["drops"]) + Counter({r: n for r, n in drops.items() if n})
        reasons = [[r, str(n)] for r, n in sorted(merged.items())]
        B.append(("p", "Dropped files, per reason code:"))
        B.append(("table", (["reason", "files"], reasons or [["(none)", "0"]], set())))
        ann, clf = cur.get("annotations") or {}, cur.get("classifier") or {}
        B.append(("p", f"Annotator {ann.get('annotator')}: {ann.get('annotated')} files "
                       f"labelled, {ann.get('positive')} educational. Classifier "
                       f"(MiniLM embeddings + random forest) on held-out annotations: "
                       f"F1 {_fmt(clf.get('f1'))} (chance {_fmt(clf.get('chance_f1'))}), "
                       f"accuracy {_fmt(clf.get('accuracy'))} (majority "
                       f"{_fmt(clf.get('chance_accuracy'))}). Keep rule: {cur.get('rule')}; "
                       f"kept {cur.get('kept_chars', 0):,} characters "
                       f"(~{cur.get('estimated_tokens', 0):,} codegen tokens)."))
        if cur.get("hist_all"):
            imgs["edu_score_hist.png"] = plot_hist(cur["hist_all"], cur["hist_kept"],
                                                   cur.get("threshold", 0.5))
            B.append(("img", "edu_score_hist.png"))
    else:
        B.append(("table", (["step", "files"], funnel, set())))

    # generation
    B.append(("h2", "Synthetic data: validity and diversity"))
    rows = []
    for kind, v in g["generation"].items():
        drops = ", ".join(f"{r} {n}" for r, n in sorted(v["drops"].items())) or "none"
        rows.append([kind, _fmt(v["asked"]), _fmt(v["specs"]), _fmt(v["valid"]),
                     _pct(v["validity"]), drops, _fmt(v["teacher"])])
    B.append(("table", (["kind", "asked for", "prompts sent", "valid", "validity",
                         "dropped (reason count)", "teacher"], rows, set())))
    for kind, v in g["generation"].items():
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
        B.append(("img", "loss.png"))
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
        B.append(("h2", "Ablation: the same token budget on three data mixes"))
        steps = plan["ablation_steps"]
        B.append(("p", f"Each arm trains the tiny model from scratch for {steps} steps × 16 × "
                       f"{plan['seq_len']} = {steps * 16 * plan['seq_len']:,} tokens, seeds "
                       f"{', '.join(map(str, plan['ablation_seeds']))} (seed of the weights "
                       f"and of the data order). (a) unfiltered: every file read, only "
                       f"decontaminated; (b) filtered: the curated code; (c) "
                       f"{facts.get('ablation_synthetic', '')}. NLL over all 164 canonical "
                       f"HumanEval solutions; pass@1 on "
                       f"{plan['ablation_eval_limit'] or 'all'} problems per benchmark. "
                       f"Mean ± sample standard deviation over seeds."))
        rows = []
        for r in g.get("ablation", []):
            rows.append([r["arm"], str(r["seeds"]),
                         f"{_fmt(r['nll_mean'])} ± {_fmt(r['nll_std'])}",
                         ", ".join(f"{x:.4f}" for x in r["nll_seeds"]),
                         f"{_pct(r['he_mean'])} ± {_pct(r['he_std'])}",
                         f"{_pct(r['mbpp_mean'])} ± {_pct(r['mbpp_std'])}"])
        B.append(("table", (["arm", "seeds", "NLL mean ± std", "NLL per seed",
                             "HumanEval pass@1", "MBPP pass@1"], rows, set())))
        if g.get("ablation") and all(r["nll_seeds"] for r in g["ablation"]):
            imgs["ablation.png"] = plot_ablation(g["ablation"])
            B.append(("img", "ablation.png"))
            B.append(("p", "Caveat: the filtered arm's NLL is measured with a tokenizer "
                           "trained on the filtered code; all arms share that tokenizer, "
                           "so the comparison is fair in tokens, but at this scale the spread "
                           "between seeds can be as large as the effect."))
    return B, imgs


def render_html(title: str, blocks, imgs: dict[str, bytes]) -> str:
    css = ("body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;"
           "padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0}"
           "td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top;font-size:13px}"
           "th{background:#f3f3f3}.warn{background:#fff4d6;border-left:4px solid #e0a800;"
           "padding:.6em 1em}code{font-size:12px}img{max-width:100%}")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    for kind, content in blocks:
        if kind == "h2":
            out.append(f"<h2>{html.escape(content)}</h2>")
        elif kind == "p":
            out.append(f"<p>{html.escape(content)}</p>")
        elif kind == "warn":
            out.append(f"<p class='warn'>{html.escape(content)}</p>")
        elif kind == "img":
            b64 = base64.b64encode(imgs[content]).decode()
            out.append(f"<p><img alt='{content}' src='data:image/png;base64,{b64}'></p>")
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
        elif kind == "img":
            out += [f"![{content}]({content})", ""]
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
