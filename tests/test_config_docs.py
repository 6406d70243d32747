"""Discoverable config: every command's --help lists every key with its type, default and doc; `posttrain config
COMMAND` prints a commented YAML that --config reads back; subcommand options show their defaults."""

import pytest

from posttrain.cli import main as cli
from posttrain.config import load_config
from posttrain.config_docs import field_docs, keys
from posttrain.run.show_config import CONFIGS, config_class


def help_of(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(CONFIGS))
def test_help_lists_every_key_with_type_default_and_doc(command, capsys):
    out = help_of([command], capsys)
    for k in keys(config_class(command)):
        assert f"  {k.name}  (" in out, k.name
        assert k.doc and k.doc.split()[0] in out
    if command == "sft":
        assert "model.quantization  (none | nf4 | fp4 | int8; default none)" in out
        assert "train.lr  (float; default 0.0001)" in out and "peft.lora.r  (int; default 8)" in out


@pytest.mark.parametrize("command", list(CONFIGS))
def test_config_command_prints_a_yaml_that_loads_back(command, tmp_path, capsys):
    cls = config_class(command)
    assert cli(["config", command]) == 0
    path = tmp_path / "c.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(cls, path) == load_config(cls, None, [])
    text = path.read_text()
    comments = sum(line.strip().startswith("# ") for line in text.splitlines())
    assert comments >= len(keys(cls))  # at least one comment line above every key
    if command == "sft":
        assert "# Peak learning rate. (float)\n  lr: 0.0001" in text
        assert cli(["config", "sft", "train.lr=3e-4", "peft.method=lora"]) == 0
        path.write_text(capsys.readouterr().out)
        cfg = load_config(cls, path)
        assert cfg.train.lr == 3e-4 and cfg.peft.method == "lora"


def test_every_config_field_has_a_doc():
    """The docs --help and `posttrain config` print come from the string under each field: none may be missing."""
    missing = [(c, k.name) for c in CONFIGS for k in keys(config_class(c)) if not k.doc]
    assert missing == []


def test_field_docs_read_the_string_under_each_field():
    from posttrain.config import TrainConfig

    docs = field_docs(TrainConfig)
    assert docs["lr"] == "Peak learning rate." and docs["max_steps"].startswith("Optimiser steps to run")


@pytest.mark.parametrize(
    "argv,want",
    [
        (["label", "add"], "responses sampled per prompt (default: 4)"),
        (["label", "serve"], "(default: 8000)"),
        (["data", "filter"], "Shingle size in words. (default: 3)"),
        (["data", "self-instruct"], "(default: 0.7)"),
        (["generate"], "seeds the sampling (default: 0)"),
    ],
)
def test_subcommand_options_show_their_defaults(argv, want, capsys):
    out = " ".join(help_of(argv, capsys).split())
    assert want in out
