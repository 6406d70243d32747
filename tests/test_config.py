"""Typed configs: YAML + key=value overrides, unknown keys and bad values are errors naming the key and file."""

from __future__ import annotations

import pytest

from posttrain.config import (
    ConfigError,
    SFTConfig,
    TrainConfig,
    from_dict,
    load_config,
    parse_overrides,
    to_dict,
)

REQUIRED = [
    "model",
    "data",
    "output_dir",
    "template",
    "peft.method",
    "train.max_steps",
    "train.epochs",
    "train.batch_size",
    "train.grad_accum",
    "train.lr",
    "train.max_length",
    "train.packing",
    "train.seed",
]


@pytest.mark.parametrize("key", REQUIRED)
def test_required_keys_exist(key):
    node = to_dict(SFTConfig())
    for part in key.split("."):
        assert part in node, f"SFTConfig lacks {key}"
        node = node[part]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\ntrain:\n  lr: 1.0e-3\n  batch_size: 4\npeft:\n  method: lora\n")
    cfg = load_config(
        SFTConfig, path, ["train.lr=3e-4", "train.packing=true", "peft.lora.target_modules=[q_proj]"]
    )
    assert (
        cfg.model == "m" and cfg.train.lr == 3e-4 and cfg.train.batch_size == 4 and cfg.train.packing is True
    )
    assert cfg.peft.method == "lora" and cfg.peft.lora.target_modules == ["q_proj"]
    assert cfg.train.max_length == TrainConfig().max_length  # untouched default


def test_unknown_key_in_file_names_file_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(
        ConfigError,
        match=r"bad\.yaml: unknown config key 'train\.batch_sise'; did you mean "
        r"'train\.batch_size'\?",
    ):
        load_config(SFTConfig, path)


def test_bad_types_name_the_key():
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        load_config(SFTConfig, None, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match="train.packing: expected true/false"):
        load_config(SFTConfig, None, ["train.packing=3"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["train.lr"])


def test_round_trip():
    cfg = load_config(SFTConfig, None, ["train.betas=[0.9, 0.95]", "eval_fraction=0.1"])
    again = from_dict(SFTConfig, to_dict(cfg))
    assert again == cfg and again.train.betas == (0.9, 0.95)
