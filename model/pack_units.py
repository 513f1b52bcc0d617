"""The two kinds of work unit a pack is made of; each holds one input or one output shard.

``tokenize_shard``: one Parquet shard of one source → ``<work>/<unit>.tok`` (+ ``.mask``),
whole windows only: its documents joined with EOS, cut into ``seq_len`` windows, the
remainder of the shard (under ``seq_len`` tokens) dropped. Streams about a MiB of text at a
time.

``write_shard``: one output shard → ``tokens-NNNNN.bin`` (+ ``mask-NNNNN.bin``), its windows
gathered by ranged reads from the tokenized files, in the order the coordinator wrote to
``<plan>/order.bin`` (a global window number per output row). Holds one output shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict

import numpy as np

from primer.datasets import ShardInfo, open_dataset
from primer.storage import Storage, open_storage

#: Neighbouring windows of one file closer than this are fetched in one read (fewer GETs).
COALESCE_BYTES = 1 << 20
#: Characters tokenized in one call: the tokenizer's output is tens of bytes a token.
CHUNK_CHARS = 1 << 20
#: The largest single read while gathering, so a dense run never loads a whole file.
MAX_READ_BYTES = 16 << 20


def tokenize_shard(source: str, shard: str, tokenizer: str, out: str, work: str, unit: str,
                   seq_len: int, text_column: str, prompt_column: str, completion_column: str,
                   finetune: bool, dtype: str) -> dict:
    """Tokenize one Parquet shard of ``source`` into whole windows; returns their count.

    Each document ends with EOS; with ``finetune`` a record is prompt + completion + EOS and
    the mask marks completion + EOS.
    """
    from model.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    src, dst = open_storage(source), open_storage(out)
    columns = [prompt_column, completion_column] if finetune else [text_column]
    carry_ids, carry_mask = np.zeros(0, dtype), np.zeros(0, np.uint8)
    windows = documents = 0
    # the shard through the dataset's checks: inside it, the manifest's size, columns and
    # rows, and no more decoded bytes than a shard may hold
    batches = open_dataset(src, check_sizes=False).shard_batches(shard, columns, batch_size=256)
    with contextlib.ExitStack() as stack:
        tok_out = stack.enter_context(dst.open_write(f"{work}/{unit}.tok"))
        mask_out = stack.enter_context(dst.open_write(f"{work}/{unit}.mask")) \
            if finetune else None
        for rows in _chunks(batches, columns):
            if finetune:
                ids, mask = _encode_pairs(tok, [r[0] for r in rows], [r[1] for r in rows],
                                          dtype)
            else:
                ids, mask = _encode_texts(tok, [r[0] for r in rows], dtype)
            documents += len(rows)
            ids = np.concatenate([carry_ids, ids])
            whole = ids.size // seq_len * seq_len
            tok_out.write(ids[:whole].tobytes())
            carry_ids = ids[whole:]
            if mask_out is not None:
                mask = np.concatenate([carry_mask, mask])
                mask_out.write(mask[:whole].tobytes())
                carry_mask = mask[whole:]
            windows += whole // seq_len
    return {"windows": windows, "documents": documents, "dropped_tokens": int(carry_ids.size)}


def _chunks(batches, columns: list[str], max_chars: int = CHUNK_CHARS):
    """The shard's rows (tuples of ``columns``) in lists of about ``max_chars`` characters:
    what one call to the tokenizer holds, whatever the shard's size."""
    rows, size = [], 0
    for batch in batches:
        for row in zip(*(batch.column(c).to_pylist() for c in columns), strict=True):
            rows.append(row)
            size += sum(len(v) for v in row if v)
            if size >= max_chars:
                yield rows
                rows, size = [], 0
    if rows:
        yield rows


def _encode_texts(tok, texts: list, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    eos = [tok.eos_token_id]
    docs = tok([t for t in texts if t], add_special_tokens=False).input_ids
    ids = np.concatenate([np.asarray(d + eos, dtype) for d in docs]) if docs \
        else np.zeros(0, dtype)
    return ids, np.zeros(0, np.uint8)


def _encode_pairs(tok, prompts: list, completions: list,
                  dtype: str) -> tuple[np.ndarray, np.ndarray]:
    eos = [tok.eos_token_id]
    p_ids = tok(prompts, add_special_tokens=False).input_ids
    c_ids = tok(completions, add_special_tokens=False).input_ids
    if not p_ids:
        return np.zeros(0, dtype), np.zeros(0, np.uint8)
    pairs = list(zip(p_ids, c_ids, strict=True))
    ids = np.concatenate([np.asarray(p + c + eos, dtype) for p, c in pairs])
    mask = np.concatenate([np.r_[np.zeros(len(p), np.uint8), np.ones(len(c) + 1, np.uint8)]
                           for p, c in pairs])
    return ids, mask


def write_shard(out: str, plan: str, index: int, start: int, count: int) -> dict:
    """Write output shard ``index``: rows ``start … start+count-1`` of the plan's order."""
    store = open_storage(out)
    layout = json.loads(store.read_text(f"{plan}/layout.json"))
    seq_len, dtype = int(layout["seq_len"]), np.dtype(layout["dtype"])
    order_dtype = np.dtype(layout["order_dtype"])
    with store.open_read(f"{plan}/order.bin", offset=start * order_dtype.itemsize) as f:
        ids = np.frombuffer(f.read(count * order_dtype.itemsize), order_dtype).astype(np.int64)
    if ids.size != count:
        raise ValueError(f"{store.url(plan)}/order.bin ends before row {start + count}")
    ends = np.cumsum(np.asarray(layout["windows"], dtype=np.int64))
    file_no = np.searchsorted(ends, ids, side="right")
    rows = ids - (ends[file_no] - np.asarray(layout["windows"], dtype=np.int64)[file_no])
    work = layout["work"]
    shards = {"tokens": _gather(store, work, layout["units"], ".tok", file_no, rows,
                                seq_len, dtype, f"tokens-{index:05d}.bin")}
    if layout["finetune"]:
        shards["mask"] = _gather(store, work, layout["units"], ".mask", file_no, rows,
                                 seq_len, np.dtype(np.uint8), f"mask-{index:05d}.bin")
    return shards


def _gather(store: Storage, work: str, units: list[str], suffix: str, file_no: np.ndarray,
            rows: np.ndarray, seq_len: int, dtype: np.dtype, name: str) -> dict:
    """Fill an output shard, window by window, from ranged reads of the tokenized files."""
    row_bytes = seq_len * dtype.itemsize
    result = np.empty((rows.size, seq_len), dtype)
    by_place = np.lexsort((rows, file_no))  # read each file once, front to back
    i = 0
    while i < by_place.size:
        f_no = int(file_no[by_place[i]])
        j = i
        while j < by_place.size and file_no[by_place[j]] == f_no:
            j += 1
        with store.open_read(f"{work}/{units[f_no]}{suffix}") as f:
            _read_rows(f, rows, by_place[i:j], row_bytes, dtype, seq_len, result)
        i = j
    data = result.tobytes()
    store.write_bytes(name, data)
    return asdict(ShardInfo(name, int(rows.size), len(data), hashlib.sha256(data).hexdigest()))


def _read_rows(f, rows: np.ndarray, picks: np.ndarray, row_bytes: int, dtype: np.dtype,
               seq_len: int, result: np.ndarray) -> None:
    """Read ``rows[picks]`` (sorted) of one file into ``result[picks]``: a run of close rows
    comes in one read, bounded by :data:`MAX_READ_BYTES`."""
    i = 0
    while i < picks.size:
        first = int(rows[picks[i]])
        j = i + 1
        while j < picks.size:
            row = int(rows[picks[j]])
            gap = (row - int(rows[picks[j - 1]])) * row_bytes
            if gap > COALESCE_BYTES or (row - first + 1) * row_bytes > MAX_READ_BYTES:
                break
            j += 1
        last = int(rows[picks[j - 1]])
        f.seek(first * row_bytes)
        span = f.read((last - first + 1) * row_bytes)
        if len(span) != (last - first + 1) * row_bytes:
            raise ValueError(f"{getattr(f, 'name', 'a tokenized file')} ends before window "
                             f"{last}: it is shorter than its unit reported")
        block = np.frombuffer(span, dtype).reshape(-1, seq_len)
        result[picks[i:j]] = block[rows[picks[i:j]] - first]
        i = j
