"""`posttrain config COMMAND`: every key COMMAND's `--config` accepts, as commented YAML with the defaults.

posttrain config sft > sft.yaml       # edit, then: posttrain sft --config sft.yaml
posttrain config dpo peft.method=lora train.lr=5e-6   # the defaults with these overrides applied
"""

from __future__ import annotations

import importlib
import sys

from posttrain.commandline import ArgumentParser

CONFIGS = {
    "sft": "posttrain.config:SFTConfig",
    "rm": "posttrain.run.rm:RMConfig",
    "dpo": "posttrain.run.dpo:DPOConfig",
    "ppo": "posttrain.run.ppo:PPOConfig",
    "grpo": "posttrain.run.ppo:GRPOConfig",
    "rloo": "posttrain.run.ppo:RLOOConfig",
    "eval": "posttrain.eval.config:EvalConfig",
    "demo": "posttrain.demo.settings:DemoSettings",
}
"""Command -> its config dataclass."""


def config_class(command: str) -> type:
    module, name = CONFIGS[command].split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    from posttrain.config import load_config
    from posttrain.config_docs import commented_yaml

    p = ArgumentParser(prog="posttrain config", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=list(CONFIGS), help="the command whose config to print")
    p.add_argument("overrides", nargs="*", help="key=value applied to the defaults first")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    cls = config_class(args.command)
    cfg = load_config(cls, None, args.overrides)
    sys.stdout.write(
        commented_yaml(cls, f"posttrain {args.command}: {(cls.__doc__ or '').strip().splitlines()[0]}", cfg)
    )
    return 0
