"""The generation component's typed config (root of ``primer generate``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from primer.config import ConfigModel, RedisConfig
from primer.sandbox import SandboxConfig
from primer.teacher import TeacherConfig


class GenerationSettings(ConfigModel):
    """How prompt specs are drawn, batched and sampled, and how outputs are judged."""

    seed: int = Field(0, description="Seed of the prompt-spec stream (topics, audiences, "
                      "function names) and of the teacher's sampling seeds.")
    batch_size: int = Field(128, gt=0, le=4096, description="Prompt specs per work unit "
                            "(one unit = one Parquet shard).")
    overgenerate: float = Field(1.25, ge=1.0, description="First round asks for "
                                "count × overgenerate specs, since some outputs are invalid.")
    max_specs_factor: float = Field(20.0, ge=1.0, description="Give up when more than "
                                    "count × this many specs were needed.")
    temperature: float = Field(0.8, ge=0, description="Teacher sampling temperature.")
    top_p: float | None = Field(0.95, gt=0, le=1, description="Nucleus sampling; none: unset.")
    max_tokens_textbook: int = Field(1536, gt=0, description="Completion budget per textbook.")
    max_tokens_exercise: int = Field(768, gt=0, description="Completion budget per exercise.")
    min_words: int = Field(120, ge=0, description="Textbooks shorter than this many words "
                           "are dropped (too_short).")
    near_dup_bands: int = Field(8, gt=0, description="MinHash LSH bands; with rows_per_band, "
                                "sets the near-duplicate threshold (≈0.77 Jaccard at 8×8).")
    near_dup_rows: int = Field(8, gt=0, description="MinHash values per band.")
    allow_fewer: bool = Field(False, description="When count × max_specs_factor specs yield "
                              "fewer than count valid records, publish the ones there are "
                              "(the manifest says how many were asked for) instead of "
                              "failing; for weak teachers such as the demo's toy one.")
    sandbox_workers: int = Field(0, ge=0, description="Exercise checks run in parallel per "
                                 "unit (0: one per core).")


class GenerateConfig(ConfigModel):
    """Root config of ``primer generate``."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig,
                                   description="The teacher endpoint, limits and prices.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings,
                                           description="Spec stream, batching, validation.")
    sandbox: SandboxConfig = Field(default_factory=lambda: SandboxConfig(timeout_s=5.0),
                                   description="Limits for running exercise asserts.")
    workers: int = Field(0, ge=0, description="Local executor processes (0: one per core).")
    redis: RedisConfig = Field(default_factory=RedisConfig,
                               description="Work queue of --executor celery.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="Minimum level of log records that are emitted.")
