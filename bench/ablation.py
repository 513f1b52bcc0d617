"""`primer demo --ablation`, timed, and its numbers as JSON: NLL mean ± std per arm, each
seed's value, the verdict per pair of arms, and exactly what ran (plan, steps, tokens, seeds,
wall time, commit). The demo code runs as `primer demo` runs it; only the sizes can change,
and the report and the JSON list every size that differs from the plan's default.

    .venv/bin/python bench/ablation.py                        # the full default
    .venv/bin/python bench/ablation.py --quick --steps 100 --seeds 0,1,2 --no-pass-at-1
    .venv/bin/python bench/ablation.py --root DIR --run NAME  # resume, or reuse a demo run

Writes bench/results/ablation.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import statistics
import subprocess
import time
import tokenize
from pathlib import Path

from recipe import demo, report

HERE = Path(__file__).resolve().parent
# --toy: the --quick plan cut to the least that still runs every stage and every arm
TOY = {"files": 80, "annotate_sample": 40, "embed_tokens": 32, "seq_len": 64, "vocab": 512,
       "pretrain_steps": 2, "textbook_steps": 2, "finetune_steps": 2, "count": 1,
       "specs_factor": 2.0, "max_tokens_textbook": 16, "max_tokens_exercise": 16,
       "eval_limit": 1, "eval_new_tokens": 8, "nll_limit": 2, "ablation_steps": 2,
       "ablation_seeds": (0,), "ablation_eval_limit": 1, "ablation_pass_at_1": False}


def _doc_chars(text: str) -> int | None:
    """Characters of comments and docstrings (a string statement) in ``text``; None when it
    does not tokenize as Python."""
    chars, prev = 0, None
    try:
        for t in tokenize.generate_tokens(io.StringIO(text).readline):
            if t.type == tokenize.COMMENT or (t.type == tokenize.STRING and prev in (
                    None, tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE, tokenize.NL)):
                chars += len(t.string)
            if t.type not in (tokenize.NL, tokenize.COMMENT):
                prev = t.type
    except (tokenize.TokenError, SyntaxError):
        return None
    return chars


def data_profile(run: Path, facts: dict) -> dict:
    """What each arm trained on, beside what the NLL scores (HumanEval's canonical solutions:
    bare function bodies): files, the share of comment and docstring characters, function
    definitions per 1,000 characters, and the cross-entropy of the solutions' tokens under the
    arm's token frequencies (a unigram model, add-one smoothed: how far the arm's text is from
    the solutions before any training)."""
    import numpy as np
    from transformers import PreTrainedTokenizerFast

    from primer.benchmarks import load_benchmark
    from primer.datasets import open_dataset, read_manifest

    tok = PreTrainedTokenizerFast.from_pretrained(str(run / "pack-code" / "tokenizer"))
    solutions = [p.reference for p in load_benchmark("humaneval").problems.values()]
    ids = np.asarray([i for s in solutions for i in tok(s, add_special_tokens=False).input_ids])
    out = {}
    for arm, uri in (facts.get("ablation_packs") or {}).items():
        pack = Path(uri)
        meta = read_manifest(uri).metadata
        texts = [t for src in meta["sources"] for t in open_dataset(src["uri"]).to_table(
            ["text"]).column("text").to_pylist() if t]
        doc = [d / len(t) for t in texts if (d := _doc_chars(t)) is not None]
        defs = sum(len(re.findall(r"^\s*(?:async\s+)?def ", t, re.M)) for t in texts)
        counts = np.ones(meta["vocab_size"])
        for f in sorted(pack.glob("tokens-*.bin")):
            counts += np.bincount(np.fromfile(f, dtype=meta["dtype"]),
                                  minlength=meta["vocab_size"])
        out[arm] = {"files": len(texts), "pack_tokens": meta["windows"] * meta["seq_len"],
                    "comment_docstring_char_share": round(statistics.fmean(doc), 3),
                    "defs_per_1k_chars": round(1000 * defs / sum(map(len, texts)), 3),
                    "humaneval_solution_unigram_xent": round(float(
                        -np.log(counts[ids] / counts.sum()).mean()), 3)}
    return out


def summarise(run: Path, wall_s: float, commit: str) -> dict:
    facts = json.loads((run / "report" / "facts.json").read_text())
    plan = facts["plan"]
    g = report.gather(run, facts)
    return {
        "machine": f"{os.cpu_count()} CPUs, shared with other jobs (timings are noisy)",
        "commit": commit,
        "mode": "quick" if facts["quick"] else "full",
        "plan_changes": facts.get("plan_changes", {}),
        "steps": plan["ablation_steps"], "sequences_per_step": 16, "seq_len": plan["seq_len"],
        "tokens_per_arm": plan["ablation_steps"] * 16 * plan["seq_len"],
        "seeds": plan["ablation_seeds"],
        "eval": {"nll": "all 164 canonical HumanEval solutions, nats/token",
                 "pass_at_1_problems_per_benchmark": plan["ablation_eval_limit"]
                 if plan.get("ablation_pass_at_1", True) else "not measured"},
        "synthetic_arm": facts.get("ablation_synthetic"),
        "arms": {r["arm"]: {"pack_tokens": facts.get("ablation_pack_tokens", {}).get(r["arm"]),
                            "nll_mean": r["nll_mean"], "nll_std": r["nll_std"],
                            "nll_per_seed": r["nll_seeds"], "humaneval_pass@1": r["he_mean"],
                            "mbpp_pass@1": r["mbpp_mean"]} for r in g.get("ablation", [])},
        "pairs": g.get("ablation_pairs", []),
        "data": data_profile(run, facts),
        "ablation_stage_s": facts.get("stage_times", {}).get("ablation", {}).get("seconds"),
        "wall_s": round(wall_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="storage root (default: a new temp folder)")
    ap.add_argument("--run", default=f"ablation-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--quick", action="store_true", help="start from the --quick plan")
    ap.add_argument("--toy", action="store_true", help="the smallest plan that runs every "
                    "stage (tests/bench: seconds per stage, numbers meaningless)")
    ap.add_argument("--steps", type=int, help="training steps per arm and seed")
    ap.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--no-pass-at-1", action="store_true", help="NLL only")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "ablation.json")
    a = ap.parse_args()
    changes = dict(TOY) if a.toy else {}
    if a.steps:
        changes["ablation_steps"] = a.steps
    if a.seeds:
        changes["ablation_seeds"] = tuple(int(s) for s in a.seeds.split(","))
    if a.no_pass_at_1:
        changes["ablation_pass_at_1"] = False
    quick = a.quick or a.toy
    plan = dataclasses.replace(demo.QUICK if quick else demo.FULL, **changes)
    root = a.root or subprocess.run(["mktemp", "-d", "/tmp/primer-bench-ablation.XXXXXX"],
                                    capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    t0 = time.monotonic()
    path = demo.run(root, a.run, quick=quick, workers=a.workers, ablation=True, plan=plan)
    result = summarise(path.parent.parent, time.monotonic() - t0, commit)
    a.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
