"""A model small enough for tests: built here, offline, in about a second."""

from __future__ import annotations

from pathlib import Path


def save_tiny_model(path: Path) -> Path:
    """A 2-layer random PhiForCausalLM and a byte-level BPE tokenizer trained offline, saved
    as an exported model folder (``save_pretrained``) at ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as dec
    from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = dec.ByteLevel()
    corpus = ["def add(a, b):\n    return a + b\n", "class A:\n    pass\n# comment\n"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = PhiConfig(vocab_size=fast.vocab_size, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                       eos_token_id=fast.eos_token_id, pad_token_id=fast.eos_token_id)
    PhiForCausalLM(config).save_pretrained(path)
    return path
