"""Sharded checkpoints (torch.distributed.checkpoint over primer.storage): in-process round
trips on local disk and S3, and a 2-rank FSDP2 run resumed on 1, 2 and 4 ranks."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from model.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_model_state,
    load_sharded,
    load_trainer,
)

from .conftest import PYTHON, REPO, TORCHRUN, child_env, losses, train_args
from .test_training import _free_port


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(300, 70, generator=g), "b": torch.randn(70, generator=g)},
            "optim": {"state": {"w": {"exp_avg": torch.randn(300, 70, generator=g),
                                      "step": torch.tensor(3.0)}},
                      "param_groups": [{"lr": 0.1, "params": ["w"]}]}}


def test_round_trip_through_storage_commits_and_keeps_milestones(storage_uri):
    """Save through DCP into local disk or S3: committed, read back equal (in place and
    whole), and pruning keeps the last k plus the milestone steps."""
    manager = CheckpointManager(storage_uri, keep_last=2, keep={2})
    for step in range(1, 6):
        manager.save(step, _state(step), {"step": step}, {"rng": step})
    assert manager.committed_steps() == [2, 4, 5]
    ckpt = manager.step_dir(4)
    assert {o.key for o in ckpt.list()} == {"COMMITTED", ".metadata", "__0_0.distcp",
                                            "trainer.pt", "rng-0.pt"}
    target = {"model": {"w": torch.zeros(300, 70), "b": torch.zeros(70)}}
    load_sharded(ckpt, target)
    assert torch.equal(target["model"]["w"], _state(4)["model"]["w"])
    whole = load_model_state(ckpt)
    assert set(whole) == {"w", "b"} and torch.equal(whole["b"], _state(4)["model"]["b"])
    assert load_trainer(ckpt, rank=3) == {"trainer": {"step": 4}, "rng": {"rng": 4}}


def test_a_checkpoint_without_shards_is_a_clear_error(tmp_path):
    manager = CheckpointManager(str(tmp_path))
    ckpt = manager.step_dir(1)
    ckpt.write_bytes("model.pt", b"old format")
    with pytest.raises(CheckpointError, match="no DCP .metadata"):
        load_model_state(ckpt)


def _run(ranks: int, data: str, out, steps: int, *extra: str) -> None:
    args = train_args(data, out, steps, *extra)
    cmd = ([PYTHON, "-m", "model.train", *args] if ranks == 1 else
           [TORCHRUN, "--nproc-per-node", str(ranks), "--master-port", str(_free_port()),
            "-m", "model.train", *args])
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_fsdp2_shards_per_rank_and_resume_on_1_2_and_4_ranks(packed, tmp_path):
    """A 2-rank FSDP2 run writes one shard file per rank, each holding about half the state;
    resumed from its step-3 checkpoint on 1, 2 and 4 ranks, steps 4-6 give the uninterrupted
    run's losses (exactly on 2 ranks; to float summation order on others). Dropout is off:
    its masks come from each rank's RNG, so they depend on the number of ranks."""
    common = ("--parallel.data_parallel=fsdp", "--train.precision=fp32", "--optim.lr=3e-3",
              "--model.dropout=0")
    ref = tmp_path / "ref"
    _run(2, packed, ref, 6, "--checkpoint.every=3", *common)
    ckpt = CheckpointManager(str(ref)).step_dir(3)
    sizes = {o.key: o.size for o in ckpt.list()}
    shards = {k: v for k, v in sizes.items() if k.endswith(".distcp")}
    assert set(shards) == {"__0_0.distcp", "__1_0.distcp"}
    assert max(shards.values()) < 0.7 * sum(shards.values())  # each rank wrote its half
    expected = losses(ref)

    for ranks in (1, 2, 4):
        out = tmp_path / f"on-{ranks}"
        _run(ranks, packed, out, 6, "--checkpoint.every=0", "--resume", ckpt.uri, *common)
        got = losses(out)
        assert list(got) == [4, 5, 6], ranks
        for step in got:
            if ranks == 2:
                assert got[step] == expected[step]
            else:
                assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), ranks



def _fit(packed, out, steps: int, *extra: str) -> None:
    """A tiny run in this process (same flags as ``python -m model.train``)."""
    from model.train import parse
    from model.trainer import Trainer

    trainer = Trainer(parse(train_args(packed, out, steps, *extra)))
    try:
        trainer.fit()
    finally:
        trainer.close()


@pytest.mark.slow
def test_stop_at_keeps_the_schedule_and_milestones_outlive_keep_last(packed, tmp_path):
    """Stopping at step 5 of an 8-step schedule, then resuming to the end, gives the
    uninterrupted run's lr and losses; milestones survive keep-last pruning."""
    _fit(packed, tmp_path / "ref", 8, "--checkpoint.every=0")
    run = tmp_path / "run"
    milestones = ("--checkpoint.every=1", "--checkpoint.keep_last=1", "--checkpoint.keep=[2]",
                  "--checkpoint.keep_every=3")
    _fit(packed, run, 8, "--stop-at", "5", *milestones)
    assert CheckpointManager(str(run)).committed_steps() == [2, 3, 5]
    _fit(packed, run, 8, "--resume", "auto", *milestones)
    assert CheckpointManager(str(run)).committed_steps() == [2, 3, 6, 8]

    def lrs(path):
        return {json.loads(line)["step"]: json.loads(line)["lr"]
                for line in (path / "metrics.jsonl").read_text().splitlines()}
    assert lrs(run) == lrs(tmp_path / "ref")  # not a 5-step schedule cut short
    assert losses(run) == losses(tmp_path / "ref")
    with pytest.raises(ValueError, match="train.stop_at=9 is past the end of the schedule"):
        _fit(packed, tmp_path / "never", 8, "--stop-at", "9")
