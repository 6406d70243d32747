"""Bottleneck adapters: placement per kind, step-0 equality, the adapter math, modules_to_save."""

import pytest
import torch

from posttrain.models import tiny_model
from posttrain.peft import AdapterConfig, LoraConfig, PeftConfig, apply_peft, disable_adapters
from posttrain.peft.adapter import BottleneckWrapper
from posttrain.peft.base import ModulesToSave


def ids():
    return torch.randint(4, 500, (2, 9), generator=torch.Generator().manual_seed(0))


def bottleneck(kind, **kw):
    return PeftConfig(method="adapter", adapter=AdapterConfig(kind=kind, **kw))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "mistral"])
@pytest.mark.parametrize(
    "kind,wrapped", [("houlsby", {"attn", "mlp"}), ("pfeiffer", {"mlp"}), ("parallel", {"mlp"})]
)
def test_placement_and_step0(arch, kind, wrapped):
    base, model = tiny_model(arch), apply_peft(tiny_model(arch), bottleneck(kind))
    found = [n for n, m in model.named_modules() if isinstance(m, BottleneckWrapper)]
    assert {"mlp" if n.endswith(".mlp") else "attn" for n in found} == wrapped
    assert len(found) == 2 * len(wrapped)  # two decoder layers
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, base(x).logits)
    assert all("adapters.default.adapter_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_bottleneck_math_after_and_parallel():
    """after: y = f(h) + up(relu(down(f(h)))); parallel: y = f(h) + up(relu(down(h))), f the wrapped MLP."""
    for kind in ("pfeiffer", "parallel"):
        model = apply_peft(tiny_model("llama"), bottleneck(kind, reduction_factor=16))
        wrapper = model.model.layers[0].mlp
        adapter = wrapper.adapters["default"]
        assert adapter.adapter_down.out_features == 64 // 16
        torch.nn.init.normal_(adapter.adapter_up.weight)
        h = torch.randn(2, 5, 64)
        f = wrapper.base_layer(h)
        source = f if kind == "pfeiffer" else h
        want = f + adapter.adapter_up(torch.relu(adapter.adapter_down(source)))
        torch.testing.assert_close(wrapper(h), want)
        with disable_adapters(model):
            assert torch.equal(wrapper(h), f)


def test_bad_kind_and_activation_are_clear_errors():
    with pytest.raises(ValueError, match="peft.adapter.kind"):
        apply_peft(tiny_model("llama"), bottleneck("sideways"))
    with pytest.raises(ValueError, match="non_linearity"):
        apply_peft(tiny_model("llama"), bottleneck("houlsby", non_linearity="swish2"))


def test_modules_to_save_train_a_copy_and_disable_restores_base():
    cfg = PeftConfig(
        method="lora", lora=LoraConfig(r=2, target_modules=["q_proj"]), modules_to_save=["lm_head"]
    )
    base, model = tiny_model("llama"), apply_peft(tiny_model("llama"), cfg)
    assert isinstance(model.lm_head, ModulesToSave)
    assert model.lm_head.modules_to_save["default"].weight.requires_grad
    assert not model.lm_head.original_module.weight.requires_grad
    with torch.no_grad():
        model.lm_head.modules_to_save["default"].weight.add_(0.5)
    x = ids()
    with torch.no_grad():
        assert not torch.allclose(model(x).logits, base(x).logits)
        with disable_adapters(model):
            assert torch.equal(model(x).logits, base(x).logits)
    with pytest.raises(ValueError, match="modules_to_save"):
        apply_peft(tiny_model("llama"), PeftConfig(method="lora", modules_to_save=["nothing_here"]))
