"""Presets: the paper's architectures and optimiser settings, and config that fails loudly."""

from __future__ import annotations

import pytest
from transformers import PhiForCausalLM

from model.presets import PresetError, build_model, count_parameters, get_preset, make_config
from primer.config import ConfigError


def _params(name: str) -> tuple[int, int]:
    model = build_model(get_preset(name).model, device="meta")  # no memory is allocated
    assert isinstance(model, PhiForCausalLM)
    return count_parameters(model), model.lm_head.weight.numel() + model.lm_head.bias.numel()


def test_phi1_matches_the_paper_1_3b():
    total, head = _params("phi1")
    # The paper's "1.3B" excludes the (untied) output head: microsoft/phi-1 holds 1.418B in all.
    assert total == 1_418_270_720
    assert abs((total - head) / 1.3e9 - 1) < 0.02


def test_phi1_small_matches_the_paper_350m():
    total, _ = _params("phi1_small")
    assert total == 356_794_368
    assert abs(total / 350e6 - 1) < 0.02


def test_phi1_block_and_paper_optimiser_defaults():
    cfg = get_preset("phi1")
    model = build_model(cfg.model, device="meta")
    m = model.config
    assert (m.num_hidden_layers, m.hidden_size, m.intermediate_size, m.num_attention_heads) \
        == (24, 2048, 8192, 32)
    assert model.model.layers[0].self_attn.rotary_ndims == 32  # partial rotary 0.5 of 64
    assert (m.max_position_embeddings, m.vocab_size) == (2048, 51200)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (1e-3, 750, 0.1)
    assert cfg.optim.decay == "linear" and cfg.train.global_batch == 1024
    assert cfg.data.seq_len == 2048 and cfg.parallel.data_parallel == "fsdp"
    ft = get_preset("phi1", finetuning=True)
    assert (ft.optim.lr, ft.optim.warmup_steps, ft.optim.weight_decay) == (1e-4, 50, 0.01)
    assert (ft.train.global_batch, ft.train.loss_on) == (256, "completion")


def test_overrides_apply_and_bad_ones_fail_with_the_key():
    cfg = make_config("phi1_small", ["--train.micro_batch=4", "--parallel.compile=true"])
    assert cfg.train.micro_batch == 4 and cfg.parallel.compile and cfg.model.n_layer == 20
    with pytest.raises(ConfigError, match="train.micro_bach: unknown key; did you mean"):
        make_config("tiny", ["--train.micro_bach=4"])
    with pytest.raises(ConfigError, match="model.hidden"):
        make_config("tiny", ["--model.hidden=wide"])
    with pytest.raises(ConfigError, match="not divisible by heads"):
        make_config("tiny", ["--model.hidden=130"])
    with pytest.raises(PresetError, match="unknown preset 'phi2'; choose one of phi1, "
                                          "phi1_small, tiny"):
        make_config("phi2")


def test_paper_schedule_milestones_and_dropout():
    cfg = get_preset("phi1")
    assert (cfg.train.steps, cfg.train.stop_at, cfg.checkpoint.keep) == (36_000, None, [24_000])
    assert build_model(cfg.model, device="meta").config.attention_dropout == 0.1
    assert get_preset("phi1_small").checkpoint.keep == [24_000]
    ft = get_preset("phi1", finetuning=True)
    assert (ft.train.steps, ft.checkpoint.every, ft.checkpoint.keep_every) == (6000, 1000, 1000)
    assert ft.checkpoint.keep == []
    for name in ("phi1", "phi1_small", "tiny"):
        doc = get_preset.__globals__[name].__doc__
        assert "Deviations" in doc or "Not a paper model" in doc, name
