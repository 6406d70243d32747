"""LoRA: injection, step-0 equality, gradients, merge/unmerge exactness, DoRA, rsLoRA, named adapters."""

import math

import pytest
import torch

from posttrain.models import tiny_model
from posttrain.peft import (
    LoraConfig,
    PeftConfig,
    apply_peft,
    count_parameters,
    disable_adapters,
    merge_adapters,
    set_adapter,
    trainable_report,
    unmerge_adapters,
)
from posttrain.peft.lora import LoraLinear

ARCHS = ["llama", "gpt2", "qwen2", "mistral"]


def ids(seed=0, shape=(2, 9)):
    return torch.randint(4, 500, shape, generator=torch.Generator().manual_seed(seed))


def perturb(model, scale=0.05, seed=1):
    """Pretend training happened: move every trainable parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def lora(**kw):
    return PeftConfig(method="lora", lora=LoraConfig(**kw))


@pytest.mark.parametrize("arch", ARCHS)
def test_step0_equals_base_and_only_adapters_train(arch):
    base, model = tiny_model(arch), tiny_model(arch)
    apply_peft(model, lora(r=4))
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, base(x).logits, atol=0, rtol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    model(x, labels=x).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    # B starts at zero, so only B gets a non-zero gradient at step 0
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)


def test_all_linear_skips_lm_head_and_wraps_conv1d():
    gpt2 = apply_peft(tiny_model("gpt2"), lora(r=2))
    wrapped = {n for n, m in gpt2.named_modules() if isinstance(m, LoraLinear)}
    assert wrapped == {
        f"transformer.h.{i}.{s}"
        for i in range(2)
        for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert not isinstance(gpt2.lm_head, LoraLinear)
    assert all(m.fan_in_fan_out for m in gpt2.modules() if isinstance(m, LoraLinear))
    llama = apply_peft(tiny_model("llama"), lora(r=2, target_modules=["q_proj", "v_proj"]))
    names = sorted(n.rsplit(".", 1)[-1] for n, m in llama.named_modules() if isinstance(m, LoraLinear))
    assert names == ["q_proj", "q_proj", "v_proj", "v_proj"]


def test_bad_target_is_a_clear_error():
    with pytest.raises(ValueError, match="target_modules"):
        apply_peft(tiny_model("llama"), lora(target_modules=["nope_proj"]))


def test_forward_matches_hand_computed_update_and_rslora_scaling():
    """y = W x + (alpha/r) B A x; with rslora the scale is alpha/sqrt(r) (r=4, alpha=8: 2 vs 4)."""
    for rslora, scale in ((False, 8 / 4), (True, 8 / math.sqrt(4))):
        model = apply_peft(tiny_model("llama"), lora(r=4, alpha=8, rslora=rslora, target_modules=["q_proj"]))
        perturb(model)
        layer = model.model.layers[0].self_attn.q_proj
        assert layer.scaling["default"] == scale
        x = torch.randn(3, 64)
        want = (
            x @ layer.base_layer.weight.T
            + scale * x @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
        )
        torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,dora", [("llama", False), ("gpt2", False), ("llama", True), ("gpt2", True)])
def test_merge_is_exact_idempotent_and_unmerge_restores_bits(arch, dora):
    model = apply_peft(tiny_model(arch), lora(r=4, dora=dora))
    perturb(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    x = ids()
    with torch.no_grad():
        unmerged = model(x).logits
        merge_adapters(model)
        merged = model(x).logits
        merge_adapters(model)  # twice changes nothing
        merged_again = model(x).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    assert torch.equal(merged, merged_again)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    unmerge_adapters(model)
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), n
    with torch.no_grad():
        assert torch.equal(model(x).logits, unmerged)


def test_dora_step0_and_magnitude_is_trained():
    base, model = tiny_model("llama"), apply_peft(tiny_model("llama"), lora(r=4, dora=True))
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, base(x).logits, atol=1e-5, rtol=1e-5)
    layer = model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(layer.lora_magnitude_vector["default"], layer.base_layer.weight.norm(dim=1))
    model(x, labels=x).loss.backward()
    assert layer.lora_magnitude_vector["default"].grad is not None


def test_two_named_adapters_switch_and_disable():
    base, model = tiny_model("llama"), tiny_model("llama")
    apply_peft(model, lora(r=4))
    perturb(model, seed=1)
    apply_peft(model, lora(r=2, target_modules=["v_proj"]), adapter_name="second")
    perturb(model, seed=2)
    x = ids()
    with torch.no_grad():
        out_second = model(x).logits
        set_adapter(model, "default")
        out_default = model(x).logits
        with disable_adapters(model):
            out_base = model(x).logits
        out_default_again = model(x).logits
        ref = base(x).logits
    assert not torch.allclose(out_second, out_default)
    assert torch.equal(out_base, ref)
    assert torch.equal(out_default, out_default_again)
    with pytest.raises(ValueError, match="no adapter named"):
        set_adapter(model, "missing")


def test_disable_while_merged_gives_base_then_merged_again():
    base, model = tiny_model("gpt2"), apply_peft(tiny_model("gpt2"), lora(r=4))
    perturb(model)
    x = ids()
    with torch.no_grad():
        merge_adapters(model)
        merged = model(x).logits
        with disable_adapters(model):
            assert torch.equal(model(x).logits, base(x).logits)
        assert torch.equal(model(x).logits, merged)


def test_count_and_report():
    model = apply_peft(tiny_model("llama"), lora(r=4, target_modules=["q_proj"]))
    trainable, total = count_parameters(model)
    assert trainable == 2 * (4 * 64 + 64 * 4)  # two layers of A (4x64) + B (64x4)
    assert total == sum(p.numel() for p in tiny_model("llama").parameters()) + trainable
    assert trainable_report(model) == (
        f"trainable params: {trainable:,} || all params: {total:,} || "
        f"trainable%: {100 * trainable / total:.2f}"
    )
    full = apply_peft(tiny_model("llama"), PeftConfig(method="none"))
    assert count_parameters(full)[0] == count_parameters(full)[1]


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text"])
def test_lora_on_a_tied_head_merges_into_the_head_only(tmp_path, arch):
    """The head shares the embedding matrix: merging a LoRA into it wrote into the embeddings too (merged logits
    10.4 off). The head is untied (with a warning) when LoRA targets it; merged logits, the saved merged model and
    `peft` loading the adapter onto the tied base all give the trained policy's logits."""
    import warnings

    from transformers import AutoModelForCausalLM

    from posttrain.peft import merge_and_unload, save_adapter

    cfg = PeftConfig(method="lora", lora=LoraConfig(r=4, target_modules=["lm_head"]))
    with pytest.warns(UserWarning, match="tied LM head"):
        model = apply_peft(tiny_model(arch), cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    x = torch.randint(4, 500, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).logits
    save_adapter(model, tmp_path / "adapter")
    merged = merge_and_unload(model)
    assert torch.equal(merged.get_input_embeddings().weight, tiny_model(arch).get_input_embeddings().weight)
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, want, atol=1e-5, rtol=1e-5)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        torch.testing.assert_close(reloaded(x).logits, want, atol=1e-5, rtol=1e-5)
    peft = pytest.importorskip("peft")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(tiny_model(arch), str(tmp_path / "adapter"))
        torch.testing.assert_close(theirs(x).logits, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,dora", [("llama", False), ("gpt2", False), ("llama", True)])
def test_fused_for_sampling_matches_unfused_and_leaves_weights_untouched(arch, dora):
    """Inside `fused_for_sampling` each LoRA layer runs one matmul on W + s B A (DoRA's rescaling included): the
    logits match the two-matmul path, no parameter changes, and the fused copies are gone afterwards, also when
    the block raises. A disabled adapter is not fused (the base answers)."""
    from posttrain.peft.lora import fused_for_sampling

    model = apply_peft(tiny_model(arch), lora(r=4, dora=dora))
    perturb(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = ids()
    calls = []
    for m in model.modules():
        if isinstance(m, LoraLinear):
            m.lora_A["default"].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        want = model(x).logits
        unfused_calls = len(calls)
        with fused_for_sampling(model) as n:
            got = model(x).logits
            assert n == sum(isinstance(m, LoraLinear) for m in model.modules()) > 0
    assert unfused_calls == n and len(calls) == n  # inside the block no adapter matmul ran
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    with pytest.raises(RuntimeError), fused_for_sampling(model):
        raise RuntimeError("boom")
    assert all(m.fused is None for m in model.modules() if isinstance(m, LoraLinear))
    with torch.no_grad(), disable_adapters(model), fused_for_sampling(model) as n:
        assert n == 0
        base = model(x).logits
    with torch.no_grad():
        torch.testing.assert_close(base, tiny_model(arch)(x).logits, atol=0, rtol=0)


def test_generate_samples_the_same_tokens_fused_or_not():
    """`generate` fuses LoRA layers on CPU by default; greedy decoding gives the same tokens either way."""
    from posttrain.rollout import generate
    from posttrain.tiny import tiny_tokenizer

    model = apply_peft(tiny_model("llama"), lora(r=4))
    perturb(model, scale=0.2)
    prompts = [ids(s, (1, 5))[0].tolist() for s in range(4)]
    runs = [
        generate(model, tiny_tokenizer(), prompts, 12, do_sample=False, fuse_lora=fuse)
        for fuse in (True, False)
    ]
    assert runs[0].response_ids == runs[1].response_ids
