"""The layered config loader: precedence, loud errors that name key and source, hashing."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import Field

from primer.config import (
    ConfigError,
    ConfigModel,
    CoreConfig,
    config_hash,
    dump_config,
    load_config,
    parse_override,
    undocumented_fields,
)


class TrainConfig(ConfigModel):
    lr: float = Field(1e-3, description="peak learning rate")
    steps: int = Field(100, description="optimizer steps")
    name: str = Field("run", description="run name")
    tags: list[str] = Field(default_factory=list, description="free-form labels")


class RunConfig(ConfigModel):
    """A root that nests the core's sections beside a component's own."""

    core: CoreConfig = Field(default_factory=CoreConfig, description="shared sections")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training")


def write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_without_any_layer():
    cfg = load_config(RunConfig, env={})
    assert cfg.train.steps == 100
    assert cfg.core.storage.root == "./primer-data"
    assert cfg.core.redis.url == "redis://localhost:6379/0"


def test_precedence_defaults_preset_yaml_env_overrides(tmp_path):
    preset = {"train": {"lr": 0.5, "steps": 1, "name": "preset", "tags": ["p"]}}
    path = write(tmp_path, {"train": {"steps": 2, "name": "yaml", "tags": ["y"]}})
    env = {"PRIMER_TRAIN__NAME": "env", "primer_train__tags": "[e1, e2]"}
    cfg = load_config(RunConfig, path, env=env, base=preset,
                      overrides=["--train.tags=[c]"])
    assert cfg.train.lr == 0.5            # only the preset set it
    assert cfg.train.steps == 2           # YAML beats preset
    assert cfg.train.name == "env"        # env beats YAML
    assert cfg.train.tags == ["c"]        # command line beats env (and is YAML-parsed)
    assert cfg.core.log_level == "info"   # untouched default


def test_env_var_names_are_case_insensitive_and_root_level_uses_double_underscore():
    cfg = load_config(CoreConfig, env={"Primer_Redis__URL": "redis://h:1/2",
                                       "PRIMER__LOG_LEVEL": "WARNING"})
    assert cfg.redis.url == "redis://h:1/2"
    assert cfg.log_level == "warning"


def test_service_variables_are_defaults_that_yaml_beats(tmp_path):
    env = {"PRIMER_DATA": "/data/env", "PRIMER_REDIS_URL": "redis://env:6379/0"}
    cfg = load_config(CoreConfig, env=env)
    assert (cfg.storage.root, cfg.redis.url) == ("/data/env", "redis://env:6379/0")
    path = write(tmp_path, {"storage": {"root": "s3://b/p"}})
    cfg = load_config(CoreConfig, path, env=env)
    assert cfg.storage.root == "s3://b/p"
    assert cfg.redis.url == "redis://env:6379/0"


def test_preset_model_keeps_env_service_default_for_fields_it_did_not_set():
    preset = CoreConfig(log_level="error")
    cfg = load_config(CoreConfig, env={"PRIMER_DATA": "/d"}, base=preset)
    assert (cfg.log_level, cfg.storage.root) == ("error", "/d")


def test_env_vars_without_double_underscore_or_for_other_sections_are_ignored():
    env = {"PRIMER_S3_ENDPOINT": "http://x", "PRIMER_CURATION__MIN_SCORE": "0.5",
           "HOME__X": "1"}
    assert load_config(CoreConfig, env=env) == CoreConfig()


def test_string_fields_keep_env_text_verbatim():
    cfg = load_config(RunConfig, env={"PRIMER_TRAIN__NAME": "0123"},
                      overrides=["train.steps=7", "--core.redis.url=on"])
    assert cfg.train.name == "0123"
    assert cfg.core.redis.url == "on"
    assert cfg.train.steps == 7


def test_unknown_yaml_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, {"train": {"stpes": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, path, env={})
    msg = str(e.value)
    assert "train.stpes: unknown key" in msg
    assert "did you mean 'steps'" in msg
    assert path in msg


def test_unknown_top_level_section_lists_close_match(tmp_path):
    path = write(tmp_path, {"trian": {"steps": 3}})
    with pytest.raises(ConfigError, match=r"trian: unknown key; did you mean 'train'"):
        load_config(RunConfig, path, env={})


def test_wrong_type_in_env_names_the_variable():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, env={"PRIMER_TRAIN__STEPS": "many"})
    msg = str(e.value)
    assert "train.steps: expected int, got 'many'" in msg
    assert "env PRIMER_TRAIN__STEPS" in msg


def test_unknown_key_in_a_known_env_section_fails():
    with pytest.raises(ConfigError, match=r"redis.ulr: unknown key.*env PRIMER_REDIS__ULR"):
        load_config(CoreConfig, env={"PRIMER_REDIS__ULR": "redis://x"})


def test_wrong_type_in_override_names_the_command_line():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, env={}, overrides=["--train.lr=fast"])
    msg = str(e.value)
    assert "train.lr: expected float, got 'fast'" in msg
    assert "command line (--train.lr=fast)" in msg


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, {"train": {"steps": "x"}, "core": {"storage": {"rot": "/a"}}})
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, path, env={"PRIMER_TRAIN__LR": "y"},
                    overrides=["--core.log_level=loud", "no-equals-sign"])
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 5, lines
    joined = "\n".join(lines)
    for key in ("train.steps", "core.storage.rot", "train.lr", "core.log_level",
                "'no-equals-sign'"):
        assert key in joined


def test_later_layer_fixes_an_earlier_bad_value(tmp_path):
    path = write(tmp_path, {"train": {"steps": "x"}})
    assert load_config(RunConfig, path, env={}, overrides=["train.steps=5"]).train.steps == 5


def test_missing_or_malformed_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.yaml"):
        load_config(CoreConfig, tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(CoreConfig, bad, env={})
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(CoreConfig, bad, env={})


def test_parse_override_forms():
    assert parse_override("--a.b=c=d") == (("a", "b"), "c=d")
    assert parse_override("a=") == (("a",), "")
    for bad in ("--a.b", "--a..b=1", "=1"):
        with pytest.raises(ConfigError):
            parse_override(bad)


def test_assignment_is_validated():
    cfg = CoreConfig()
    with pytest.raises(ValueError):
        cfg.log_level = "chatty"


def test_config_hash_is_stable_and_tracks_values():
    a = load_config(RunConfig, env={}, overrides=["train.tags=[x, y]"])
    b = RunConfig(train=TrainConfig(tags=["x", "y"]))
    assert config_hash(a) == config_hash(b)
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash(a)), config_hash(a)
    c = load_config(RunConfig, env={}, overrides=["train.tags=[x, y]", "train.steps=101"])
    assert config_hash(c) != config_hash(a)


def test_dump_round_trips(tmp_path):
    cfg = load_config(RunConfig, env={}, overrides=["train.name=on", "core.log_level=debug"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(RunConfig, path, env={})
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_core_fields_are_documented():
    assert undocumented_fields(CoreConfig) == []
    assert undocumented_fields(RunConfig) == []

    class Bare(ConfigModel):
        x: int = 1

    assert undocumented_fields(Bare) == ["x"]
