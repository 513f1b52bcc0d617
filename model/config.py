"""The training run's typed config: one pydantic section per component, nested in one root.

A run starts from a named preset (:mod:`model.presets`) and changes fields with
``--section.key=value`` overrides; unknown keys and wrong types fail before any work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from primer.config import ConfigModel


class ModelConfig(ConfigModel):
    """The phi-1 block (``transformers.PhiForCausalLM``): attention ‖ MLP, one LayerNorm."""

    n_layer: int = Field(24, ge=1, description="Number of transformer blocks.")
    hidden: int = Field(2048, ge=8, description="Residual stream width (d_model).")
    mlp: int = Field(8192, ge=8, description="MLP inner width.")
    heads: int = Field(32, ge=1, description="Attention heads; hidden / heads is the head dim.")
    partial_rotary: float = Field(0.5, gt=0, le=1, description=(
        "Fraction of each head's dims that get rotary embeddings (phi-1: 0.5, 32 of 64)."))
    context: int = Field(2048, ge=8, description="Maximum sequence length (positions).")
    vocab_size: int | None = Field(51200, description=(
        "Embedding rows; None sizes it from the tokenizer (rounded up to a multiple of 64)."))
    dropout: float = Field(0.0, ge=0, lt=1, description="Residual and embedding dropout.")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout on the attention probabilities (the paper: 0.1 with residual dropout)."))
    attention: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field("auto", description=(
        "Attention kernel; auto = flash_attention_2 when flash-attn (extra `gpu`) is installed "
        "and a CUDA device is used, else sdpa."))

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        return self


class OptimConfig(ConfigModel):
    """AdamW with linear warmup then decay (the paper's settings are the presets' defaults)."""

    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(750, ge=0, description="Linear warmup steps from 0 to lr.")
    decay: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Schedule after warmup, down to min_lr_ratio × lr at the end.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of lr.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm to this; 0: off.")


class DataConfig(ConfigModel):
    """Where the training windows come from and how text becomes tokens."""

    path: str = Field("", description=(
        "Packed token dataset URI (from `primer pack`), or a text dataset, which one process "
        "packs into <output>/data first (several processes stop and say what to run)."))
    tokenizer: str = Field("Salesforce/codegen-350M-mono", description=(
        "Hugging Face tokenizer name or path/URI; 'train' trains a byte-level BPE on the data "
        "(offline) and stores it with the run. Used only when packing."))
    tokenizer_vocab: int = Field(4096, ge=256, description="Vocabulary of a trained BPE.")
    seq_len: int = Field(2048, ge=8, description="Window length in tokens when packing.")
    seed: int = Field(1234, description="Seed of the packing mix and the reading order.")
    text_column: str = Field("text", description="Column holding documents (pretraining).")
    prompt_column: str = Field("prompt", description="Finetuning: the exercise's prompt.")
    completion_column: str = Field("completion", description="Finetuning: its solution.")
    workers: int = Field(2, ge=1, description="Parallel tokenization processes when packing.")


class LoopConfig(ConfigModel):
    """The training loop: steps, batch, precision, metrics."""

    mode: Literal["pretrain", "finetune"] = Field("pretrain", description=(
        "finetune starts from init_from and may train on solution tokens only."))
    steps: int = Field(36_000, ge=1, description=(
        "Length of the run in optimizer steps: the LR schedule warms up and decays over it."))
    stop_at: int | None = Field(None, ge=1, description=(
        "Stop after this step (None: at train.steps) without changing the schedule, e.g. "
        "phi-1-base is phi-1's step 24,000 of 36,000; a later run resumes to the end."))
    global_batch: int = Field(1024, ge=1, description="Sequences per optimizer step, all ranks.")
    micro_batch: int = Field(8, ge=1, description="Sequences per rank per forward/backward.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("bf16", description=(
        "Autocast dtype (fp16 adds a gradient scaler); fp32 disables autocast."))
    loss_on: Literal["all", "completion"] = Field("all", description=(
        "Tokens that carry loss; completion = solution tokens only (finetuning)."))
    init_from: str = Field("", description="Checkpoint URI whose model weights start the run.")
    seed: int = Field(0, description="Seed for weight init and dropout.")
    deterministic: bool = Field(False, description=(
        "torch.use_deterministic_algorithms: bitwise-exact resume, somewhat slower."))
    log_every: int = Field(1, ge=1, description="Write metrics every N steps.")
    peak_tflops: float | None = Field(None, description=(
        "Peak dense bf16 TFLOP/s of one device for MFU; None: known GPUs are detected."))


class CheckpointConfig(ConfigModel):
    """Checkpoints under <output>/checkpoints/step-<N>/, a COMMITTED marker written last."""

    every: int = Field(1000, ge=0, description="Save every N steps (0: only at the end).")
    keep_last: int = Field(3, ge=1, description="Committed checkpoints kept; older are deleted.")
    keep: list[int] = Field(default_factory=list, description=(
        "Milestone steps: always checkpointed and never pruned (phi-1-base: 24000)."))
    keep_every: int = Field(0, ge=0, description=(
        "Also checkpoint and keep every N-th step, e.g. 1000 for the finetune candidates; "
        "0: none."))
    resume: str = Field("", description=(
        "'' starts fresh; 'auto' resumes from the newest committed checkpoint of this run if "
        "there is one; or a checkpoint URI."))


class ParallelConfig(ConfigModel):
    """How the single-device model is spread over ranks (applied in model.parallelize)."""

    data_parallel: Literal["ddp", "fsdp"] = Field("ddp", description=(
        "ddp replicates the model; fsdp shards it (FSDP2 fully_shard per block)."))
    compile: bool = Field(False, description="torch.compile each block.")
    activation_checkpointing: bool = Field(False, description=(
        "Recompute block activations in backward: less memory, ~30% more compute."))
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Process-group backend; auto = nccl on CUDA, gloo on CPU.")


class TrainConfig(ConfigModel):
    """One training run: a preset's values plus overrides."""

    preset: str = Field("tiny", description="Name of the preset these values started from.")
    output: str = Field("", description=(
        "Run URI (path or s3://): checkpoints/, metrics.jsonl, tensorboard/, tokenizer/."))
    model: ModelConfig = Field(default_factory=ModelConfig, description="Architecture.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer/schedule.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data and tokenizer.")
    train: LoopConfig = Field(default_factory=LoopConfig, description="Training loop.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig,
                                         description="Checkpointing and resume.")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig,
                                     description="Data parallelism, compile, recomputation.")
