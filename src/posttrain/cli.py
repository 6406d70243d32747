"""`posttrain COMMAND ...`: one table, one function per command, each imported only when used."""

from __future__ import annotations

import importlib
import os
import sys

# command -> (module:function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("posttrain.run.sft:main", "supervised fine-tuning (instruction tuning) on conversations"),
    "rm": ("posttrain.run.rm:main", "train a reward model from preference pairs or rankings"),
    "ppo": ("posttrain.run.ppo:main", "RLHF step 3: PPO against a reward model, KL-held near the SFT model"),
    "grpo": (
        "posttrain.run.ppo:main_grpo",
        "critic-free RL: group-normalised rewards (GRPO), KL in the loss",
    ),
    "rloo": ("posttrain.run.ppo:main_rloo", "critic-free RL: leave-one-out baseline over k samples (RLOO)"),
    "dpo": ("posttrain.run.dpo:main", "direct preference optimisation (dpo | ipo | simpo)"),
    "config": ("posttrain.run.show_config:main", "print every key of a command's config as commented YAML"),
    "recipes": (
        "posttrain.run.recipes:main",
        "list the shipped configs, or copy one to edit (recipes cp NAME FILE)",
    ),
    "data": ("posttrain.data.cli:main", "build, convert, mix and inspect instruction and preference data"),
    "eval": (
        "posttrain.eval.cli:main",
        "evaluate a model (+ adapter): perplexity, accuracy, preference, safety",
    ),
    "merge": ("posttrain.run.merge:main", "merge an adapter into its base model and write a plain HF model"),
    "chat": ("posttrain.run.chat:main", "interactive chat with a model (+ adapter), streaming tokens"),
    "generate": ("posttrain.run.generate:main", "batch generation for a JSONL file of prompts"),
    "label": ("posttrain.feedback.cli:main", "the web app where people rank model responses"),
    "demo": ("posttrain.demo.cli:main", "the whole adaptation pipeline on the embedded default"),
    "bench": ("posttrain.bench.cli:main", "benchmarks against the anchors (TRL, PEFT, transformers)"),
}


def usage() -> str:
    lines = ["usage: posttrain COMMAND [args]", "", "commands:"]
    lines += [f"  {name:<9} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "Run `posttrain COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, list(COMMANDS), n=1)
        print(
            f"posttrain: unknown command '{name}'" + (f"; did you mean '{near[0]}'?" if near else ""),
            file=sys.stderr,
        )
        print(usage(), file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if (
        int(os.environ.get("WORLD_SIZE", "1")) > 1
    ):  # under torchrun: join the process group before anything loads
        from posttrain.train.distributed import init_from_env

        init_from_env()
    module, func = COMMANDS[name][0].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except KeyboardInterrupt:
        print(f"posttrain {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `posttrain ... | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        return 0
    except Exception as e:  # a user error is one line and an exit code; anything else is a bug: traceback
        from posttrain.errors import report

        code = report(f"posttrain {name}", e)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
