"""Pack text datasets into fixed windows of token ids, as work units in bounded memory.

Output (a dataset prefix, manifest written last as for every Primer dataset)::

    <out>/tokenizer/            the tokenizer used (trained or copied), loadable by HF
    <out>/tokens-00000.bin      windows × seq_len token ids, little-endian uint16 or uint32
    <out>/mask-00000.bin        finetuning only: 1 where a token carries loss (the solution)
    <out>/_manifest.json        shards, token count, metadata: seq_len, dtype, sources, seed

Three steps, none of which holds the corpus (see :mod:`model.pack_units`):

1. one unit per input shard joins its documents with EOS and cuts them into ``seq_len``
   windows (the shard's remainder, under one window, is dropped) and reports the count;
2. this process computes, from the counts only, each source's picks and the shuffled order
   as one integer per output window (``order.bin``: 4 bytes a window);
3. one unit per output shard gathers its windows by ranged reads and writes the shard.

Several sources mix by weight: source *i* contributes ``round(w_i / Σw × Σ windows)``
windows, subsampled or repeated in a seeded order, and the mixed windows are shuffled with
the same seed, so a pack is a pure function of its inputs and seed, whatever the executor or
its number of workers. Units leave markers: a rerun skips what was done.

:class:`PackedDataset` reads windows back in a seeded order that depends only on the global
sample index: the reader's position in a checkpoint is one integer, independent of the number
of ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from primer.datasets import DatasetError, Producer, ShardInfo, commit_dataset, read_manifest
from primer.executor import Executor, Job, LocalExecutor, WorkUnit
from primer.storage import Storage, open_storage

log = logging.getLogger("primer.model.packing")

FORMAT = "primer-tokens/1"
WORK = "_work"
TARGET_SHARD_BYTES = 64 << 20
UNITS = "model.pack_units"


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


def make_executor(kind: str = "local", workers: int = 2,
                  redis_url: str | None = None) -> Executor:
    """``local``: a process pool of ``workers``; ``celery``: the curation workers' queue
    (``PRIMER_CELERY_QUEUE`` overrides it), over ``redis_url`` or ``PRIMER_REDIS_URL``."""
    if kind == "celery":
        from primer.executor import CeleryExecutor

        return CeleryExecutor(redis_url, component="curation")
    if kind != "local":
        raise ValueError(f"executor {kind!r}: use 'local' or 'celery'")
    return LocalExecutor(workers=workers)


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


def mix_order(available: list[int], weights: list[float], seed: int) -> tuple[np.ndarray,
                                                                               list[int]]:
    """The packed order as global window numbers (source 0's windows first, then source 1's
    …), and the windows used per source. Source *i* gets ``round(w_i/Σw × Σ available)``
    windows (all of them once when alone), drawn from seeded permutations of its own, and
    the mix is permuted with ``seed``."""
    total, weight_sum = sum(available), sum(weights)
    picks, used, offset = [], [], 0
    for i, (n, w) in enumerate(zip(available, weights, strict=True)):
        want = total if len(available) == 1 else max(1, round(w / weight_sum * total))
        rng = np.random.default_rng([seed, i])
        reps = -(-want // n)
        picks.append(np.concatenate([rng.permutation(n) for _ in range(reps)])[:want] + offset)
        used.append(int(want))
        offset += n
    mixed = np.concatenate(picks)
    del picks
    return mixed[np.random.default_rng(seed).permutation(mixed.size)], used


def pack(sources: list[Source], out_uri: str, *, tokenizer: str, seq_len: int = 2048,
         seed: int = 1234, workers: int = 2, finetune: bool = False,
         text_column: str = "text", prompt_column: str = "prompt",
         completion_column: str = "completion", tokenizer_vocab: int = 4096,
         windows_per_shard: int | None = None, executor: Executor | None = None,
         progress: bool = False) -> dict:
    """Pack ``sources`` into ``out_uri``; returns the manifest's metadata.

    Units run on ``executor`` (default: a local pool of ``workers`` processes)."""
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
    shard_names = [[s.name for s in ds.manifest.shards] for ds in inputs]
    # the work (and its markers) is keyed by what decides its output: other inputs redo it
    key = _key([s.uri for s in sources], shard_names, tokenizer, tokenizer_vocab, seq_len,
               finetune, columns, dtype.str)
    work = f"{WORK}/{key}"
    units = [WorkUnit(f"tok-s{i}-{j:05d}", f"{UNITS}:tokenize_shard", {
        "source": src.uri, "shard": shard, "tokenizer": out.url("tokenizer"), "out": out.uri,
        "work": work, "unit": f"s{i}-{j:05d}", "seq_len": seq_len, "text_column": text_column,
        "prompt_column": prompt_column, "completion_column": completion_column,
        "finetune": finetune, "dtype": dtype.str})
        for i, src in enumerate(sources) for j, shard in enumerate(shard_names[i])]
    executor = executor or LocalExecutor(workers=min(workers, max(1, len(units))))
    counts = _run(executor, Job("pack-tokenize", units, out.url(f"{work}/state/tokenize")),
                  progress)
    per_unit = [int(counts[u.id]["windows"]) for u in units]

    available, k = [], 0
    for src, names in zip(sources, shard_names, strict=True):
        available.append(sum(per_unit[k:k + len(names)]))
        k += len(names)
        if available[-1] == 0:
            raise DatasetError(f"{src.uri}: no input shard holds a whole window of seq_len="
                               f"{seq_len} tokens")
    per_shard = windows_per_shard or max(1, TARGET_SHARD_BYTES // (seq_len * dtype.itemsize))
    order, used = mix_order(available, [s.weight for s in sources], seed)
    plan = f"{work}/plan-{_key(seed, [s.weight for s in sources], per_shard)}"
    order_dtype = np.dtype("<u4") if sum(available) < 1 << 32 else np.dtype("<u8")
    out.write_bytes(f"{plan}/order.bin", order.astype(order_dtype).tobytes())
    n_windows = int(order.size)
    del order
    out.write_text(f"{plan}/layout.json", json.dumps({
        "work": work, "units": [u.args["unit"] for u in units], "windows": per_unit,
        "seq_len": seq_len, "dtype": dtype.str, "order_dtype": order_dtype.str,
        "finetune": finetune}))
    writes = [WorkUnit(f"shard-{i:05d}", f"{UNITS}:write_shard", {
        "out": out.uri, "plan": plan, "index": i, "start": start,
        "count": min(per_shard, n_windows - start)})
        for i, start in enumerate(range(0, n_windows, per_shard))]
    written = _run(executor, Job("pack-write", writes, out.url(f"{plan}/state")), progress)
    shards = [ShardInfo(**info) for w in writes for info in written[w.id].values()]
    metadata = {
        "format": FORMAT, "seq_len": seq_len, "dtype": dtype.str, "vocab_size": len(tok),
        "eos_id": tok.eos_token_id, "windows": n_windows, "seed": seed,
        "windows_per_shard": per_shard, "finetune": finetune, "tokenizer": "tokenizer",
        "sources": [{"uri": s.uri, "weight": s.weight, "windows_available": a,
                     "windows_used": u} for s, a, u in zip(sources, available, used,
                                                            strict=True)],
        "dropped_tokens": sum(int(counts[u.id]["dropped_tokens"]) for u in units),
    }
    commit_dataset(out, shards, Producer("pack"), tokens=n_windows * seq_len,
                   metadata=metadata, columns={"tokens": dtype.str})
    out.delete_prefix(f"{WORK}/")
    log.info("packed %d windows of %d tokens into %s", n_windows, seq_len, out.uri)
    return metadata


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _run(executor: Executor, job: Job, progress: bool) -> dict:
    result = executor.run(job, progress=progress)
    if not result.ok:
        first = result.failed[0]
        raise RuntimeError(f"packing failed: {result.summary()}; {first.unit_id}: "
                           f"{first.error} (rerun the same command to retry; finished units "
                           "are kept)")
    return result.results


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
