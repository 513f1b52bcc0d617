"""Checkpoints in any storage (local or ``s3://``), sharded, committed by a marker written last.

Layout under the run URI (DESIGN.md)::

    checkpoints/step-<N>/.metadata          DCP's index: every tensor's shards and where they are
    checkpoints/step-<N>/__<r>_0.distcp     rank r's shards of the model and optimizer state
    checkpoints/step-<N>/trainer.pt         step, scheduler, scaler, data position, config
    checkpoints/step-<N>/rng-<rank>.pt      each rank's torch / CUDA / numpy / python RNG
    checkpoints/step-<N>/COMMITTED          JSON: step and every file's size — written last
    checkpoints/latest                      the newest committed step (a hint; listing decides)

Model and optimizer state go through ``torch.distributed.checkpoint`` (DCP): every rank writes
only the shards it holds (FSDP2's DTensor shards; a replicated DDP tensor is written once),
streamed tensor by tensor into ``primer.storage`` (:class:`StorageWriter`), and reads back only
the pieces its own shards need, whatever the number of ranks that wrote them: a run saved on 2
ranks resumes on 1, 2 or 4. Nothing is gathered on rank 0.

A checkpoint exists only once ``COMMITTED`` does and every file it names has that size, so a
pod killed mid-write (a *torn* checkpoint) is never resumed from. Each object is itself
published atomically by ``primer.storage``. Milestone steps (``keep``) are never pruned.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.filesystem import (
    FileSystemBase,
    FileSystemReader,
    FileSystemWriter,
)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from primer.storage import ObjectNotFoundError, Storage, StorageError, open_storage

log = logging.getLogger("primer.model.checkpoint")

PREFIX = "checkpoints"
MARKER = "COMMITTED"
_STEP = re.compile(r"^step-(\d+)$")
#: Fault injection for the crash tests: SIGKILL this process after writing a checkpoint's
#: files and before its COMMITTED marker, at this step.
KILL_BEFORE_COMMIT_ENV = "PRIMER_FAULT_KILL_BEFORE_COMMIT"


class CheckpointError(StorageError):
    """A checkpoint is missing, not committed or inconsistent; the message names it."""


class _Position(io.RawIOBase):
    """A write stream that knows its offset (DCP records each item's ``tell()``)."""

    def __init__(self, raw):
        self._raw, self._pos = raw, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        n = len(memoryview(b).cast("B"))
        self._raw.write(b)
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos


class _StorageFS(FileSystemBase):
    """DCP's file-system interface over a :class:`~primer.storage.Storage`: a *path* is a key
    under the checkpoint's step folder, on local disk or S3 alike."""

    def __init__(self, store: Storage):
        self.store = store

    @contextlib.contextmanager
    def create_stream(self, path, mode: str) -> Iterator[io.IOBase]:
        if mode == "wb":
            with self.store.open_write(str(path)) as raw:
                yield _Position(raw)  # type: ignore[misc]
        elif mode == "rb":
            with self.store.open_read(str(path)) as raw:
                yield raw
        else:
            raise ValueError(f"unsupported mode {mode!r}")

    def concat_path(self, path, suffix: str) -> str:
        return f"{path}/{suffix}" if str(path) else suffix

    def rename(self, path, new_path) -> None:
        self.store.move(str(path), str(new_path))

    def init_path(self, path) -> str:
        return str(path)

    def mkdir(self, path) -> None:
        pass  # keys need no folders

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False

    def exists(self, path) -> bool:
        return self.store.exists(str(path))

    def rm_file(self, path) -> None:
        self.store.delete(str(path))

    def ls(self, path) -> list[str]:
        return [o.key for o in self.store.list(str(path))]


class StorageWriter(FileSystemWriter):
    """DCP's file writer with its files in ``store``: one file of shards per rank."""

    def __init__(self, store: Storage):
        # Durability is the storage's (atomic publish); COMMITTED is written after all ranks.
        super().__init__("", single_file_per_rank=True, sync_files=False, overwrite=True)
        self.fs = _StorageFS(store)


class StorageReader(FileSystemReader):
    """DCP's file reader over ``store``; from an object store, each item is fetched with one
    ranged GET (``torch.load`` seeks within an item, which would cost a GET per seek)."""

    def __init__(self, store: Storage):
        super().__init__("")
        self.fs = _StorageFS(store)

    def _slice_file(self, file, sinfo):
        try:
            file.fileno()
        except (OSError, AttributeError, io.UnsupportedOperation):
            file.seek(sinfo.offset)
            return io.BytesIO(file.read(sinfo.length))
        return super()._slice_file(file, sinfo)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _save(store: Storage, key: str, obj: Any) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    store.write_bytes(key, data)
    return len(data)


def load_object(store: Storage, key: str) -> Any:
    try:
        data = store.read_bytes(key)
    except ObjectNotFoundError:
        raise CheckpointError(f"{store.url(key)} is missing from a committed checkpoint") \
            from None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


class CheckpointManager:
    """Save, list, resolve and prune the checkpoints of one run.

    ``keep_last`` committed checkpoints are kept, plus the milestones: every step in ``keep``
    (phi-1-base's step 24,000) and every ``keep_every``-th (the finetune candidates).
    """

    def __init__(self, run_uri: str, keep_last: int = 3, keep: Iterable[int] = (),
                 keep_every: int = 0):
        self.root = open_storage(run_uri)
        self.store = self.root.child(PREFIX)
        self.keep_last = keep_last
        self.keep = set(keep)
        self.keep_every = keep_every

    def is_milestone(self, step: int) -> bool:
        return step in self.keep or bool(self.keep_every and step % self.keep_every == 0)

    def step_dir(self, step: int) -> Storage:
        return self.store.child(f"step-{step}")

    def committed_steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        steps = []
        for obj in self.store.list():
            parts = obj.key.split("/")
            m = _STEP.match(parts[0]) if len(parts) == 2 and parts[1] == MARKER else None
            if m and _complete(self.step_dir(int(m.group(1)))):
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest(self) -> Storage | None:
        steps = self.committed_steps()
        return self.step_dir(steps[-1]) if steps else None

    def resolve(self, spec: str) -> Storage | None:
        """``auto``/``latest``: the newest committed checkpoint of this run, or None;
        anything else: that checkpoint URI, which must be committed."""
        if spec in ("auto", "latest"):
            return self.latest()
        return open_committed(spec)

    def save(self, step: int, state: dict, trainer_state: dict | None,
             rng_state: dict) -> Storage:
        """Write one checkpoint from every rank; rank 0 commits it, then prunes old ones.

        Every rank calls this with its own (sharded) ``state`` — ``{"model": ..., "optim":
        ...}`` from ``get_state_dict`` — and its RNG state; ``trainer_state`` is needed on
        rank 0 only.
        """
        target = self.step_dir(step)
        rank = _rank()
        if rank == 0:
            target.delete_prefix("")  # a torn leftover of an earlier attempt at this step
        _barrier()
        dcp.save(state, storage_writer=StorageWriter(target), no_dist=not dist.is_initialized())
        _save(target, f"rng-{rank}.pt", rng_state)
        if rank == 0:
            _save(target, "trainer.pt", trainer_state)
        _barrier()
        if rank == 0:
            if os.environ.get(KILL_BEFORE_COMMIT_ENV) == str(step):
                os.kill(os.getpid(), signal.SIGKILL)
            files = {o.key: o.size for o in target.list()}
            target.write_text(MARKER, json.dumps({"step": step, "files": files}, indent=1))
            self.store.write_text("latest", f"step-{step}\n")
            self._prune()
        _barrier()
        if rank == 0:
            log.info("checkpoint step %d committed at %s", step, target.uri)
        return target

    def _prune(self) -> None:
        steps = [s for s in self.committed_steps() if not self.is_milestone(s)]
        for old in steps[:-self.keep_last]:
            d = self.step_dir(old)
            d.delete(MARKER)  # uncommit first: a half-deleted checkpoint is never picked
            d.delete_prefix("")


def _complete(ckpt: Storage) -> bool:
    try:
        meta = json.loads(ckpt.read_text(MARKER))
        return all(ckpt.stat(k).size == size for k, size in meta["files"].items())
    except (ObjectNotFoundError, ValueError, KeyError, TypeError):
        return False


def open_committed(uri: str) -> Storage:
    """The committed checkpoint at ``uri`` (a step directory, or a run whose newest is used)."""
    store = open_storage(uri)
    if not store.exists(MARKER):
        newest = CheckpointManager(uri).latest()
        if newest is not None:
            return newest
        raise CheckpointError(f"{store.uri} is not a committed checkpoint (no {MARKER} marker) "
                              "and holds no committed checkpoints/step-<N>/")
    if not _complete(store):
        raise CheckpointError(f"{store.uri}: files differ from its {MARKER} marker: torn write")
    return store


def _require_sharded(ckpt: Storage) -> None:
    if not ckpt.exists(".metadata"):
        raise CheckpointError(f"{ckpt.uri} has no DCP .metadata: it predates sharded "
                              "checkpoints (model.pt/optim.pt); resume it with the Primer "
                              "version that wrote it")


def load_sharded(ckpt: Storage, state: dict) -> None:
    """Fill ``state`` (this rank's sharded ``{"model": ..., "optim": ...}``, or a part of it)
    in place from ``ckpt``, reading only the pieces this rank's shards need."""
    _require_sharded(ckpt)
    dcp.load(state, storage_reader=StorageReader(ckpt), no_dist=not dist.is_initialized())


def load_model_state(ckpt: Storage) -> dict:
    """The whole model state dict, unsharded, in this process (export; small models)."""
    _require_sharded(ckpt)
    state: dict = {}
    # As DCP's own dcp_to_torch_save: the planner builds the dict from the metadata, which
    # only the inner loader lets it fill in place (dcp.load loads into a copy).
    _load_state_dict(state, storage_reader=StorageReader(ckpt),
                     planner=_EmptyStateDictLoadPlanner(keys={"model"}), no_dist=True)
    return state["model"]


def load_trainer(ckpt: Storage, rank: int) -> dict:
    """The trainer state and this rank's RNG state (rank 0's if it was fewer ranks)."""
    rng_key = f"rng-{rank}.pt" if ckpt.exists(f"rng-{rank}.pt") else "rng-0.pt"
    return {"trainer": load_object(ckpt, "trainer.pt"), "rng": load_object(ckpt, rng_key)}
