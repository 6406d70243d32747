"""One optimiser step per method under gradient checkpointing: finite loss, adapter moves, base does not."""

import pytest
import torch

from posttrain.models import tiny_model
from posttrain.peft import PeftConfig, apply_peft

CASES = [
    ("lora", {}),
    ("lora", {"dora": True}),
    ("adapter", {"kind": "houlsby"}),
    ("adapter", {"kind": "pfeiffer"}),
    ("adapter", {"kind": "parallel"}),
    ("prefix", {}),
    ("prompt", {}),
]


@pytest.mark.parametrize("method,knobs", CASES)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_step_under_gradient_checkpointing(arch, method, knobs):
    cfg = PeftConfig(method=method)
    for key, value in knobs.items():
        setattr(getattr(cfg, "lora" if method == "lora" else method), key, value)
    cfg.prefix.num_virtual_tokens = cfg.prompt.num_virtual_tokens = 4
    model = apply_peft(tiny_model(arch), cfg)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and frozen
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(4, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    labels = x.masked_fill(mask == 0, -100)
    for _ in range(2):  # two steps: zero-initialised up/B projections only move the rest on step 2
        loss = model(x, attention_mask=mask, labels=labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], p) for n, p in trainable.items()), (
        "an adapter parameter did not move"
    )
    assert all(torch.equal(after[n], p) for n, p in frozen.items()), "a base parameter moved"


@pytest.mark.parametrize("arch,method", [("llama", "prompt"), ("gpt2", "prefix"), ("gpt2", "prompt")])
def test_gradient_checkpointing_gives_the_same_gradients(arch, method):
    grads = []
    for checkpointing in (False, True):
        cfg = PeftConfig(method=method)
        cfg.prefix.num_virtual_tokens = cfg.prompt.num_virtual_tokens = 4
        model = apply_peft(tiny_model(arch), cfg)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        x = torch.randint(4, 500, (2, 10), generator=torch.Generator().manual_seed(0))
        model(x, labels=x).loss.backward()
        grads.append(model.base_model.virtual_tokens.encoders["default"].embedding.grad)
    torch.testing.assert_close(grads[0], grads[1])
