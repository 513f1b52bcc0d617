"""Tokenize text datasets in parallel and pack them into fixed windows of token ids.

Output (a dataset prefix, manifest written last as for every Primer dataset)::

    <out>/tokenizer/            the tokenizer used (trained or copied), loadable by HF
    <out>/tokens-00000.bin      windows × seq_len token ids, little-endian uint16 or uint32
    <out>/mask-00000.bin        finetuning only: 1 where a token carries loss (the solution)
    <out>/_manifest.json        shards, token count, metadata: seq_len, dtype, sources, seed

Documents are joined with EOS and cut into ``seq_len`` windows (the last partial window of
each source is dropped). Several sources mix by weight: source *i* contributes
``round(w_i / Σw × Σ windows)`` windows, subsampled or repeated in a seeded order, and the
mixed windows are shuffled with the same seed, so a pack is a pure function of its inputs.

:class:`PackedDataset` reads windows back in a seeded order that depends only on the global
sample index: the reader's position in a checkpoint is one integer, independent of the number
of ranks.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from primer.datasets import DatasetError, Producer, ShardInfo, commit_dataset, read_manifest
from primer.executor import Job, LocalExecutor, WorkUnit
from primer.storage import Storage, open_storage

log = logging.getLogger("primer.model.packing")

FORMAT = "primer-tokens/1"
WORK = "_work"
TARGET_SHARD_BYTES = 64 << 20


@dataclass(frozen=True)
class Source:
    """One input text dataset and its mixing weight."""

    uri: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> Source:
        """``URI`` or ``URI@WEIGHT`` (``s3://b/code@0.7``)."""
        uri, sep, weight = spec.rpartition("@")
        if not sep:
            return cls(spec)
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(f"{spec!r}: the weight after '@' must be a number") from None
        if value <= 0:
            raise ValueError(f"{spec!r}: weights must be positive")
        return cls(uri, value)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def is_packed(uri: str) -> bool:
    """Whether ``uri`` holds a packed token dataset (rather than a text dataset)."""
    return read_manifest(uri).metadata.get("format") == FORMAT


# -- one work unit: one input shard -> one token stream ----------------------------------------

def tokenize_shard(source: str, shard: str, tokenizer: str, out: str, unit: str,
                   text_column: str, prompt_column: str, completion_column: str,
                   finetune: bool, dtype: str) -> dict:
    """Tokenize one Parquet shard of ``source`` into ``<out>/_work/<unit>.tok`` (+ ``.mask``).

    Each document ends with EOS; with ``finetune`` a record is prompt + completion + EOS and
    the mask marks completion + EOS.
    """
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    eos = tok.eos_token_id
    src, dst = open_storage(source), open_storage(out)
    ids: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    columns = [prompt_column, completion_column] if finetune else [text_column]
    with src.open_read(shard) as f:
        batches = list(pq.ParquetFile(f).iter_batches(batch_size=1024, columns=columns))
    for batch in batches:
        if finetune:
            prompts = tok(batch.column(prompt_column).to_pylist(),
                          add_special_tokens=False).input_ids
            comps = tok(batch.column(completion_column).to_pylist(),
                        add_special_tokens=False).input_ids
            for p, c in zip(prompts, comps, strict=True):
                ids.append(np.asarray([*p, *c, eos], dtype=dtype))
                masks.append(np.r_[np.zeros(len(p), np.uint8), np.ones(len(c) + 1, np.uint8)])
        else:
            texts = [t for t in batch.column(text_column).to_pylist() if t]
            for doc in tok(texts, add_special_tokens=False).input_ids:
                ids.append(np.asarray([*doc, eos], dtype=dtype))
    stream = np.concatenate(ids) if ids else np.zeros(0, dtype)
    dst.write_bytes(f"{WORK}/{unit}.tok", stream.tobytes())
    if finetune:
        dst.write_bytes(f"{WORK}/{unit}.mask",
                        (np.concatenate(masks) if masks else np.zeros(0, np.uint8)).tobytes())
    return {"tokens": int(stream.size), "documents": len(ids)}


# -- the packing job ---------------------------------------------------------------------------

def prepare_tokenizer(spec: str, sources: list[Source], out: Storage, columns: list[str],
                      vocab: int):
    """Train (``spec == 'train'``) or load the tokenizer and store it at ``<out>/tokenizer``."""
    from model.tokenizer import load_tokenizer, save_tokenizer, train_bpe
    from primer.datasets import open_dataset

    if spec == "train":
        def texts():
            for s in sources:
                for batch in open_dataset(s.uri).iter_batches(columns):
                    for col in batch.columns:
                        yield from (t for t in col.to_pylist() if t)
        tok = train_bpe(texts(), vocab)
    else:
        tok = load_tokenizer(spec)
    save_tokenizer(tok, out.child("tokenizer"))
    return tok


def pack(sources: list[Source], out_uri: str, *, tokenizer: str, seq_len: int = 2048,
         seed: int = 1234, workers: int = 2, finetune: bool = False,
         text_column: str = "text", prompt_column: str = "prompt",
         completion_column: str = "completion", tokenizer_vocab: int = 4096,
         windows_per_shard: int | None = None) -> dict:
    """Pack ``sources`` into ``out_uri``; returns the manifest's metadata."""
    from primer.datasets import open_dataset

    if not sources:
        raise ValueError("pack needs at least one source dataset")
    inputs = [open_dataset(s.uri) for s in sources]  # fails now, clearly, on a bad URI
    out = open_storage(out_uri)
    columns = [prompt_column, completion_column] if finetune else [text_column]
    for src, ds in zip(sources, inputs, strict=True):
        missing = [c for c in columns if c not in ds.manifest.columns]
        if missing:
            raise DatasetError(f"{src.uri} has no column(s) {missing} (it has "
                               f"{sorted(ds.manifest.columns)}); set --data.text_column, or "
                               "--data.prompt_column/--data.completion_column for finetuning")
    tok = prepare_tokenizer(tokenizer, sources, out, columns, tokenizer_vocab)
    dtype = token_dtype(len(tok))
    units = []
    for i, (src, ds) in enumerate(zip(sources, inputs, strict=True)):
        for j, shard in enumerate(ds.manifest.shards):
            units.append(WorkUnit(f"s{i}-{j:05d}", "model.packing:tokenize_shard", {
                "source": src.uri, "shard": shard.name, "tokenizer": out.url("tokenizer"),
                "out": out.uri, "unit": f"s{i}-{j:05d}", "text_column": text_column,
                "prompt_column": prompt_column, "completion_column": completion_column,
                "finetune": finetune, "dtype": dtype.str}))
    # the job's state (markers) is keyed by the inputs, so a rerun with other inputs redoes it
    key = hashlib.sha256(repr((sources, tokenizer, finetune, text_column)).encode()).hexdigest()
    job = Job("tokenize", units, state_uri=out.url(f"{WORK}/state-{key[:12]}"))
    result = LocalExecutor(workers=min(workers, max(1, len(units)))).run(job, progress=False)
    if not result.ok:
        raise RuntimeError(f"tokenizing failed: {result.summary()}")

    per_source: list[tuple[np.ndarray, np.ndarray | None]] = []
    for i, ds in enumerate(inputs):
        names = [f"s{i}-{j:05d}" for j in range(len(ds.manifest.shards))]
        toks = np.concatenate([np.frombuffer(out.read_bytes(f"{WORK}/{n}.tok"), dtype)
                               for n in names] or [np.zeros(0, dtype)])
        mask = np.concatenate([np.frombuffer(out.read_bytes(f"{WORK}/{n}.mask"), np.uint8)
                               for n in names]) if finetune else None
        n_win = toks.size // seq_len
        if n_win == 0:
            raise DatasetError(f"{sources[i].uri}: {toks.size} tokens, fewer than one window "
                               f"of seq_len={seq_len}")
        per_source.append((toks[:n_win * seq_len].reshape(n_win, seq_len),
                           None if mask is None else mask[:n_win * seq_len].reshape(n_win,
                                                                                    seq_len)))
    total = sum(w.shape[0] for w, _ in per_source)
    weight_sum = sum(s.weight for s in sources)
    picked_tok, picked_mask, counts = [], [], []
    for i, ((win, msk), src) in enumerate(zip(per_source, sources, strict=True)):
        want = total if len(sources) == 1 else max(1, round(src.weight / weight_sum * total))
        rng = np.random.default_rng([seed, i])
        reps = -(-want // win.shape[0])
        order = np.concatenate([rng.permutation(win.shape[0]) for _ in range(reps)])[:want]
        picked_tok.append(win[order])
        picked_mask.append(msk[order] if msk is not None else None)
        counts.append(int(want))
    windows = np.concatenate(picked_tok)
    masks = np.concatenate(picked_mask) if finetune else None
    perm = np.random.default_rng(seed).permutation(windows.shape[0])
    windows = windows[perm]
    masks = masks[perm] if masks is not None else None

    per_shard = windows_per_shard or max(1, TARGET_SHARD_BYTES // (seq_len * dtype.itemsize))
    shards: list[ShardInfo] = []
    for k, start in enumerate(range(0, windows.shape[0], per_shard)):
        chunk = windows[start:start + per_shard]
        shards.append(_write_bin(out, f"tokens-{k:05d}.bin", chunk))
        if masks is not None:
            shards.append(_write_bin(out, f"mask-{k:05d}.bin", masks[start:start + per_shard]))
    metadata = {
        "format": FORMAT, "seq_len": seq_len, "dtype": dtype.str, "vocab_size": len(tok),
        "eos_id": tok.eos_token_id, "windows": int(windows.shape[0]), "seed": seed,
        "windows_per_shard": per_shard, "finetune": finetune, "tokenizer": "tokenizer",
        "sources": [{"uri": s.uri, "weight": s.weight, "windows_available": int(w.shape[0]),
                     "windows_used": c} for s, (w, _), c in
                    zip(sources, per_source, counts, strict=True)],
    }
    commit_dataset(out, shards, Producer("pack"), tokens=int(windows.size), metadata=metadata,
                   columns={"tokens": dtype.str})
    out.delete_prefix(f"{WORK}/")
    log.info("packed %d windows of %d tokens into %s", windows.shape[0], seq_len, out.uri)
    return metadata


def _write_bin(store: Storage, name: str, array: np.ndarray) -> ShardInfo:
    data = np.ascontiguousarray(array).tobytes()
    store.write_bytes(name, data)
    return ShardInfo(name, int(array.shape[0]), len(data), hashlib.sha256(data).hexdigest())


# -- reading -----------------------------------------------------------------------------------

class PackedDataset:
    """Windows of a packed dataset in a seeded order that is a function of the sample index.

    Epoch *e* visits the token shards in a permutation seeded by ``(seed, e)`` and each
    shard's windows in one seeded by ``(seed, e, shard)``: every shard is read once per epoch,
    and sample *g* is the same window whatever the number of ranks or restarts.
    """

    def __init__(self, uri: str, seed: int | None = None, cache_shards: int = 2):
        self.store = open_storage(uri)
        manifest = read_manifest(self.store)
        meta = manifest.metadata
        if meta.get("format") != FORMAT:
            raise DatasetError(f"{self.store.uri} is not a packed token dataset (run `primer "
                               "pack` on it, or pass it to `primer train`, which packs it)")
        self.meta = meta
        self.seq_len: int = int(meta["seq_len"])
        self.dtype = np.dtype(meta["dtype"])
        self.seed = int(meta["seed"] if seed is None else seed)
        self.token_shards = [s for s in manifest.shards if s.name.startswith("tokens-")]
        self.has_mask = bool(meta.get("finetune"))
        self.sizes = np.array([s.rows for s in self.token_shards])
        self.windows = int(self.sizes.sum())
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_n = cache_shards
        self._epoch_order: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._row_perm: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.windows

    def _load(self, name: str, dtype: np.dtype) -> np.ndarray:
        if name not in self._cache:
            data = np.frombuffer(self.store.read_bytes(name), dtype).reshape(-1, self.seq_len)
            self._cache[name] = data
            while len(self._cache) > self._cache_n:
                self._cache.popitem(last=False)
        self._cache.move_to_end(name)
        return self._cache[name]

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._epoch_order:
            shard_perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.sizes))
            self._epoch_order = {epoch: (shard_perm, np.cumsum(self.sizes[shard_perm]))}
        return self._epoch_order[epoch]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, window within it) of global sample ``index``."""
        epoch, k = divmod(index, self.windows)
        shard_perm, ends = self._order(epoch)
        pos = int(np.searchsorted(ends, k, side="right"))
        shard = int(shard_perm[pos])
        within = k - (int(ends[pos - 1]) if pos else 0)
        if (epoch, shard) not in self._row_perm:
            self._row_perm = {(epoch, shard): np.random.default_rng(
                [self.seed, epoch, shard]).permutation(self.sizes[shard])}
        return shard, int(self._row_perm[epoch, shard][within])

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        shard, row = self.locate(index)
        name = self.token_shards[shard].name
        tokens = self._load(name, self.dtype)[row].astype(np.int64)
        mask = None
        if self.has_mask:
            mask = self._load(name.replace("tokens-", "mask-"), np.dtype(np.uint8))[row]
        return tokens, mask

    def batch(self, start: int, size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Samples ``start … start+size-1`` stacked: (size, seq_len) tokens and mask."""
        items = [self.get(start + i) for i in range(size)]
        tokens = np.stack([t for t, _ in items])
        mask = np.stack([m for _, m in items]) if self.has_mask else None
        return tokens, mask
