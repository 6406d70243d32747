"""Every method on a bf16 model on CUDA: adapters train in fp32 beside bf16 weights, generation works (GPU only)."""

import pytest
import torch

from posttrain.models import tiny_model
from posttrain.peft import PeftConfig, apply_peft, disable_adapters, merge_adapters, unmerge_adapters

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt"])
def test_bf16_cuda_train_step_and_generate(method):
    cfg = PeftConfig(method=method)
    cfg.prefix.num_virtual_tokens = cfg.prompt.num_virtual_tokens = 4
    base = tiny_model("llama").to("cuda", torch.bfloat16)
    model = apply_peft(tiny_model("llama").to("cuda", torch.bfloat16), cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and p.is_cuda for p in trainable)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    x = torch.randint(4, 500, (2, 12), device="cuda")
    loss = model(x, labels=x).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    model.eval()
    with torch.no_grad():
        with disable_adapters(model):
            assert torch.equal(model(x).logits, base(x).logits)
        kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=1, eos_token_id=None)
        assert torch.equal(model.generate(x, use_cache=True, **kw), model.generate(x, use_cache=False, **kw))
        if method == "lora":
            before = model(x).logits
            merge_adapters(model)
            unmerge_adapters(model)
            assert torch.equal(model(x).logits, before)


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt"])
def test_qlora_bf16_cuda_train_step_keeps_the_base_4bit(tmp_path, method):
    """nf4 base with bf16 compute on CUDA: adapters fp32, a step trains them, the base codes do not move, and the
    4-bit weights take less CUDA memory than the bf16 model."""
    pytest.importorskip("bitsandbytes")
    from posttrain.models import load_model
    from posttrain.quant import quantized_linears, weight_bytes

    tiny_model("llama").save_pretrained(tmp_path / "m")
    plain = load_model(str(tmp_path / "m"), dtype="bf16", device="cuda")
    q = load_model(str(tmp_path / "m"), dtype="bf16", device="cuda", quantization="nf4")
    assert quantized_linears(q) and weight_bytes(q) < weight_bytes(plain)
    cfg = PeftConfig(method=method)
    cfg.prefix.num_virtual_tokens = cfg.prompt.num_virtual_tokens = 4
    model = apply_peft(q, cfg)
    codes = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype == torch.uint8}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and p.is_cuda for p in trainable)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    x = torch.randint(4, 500, (2, 12), device="cuda")
    for _ in range(2):
        loss = model(x, labels=x).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, codes[n]) for n, p in model.named_parameters() if n in codes)
