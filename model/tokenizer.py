"""Tokenizers: any Hugging Face tokenizer by name or path, or a byte-level BPE trained offline.

Real runs use ``Salesforce/codegen-350M-mono`` (phi-1's, 50k tokens, ``<|endoftext|>``
separates files). Where nothing can be downloaded, :func:`train_bpe` learns a byte-level BPE
from the corpus itself; it is stored with the data (and the run) so every later step, the
export included, uses exactly the same one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from primer.storage import Storage, open_storage

EOS = "<|endoftext|>"


class TokenizerError(ValueError):
    """The tokenizer cannot be loaded or has no end-of-text token."""


def train_bpe(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 / codegen style) with ``<|endoftext|>`` as EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)


def _is_storage(spec: str) -> bool:
    return "://" in spec or Path(spec).exists()


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, uri: str | Storage) -> None:
    """Store ``tokenizer``'s files under ``uri`` (any storage URI)."""
    store = uri if isinstance(uri, Storage) else open_storage(uri)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            store.write_bytes(path.name, path.read_bytes())


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a storage URI or local folder, else from the Hugging Face hub."""
    if _is_storage(spec):
        store = open_storage(spec)
        if not store.exists("tokenizer_config.json"):
            raise TokenizerError(f"{store.uri} holds no tokenizer (no tokenizer_config.json)")
        if "://" not in spec or spec.startswith("file://"):
            tok = AutoTokenizer.from_pretrained(store.url(""))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                for obj in store.list():
                    if "/" not in obj.key:
                        Path(tmp, obj.key).write_bytes(store.read_bytes(obj.key))
                tok = AutoTokenizer.from_pretrained(tmp)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(spec)
        except OSError as exc:
            raise TokenizerError(
                f"cannot load tokenizer {spec!r} from the Hugging Face hub ({exc}); offline, "
                "pass a local path or --data.tokenizer=train") from None
    if tok.eos_token_id is None:
        raise TokenizerError(f"tokenizer {spec!r} has no EOS token to join documents with")
    return tok


def vocab_size_for(tokenizer: PreTrainedTokenizerBase, multiple: int = 64) -> int:
    """Embedding rows for ``tokenizer``: its length rounded up (tensor-core friendly)."""
    n = len(tokenizer)
    return (n + multiple - 1) // multiple * multiple


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we parallelise with processes
