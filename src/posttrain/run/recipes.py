"""`posttrain recipes`: the configs shipped with the package, one per trainer x PEFT method (and QLoRA, PPO with a
reward function, the DPO variants, a data-construction spec), to copy and edit (torchtune's `tune ls` / `tune cp`).

    posttrain recipes                          # name, command, what it does
    posttrain recipes cp sft_lora my.yaml      # then: posttrain sft --config my.yaml data=... model=...
    posttrain recipes show dpo_lora            # print one
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from posttrain.commandline import ArgumentParser
from posttrain.errors import UsageError, UserError


def recipe_dir():
    return resources.files("posttrain") / "recipes"


def names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in recipe_dir().iterdir() if p.name.endswith(".yaml"))


def text(name: str) -> str:
    if name not in names():
        import difflib

        near = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else "; `posttrain recipes` lists them"
        raise UsageError(f"no recipe '{name}'{hint}")
    return (recipe_dir() / f"{name}.yaml").read_text(encoding="utf-8")


def command_of(name: str) -> str:
    """The command a recipe is for: its first line says `# posttrain CMD ...`."""
    first = text(name).splitlines()[0].split()
    return first[2] if len(first) > 2 and first[1] == "posttrain" else name.split("_")[0]


def summary(name: str) -> str:
    """What the recipe runs: its description comment up to the first full stop."""
    lines = [x[2:] for x in text(name).splitlines()[1:] if x.startswith("# ")]
    return " ".join(lines).split(". ")[0].rstrip(".") if lines else ""


def copy(name: str, dest: str, force: bool = False) -> Path:
    from posttrain.atomic import atomic_write_text

    out = Path(dest)
    if out.is_dir():
        out = out / f"{name}.yaml"
    if out.exists() and not force:
        raise UserError(f"{out}: exists; pass --force to replace it")
    atomic_write_text(out, text(name))
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="posttrain recipes", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    cp = sub.add_parser("cp", help="copy a recipe to a file (or into a directory)")
    cp.add_argument("name", help="recipe name, as `posttrain recipes` lists it")
    cp.add_argument("dest", help="file or directory to write")
    cp.add_argument("--force", action="store_true", help="replace an existing file")
    show = sub.add_parser("show", help="print a recipe")
    show.add_argument("name", help="recipe name")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "cp":
        out = copy(args.name, args.dest, args.force)
        print(f"wrote {out} (posttrain {command_of(args.name)} --config {out})")
    elif args.cmd == "show":
        sys.stdout.write(text(args.name))
    else:
        rows = [(n, command_of(n), summary(n)) for n in names()]
        width = max(len(n) for n, _, _ in rows)
        for n, cmd, what in rows:
            print(f"{n:<{width}}  {cmd:<5}  {what}")
    return 0
