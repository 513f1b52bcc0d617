"""Negative log-likelihood of a benchmark's reference solutions under a model.

The phi-1 claim measured without sampling: a model trained on better data should find the
canonical HumanEval solutions more likely. For each problem the model reads ``prompt`` and is
scored on the tokens of ``reference`` (the canonical solution) only. A token belongs to the
solution when its first character lies at or after the end of the prompt (so a BPE merge
across the boundary counts once, for the solution). Sequences longer than the model's context
are scored in sliding windows, each solution token seen with up to ``context - stride`` tokens
of left context.

Writes ``<output>/nll.json``: ``nll_per_token`` (total NLL / total solution tokens, nats),
``nll_per_problem`` (mean over problems of each problem's per-token NLL), ``tokens``, and
``per_task``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from primer.benchmarks import Benchmark
from primer.storage import open_storage
from primer.summary import write_summary
from services.evaluation.scoring import stage_summary


def reference_nll(model_dir: str, benchmark: Benchmark, output: str,
                  device: str = "auto") -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.eval()
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    stride = max(1, context // 2)
    per_task: dict[str, dict[str, float]] = {}
    total_nll, total_tokens = 0.0, 0
    for p in benchmark.problems.values():
        text = p.prompt + p.reference
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        ids = enc["input_ids"]
        start = next((i for i, (a, _) in enumerate(enc["offset_mapping"]) if a >= len(p.prompt)),
                     len(ids))
        start = max(start, 1)  # the first token has nothing to be predicted from
        nll, n = 0.0, 0
        for s in range(start, len(ids), stride):
            end = min(len(ids), s + stride)
            begin = max(0, end - context)
            window = torch.tensor([ids[begin:end]], device=device)
            with torch.no_grad():
                logits = model(window).logits[0].float()
            logp = torch.log_softmax(logits[s - begin - 1:end - begin - 1], dim=-1)
            target = window[0, s - begin:end - begin]
            nll -= float(logp.gather(1, target[:, None]).sum())
            n += end - s
        per_task[p.task_id] = {"nll": nll, "tokens": n,
                               "nll_per_token": nll / n if n else math.nan}
        total_nll += nll
        total_tokens += n
    scored = [t["nll_per_token"] for t in per_task.values() if t["tokens"]]
    summary = {"benchmark": benchmark.name, "model": model_dir, "n_problems": len(benchmark),
               "tokens": total_tokens,
               "nll_per_token": total_nll / total_tokens if total_tokens else math.nan,
               "nll_per_problem": sum(scored) / len(scored) if scored else math.nan,
               "context": context, "stride": stride, "per_task": per_task}
    open_storage(output).write_text("nll.json", json.dumps(summary, indent=2) + "\n")
    write_summary(output, stage_summary(f"nll/{benchmark.name}", summary))
    return summary
