"""Small builders shared by several test files (pytest puts tests/ on sys.path: `from helpers import ...`)."""

import json
import random


def base_dir(tmp_path):
    """A tiny llama + tokenizer saved to tmp_path/base, as a model directory the CLI commands load."""
    from posttrain.models import tiny_model, tiny_tokenizer

    d = tmp_path / "base"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return str(d)


def write_prefs(path, n, seed=0):
    """Synthetic preference: chosen replies use words from one set, rejected from another."""
    g = random.Random(seed)
    good, bad = ["fox", "dog", "quick", "brown"], ["cat", "tac", "lazy", "sort"]
    with open(path, "w") as f:
        for i in range(n):
            rec = {
                "prompt": f"Say {g.choice(['hello', 'world', 'something'])} {i}",
                "chosen": " ".join(g.choice(good) for _ in range(g.randint(2, 6))),
                "rejected": " ".join(g.choice(bad) for _ in range(g.randint(2, 6))),
            }
            f.write(json.dumps(rec) + "\n")
    return str(path)


def training_files(d, n: int, arch: str = "llama"):
    """d/model (a tiny `arch` + tokenizer), d/prefs.jsonl (n synthetic pairs) and d/sft.jsonl (their prompts and
    chosen replies): what every training command needs. Returns d."""
    from posttrain.models import tiny_model, tiny_tokenizer

    tiny_model(arch).save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    write_prefs(d / "prefs.jsonl", n)
    rows = [json.loads(line) for line in (d / "prefs.jsonl").read_text().splitlines()]
    (d / "sft.jsonl").write_text(
        "".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows)
    )
    return d


def token_rows(lengths, seed=0):
    """Random token-id rows of the given lengths (ids 4..499, clear of the tiny tokenizers' specials)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 500, (n,), generator=g).tolist() for n in lengths]


def length_reward(prompts, responses, **meta):
    """A programmatic PPO reward (`ppo.reward=helpers:length_reward`): longer responses score higher."""
    return [len(r) / 10 for r in responses]


def fresh_process(code: str):
    """Run `code` in a new Python process (offline, one thread) and return the JSON value its last line prints:
    what an outside user who has only the files (and transformers / peft) gets."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
