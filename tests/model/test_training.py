"""Training end to end with real processes: exact resume after kill -9, a torn checkpoint
never picked, SIGTERM, torchrun with gloo and checkpoints on S3, export, fail-fast config."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from model.checkpoint import CheckpointManager, load_model_state
from primer.cli import build_app
from primer.datasets import read_manifest

from .conftest import PYTHON, REPO, TORCHRUN, child_env, losses, train_args


def _train(data, out, steps, *extra, env=None, check=True):
    proc = subprocess.run([PYTHON, "-m", "model.train", *train_args(data, out, steps, *extra)],
                          cwd=REPO, env=env or child_env(), capture_output=True, text=True,
                          timeout=400)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def _weights(run: Path | str, step: int) -> dict:
    """The whole model at ``step``, assembled from every rank's shards."""
    return load_model_state(CheckpointManager(str(run)).step_dir(step))


@pytest.mark.slow
def test_kill_9_then_resume_auto_is_exact_and_skips_torn_checkpoint(packed, tmp_path):
    steps, every = 10, 3
    _train(packed, tmp_path / "ref", steps, f"--checkpoint.every={every}")

    run = tmp_path / "crash"
    died = _train(packed, run, steps, f"--checkpoint.every={every}",
                  env=child_env(PRIMER_FAULT_KILL_AT_STEP="5"), check=False)
    assert died.returncode == -signal.SIGKILL
    died = _train(packed, run, steps, f"--checkpoint.every={every}", "--resume", "auto",
                  env=child_env(PRIMER_FAULT_KILL_BEFORE_COMMIT="6"), check=False)
    assert died.returncode == -signal.SIGKILL
    assert (run / "checkpoints/step-6/.metadata").exists()  # torn: files but no marker
    assert CheckpointManager(str(run)).committed_steps() == [3]
    resumed = _train(packed, run, steps, f"--checkpoint.every={every}", "--resume", "auto")
    assert "resumed from" in resumed.stderr and "step-3 at step 3" in resumed.stderr

    ref, got = losses(tmp_path / "ref"), losses(run)
    assert list(got) == list(range(1, steps + 1))
    assert got == ref  # exactly equal floats, every step
    a, b = _weights(tmp_path / "ref", steps), _weights(run, steps)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert CheckpointManager(str(run), keep_last=2).committed_steps() == [9, 10]  # keep-last


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops(packed, tmp_path):
    run = tmp_path / "term"
    proc = subprocess.Popen([PYTHON, "-m", "model.train",
                             *train_args(packed, run, 100000, "--checkpoint.every=0")],
                            cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / "metrics.jsonl").exists() or len(losses(run)) < 2:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    steps = CheckpointManager(str(run)).committed_steps()
    assert len(steps) == 1 and 2 <= steps[0] < 100000 and steps[0] == max(losses(run))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.slow
def test_torchrun_two_ranks_loss_falls_with_checkpoints_on_s3(packed, s3_bucket, tmp_path):
    out = f"s3://{s3_bucket}/runs/ddp"
    proc = subprocess.run(
        [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m",
         "model.train", *train_args(packed, out, 30, "--checkpoint.every=15",
                                    "--optim.lr=3e-3")],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manager = CheckpointManager(out)
    assert manager.committed_steps() == [15, 30]
    ckpt = manager.latest()
    assert {o.key for o in ckpt.list()} == {"COMMITTED", ".metadata", "__0_0.distcp",
                                            "__1_0.distcp", "trainer.pt", "rng-0.pt",
                                            "rng-1.pt"}
    local = tmp_path / "metrics"
    local.mkdir()
    (local / "metrics.jsonl").write_bytes(manager.root.read_bytes("metrics.jsonl"))
    got = losses(local)
    assert list(got) == list(range(1, 31))
    assert sum(list(got.values())[-5:]) / 5 < sum(list(got.values())[:5]) / 5 - 0.5


def _cli(*args: str):
    """The real `primer` app, with the commands registered in pyproject's entry points
    (`primer train …` goes to the train group's default `run` command)."""
    return CliRunner().invoke(build_app(), list(args), catch_exceptions=True)


@pytest.mark.slow
def test_cli_packs_text_trains_finetunes_and_exports(text_dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model.checkpoint import load_model_state, open_committed
    from model.export import export

    run = tmp_path / "cli"
    small = ["--model.hidden=64", "--model.mlp=256", "--model.context=64", "--data.seq_len=64",
             "--data.tokenizer_vocab=512", "--train.global_batch=4", "--train.micro_batch=2"]
    result = _cli("train", "--preset", "tiny", "--data", text_dataset, "--output", str(run),
                  "--steps", "3", *small)
    assert result.exit_code == 0, result.output
    assert (run / "data/_manifest.json").exists() and (run / "data/tokenizer").is_dir()
    assert list(losses(run)) == [1, 2, 3]

    ex = tmp_path / "ex"
    from primer.datasets import Producer, write_dataset
    write_dataset(str(ex), ({"prompt": f"def add_{i}(x):\n", "completion": f"    return x+{i}\n"}
                            for i in range(60)), Producer("t"))
    packed_ex = tmp_path / "ex-packed"
    result = _cli("pack", str(ex), "--output", str(packed_ex), "--finetune", "--tokenizer",
                  str(run / "data/tokenizer"), "--seq-len", "64", "--workers", "1")
    assert result.exit_code == 0, result.output
    ft = tmp_path / "ft"
    result = _cli("finetune", "--init", str(run), "--data", str(packed_ex), "--output", str(ft),
                  "--steps", "2", *small)
    assert result.exit_code == 0, result.output
    assert list(losses(ft)) == [1, 2]

    out = export(str(ft), tmp_path / "hf")
    # the evaluation Job reads it as another user (the rehearsal found weights written 0600)
    assert all(p.stat().st_mode & 0o004 for p in out.rglob("*")), \
        {p.name: oct(p.stat().st_mode) for p in out.rglob("*")}
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    state = load_model_state(open_committed(str(ft)))
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    ids = tok("def add_3(x):\n", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > ids.shape[1] and tok.decode(gen[0]).startswith("def add_3(x):\n")


def test_bad_configs_fail_before_any_work(packed, tmp_path):
    out = tmp_path / "never"
    cases = [
        (["--train.global_batch=6"], "global_batch=6 is not divisible by world size 1 × "
                                     "train.micro_batch=4"),
        (["--data", str(tmp_path / "missing")], "no dataset there"),
        (["--preset", "phi3"], "unknown preset 'phi3'"),
    ]
    for extra, message in cases:
        args = ["train", "--data", packed, "--output", str(out), "--steps", "2",
                "--train.micro_batch=4", *extra]
        result = _cli(*args)
        assert result.exit_code != 0
        assert message in str(result.exception) + result.output, (extra, result.output)
        assert not out.exists()


@pytest.mark.slow
def test_fsdp2_two_ranks_train_checkpoint_and_resume(packed, tmp_path):
    """FSDP2 (fully_shard per block, then the root) with gloo on CPU: the loss falls, the
    checkpoint holds full weights, and a resumed run continues where it stopped."""
    out = tmp_path / "fsdp"

    def torchrun(steps: int, *extra: str) -> None:
        proc = subprocess.run(
            [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m",
             "model.train", *train_args(packed, out, steps, "--parallel.data_parallel=fsdp",
                                        "--train.precision=fp32", "--optim.lr=3e-3", *extra)],
            cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(12, "--checkpoint.every=6")
    manager = CheckpointManager(str(out))
    assert manager.committed_steps() == [6, 12]
    full = _weights(out, 12)
    assert all(type(v) is torch.Tensor for v in full.values())  # a DTensor is an instance too
    # whole tensors, not one rank's shard: as many rows as a one-process run's checkpoint
    single = tmp_path / "single"
    _train(packed, single, 1, "--checkpoint.every=1")
    assert {k: v.shape for k, v in full.items()} == \
        {k: v.shape for k, v in _weights(single, 1).items()}
    torchrun(16, "--checkpoint.every=4", "--resume=auto")
    got = losses(out)
    assert list(got) == list(range(1, 17))  # steps 13-16 appended after the resume
    assert sum(list(got.values())[-4:]) / 4 < sum(list(got.values())[:4]) / 4


@pytest.mark.slow
def test_torchrun_on_a_text_dataset_fails_at_once_and_names_the_pack_command(
        text_dataset, packed, tmp_path):
    out = tmp_path / "ranks"
    tokenizer = f"{packed}/tokenizer"
    started = time.monotonic()
    proc = subprocess.run(
        [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m",
         "model.train", *train_args(text_dataset, out, 2, f"--data.tokenizer={tokenizer}",
                                    "--data.seq_len=64")],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert elapsed < 60, elapsed  # not a barrier's timeout (minutes) behind a packing rank
    assert f"--data {text_dataset} is a text dataset, and 2 processes do not pack it" in said
    assert not (out / "data").exists()  # nobody packed
    # the command it names packs what the run needs
    command = said.split("run `primer pack ", 1)[1].split("`", 1)[0].split()
    result = _cli("pack", *command)
    assert result.exit_code == 0, result.output
    meta = read_manifest(str(out / "data")).metadata
    assert meta["seq_len"] == 64 and meta["format"] == "primer-tokens/1"
    # and with it packed, the same torchrun line trains on it
    proc = subprocess.run(
        [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m",
         "model.train", *train_args(text_dataset, out, 2, f"--data.tokenizer={tokenizer}",
                                    "--data.seq_len=64")],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(losses(out)) == [1, 2]
