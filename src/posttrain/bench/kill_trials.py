"""Kill trials: SIGKILL a training command at a random moment, run it again until it finishes, and compare its
metrics with an uninterrupted run's, bit for bit.

    python -m posttrain.bench.kill_trials --trials 5            # sft, rm, dpo, ppo; one JSON line per trainer

Each trial starts the command in a fresh output_dir, kills it after a random delay (uniform over the uninterrupted
run's wall time, so kills land in model loading, mid-step, mid-checkpoint and mid-final-save alike), then reruns the
same command until it exits 0 (killing it again at random once more, so a resume can itself be interrupted). The
trial is exact when the losses and grad norms of every step equal the uninterrupted run's and no step is logged
twice. A tiny llama and seeded synthetic data, so it runs on a laptop CPU in minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMON = ["train.max_steps=16", "train.batch_size=4", "train.save_every=2", "train.keep_last=2", "train.lr=1e-3",
          "train.progress=false"]  # fmt: skip
COMMANDS = {
    "sft": ["data={d}/sft.jsonl"],
    "rm": ["data={d}/prefs.jsonl"],
    "dpo": ["data={d}/prefs.jsonl"],
    "ppo": ["data={d}/prefs.jsonl", "ppo.reward=posttrain.bench.kill_trials:length_reward", "ppo.rollout_batch_size=8",
            "ppo.mini_batch_size=4", "ppo.max_new_tokens=6", "ppo.ppo_epochs=1"],
}  # fmt: skip


def length_reward(prompts, responses, **meta):
    return [len(r) / 10 for r in responses]


def world(d: Path) -> None:
    from posttrain.models import tiny_model, tiny_tokenizer

    tiny_model("llama").save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    g = random.Random(0)
    good, bad = ["fox", "dog", "quick", "brown"], ["cat", "tac", "lazy", "sort"]
    with open(d / "prefs.jsonl", "w") as prefs, open(d / "sft.jsonl", "w") as sft:
        for i in range(64):
            prompt = f"Say {g.choice(['hello', 'world', 'something'])} {i}"
            chosen = " ".join(g.choice(good) for _ in range(g.randint(2, 6)))
            rejected = " ".join(g.choice(bad) for _ in range(g.randint(2, 6)))
            prefs.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
            sft.write(json.dumps({"prompt": prompt, "completion": chosen}) + "\n")


def argv(command: str, d: Path, out: Path) -> list[str]:
    extra = [a.replace("{d}", str(d)) for a in COMMANDS[command]]
    return [
        sys.executable,
        "-m",
        "posttrain",
        command,
        f"model={d / 'model'}",
        f"output_dir={out}",
        *COMMON,
        *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_to_end(cmd: list[str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - t


def run_killed(cmd: list[str], after_s: float) -> bool:
    """Start `cmd`, SIGKILL it after `after_s` seconds; True when the kill landed (it had not finished)."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=after_s)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True


def rows(out: Path) -> list[tuple]:
    from posttrain.train.log import read_metrics

    return [(r["step"], r.get("loss"), r.get("grad_norm")) for r in read_metrics(out / "metrics.jsonl")]


def trials(command: str, n: int, d: Path, seed: int) -> dict:
    g = random.Random(seed)
    straight = d / f"{command}-straight"
    wall = run_to_end(argv(command, d, straight))
    want = rows(straight)
    exact, landed = 0, 0
    for i in range(n):
        out = d / f"{command}-trial-{i}"
        landed += run_killed(argv(command, d, out), g.uniform(0.2, 1.0) * wall)
        if run_killed(argv(command, d, out), g.uniform(0.3, 1.2) * wall):  # a resume killed too
            landed += 1
        run_to_end(argv(command, d, out))
        got = rows(out)
        exact += got == want and (out / "final").is_dir()
    return {"trainer": command, "trials": n, "kills": 2 * n, "kills_landed": landed, "exact": exact,
            "straight_wall_s": round(wall, 2)}  # fmt: skip


def main(argv_: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m posttrain.bench.kill_trials", description=__doc__.splitlines()[0]
    )
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--trainers", default="sft,rm,dpo,ppo")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv_)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        world(d)
        for command in args.trainers.split(","):
            print(json.dumps(trials(command, args.trials, d, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
