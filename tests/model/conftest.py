"""Shared fixtures: a small text corpus from this interpreter's own standard library, and its
packed form with an offline-trained BPE (built once per session: tokenizing is the slow part).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from primer.datasets import Producer, write_dataset

STDLIB = Path(os.__file__).parent
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
SEQ = 64


def stdlib_files(n: int = 40) -> list[Path]:
    files = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py"))
    return files[:n]


@pytest.fixture(scope="session")
def text_dataset(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("corpus") / "text")
    write_dataset(uri, ({"id": p.name, "text": p.read_text()} for p in stdlib_files()),
                  Producer("test-corpus"), rows_per_shard=12)
    return uri


@pytest.fixture(scope="session")
def packed(text_dataset, tmp_path_factory) -> str:
    from model.packing import Source, pack

    uri = str(tmp_path_factory.mktemp("packed") / "data")
    pack([Source(text_dataset)], uri, tokenizer="train", tokenizer_vocab=512, seq_len=SEQ,
         workers=2)
    return uri


def losses(run: Path | str) -> dict[int, float]:
    """Step → loss from metrics.jsonl; a step logged twice (before a crash and after the
    resume) keeps its last value."""
    out = {}
    for line in Path(run, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


def train_args(data: str, output: str | Path, steps: int, *extra: str) -> list[str]:
    """A tiny run: 2 layers × 64 wide, 64-token windows, 8 sequences a step in micro-batches
    of 2 (so gradient accumulation is exercised too)."""
    return ["--preset", "tiny", "--data", data, "--output", str(output), "--steps", str(steps),
            "--model.hidden=64", "--model.mlp=256", "--model.context=64",
            "--train.global_batch=8", "--train.micro_batch=2", "--optim.warmup_steps=2",
            *extra]


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}
