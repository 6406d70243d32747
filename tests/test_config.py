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
        cfg.model.name == "m"
        and cfg.train.lr == 3e-4
        and cfg.train.batch_size == 4
        and cfg.train.packing is True
    )
    assert cfg.peft.method == "lora" and cfg.peft.lora.target_modules == ["q_proj"]
    assert cfg.train.max_length == TrainConfig().max_length  # untouched default


def test_unknown_key_in_file_names_file_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(
        ConfigError,
        match=r"bad\.yaml:2: unknown config key 'train\.batch_sise'; did you mean "
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


BAD_CHOICES = [
    ("posttrain.run.dpo", "dpo.loss=kto", "dpo.loss: 'kto' is not one of dpo | ipo | simpo"),
    (
        "posttrain.run.sft",
        "train.truncation=foo",
        "train.truncation: 'foo' is not one of right | left | drop",
    ),
    ("posttrain.run.sft", "train.strategy=deepspeed", "train.strategy: 'deepspeed' is not one of auto | ddp"),
    ("posttrain.run.sft", "train.schedule=cosinee", "did you mean 'cosine'?"),
    ("posttrain.run.rm", "rm.loss=listwsie", "did you mean 'listwise'?"),
    (
        "posttrain.run.ppo",
        "ppo.value_head=critic",
        "ppo.value_head: 'critic' is not one of shared | separate",
    ),
    ("posttrain.run.sft", "peft.adapter.kind=lora", "peft.adapter.kind: 'lora' is not one of houlsby"),
]


@pytest.mark.parametrize("module,override,message", BAD_CHOICES)
def test_a_bad_choice_is_a_usage_error_before_anything_loads(capsys, module, override, message):
    """Exit 2 with one line naming the key and the valid values, before the (here nonexistent) model loads."""
    import importlib

    code = importlib.import_module(module).main(["model=/nonexistent", "data=/nonexistent.jsonl", override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_every_choice_has_an_implementation():
    """The Literal values a config accepts are exactly the keys of the tables the code looks them up in."""
    import typing

    from posttrain.data.collate import TRUNCATION
    from posttrain.objectives.dpo import LOSSES, DPOArgs
    from posttrain.objectives.reward import OBJECTIVES, RMArgs
    from posttrain.peft.adapter import ACTIVATIONS, PLACEMENTS
    from posttrain.peft.api import INJECTORS
    from posttrain.peft.config import AdapterConfig, PeftConfig
    from posttrain.train.distributed import STRATEGIES
    from posttrain.train.optim import SCHEDULES

    def choices(cls, name):
        return set(typing.get_args(typing.get_type_hints(cls)[name]))

    assert choices(DPOArgs, "loss") == set(LOSSES)
    assert choices(RMArgs, "loss") == set(OBJECTIVES)
    assert choices(PeftConfig, "method") == {"none", *INJECTORS}
    assert choices(AdapterConfig, "kind") == set(PLACEMENTS)
    assert choices(AdapterConfig, "non_linearity") == set(ACTIVATIONS)
    assert choices(TrainConfig, "truncation") == set(TRUNCATION)
    assert choices(TrainConfig, "strategy") == set(STRATEGIES)
    assert choices(TrainConfig, "schedule") == set(SCHEDULES)
