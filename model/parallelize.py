"""Everything that spreads the single-device model over devices, in one place (STYLE 10).

Order, as in torchtitan: activation checkpointing → ``torch.compile`` per block → data
parallelism (DDP, or FSDP2 ``fully_shard`` per block then the root). The model code itself
(``transformers.PhiForCausalLM``) stays single-device.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch
from torch import nn

from model.config import ModelConfig, ParallelConfig


class MissingExtraError(RuntimeError):
    """An optional heavy dependency is needed; the message names the extra to install."""


def attention_implementation(cfg: ModelConfig, device: torch.device) -> str:
    """flash_attention_2 where flash-attn is installed and on CUDA, else SDPA (or as set)."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if cfg.attention == "flash_attention_2" and not has_flash:
        raise MissingExtraError("model.attention=flash_attention_2 needs flash-attn: "
                                "pip install 'primer[gpu]'")
    if cfg.attention == "auto":
        return "flash_attention_2" if has_flash and device.type == "cuda" else "sdpa"
    return cfg.attention


def parallelize(model: nn.Module, cfg: ParallelConfig, *, world_size: int,
                device: torch.device, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Apply recomputation, compile and data parallelism to ``model`` (already on device)."""
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    if cfg.compile:
        for block in model.model.layers:
            block.compile()  # in place: parameter names (and checkpoints) stay the same
    if world_size == 1:
        return model
    if cfg.data_parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in model.model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The ``PhiForCausalLM`` inside a DDP wrapper (FSDP2 keeps the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def no_grad_sync(model: nn.Module, skip: bool):
    """A context in which backward does not all-reduce gradients (accumulation micro-steps)."""
    if not skip:
        return contextlib.nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2

        @contextlib.contextmanager
        def _fsdp():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return _fsdp()
    return contextlib.nullcontext()
