"""Export a checkpoint as a Hugging Face folder: ``save_pretrained`` weights + tokenizer.

The result loads with ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` and
``AutoTokenizer.from_pretrained(out_dir)``, so evaluation and any HF tool can use it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import CheckpointError, load_model_state, load_object, open_committed
from model.config import TrainConfig
from model.presets import build_model
from model.tokenizer import load_tokenizer
from primer.storage import Storage, open_storage


def export(checkpoint_uri: str, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the committed checkpoint at ``checkpoint_uri`` (a step folder, or a run URI for
    its newest) to ``out_dir``; returns ``out_dir``. A folder that holds no checkpoint but is
    an export already (a model config beside weights: e.g. a finetune's ``hf/``) is copied as
    it is, so one command readies any model URI for evaluation (the evaluation Job's first
    step)."""
    try:
        ckpt = open_committed(checkpoint_uri)
    except CheckpointError:
        source = open_storage(checkpoint_uri)
        if not _is_export(source):
            raise
        return _readable(source.download(out_dir))  # weights are GBs: streamed
    trainer = load_object(ckpt, "trainer.pt")
    cfg = TrainConfig.model_validate(trainer["config"])
    model = build_model(cfg.model, trainer["vocab_size"], attn_implementation="sdpa")
    model.load_state_dict(load_model_state(ckpt))  # the whole model, unsharded, here
    tok = load_tokenizer(trainer["tokenizer"])
    for c in (model.config, model.generation_config):
        c.eos_token_id = c.bos_token_id = c.pad_token_id = tok.eos_token_id
    model.to(getattr(torch, dtype))
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return _readable(out)


def _readable(out: Path) -> Path:
    """Every file of the export readable by all: the evaluation Job's scoring container runs
    as another user than its export container (safetensors writes weights 0600)."""
    for path in out.rglob("*"):  # not ``out``: it may be a volume's root, not ours
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return out


def _is_export(store: Storage) -> bool:
    """A ``save_pretrained`` folder: a model config beside weights (a training run also has a
    ``config.json``, its own, but no weights at its top)."""
    names = {o.key for o in store.list() if "/" not in o.key}
    return "config.json" in names and any(
        n.endswith(".safetensors") or n in ("pytorch_model.bin", "model.safetensors.index.json")
        for n in names)
