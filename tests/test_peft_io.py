"""Adapter checkpoints: PEFT-format round trips both ways, bottleneck format, extras, modules_to_save,
merge."""

import json
import warnings

import pytest
import torch

from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.peft import (
    AdapterConfig,
    LoraConfig,
    PeftConfig,
    adapter_method,
    apply_peft,
    load_adapter,
    save_adapter,
)

peft = pytest.importorskip("peft")


def ids(shape=(2, 7)):
    return torch.randint(4, 500, shape, generator=torch.Generator().manual_seed(0))


def trained(arch, cfg, seed=1):
    model = apply_peft(tiny_model(arch), cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def peft_logits(model, x, n_virtual=0):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, n_virtual:]


CASES = [
    ("llama", PeftConfig(method="lora", lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))),
    ("llama", PeftConfig(method="lora", lora=LoraConfig(r=4, dora=True, rslora=True))),
    ("gpt2", PeftConfig(method="lora", lora=LoraConfig(r=4))),
    ("llama", PeftConfig(method="prefix")),
    ("gpt2", PeftConfig(method="prefix")),
    ("llama", PeftConfig(method="prompt")),
    (
        "llama",
        PeftConfig(
            method="lora", lora=LoraConfig(r=2, target_modules=["q_proj"]), modules_to_save=["lm_head"]
        ),
    ),
]
for _, c in CASES:
    c.prefix.num_virtual_tokens = c.prompt.num_virtual_tokens = 3


@pytest.mark.parametrize("arch,cfg", CASES)
def test_posttrain_save_then_peft_load(tmp_path, arch, cfg):
    ours = trained(arch, cfg)
    save_adapter(ours, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (
        meta["peft_type"]
        == {"lora": "LORA", "prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}[cfg.method]
    )
    assert meta["task_type"] == "CAUSAL_LM"
    theirs = peft.PeftModel.from_pretrained(tiny_model(arch), str(tmp_path))
    x = ids()
    with torch.no_grad():
        want = ours(x, attention_mask=torch.ones_like(x)).logits
    n = 3 if cfg.method == "prompt" else 0
    torch.testing.assert_close(peft_logits(theirs, x, n), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,cfg", CASES)
def test_peft_save_then_posttrain_load(tmp_path, arch, cfg):
    theirs_cfg = {
        "lora": lambda: peft.LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            use_dora=cfg.lora.dora,
            use_rslora=cfg.lora.rslora,
            modules_to_save=cfg.modules_to_save or None,
            target_modules="all-linear"
            if cfg.lora.target_modules == ["all-linear"]
            else cfg.lora.target_modules,
            task_type="CAUSAL_LM",
            init_lora_weights=False,
        ),
        "prefix": lambda: peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
        "prompt": lambda: peft.PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    }[cfg.method]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(tiny_model(arch), theirs_cfg)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:  # PEFT's init of lm_head copies / prompts; move them so a missed load shows
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    theirs.save_pretrained(str(tmp_path))
    ours = load_adapter(tiny_model(arch), tmp_path)
    assert adapter_method(ours) == cfg.method
    assert not any(p.requires_grad for p in ours.parameters())  # trainable=False by default
    x = ids()
    with torch.no_grad():
        got = ours(x, attention_mask=torch.ones_like(x)).logits
    n = 3 if cfg.method == "prompt" else 0
    torch.testing.assert_close(got, peft_logits(theirs, x, n), atol=1e-5, rtol=1e-5)


def test_prefix_projection_is_dropped_at_save(tmp_path):
    cfg = PeftConfig(method="prefix")
    cfg.prefix.num_virtual_tokens, cfg.prefix.projection = 3, True
    ours = trained("llama", cfg)
    save_adapter(ours, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["prefix_projection"] is False
    back = load_adapter(tiny_model("llama"), tmp_path, trainable=True)
    encoder = back.base_model.virtual_tokens.encoders["default"]
    assert encoder.transform is None and encoder.embedding.requires_grad
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, ours(x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer", "parallel"])
def test_bottleneck_round_trip(tmp_path, kind):
    ours = trained(
        "qwen2", PeftConfig(method="adapter", adapter=AdapterConfig(kind=kind, reduction_factor=8))
    )
    save_adapter(ours, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "POSTTRAIN_BOTTLENECK" and meta["kind"] == kind
    back = load_adapter(tiny_model("qwen2"), tmp_path)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, ours(x).logits, atol=0, rtol=0)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_model("llama"), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="peft_type"):
        load_adapter(tiny_model("llama"), tmp_path)


def test_merge_cli_writes_a_plain_model_for_tied_gpt2(tmp_path):
    from transformers import AutoModelForCausalLM

    from posttrain.cli import main

    base = tiny_model("gpt2")
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    ours = trained("gpt2", PeftConfig(method="lora", lora=LoraConfig(r=4)))
    save_adapter(ours, tmp_path / "adapter")
    assert (
        main(
            [
                "merge",
                "--model",
                str(tmp_path / "base"),
                "--adapter",
                str(tmp_path / "adapter"),
                "--out",
                str(tmp_path / "merged"),
            ]
        )
        == 0
    )
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.lm_head.weight.data_ptr() == merged.transformer.wte.weight.data_ptr()  # still tied
    assert not any("lora" in n for n, _ in merged.named_parameters())
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, ours(x).logits, atol=1e-5, rtol=1e-5)
