"""Tiny, random model checkpoints made offline, for tests that need a real save_pretrained
folder (a teacher, `primer serve`): nothing can be downloaded here."""

from __future__ import annotations

from pathlib import Path


def tiny_checkpoint(path: Path) -> Path:
    """A random 1-layer PhiForCausalLM and an offline byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|eos|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel
                                                .alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")
    model = PhiForCausalLM(PhiConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     max_position_embeddings=256))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
