"""Named runs (STYLE 3): each preset is a function returning a complete :class:`TrainConfig`.

Architectures are the paper's (Gunasekar et al. 2023, table in DESIGN.md); optimizer defaults
are its pretraining settings; :func:`finetune` turns any preset into the CodeExercises run.
"""

from __future__ import annotations

import torch
from transformers import PhiConfig, PhiForCausalLM

from model.config import (
    CheckpointConfig,
    DataConfig,
    LoopConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
)


class PresetError(ValueError):
    """An unknown preset name."""


def phi1() -> TrainConfig:
    """phi-1 (1.3B): 24 layers, 2048 wide, 8192 MLP, 32 heads; 8×A100-class GPUs.

    As the paper (Gunasekar et al. 2023, section 2.3): AdamW, linear warmup (750 steps) then
    linear decay, peak lr 1e-3, weight decay 0.1, batch 1024 × 2048 tokens, 36,000 steps,
    attention and residual dropout 0.1; phi-1-base is the step-24,000 checkpoint, kept as a
    milestone (``--stop-at 24000`` stops there on the same schedule).

    Deviations from the paper:

    - precision bf16, not fp16: same speed on A100/H100 without loss scaling
      (``--train.precision=fp16`` restores it, with a gradient scaler);
    - embedding dropout 0.1 as well (``model.dropout`` covers residual and embedding);
    - not stated in the paper, our choice: AdamW betas (0.9, 0.95), eps 1e-8, gradient
      clipping at 1.0, decay to 0 (``optim.min_lr_ratio``), no weight decay on biases and
      LayerNorm weights.
    """
    return TrainConfig(
        preset="phi1",
        model=ModelConfig(n_layer=24, hidden=2048, mlp=8192, heads=32, dropout=0.1,
                          attention_dropout=0.1),
        optim=OptimConfig(lr=1e-3, warmup_steps=750, decay="linear", weight_decay=0.1),
        train=LoopConfig(steps=36_000, global_batch=1024, micro_batch=8, precision="bf16"),
        data=DataConfig(seq_len=2048),
        checkpoint=CheckpointConfig(every=1000, keep_last=3, keep=[24_000]),
        parallel=ParallelConfig(data_parallel="fsdp", activation_checkpointing=False),
    )


def phi1_small() -> TrainConfig:
    """phi-1-small (350M): 20 layers, 1024 wide, 4096 MLP, 16 heads.

    The paper trains it with phi-1's pipeline, so it inherits :func:`phi1`'s settings.
    Deviations: :func:`phi1`'s (micro-batch 16 only splits the 1024-sequence batch).
    """
    cfg = phi1()
    cfg.preset = "phi1_small"
    cfg.model = ModelConfig(n_layer=20, hidden=1024, mlp=4096, heads=16, dropout=0.1,
                            attention_dropout=0.1)
    cfg.train.micro_batch = 16
    return cfg


def tiny() -> TrainConfig:
    """A few-million-parameter phi model for a laptop CPU: the same code path, seconds a step.

    Its tokenizer is trained on the data (offline); the vocabulary follows the tokenizer.
    Not a paper model: everything is scaled down (2 layers × 128, 128-token windows, batch
    16, 200 steps, warmup 10, fp32, deterministic, no attention dropout); the optimizer,
    schedule shape and weight decay are phi-1's.
    """
    return TrainConfig(
        preset="tiny",
        model=ModelConfig(n_layer=2, hidden=128, mlp=512, heads=4, context=256, vocab_size=None,
                          dropout=0.1, attention="sdpa"),
        optim=OptimConfig(lr=1e-3, warmup_steps=10, weight_decay=0.1),
        data=DataConfig(tokenizer="train", tokenizer_vocab=2048, seq_len=128),
        train=LoopConfig(steps=200, global_batch=16, micro_batch=8, precision="fp32",
                         deterministic=True),
        checkpoint=CheckpointConfig(every=50, keep_last=2),
        parallel=ParallelConfig(data_parallel="ddp"),
    )


PRESETS = {"phi1": phi1, "phi1_small": phi1_small, "tiny": tiny}


def finetune(cfg: TrainConfig) -> TrainConfig:
    """The paper's CodeExercises finetune on top of ``cfg``: lr 1e-4, warmup 50, wd 0.01,
    batch 256, 6000 steps, loss on solution tokens only; a checkpoint every 1,000 steps, each
    kept (the paper picks the best of them).

    Deviations: the tiny preset keeps its own batch and length (16 × 200 steps) and
    checkpoint cadence; otherwise as the base preset's (precision, betas, clipping, dropout).
    """
    cfg = cfg.model_copy(deep=True)
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay = 1e-4, 50, 0.01
    cfg.train.mode, cfg.train.loss_on = "finetune", "completion"
    cfg.checkpoint.keep = []  # the base run's milestones are not the finetune's
    if cfg.preset != "tiny":
        cfg.train.global_batch, cfg.train.steps = 256, 6000
        cfg.checkpoint.every, cfg.checkpoint.keep_every = 1000, 1000
    return cfg


def get_preset(name: str, *, finetuning: bool = False) -> TrainConfig:
    """The preset called ``name`` (with the finetune variant applied when asked)."""
    try:
        cfg = PRESETS[name]()
    except KeyError:
        raise PresetError(f"unknown preset {name!r}; choose one of "
                          f"{', '.join(sorted(PRESETS))}") from None
    return finetune(cfg) if finetuning else cfg


def phi_config(cfg: ModelConfig, vocab_size: int | None = None) -> PhiConfig:
    """The ``transformers.PhiConfig`` for ``cfg`` (``vocab_size`` fills a None there)."""
    vocab = cfg.vocab_size or vocab_size
    if vocab is None:
        raise ValueError("model.vocab_size is None and no tokenizer size was given")
    return PhiConfig(
        vocab_size=vocab, hidden_size=cfg.hidden, intermediate_size=cfg.mlp,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.heads,
        partial_rotary_factor=cfg.partial_rotary, max_position_embeddings=cfg.context,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        hidden_act="gelu_new", layer_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None)


def build_model(cfg: ModelConfig, vocab_size: int | None = None,
                device: str | torch.device | None = None,
                attn_implementation: str = "sdpa") -> PhiForCausalLM:
    """A freshly initialised ``PhiForCausalLM`` (use ``device="meta"`` to count parameters)."""
    config = phi_config(cfg, vocab_size)
    config._attn_implementation = attn_implementation
    with torch.device(device or "cpu"):
        return PhiForCausalLM(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_config(preset: str, overrides: list[str] | tuple[str, ...] = (), *,
                finetuning: bool = False, config_file: str | None = None,
                env: dict[str, str] | None = None) -> TrainConfig:
    """The preset, then a YAML file, ``PRIMER_<SECTION>__<KEY>`` variables and
    ``--section.key=value`` overrides (unknown keys and wrong types fail, naming the key)."""
    from primer.config import load_config

    base = get_preset(preset, finetuning=finetuning)
    return load_config(TrainConfig, config_file, env=env, overrides=list(overrides),
                       base=base.model_dump(mode="json"))
