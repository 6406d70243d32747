"""The commands end to end on a tiny model saved to disk: sft (incl. kill -9 and resume), generate, chat, config."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from posttrain.train.log import read_metrics

WORDS = "the quick brown fox jumps over lazy dog hello world what is answer".split()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny Llama + tokenizer directory and 64 chat conversations."""
    from posttrain.models import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("cli")
    tiny_model("llama").save_pretrained(d / "model")
    tiny_tokenizer().save_pretrained(d / "model")
    g = random.Random(0)
    say = lambda: " ".join(g.choice(WORDS) for _ in range(g.randint(2, 8)))  # noqa: E731
    with (d / "data.jsonl").open("w") as f:
        for _ in range(64):
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": say()},
                            {"role": "assistant", "content": say()},
                        ]
                    }
                )
                + "\n"
            )
    return d


def sft_args(work, out, *extra):
    return [
        "sft",
        f"model={work / 'model'}",
        f"data={work / 'data.jsonl'}",
        f"output_dir={out}",
        "train.batch_size=4",
        "train.progress=false",
        *extra,
    ]


def test_sft_end_to_end_writes_metrics_and_reloadable_model(work, tmp_path):
    from transformers import AutoModelForCausalLM

    from posttrain.run.sft import main

    out = tmp_path / "run"
    assert main(sft_args(work, out, "train.max_steps=6", "eval_fraction=0.125", "train.lr=1e-3")[1:]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert "eval_loss" in rows[-1] and rows[-1]["loss"] > 0
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    base = AutoModelForCausalLM.from_pretrained(work / "model")
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    assert (out / "final" / "posttrain_config.yaml").exists() and (out / "final" / "tokenizer.json").exists()


def test_sft_lora_saves_an_adapter(work, tmp_path):
    pytest.importorskip("posttrain.peft")
    from posttrain.run.sft import main

    out = tmp_path / "lora"
    assert (
        main(
            sft_args(work, out, "train.max_steps=2", "peft.method=lora", "peft.lora.r=4", "train.lr=1e-2")[1:]
        )
        == 0
    )
    assert (out / "final" / "adapter_config.json").exists()
    assert (out / "final" / "adapter_model.safetensors").exists()
    assert not (out / "final" / "model.safetensors").exists()
    from posttrain.run.common import load_for_inference

    model, _ = load_for_inference(str(work / "model"), adapter=str(out / "final"))
    assert any("lora" in n for n, _ in model.named_parameters())
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # a later stage (DPO, PPO) loads this adapter under a new one: merged into the base, so that the base with
    # adapters disabled is the SFT model; with peft.method=none the loaded adapter itself keeps training
    from posttrain.config import SFTConfig, load_config
    from posttrain.peft import disable_adapters
    from posttrain.run.common import setup_model

    ids = torch.tensor([[2, 40, 41, 42, 43]])
    want = model(input_ids=ids).logits
    with disable_adapters(model):
        assert (model(input_ids=ids).logits - want).abs().max() > 1e-3  # the adapter learnt something
    over = [f"model={work / 'model'}", f"adapter={out / 'final'}", "dtype=fp32", "device=cpu"]
    stacked, _ = setup_model(load_config(SFTConfig, None, [*over, "peft.method=lora"]), verbose=False)
    with torch.no_grad(), disable_adapters(stacked):
        torch.testing.assert_close(stacked(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
    cont, _ = setup_model(load_config(SFTConfig, None, [*over, "peft.method=none"]), verbose=False)
    trainable = [n for n, p in cont.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)


def test_unknown_key_suggests_the_nearest(work, tmp_path, capsys):
    from posttrain.run.sft import main

    assert main(sft_args(work, tmp_path, "outptu_dir=x")[1:]) == 2
    assert "unknown config key 'outptu_dir'; did you mean 'output_dir'?" in capsys.readouterr().err
    assert main(sft_args(work, tmp_path, "train.max_step=1")[1:]) == 2
    assert "unknown config key 'train.max_step'; did you mean 'train.max_steps'?" in capsys.readouterr().err


def test_print_config_resolves_file_and_overrides(work, tmp_path, capsys):
    import yaml

    from posttrain.run.sft import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\ntrain:\n  lr: 0.001\n  epochs: 2\n")
    assert main(["--config", str(cfg), "--print-config", "train.lr=3e-4", "peft.method=lora"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        printed["model"]["name"] == "m" and printed["train"]["lr"] == 3e-4 and printed["train"]["epochs"] == 2
    )
    assert printed["peft"]["method"] == "lora"


def test_example_config_is_valid():
    from posttrain.config import SFTConfig, load_config

    path = Path(__file__).resolve().parents[1] / "src" / "posttrain" / "recipes" / "sft_lora.yaml"
    cfg = load_config(SFTConfig, path)
    assert cfg.model.name and cfg.data and cfg.train.max_length > 0


def test_kill_and_resume_matches_uninterrupted(work, tmp_path):
    """SIGKILL `posttrain sft` mid-run, run it again: the loss trajectory equals an uninterrupted run's."""
    from posttrain.run.sft import main

    steps = 120  # a step takes milliseconds; the kill lands within ~10 ms of step 7
    extra = [f"train.max_steps={steps}", "train.save_every=2", "train.keep_last=2", "train.lr=1e-3"]
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "posttrain", *sft_args(work, killed, *extra)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics, deadline = killed / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 7:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    seen = read_metrics(metrics)
    assert proc.returncode == -signal.SIGKILL and 7 <= len(seen) < steps, "the kill must land mid-run"
    assert not (killed / "final").exists()
    assert main(sft_args(work, killed, *extra)[1:]) == 0  # resumes from the newest complete checkpoint
    straight = tmp_path / "straight"
    assert main(sft_args(work, straight, *extra)[1:]) == 0
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
    assert [r["grad_norm"] for r in b] == pytest.approx([r["grad_norm"] for r in a], abs=1e-5)


def test_generate_end_to_end(work, tmp_path):
    from posttrain.run.generate import main

    prompts = tmp_path / "p.jsonl"
    old = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "old"}]}
    prompts.write_text(json.dumps({"prompt": "hello", "id": 7}) + "\n" + json.dumps(old) + "\n")
    out = tmp_path / "o.jsonl"
    args = [
        "--model",
        work / "model",
        "--prompts",
        prompts,
        "--out",
        out,
        "--max-new-tokens",
        5,
        "--temperature",
        0,
    ]
    assert main([*map(str, args), "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["id"] == 7
    assert all(isinstance(x["response"], str) and 1 <= x["response_tokens"] <= 5 for x in rows)
    # greedy decoding is deterministic and equals transformers' own greedy generate
    from posttrain.data.chat import encode_prompt
    from posttrain.run.common import load_for_inference

    model, tok = load_for_inference(str(work / "model"))
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": "hello"}])])
    ref = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )[0, ids.shape[1] :]
    assert rows[0]["response"] == tok.decode(ref[: rows[0]["response_tokens"]], skip_special_tokens=True)


def test_generate_bad_row_names_file_and_line(work, tmp_path, capsys):
    from posttrain.cli import main

    prompts = tmp_path / "bad.jsonl"
    prompts.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"question": "no"}) + "\n")
    args = [
        "generate",
        "--model",
        str(work / "model"),
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "messages" in err


def test_chat_streams_and_keeps_history(work, monkeypatch, capsys):
    """Piped stdin: two turns, /reset, one turn, /exit; the second turn sees the first, the third does not."""
    import io

    from posttrain.run import chat

    seen = []

    def fake_reply(model, tok, history, args):
        seen.append([m.content for m in history])
        return f"reply{len(seen)}"

    monkeypatch.setattr(chat, "reply", fake_reply)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nmore\n/reset\nagain\n/exit\nnever\n"))
    assert chat.main([str(work / "model"), "--system", "be brief"]) == 0
    assert seen == [["be brief", "hello"], ["be brief", "hello", "reply1", "more"], ["be brief", "again"]]


def test_chat_streams_the_reply_it_returns(work, monkeypatch, capsys):
    """The real model: the streamed text on stdout is the reply kept in the history."""
    import io

    from posttrain.run import chat

    replies, real = [], chat.reply
    monkeypatch.setattr(chat, "reply", lambda *a: replies.append(real(*a)) or replies[-1])
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert chat.main([str(work / "model"), "--max-new-tokens", "6", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert len(replies) == 1 and replies[0] and replies[0] in out.strip()


def test_sft_bad_data_names_file_and_line(work, tmp_path, capsys):
    from posttrain.run.sft import main

    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    bad.write_text(good + "\n" + json.dumps({"messages": [{"role": "user", "content": 3}]}) + "\n")
    args = sft_args(work, tmp_path / "o", "train.max_steps=1")[1:]
    args[1] = f"data={bad}"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "content" in err


def test_bench_table_resolves_and_sft_data_matches_the_anchor():
    """Every workload names importable functions; the SFT data is the anchor's (77,731 tokens, seed 0)."""
    import importlib

    from posttrain.bench.cli import WORKLOADS
    from posttrain.bench.sft import bench_rows

    for name, w in WORKLOADS.items():
        for target in (w.ours, w.anchor):
            module, func = target.split(":")
            assert callable(getattr(importlib.import_module(module), func)), f"{name}: {target}"
    rows = bench_rows()
    assert len(rows) == 512 and sum(len(ids) for ids, _ in rows) == 77731
    assert all(32 <= len(ids) <= 256 and p == int(len(ids) * 0.3) for ids, p in rows)


def test_merge_output_is_replaced_whole(tmp_path):
    """`posttrain merge` writes into a hidden sibling that replaces OUT only when complete: a failure while
    writing leaves the old OUT and no temporary directory; a success leaves only the new files."""
    from posttrain.atomic import atomic_dir as replacing_dir

    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with replacing_dir(out) as tmp:
            (tmp / "config.json").write_text("half")
            raise RuntimeError("killed while saving")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"] and (out / "config.json").read_text() == "old"
    with replacing_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
