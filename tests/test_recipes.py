"""The configs shipped in the package: one per trainer x PEFT method (and the variants), each a valid config of its
command; `posttrain recipes` lists them, `cp` copies one (never over a file unasked), and a copied recipe runs."""

import pytest

from posttrain.cli import main as cli
from posttrain.config import load_config
from posttrain.run.recipes import command_of, names, text
from posttrain.run.show_config import config_class

TRAINERS = ("sft", "rm", "dpo", "ppo", "grpo")
METHODS = ("full", "lora", "qlora", "adapter", "prefix", "prompt")


def test_a_recipe_for_every_trainer_and_method_and_the_variants():
    have = set(names())
    assert {f"{t}_{m}" for t in TRAINERS for m in METHODS} <= have
    assert {"dpo_ipo_lora", "dpo_simpo_lora", "ppo_function_lora", "rloo_lora", "data_tasks"} <= have


@pytest.mark.parametrize("name", [n for n in names() if n != "data_tasks"])
def test_every_recipe_is_a_valid_config_of_its_command(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text(name))
    cfg = load_config(config_class(command_of(name)), path)
    method = name.split("_")[-1]
    assert cfg.peft.method == ("none" if method == "full" else "lora" if method == "qlora" else method)
    assert cfg.model.quantization == ("nf4" if method == "qlora" else "none")


def test_the_task_spec_recipe_builds_instances(tmp_path, capsys):
    assert cli(["recipes", "cp", "data_tasks", str(tmp_path / "tasks.yaml")]) == 0
    out = tmp_path / "tasks.jsonl"
    assert cli(["data", "from-tasks", "--spec", str(tmp_path / "tasks.yaml"), "--out", str(out)]) == 0
    assert out.read_text().count("\n") > 3


def test_list_cp_show_and_a_copied_recipe_runs(tmp_path, capsys):
    from helpers import training_files

    assert cli(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert "sft_qlora" in listed and "dpo_simpo_lora" in listed
    dest = tmp_path / "mine.yaml"
    assert cli(["recipes", "cp", "sft_lora", str(dest)]) == 0
    assert f"posttrain sft --config {dest}" in capsys.readouterr().out
    assert cli(["recipes", "cp", "sft_lora", str(dest)]) == 1  # an existing file is not replaced unasked
    assert "exists" in capsys.readouterr().err
    assert cli(["recipes", "cp", "sft_lora", str(tmp_path)]) == 0 and (tmp_path / "sft_lora.yaml").is_file()
    assert cli(["recipes", "show", "sft_lorra"]) == 2 and "did you mean 'sft_lora'" in capsys.readouterr().err
    d = training_files(tmp_path / "files", 8)
    args = [f"model={d / 'model'}", f"data={d / 'sft.jsonl'}", f"output_dir={tmp_path / 'run'}"]
    assert cli(["sft", "--config", str(dest), *args, "train.max_steps=2", "train.batch_size=4"]) == 0
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()
