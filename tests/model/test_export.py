"""`primer export` readies any model URI for evaluation: a model that is an export already
(a ``save_pretrained`` folder in S3, e.g. a finetune's ``hf/``) is copied as it is; a
training checkpoint is converted (tests/model/test_training.py). The evaluation Job runs it
first (primer/k8s/evaluation_job.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from primer.cli import build_app
from primer.storage import open_storage
from tests.checkpoints import tiny_checkpoint


def test_an_export_in_s3_is_copied_and_loads(s3_bucket, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = tiny_checkpoint(tmp_path / "made")
    store = open_storage(f"s3://{s3_bucket}/runs/ft/hf")
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        store.write_bytes(str(path.relative_to(local)), path.read_bytes())

    res = CliRunner().invoke(build_app(), ["export", f"s3://{s3_bucket}/runs/ft/hf",
                                           str(tmp_path / "model")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = tmp_path / "model"
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == \
        [p.relative_to(local) for p in files]
    assert all((out / p.relative_to(local)).read_bytes() == p.read_bytes() for p in files)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|eos|>"


def test_a_folder_that_is_neither_says_so(s3_bucket, tmp_path):
    open_storage(f"s3://{s3_bucket}/nothing").write_bytes("notes.txt", b"hello")
    res = CliRunner().invoke(build_app(), ["export", f"s3://{s3_bucket}/nothing",
                                           str(tmp_path / "model")])
    assert res.exit_code != 0
    assert "not a committed checkpoint" in f"{res.output}{res.exception}"
    assert not Path(tmp_path / "model").exists()
