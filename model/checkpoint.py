"""Checkpoints in any storage (local or ``s3://``), committed by a marker written last.

Layout under the run URI (DESIGN.md)::

    checkpoints/step-<N>/model.pt       full (unsharded) model state dict     rank 0
    checkpoints/step-<N>/optim.pt       full optimizer state, keyed by name   rank 0
    checkpoints/step-<N>/trainer.pt     step, scheduler, scaler, data position, config
    checkpoints/step-<N>/rng-<rank>.pt  each rank's torch / CUDA / numpy / python RNG
    checkpoints/step-<N>/COMMITTED      JSON: step and every file's size — written last
    checkpoints/latest                  the newest committed step (a hint; listing decides)

A checkpoint exists only once ``COMMITTED`` does and every file it names has that size, so a
pod killed mid-write (a *torn* checkpoint) is never resumed from. Each object is itself
published atomically by ``primer.storage``. Full state dicts are gathered with
``torch.distributed.checkpoint.state_dict``, so DDP, FSDP2 and one process share one format
(and a run may resume on a different number of ranks).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
from typing import Any

import torch
import torch.distributed as dist

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
    """Save, list, resolve and prune the checkpoints of one run."""

    def __init__(self, run_uri: str, keep_last: int = 3):
        self.root = open_storage(run_uri)
        self.store = self.root.child(PREFIX)
        self.keep_last = keep_last

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

    def save(self, step: int, model_state: dict | None, optim_state: dict | None,
             trainer_state: dict | None, rng_state: dict) -> Storage:
        """Write one checkpoint from every rank; rank 0 commits it, then prunes old ones.

        Every rank calls this; ``model_state``/``optim_state``/``trainer_state`` are needed
        on rank 0 only.
        """
        target = self.step_dir(step)
        rank = _rank()
        if rank == 0:
            target.delete_prefix("")  # a torn leftover of an earlier attempt at this step
        _barrier()
        sizes = {f"rng-{rank}.pt": _save(target, f"rng-{rank}.pt", rng_state)}
        if rank == 0:
            sizes["model.pt"] = _save(target, "model.pt", model_state)
            sizes["optim.pt"] = _save(target, "optim.pt", optim_state)
            sizes["trainer.pt"] = _save(target, "trainer.pt", trainer_state)
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
        steps = self.committed_steps()
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


def load_model_state(ckpt: Storage) -> dict:
    return load_object(ckpt, "model.pt")


def load_checkpoint(ckpt: Storage, rank: int) -> dict:
    """model, optim, trainer and this rank's RNG state (rank 0's if it was fewer ranks)."""
    rng_key = f"rng-{rank}.pt" if ckpt.exists(f"rng-{rank}.pt") else "rng-0.pt"
    return {"model": load_object(ckpt, "model.pt"), "optim": load_object(ckpt, "optim.pt"),
            "trainer": load_object(ckpt, "trainer.pt"), "rng": load_object(ckpt, rng_key)}
