"""The training loop: data → forward/backward with accumulation → clip → AdamW → metrics →
checkpoint. One code path for one CPU process, ``torchrun`` with gloo, and a GPU cluster.

Exact resume: the data order is a pure function of the global sample index
(:class:`model.packing.PackedDataset`), and a checkpoint holds the model, optimizer,
scheduler, gradient scaler, every rank's RNG states and the step, so a run killed at any
moment and resumed with ``checkpoint.resume=auto`` computes the same losses as one that never
stopped (bitwise on CPU with ``train.deterministic``).

Data position: a checkpoint records ``samples_consumed``, the *global* windows consumed
(step × ``train.global_batch``). Step ``s`` trains on windows ``[s·B, (s+1)·B)`` of the
dataset's fixed order, however they are split over ranks and micro-batches, so a run resumed
on another number of ranks reads exactly the windows the original would have; only the
global batch must stay the same. Losses then match up to float summation order (and dropout,
whose masks come from each rank's RNG).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from model.checkpoint import (
    CheckpointManager,
    load_sharded,
    load_trainer,
    open_committed,
)
from model.config import TrainConfig
from model.packing import PackedDataset, Source, is_packed, pack
from model.parallelize import attention_implementation, no_grad_sync, parallelize, unwrap
from model.presets import build_model, count_parameters
from primer.storage import open_storage

log = logging.getLogger("primer.model.train")

#: Fault injection for the crash tests: SIGKILL this process right after this step.
KILL_AT_STEP_ENV = "PRIMER_FAULT_KILL_AT_STEP"
#: Peak dense bf16 FLOP/s per device, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainConfigError(ValueError):
    """The run's config cannot work; raised before any work starts."""


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun / PyTorchJob variables (PET_* too)."""
    env = os.environ

    def get(name: str, default: str) -> int:
        return int(env.get(name, env.get(f"PET_{name}", default)))
    return get("RANK", "0"), get("WORLD_SIZE", "1"), get("LOCAL_RANK", "0")


def validate(cfg: TrainConfig, world_size: int) -> None:
    """Fail fast, with the fix in the message, on configs that cannot run."""
    t = cfg.train
    per_step = world_size * t.micro_batch
    if t.global_batch % per_step:
        raise TrainConfigError(
            f"train.global_batch={t.global_batch} is not divisible by world size {world_size} "
            f"× train.micro_batch={t.micro_batch} = {per_step}; choose a global batch that is "
            f"a multiple of {per_step}")
    if not cfg.data.path:
        raise TrainConfigError("no training data: pass --data URI (a packed or text dataset)")
    if not cfg.output:
        raise TrainConfigError("no output: pass --output URI (where checkpoints go)")
    store = open_storage(cfg.data.path)
    if not store.exists("_manifest.json"):
        raise TrainConfigError(f"--data {store.uri}: no dataset there (no _manifest.json)")
    if world_size > 1 and not is_packed(cfg.data.path) and not _packed_before(cfg):
        raise TrainConfigError(text_data_with_ranks(cfg, world_size))
    if t.stop_at is not None and t.stop_at > t.steps:
        raise TrainConfigError(
            f"train.stop_at={t.stop_at} is past the end of the schedule (train.steps="
            f"{t.steps}); raise train.steps to lengthen the run")
    if t.mode == "finetune" and not t.init_from and not cfg.checkpoint.resume:
        raise TrainConfigError("finetuning needs train.init_from=CHECKPOINT_URI (or --init)")


def text_data_with_ranks(cfg: TrainConfig, world_size: int) -> str:
    """Why several processes do not pack, and the ``primer pack`` command to run instead."""
    d = cfg.data
    target = open_storage(cfg.output).child("data").uri
    flags = [f"--output {target}", f"--tokenizer {d.tokenizer}", f"--seq-len {d.seq_len}",
             f"--seed {d.seed}"]
    if d.tokenizer == "train":
        flags.append(f"--vocab {d.tokenizer_vocab}")
    if cfg.train.mode == "finetune":
        flags += ["--finetune", f"--prompt-column {d.prompt_column}",
                  f"--completion-column {d.completion_column}"]
    elif d.text_column != "text":
        flags.append(f"--text-column {d.text_column}")
    return (f"--data {d.path} is a text dataset, and {world_size} processes do not pack it "
            f"(that is work units, not a job for one rank while the others wait): run "
            f"`primer pack {d.path} {' '.join(flags)}` first (--executor celery fans it out), "
            f"then train with --data {target}")


def _packed_before(cfg: TrainConfig) -> bool:
    """Whether ``<output>/data`` already holds the pack of a text ``data.path`` (a run that
    one process started, resumed on several)."""
    target = open_storage(cfg.output).child("data")
    return target.exists("_manifest.json") and is_packed(target.uri)


def prepare_data(cfg: TrainConfig) -> str:
    """The packed dataset to train on: ``data.path`` itself, or ``<output>/data`` packed from
    the text dataset at ``data.path`` (one process only: :func:`validate` stops several)."""
    if is_packed(cfg.data.path):
        return cfg.data.path
    target = open_storage(cfg.output).child("data")
    if not _packed_before(cfg):
        d = cfg.data
        log.info("packing text dataset %s into %s", d.path, target.uri)
        pack([Source(d.path)], target.uri, tokenizer=d.tokenizer, seq_len=d.seq_len,
             seed=d.seed, workers=d.workers, finetune=cfg.train.mode == "finetune",
             text_column=d.text_column, prompt_column=d.prompt_column,
             completion_column=d.completion_column, tokenizer_vocab=d.tokenizer_vocab)
    return target.uri


def peak_flops(device: torch.device, configured: float | None) -> float | None:
    if configured:
        return configured * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def lr_lambda(cfg: TrainConfig):
    o, total = cfg.optim, cfg.train.steps

    def f(step: int) -> float:  # step = number of optimizer steps taken so far
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.decay == "constant":
            return 1.0
        frac = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        shape = 1 - frac if o.decay == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * shape
    return f


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Metrics:
    """Per-step metrics to ``metrics.jsonl`` and TensorBoard under the run (rank 0 only).

    Files are written locally (the run folder, or a staging folder for ``s3://`` runs) and
    uploaded with each checkpoint.
    """

    def __init__(self, run_uri: str, enabled: bool):
        self.enabled, self.run = enabled, open_storage(run_uri)
        if not enabled:
            return
        local = "://" not in run_uri or run_uri.startswith("file://")
        self.dir = Path(self.run.url("")) if local else Path(tempfile.mkdtemp(prefix="primer-"))
        self.remote = not local
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.remote and self.run.exists("metrics.jsonl"):
            (self.dir / "metrics.jsonl").write_bytes(self.run.read_bytes("metrics.jsonl"))
        self.jsonl = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.dir / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.tb.add_scalar(f"train/{k}", v, record["step"])

    def sync(self) -> None:
        if not self.enabled:
            return
        self.tb.flush()
        if self.remote:
            for path in self.dir.rglob("*"):
                if path.is_file():
                    self.run.write_bytes(path.relative_to(self.dir).as_posix(),
                                         path.read_bytes())

    def close(self) -> None:
        if self.enabled:
            self.sync()
            self.jsonl.close()
            self.tb.close()


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world_size, local_rank = world()
        validate(cfg, self.world_size)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            backend = cfg.parallel.backend
            if backend == "auto":
                backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

        self.data_uri = prepare_data(cfg)
        self.data = PackedDataset(self.data_uri, seed=cfg.data.seed)
        vocab = self.data.meta["vocab_size"]
        if cfg.model.vocab_size is not None and cfg.model.vocab_size < vocab:
            raise TrainConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than "
                                   f"the data's tokenizer ({vocab} tokens)")
        if self.data.seq_len > cfg.model.context:
            raise TrainConfigError(f"the data's windows ({self.data.seq_len} tokens) exceed "
                                   f"model.context={cfg.model.context}")
        self.vocab = cfg.model.vocab_size or (vocab + 63) // 64 * 64
        self.tokenizer_uri = open_storage(self.data_uri).url("tokenizer")

        torch.manual_seed(cfg.train.seed)
        attn = attention_implementation(cfg.model, self.device)
        model = build_model(cfg.model, self.vocab, device=self.device,
                            attn_implementation=attn)
        self.n_params = count_parameters(model)
        n_embed = model.model.embed_tokens.weight.numel()
        m, T = cfg.model, self.data.seq_len
        # PaLM appendix B: 6N (matmuls, fwd+bwd) + 12·L·H·T (attention scores), per token
        self.flops_per_token = 6 * (self.n_params - n_embed) + 12 * m.n_layer * m.hidden * T
        self.dtype = DTYPES[cfg.train.precision]
        self.model = parallelize(model, cfg.parallel, world_size=self.world_size,
                                 device=self.device, param_dtype=self.dtype)
        self.model.train()
        if cfg.train.init_from:
            self._init_from(cfg.train.init_from)

        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "layernorm" in name or "bias" in name else decay).append(p)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=o.betas, eps=o.eps, fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=cfg.train.precision == "fp16")
        c = cfg.checkpoint
        self.ckpt = CheckpointManager(cfg.output, keep_last=c.keep_last, keep=c.keep,
                                      keep_every=c.keep_every)
        self.metrics = Metrics(cfg.output, enabled=self.rank == 0)
        self.step = 0
        self.stop_requested = False
        self.peak = peak_flops(self.device, cfg.train.peak_tflops)
        if cfg.checkpoint.resume:
            self.resume(cfg.checkpoint.resume)
        if self.rank == 0:
            run = open_storage(cfg.output)
            run.write_text("config.json", cfg.model_dump_json(indent=2))
            log.info("run %s: %s, %.2fM parameters, %d ranks, data %s (%d windows of %d)",
                     run.uri, cfg.preset, self.n_params / 1e6, self.world_size, self.data_uri,
                     len(self.data), self.data.seq_len)

    # -- state -------------------------------------------------------------------------------

    def _state(self) -> dict:
        """This rank's shards of the model and optimizer (FSDP2: DTensors; DDP: replicas,
        which DCP writes once), keyed by parameter name."""
        model_sd, optim_sd = get_state_dict(unwrap(self.model), self.optimizer,
                                            options=StateDictOptions(full_state_dict=False))
        return {"model": model_sd, "optim": optim_sd}

    def _init_from(self, uri: str) -> None:
        """Start from the weights of the committed checkpoint at ``uri``, each rank reading
        its own shards."""
        model = unwrap(self.model)
        state = {"model": get_model_state_dict(model)}
        load_sharded(open_committed(uri), state)
        set_model_state_dict(model, state["model"])

    def save(self) -> None:
        trainer = {"step": self.step, "scheduler": self.scheduler.state_dict(),
                   "scaler": self.scaler.state_dict(),
                   # Global windows consumed: independent of the number of ranks.
                   "data": {"uri": self.data_uri, "seed": self.data.seed,
                            "samples_consumed": self.step * self.cfg.train.global_batch},
                   "vocab_size": self.vocab, "tokenizer": self.tokenizer_uri,
                   "config": self.cfg.model_dump(mode="json")}
        self.metrics.sync()
        self.ckpt.save(self.step, self._state(), trainer, rng_state())

    def resume(self, spec: str) -> None:
        ckpt = self.ckpt.resolve(spec)
        if ckpt is None:
            log.info("resume=%s: no committed checkpoint yet; starting fresh", spec)
            return
        sharded = self._state()
        load_sharded(ckpt, sharded)
        set_state_dict(unwrap(self.model), self.optimizer, model_state_dict=sharded["model"],
                       optim_state_dict=sharded["optim"])
        state = load_trainer(ckpt, self.rank)
        t = state["trainer"]
        self.scheduler.load_state_dict(t["scheduler"])
        self.scaler.load_state_dict(t["scaler"])
        self.step = int(t["step"])
        if t["data"]["samples_consumed"] != self.step * self.cfg.train.global_batch:
            raise TrainConfigError(f"{ckpt.uri} was trained with another global batch; "
                                   "resume with the same train.global_batch")
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", ckpt.uri, self.step)

    # -- the loop ----------------------------------------------------------------------------

    def _on_sigterm(self, signum, frame) -> None:
        log.warning("SIGTERM: checkpointing after this step, then exiting")
        self.stop_requested = True

    def _all(self, value: float, op=None) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t.item()

    def train_step(self) -> dict:
        t = self.cfg.train
        accum = t.global_batch // (self.world_size * t.micro_batch)
        base = self.step * t.global_batch
        batches = []
        for m in range(accum):
            start = base + (m * self.world_size + self.rank) * t.micro_batch
            tokens, mask = self.data.batch(start, t.micro_batch)
            x = torch.from_numpy(tokens).to(self.device)
            labels = x.clone()
            if t.loss_on == "completion" and mask is not None:
                labels[torch.from_numpy(mask).to(self.device) == 0] = -100
            batches.append((x, labels))
        n_local = sum(int((lab[:, 1:] != -100).sum()) for _, lab in batches)
        n_global = max(1.0, self._all(float(n_local)))
        # DDP/FSDP average gradients over ranks; × world makes it a sum over all tokens
        scale = self.world_size / n_global
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        for m, (x, labels) in enumerate(batches):
            with no_grad_sync(self.model, skip=m < accum - 1), torch.autocast(
                    self.device.type, dtype=self.dtype or torch.float32,
                    enabled=self.dtype is not None):
                logits = self.model(input_ids=x).logits
                # targets shifted left, -100 at the end: no copy of the (B, T, V) logits
                target = F.pad(labels[:, 1:], (0, 1), value=-100)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(),
                                       ignore_index=-100, reduction="sum")
                self.scaler.scale(loss * scale).backward()
            loss_sum += loss.detach().double()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": self._all(loss_sum.item()) / n_global, "lr": lr,
                "grad_norm": float(grad_norm), "tokens": t.global_batch * self.data.seq_len}

    def fit(self) -> None:
        cfg = self.cfg
        old = signal.signal(signal.SIGTERM, self._on_sigterm)
        kill_at = os.environ.get(KILL_AT_STEP_ENV)
        end = cfg.train.stop_at or cfg.train.steps  # the schedule still spans train.steps
        try:
            while self.step < end:
                t0 = time.perf_counter()
                out = self.train_step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                tps = out["tokens"] / dt
                record = {"step": self.step, "loss": out["loss"], "lr": out["lr"],
                          "grad_norm": out["grad_norm"], "tokens_per_s": tps,
                          "tokens_per_s_per_device": tps / self.world_size,
                          "mfu": (tps * self.flops_per_token / (self.world_size * self.peak))
                          if self.peak else None, "step_time_s": dt}
                if self.step % cfg.train.log_every == 0 or self.step == end:
                    self.metrics.log(record)
                    if self.rank == 0:
                        log.info("step %d loss %.4f lr %.2e grad %.3f %.0f tok/s", self.step,
                                 out["loss"], out["lr"], out["grad_norm"], tps)
                stop = self._all(float(self.stop_requested), dist.ReduceOp.MAX) > 0
                every = cfg.checkpoint.every
                if (stop or self.step == end or (every and self.step % every == 0)
                        or self.ckpt.is_milestone(self.step)):
                    self.save()
                if kill_at == str(self.step):
                    os.kill(os.getpid(), signal.SIGKILL)
                if stop:
                    log.warning("stopped by SIGTERM at step %d (checkpoint saved)", self.step)
                    break
        finally:
            signal.signal(signal.SIGTERM, old)

    def close(self) -> None:
        self.metrics.close()
        if dist.is_initialized():
            dist.destroy_process_group()
