"""`rollout.backend=vllm` on a CPU: refusals name what is missing; with a stand-in `vllm` package (tests/fake_vllm,
the calls posttrain makes, backed by the Hugging Face model loaded from the directory posttrain writes) the engine
gets a loadable checkpoint of the merged weights, every later rollout pushes the current weights, log-probs are the
trainer's own and the per-prompt seeds come from the caller's generator. A real engine needs a GPU: not tested here."""

import copy
import sys
from pathlib import Path

import pytest
import torch

from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.peft import PeftConfig, apply_peft, merge_and_unload
from posttrain.rollout import generate, response_logprobs

FAKE = str(Path(__file__).parent / "fake_vllm")


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(FAKE)
    sys.modules.pop("vllm", None)
    from posttrain import rollout_vllm

    monkeypatch.setattr(rollout_vllm, "cuda_available", lambda: True)
    import vllm

    vllm.INSTANCES.clear()
    yield vllm
    sys.modules.pop("vllm", None)


def lora_model():
    cfg = PeftConfig(method="lora", trainable_tokens=["<|im_end|>", "<|begin_of_text|>"])
    model = apply_peft(tiny_model("llama"), cfg, tokenizer=tiny_tokenizer())
    with torch.no_grad():  # a LoRA that changes the model (B starts at 0)
        for name, p in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def test_engine_weights_are_the_merged_model_under_checkpoint_names():
    from posttrain.rollout_vllm import engine_weights

    model = lora_model()
    plain = merge_and_unload(copy.deepcopy(model)).state_dict()
    got = dict(engine_weights(model))
    assert set(got) == set(plain)
    for name, value in plain.items():
        assert torch.allclose(got[name], value, atol=1e-6), name


def test_without_vllm_the_backend_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    from helpers import base_dir
    from posttrain.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    out, base = str(tmp_path / "o.jsonl"), base_dir(tmp_path)
    capsys.readouterr()
    code = main(["generate", "--model", base, "--prompts", str(prompts), "--out", out, "--backend", "vllm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "pip install 'posttrain[vllm]'" in err[0]


@pytest.mark.parametrize("method", ["adapter", "prefix", "prompt"])
def test_methods_vllm_cannot_load_are_refused(fake_vllm, method):
    from posttrain.rollout_vllm import VLLMUnavailable, check_supported

    with pytest.raises(VLLMUnavailable, match=f"peft.method={method}"):
        check_supported(apply_peft(tiny_model("llama"), PeftConfig(method=method)))


def test_generate_through_the_engine_syncs_weights_and_keeps_trainer_logprobs(fake_vllm):
    model, tok = lora_model(), tiny_tokenizer()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    g = torch.Generator().manual_seed(3)
    ro = generate(model, tok, prompts, 6, temperature=1.0, generator=g, backend="vllm")
    (llm,) = fake_vllm.INSTANCES  # one engine per model, built from the merged weights
    assert not llm.runner.loaded
    merged = merge_and_unload(copy.deepcopy(model))
    for name, value in merged.state_dict().items():
        assert torch.allclose(llm.model.state_dict()[name], value, atol=1e-6), name
    seeds = [sp.seed for _, sp in llm.requests]
    assert seeds == torch.randint(0, 2**31 - 1, (3,), generator=torch.Generator().manual_seed(3)).tolist()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    assert ro.logprobs == response_logprobs(model, prompts, ro.response_ids, pad)
    with torch.no_grad():  # a training step: the next rollout must sample from the new weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2.0)
    generate(model, tok, prompts, 6, temperature=1.0, generator=g, backend="vllm")
    assert len(fake_vllm.INSTANCES) == 1 and llm.runner.loaded
    for name, value in merge_and_unload(copy.deepcopy(model)).state_dict().items():
        assert torch.allclose(llm.model.state_dict()[name], value, atol=1e-6), name


def test_grpo_runs_with_the_vllm_backend(fake_vllm, tmp_path):
    """`posttrain grpo ... rollout.backend=vllm`: four steps (two rollouts of 8), the engine refreshed before the second."""
    import json

    from helpers import base_dir
    from posttrain.cli import main

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?"}) + "\n" for i in range(8)))
    args = [
        f"model={base_dir(tmp_path)}",
        f"data={data}",
        f"output_dir={tmp_path / 'out'}",
        "peft.method=lora",
    ]
    args += ["train.max_steps=4", "train.batch_size=4", "train.progress=false", "ppo.rollout_batch_size=8"]
    args += [
        "ppo.mini_batch_size=4",
        "ppo.max_new_tokens=4",
        "ppo.reward=posttrain.bench.kill_trials:length_reward",
    ]
    assert main(["grpo", *args, "rollout.backend=vllm", "device=cpu"]) == 0
    (llm,) = fake_vllm.INSTANCES
    assert len(llm.requests) == 16 and llm.runner.loaded
